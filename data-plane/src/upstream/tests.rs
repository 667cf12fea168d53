use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::{BodyExt, Empty};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::*;

/// A raw origin on loopback, counting its connections.
struct Origin {
    authority: Authority,
    connections: Arc<AtomicUsize>,
}

/// Starts an origin that hands each connection it accepts to `per_connection`.
async fn serve_origin<F, Fut>(per_connection: F) -> Origin
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(per_connection(stream));
        }
    });
    Origin {
        authority,
        connections,
    }
}

/// An HTTP/1.1 origin that answers every request head on a connection with `response`, and
/// closes the connection after each when `close_after_each` is set (the tests send no bodies).
async fn origin(response: &'static [u8], close_after_each: bool) -> Origin {
    serve_origin(move |mut stream| async move {
        let mut buf = vec![0u8; 4096];
        let mut seen = Vec::new();
        while let Ok(n @ 1..) = stream.read(&mut buf).await {
            seen.extend_from_slice(&buf[..n]);
            while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                seen.drain(..end + 4);
                if stream.write_all(response).await.is_err() || close_after_each {
                    return;
                }
            }
        }
    })
    .await
}

fn get() -> Request<Empty<Bytes>> {
    Request::builder()
        .uri("/")
        .header("host", "origin.test")
        .body(Empty::new())
        .unwrap()
}

async fn body_text(response: Response<UpstreamBody>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

#[tokio::test]
async fn a_connection_is_reused_once_its_response_was_read() {
    let origin = origin(OK, false).await;
    let pool = Http1Pool::default();
    for _ in 0..5 {
        let response = pool.send(&origin.authority, get()).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(body_text(response).await, "ok");
    }
    assert_eq!(origin.connections.load(Ordering::SeqCst), 1);
    assert_eq!(pool.idle_count(&origin.authority), 1);
}

/// A request whose `Content-Length` is not a length (a middleware could set one) is refused
/// before anything is written: no connection is made for it, and an idle one taken for it
/// serves the next request.
#[tokio::test]
async fn a_request_with_a_bad_length_is_refused_and_its_connection_kept() {
    let origin = origin(OK, false).await;
    let pool = Http1Pool::default();
    let bad = || {
        let mut bad = get();
        bad.headers_mut().insert(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from_static("x"),
        );
        bad
    };
    let error = pool.send(&origin.authority, bad()).await.unwrap_err();
    assert!(
        error.to_string().contains("invalid Content-Length"),
        "{error}"
    );
    assert_eq!(origin.connections.load(Ordering::SeqCst), 0);
    let response = pool.send(&origin.authority, get()).await.unwrap();
    assert_eq!(body_text(response).await, "ok");
    assert_eq!(pool.idle_count(&origin.authority), 1);

    let error = pool.send(&origin.authority, bad()).await.unwrap_err();
    assert!(
        error.to_string().contains("invalid Content-Length"),
        "{error}"
    );
    assert_eq!(pool.idle_count(&origin.authority), 1);
    let response = pool.send(&origin.authority, get()).await.unwrap();
    assert_eq!(body_text(response).await, "ok");
    assert_eq!(origin.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn chunked_and_empty_bodies_give_the_connection_back() {
    const CHUNKED: &[u8] =
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
    const NO_CONTENT: &[u8] = b"HTTP/1.1 204 No Content\r\n\r\n";
    for (response, text) in [(CHUNKED, "ok"), (NO_CONTENT, "")] {
        let origin = origin(response, false).await;
        let pool = Http1Pool::default();
        for _ in 0..3 {
            let response = pool.send(&origin.authority, get()).await.unwrap();
            assert_eq!(body_text(response).await, text);
        }
        assert_eq!(origin.connections.load(Ordering::SeqCst), 1, "{text:?}");
    }
}

#[tokio::test]
async fn two_requests_at_once_take_two_connections() {
    const SLOW: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow";
    let origin = origin(SLOW, false).await;
    let pool = Http1Pool::default();
    let first = pool.send(&origin.authority, get()).await.unwrap();
    // The first body is not read yet: its connection is busy.
    let second = pool.send(&origin.authority, get()).await.unwrap();
    assert_eq!(origin.connections.load(Ordering::SeqCst), 2);
    assert_eq!(body_text(first).await, "slow");
    assert_eq!(body_text(second).await, "slow");
    assert_eq!(pool.idle_count(&origin.authority), 2);
}

#[tokio::test]
async fn a_body_dropped_before_its_end_takes_its_connection_with_it() {
    const LONG: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\npartial";
    let origin = origin(LONG, false).await;
    let pool = Http1Pool::default();
    let mut response = pool.send(&origin.authority, get()).await.unwrap();
    let frame = response.body_mut().frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "partial");
    drop(response);
    assert_eq!(pool.idle_count(&origin.authority), 0);
}

/// A connection the origin closes is never used again: closed after each response without a
/// word (the next request finds it closed, or is refused by it before being written), or after
/// a response that says `Connection: close`. Every request gets a new connection.
#[tokio::test]
async fn a_connection_the_origin_closes_is_not_used_again() {
    const CLOSE: &[u8] = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok";
    for (response, close_after_each) in [(OK, true), (CLOSE, false)] {
        let origin = origin(response, close_after_each).await;
        let pool = Http1Pool::default();
        for n in 1..=5 {
            let response = pool.send(&origin.authority, get()).await.unwrap();
            assert_eq!(body_text(response).await, "ok");
            assert_eq!(origin.connections.load(Ordering::SeqCst), n);
        }
    }
}

#[tokio::test]
async fn a_refused_dial_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
    drop(listener);
    let error = Http1Pool::default()
        .send(&authority, get())
        .await
        .unwrap_err();
    assert!(error.is_connect(), "{error}");
    assert!(error.to_string().contains("refused"), "{error}");
}

/// A request body: none, or a client still uploading (one chunk, then nothing, ever).
enum TestBody {
    Empty,
    Uploading(Option<Bytes>),
}

impl HttpBody for TestBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            TestBody::Empty => Poll::Ready(None),
            TestBody::Uploading(first) => match first.take() {
                Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                None => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, TestBody::Empty)
    }
}

/// The origin answers an upload before it has all arrived (as with a 413): the answer is
/// returned at once, and the connection, whose upload had not ended when the response did, is
/// closed rather than used again (Go's Transport does the same).
#[tokio::test]
async fn a_connection_still_uploading_does_not_hold_up_the_next_request() {
    let origin = origin(OK, false).await;
    let pool = Http1Pool::default();
    let upload = Request::builder()
        .method("POST")
        .uri("/upload")
        .header("host", "origin.test")
        .body(TestBody::Uploading(Some(Bytes::from_static(b"partial"))))
        .unwrap();
    let response = pool.send(&origin.authority, upload).await.unwrap();
    assert_eq!(body_text(response).await, "ok");
    let get = Request::builder()
        .uri("/")
        .header("host", "origin.test")
        .body(TestBody::Empty)
        .unwrap();
    // A deadline only so that a regression fails instead of hanging the suite.
    let response = tokio::time::timeout(Duration::from_secs(30), pool.send(&origin.authority, get))
        .await
        .expect("the second request was held up behind the upload")
        .unwrap();
    assert_eq!(body_text(response).await, "ok");
    assert_eq!(origin.connections.load(Ordering::SeqCst), 2);
    assert_eq!(pool.idle_count(&origin.authority), 1);
}

/// An origin that answers the first request of each connection and closes the connection,
/// unanswered, when a second one arrives on it (as an origin closing it for idleness just as
/// the request reaches it).
async fn answers_once_per_connection() -> Origin {
    serve_origin(|mut stream| async move {
        let mut buf = vec![0u8; 4096];
        let mut seen = Vec::new();
        let mut answered = false;
        while let Ok(n @ 1..) = stream.read(&mut buf).await {
            seen.extend_from_slice(&buf[..n]);
            if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                seen.drain(..end + 4);
                if answered {
                    return; // closed without an answer
                }
                answered = true;
                if stream.write_all(OK).await.is_err() {
                    return;
                }
            }
        }
    })
    .await
}

/// Go's Transport sends a replayable request again when a reused connection closes without
/// answering it; anything else gets the error.
#[tokio::test]
async fn a_replayable_request_an_idle_connection_drops_is_sent_again() {
    let origin = answers_once_per_connection().await;
    let pool = Http1Pool::default();
    let first = pool.send(&origin.authority, get()).await.unwrap();
    assert_eq!(body_text(first).await, "ok");
    let again = pool.send(&origin.authority, get()).await.unwrap();
    assert_eq!(body_text(again).await, "ok");
    assert_eq!(origin.connections.load(Ordering::SeqCst), 2);

    // A POST is not replayed.
    let post = |path: &str| {
        Request::builder()
            .method("POST")
            .uri(path)
            .header("host", "origin.test")
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let origin = answers_once_per_connection().await;
    let first = pool.send(&origin.authority, post("/a")).await.unwrap();
    assert_eq!(body_text(first).await, "ok");
    let error = pool.send(&origin.authority, post("/b")).await.unwrap_err();
    assert!(!error.is_connect(), "{error}");
    assert_eq!(origin.connections.load(Ordering::SeqCst), 1);
}

/// An origin that reads one request per connection up to the end of its body (`body_end`: the
/// bytes the request ends with), sends what it read on `seen`, and answers `response`.
async fn recording_origin(
    body_end: &'static [u8],
    response: &'static [u8],
) -> (Authority, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let origin = serve_origin(move |mut stream| {
        let tx = tx.clone();
        async move {
            let mut buf = vec![0u8; 4096];
            let mut seen = Vec::new();
            while let Ok(n @ 1..) = stream.read(&mut buf).await {
                seen.extend_from_slice(&buf[..n]);
                if seen.ends_with(body_end) {
                    let _ = tx.send(std::mem::take(&mut seen));
                    if stream.write_all(response).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
    .await;
    (origin.authority, rx)
}

fn post<B>(body: B, length: Option<usize>) -> Request<B> {
    let mut req = Request::builder()
        .method("POST")
        .uri("/up?x=1")
        .header("host", "origin.test");
    if let Some(n) = length {
        req = req.header("content-length", n);
    }
    req.body(body).unwrap()
}

#[tokio::test]
async fn request_bodies_are_framed_by_their_length_or_chunked() {
    use http_body_util::{Full, StreamBody};

    // A known length: sent as it is, after the head.
    let (authority, mut seen) = recording_origin(b"hello", OK).await;
    let pool = Http1Pool::default();
    let response = pool
        .send(
            &authority,
            post(Full::new(Bytes::from_static(b"hello")), Some(5)),
        )
        .await
        .unwrap();
    assert_eq!(body_text(response).await, "ok");
    let wire = String::from_utf8(seen.recv().await.unwrap()).unwrap();
    assert!(wire.starts_with("POST /up?x=1 HTTP/1.1\r\n"), "{wire:?}");
    assert!(wire.contains("\r\ncontent-length: 5\r\n"), "{wire:?}");
    assert!(!wire.contains("transfer-encoding"), "{wire:?}");
    assert!(wire.ends_with("\r\n\r\nhello"), "{wire:?}");
    assert_eq!(pool.idle_count(&authority), 1);

    // No length: chunked, one chunk per frame, then the last chunk.
    let (authority, mut seen) = recording_origin(b"0\r\n\r\n", OK).await;
    let frames = ["abc", "", "0123456789abcdefg"]
        .map(|s| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(s.as_bytes()))));
    let body = StreamBody::new(tokio_stream::iter(frames));
    let response = pool.send(&authority, post(body, None)).await.unwrap();
    assert_eq!(body_text(response).await, "ok");
    let wire = String::from_utf8(seen.recv().await.unwrap()).unwrap();
    assert!(
        wire.contains("\r\ntransfer-encoding: chunked\r\n"),
        "{wire:?}"
    );
    assert!(
        wire.ends_with("\r\n\r\n3\r\nabc\r\n11\r\n0123456789abcdefg\r\n0\r\n\r\n"),
        "{wire:?}"
    );

    // An empty POST says so, as Go's client does; a GET says nothing.
    let (authority, mut seen) = recording_origin(b"\r\n\r\n", OK).await;
    let response = pool
        .send(&authority, post(Empty::<Bytes>::new(), None))
        .await
        .unwrap();
    assert_eq!(body_text(response).await, "ok");
    let wire = String::from_utf8(seen.recv().await.unwrap()).unwrap();
    assert!(wire.contains("\r\ncontent-length: 0\r\n"), "{wire:?}");
    let response = pool.send(&authority, get()).await.unwrap();
    assert_eq!(body_text(response).await, "ok");
    let wire = String::from_utf8(seen.recv().await.unwrap()).unwrap();
    assert_eq!(wire, "GET / HTTP/1.1\r\nhost: origin.test\r\n\r\n");
}

#[tokio::test]
async fn interim_responses_are_skipped() {
    const CONTINUE: &[u8] =
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok";
    let origin = origin(CONTINUE, false).await;
    let pool = Http1Pool::default();
    for _ in 0..2 {
        let response = pool.send(&origin.authority, get()).await.unwrap();
        assert_eq!(response.status(), 201);
        assert!(!response.headers().contains_key("link"));
        assert_eq!(body_text(response).await, "ok");
    }
    assert_eq!(origin.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_head_response_has_no_body_whatever_its_length_says() {
    const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n";
    let origin = origin(HEAD, false).await;
    let pool = Http1Pool::default();
    for _ in 0..3 {
        let head = Request::builder()
            .method("HEAD")
            .uri("/")
            .header("host", "origin.test")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = pool.send(&origin.authority, head).await.unwrap();
        assert_eq!(response.headers()["content-length"], "1234");
        assert!(response.body().is_end_stream());
        assert_eq!(body_text(response).await, "");
    }
    assert_eq!(origin.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn chunked_trailers_reach_the_body() {
    const TRAILERS: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: grpc-status\r\n\r\n2;ext=1\r\nok\r\n0\r\ngrpc-status: 0\r\n\r\n";
    let origin = origin(TRAILERS, false).await;
    let pool = Http1Pool::default();
    let response = pool.send(&origin.authority, get()).await.unwrap();
    let collected = response.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(collected.to_bytes(), "ok");
    assert_eq!(pool.idle_count(&origin.authority), 1);
}

/// Connections that cannot carry another request are closed after their response: one that
/// sent bytes beyond its response, an HTTP/1.0 answer without keep-alive, a body delimited by
/// the connection's end.
#[tokio::test]
async fn connections_that_cannot_be_reused_are_not() {
    const EXTRA: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokGARBAGE";
    const HTTP10: &[u8] = b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok";
    const UNTIL_CLOSE: &[u8] = b"HTTP/1.1 200 OK\r\n\r\nok";
    for (response, close) in [(EXTRA, false), (HTTP10, false), (UNTIL_CLOSE, true)] {
        let origin = origin(response, close).await;
        let pool = Http1Pool::default();
        for n in 1..=3 {
            let response = pool.send(&origin.authority, get()).await.unwrap();
            assert_eq!(body_text(response).await, "ok");
            assert_eq!(pool.idle_count(&origin.authority), 0);
            assert_eq!(origin.connections.load(Ordering::SeqCst), n);
        }
    }
}

#[tokio::test]
async fn malformed_responses_are_errors() {
    let cases: [(&[u8], &str); 4] = [
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
            "conflicting Content-Length",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\nok",
            "invalid Content-Length",
        ),
        (b"SMTP ready\r\n\r\n", "malformed response"),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n",
            "101",
        ),
    ];
    for (response, expected) in cases {
        let origin = origin(response, false).await;
        let error = Http1Pool::default()
            .send(&origin.authority, get())
            .await
            .unwrap_err();
        assert!(error.to_string().contains(expected), "{error} / {expected}");
    }
}

#[tokio::test]
async fn a_body_cut_short_by_the_origin_is_an_error() {
    const SHORT: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nonly";
    let origin = origin(SHORT, true).await;
    let pool = Http1Pool::default();
    let response = pool.send(&origin.authority, get()).await.unwrap();
    let error = response.into_body().collect().await.unwrap_err();
    assert!(
        error.to_string().contains("closed before the body ended"),
        "{error}"
    );
    assert_eq!(pool.idle_count(&origin.authority), 0);
}

/// A request body fed by the test: each message a frame; the body ends when the sender drops.
struct Fed(tokio::sync::mpsc::UnboundedReceiver<&'static str>);

impl HttpBody for Fed {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|m| m.map(|s| Ok(Frame::data(Bytes::from_static(s.as_bytes())))))
    }
}

/// An origin that answers a request head at once with a chunked response and then echoes the
/// request body, chunk framing and all, as it arrives (a streaming echo, as some upload and
/// bidirectional services do).
async fn echo_origin() -> Origin {
    serve_origin(|mut stream| async move {
        let mut buf = vec![0u8; 4096];
        let mut seen = Vec::new();
        let mut in_body = false;
        while let Ok(n @ 1..) = stream.read(&mut buf).await {
            seen.extend_from_slice(&buf[..n]);
            if !in_body {
                let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                seen.drain(..end + 4);
                let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
                if stream.write_all(head).await.is_err() {
                    return;
                }
            }
            if stream.write_all(&seen).await.is_err() {
                return;
            }
            in_body = !seen.ends_with(b"0\r\n\r\n");
            seen.clear();
        }
    })
    .await
}

/// `f`, with a deadline only so that a regression fails instead of hanging the suite.
async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("timed out")
}

/// The origin answers before the upload is over and echoes it: the upload goes on next to the
/// response, each piece comes back as it is sent, and the connection, both directions done, is
/// used again.
#[tokio::test]
async fn an_upload_goes_on_after_an_early_answer() {
    let origin = echo_origin().await;
    let pool = Http1Pool::default();
    for _ in 0..2 {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tx.send("ping").unwrap();
        let upload = Request::builder()
            .method("POST")
            .uri("/echo")
            .header("host", "origin.test")
            .body(Fed(rx))
            .unwrap();
        let response = within(pool.send(&origin.authority, upload)).await;
        let mut body = response.unwrap().into_body();
        let frame = within(body.frame()).await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "ping");
        tx.send("pong").unwrap();
        let frame = within(body.frame()).await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "pong");
        drop(tx);
        let rest = within(body.collect()).await.unwrap();
        assert!(rest.to_bytes().is_empty());
    }
    assert_eq!(origin.connections.load(Ordering::SeqCst), 1);
    assert_eq!(pool.idle_count(&origin.authority), 1);
}

#[tokio::test]
async fn a_request_body_must_match_its_content_length() {
    use http_body_util::Full;
    let (authority, _seen) = recording_origin(b"never", OK).await;
    let pool = Http1Pool::default();
    for (body, expected) in [("too long", "longer"), ("ab", "shorter")] {
        let error = pool
            .send(
                &authority,
                post(Full::new(Bytes::from_static(body.as_bytes())), Some(5)),
            )
            .await
            .unwrap_err();
        assert!(error.to_string().contains(expected), "{error}");
    }
}

/// Idle connections their origin closed, or that idled too long, are swept for every server,
/// whether or not it gets requests again.
#[tokio::test]
async fn the_sweep_drops_closed_and_expired_connections() {
    let closing = origin(OK, true).await;
    let staying = origin(OK, false).await;
    let pool = Http1Pool::default();
    for origin in [&closing, &staying] {
        let response = pool.send(&origin.authority, get()).await.unwrap();
        assert_eq!(body_text(response).await, "ok");
    }
    // The closing origin's connection may have been pooled before its end arrived.
    let deadline = Instant::now() + Duration::from_secs(30);
    while pool.idle_count(&closing.authority) > 0 {
        assert!(Instant::now() < deadline, "closed connection never swept");
        sweep(&pool.idle, Instant::now());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(pool.idle_count(&staying.authority), 1);
    sweep(
        &pool.idle,
        Instant::now() + IDLE_TIMEOUT + Duration::from_secs(1),
    );
    assert_eq!(pool.idle_count(&staying.authority), 0);
    assert!(pool.idle.lock().unwrap().is_empty());
}
