//! The server side over real loopback sockets, with a test service that echoes what it got.

use std::{collections::VecDeque, convert::Infallible, net::SocketAddr, time::Duration};

use http_body_util::{BodyExt, Either, Full};
use tokio::{io::AsyncReadExt, net::TcpListener};

use super::*;

/// Answers `METHOD TARGET body=<what it read>` (and the `Connection` header, if it got one);
/// some paths do something else:
/// `/ignore` does not read the body, `/stream` answers two pieces of unknown total length (and
/// `/big` three, two of them large),
/// `/empty` answers 204, `/slow` waits 200 ms first.
struct Echo;

/// A body of unknown length.
struct Pieces(VecDeque<Bytes>);

impl HttpBody for Pieces {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

impl ResponseBody for Either<Full<Bytes>, Pieces> {}

impl Service for Echo {
    type Body = Either<Full<Bytes>, Pieces>;

    async fn call(
        &self,
        req: Request<RequestBody>,
        fields: Option<Box<RawFields>>,
    ) -> Response<Self::Body> {
        {
            let (mut parts, body) = req.into_parts();
            if let Some(fields) = fields {
                assert!(parts.headers.is_empty());
                parts.headers = fields.header_map(0).expect("fields as received");
            }
            let path = parts.uri.path().to_owned();
            let body = match path.as_str() {
                "/stream" => {
                    let pieces = [&b"one,"[..], b"two"].map(Bytes::from_static);
                    return Response::new(Either::Right(Pieces(pieces.into())));
                }
                "/big" => {
                    let pieces = [
                        vec![b'x'; 3 * COPY_UP_TO],
                        vec![b'y'; 10],
                        vec![b'z'; COPY_UP_TO + 1],
                    ];
                    return Response::new(Either::Right(Pieces(pieces.map(Bytes::from).into())));
                }
                "/framed" => {
                    // A handler's own `Transfer-Encoding` (a middleware could set one).
                    let mut resp =
                        Response::new(Either::Left(Full::new(Bytes::from_static(b"abc"))));
                    resp.headers_mut().insert(
                        header::TRANSFER_ENCODING,
                        http::HeaderValue::from_static("chunked"),
                    );
                    return resp;
                }
                "/empty" => {
                    let mut resp = Response::new(Either::Left(Full::new(Bytes::new())));
                    *resp.status_mut() = StatusCode::NO_CONTENT;
                    return resp;
                }
                "/ignore" => String::new(),
                "/slow" => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    String::new()
                }
                _ => match body.collect().await {
                    Ok(collected) => String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
                    Err(e) => format!("error: {e}"),
                },
            };
            let mut text = format!("{} {} body={body}", parts.method, parts.uri);
            if let Some(connection) = parts.headers.get(header::CONNECTION) {
                text.push_str(&format!(" connection={connection:?}"));
            }
            Response::new(Either::Left(Full::new(Bytes::from(text))))
        }
    }
}

/// Serves [`Echo`] on a loopback port; the drain signal stops it.
async fn start(timeouts: Timeouts) -> (SocketAddr, drain::Signal) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (signal, watch) = drain::channel();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = watch.signaled() => return,
            };
            let Ok((stream, _)) = accepted else {
                return;
            };
            let watch = watch.clone();
            tokio::spawn(async move {
                let (reader, mut writer) = stream.into_split();
                let reader = ReadSide::Tcp(reader);
                serve(
                    reader,
                    &mut writer,
                    BytesMut::new(),
                    &Echo,
                    &watch,
                    timeouts,
                )
                .await;
            });
        }
    });
    (addr, signal)
}

const QUICK: Timeouts = Timeouts {
    idle: Duration::from_secs(30),
    head: Duration::from_secs(30),
};

/// A connection to `addr` that has sent `bytes`.
async fn connect_sending(addr: SocketAddr, bytes: &[u8]) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    stream
}

/// Writes `request` (all of it, at once) and reads until the server closes.
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = connect_sending(addr, request).await;
    read_to_close(&mut stream).await
}

async fn read_to_close(stream: &mut tokio::net::TcpStream) -> String {
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut all))
        .await
        .expect("the server closes the connection")
        .expect("read");
    String::from_utf8_lossy(&all).into_owned()
}

/// The responses in `all`, each as (status line, lowercased header lines, body), for bodies
/// framed by `Content-Length` or chunked.
fn responses(mut all: &str) -> Vec<(String, Vec<String>, String)> {
    let mut out = Vec::new();
    while !all.is_empty() {
        let (head, rest) = all.split_once("\r\n\r\n").expect("a complete head");
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap_or_default().to_owned();
        let headers: Vec<String> = lines.map(str::to_ascii_lowercase).collect();
        let length = headers
            .iter()
            .find_map(|h| h.strip_prefix("content-length: "))
            .map(|n| n.parse::<usize>().expect("a length"));
        let (body, rest) = if let Some(n) = length {
            (rest[..n].to_owned(), &rest[n..])
        } else if headers.iter().any(|h| h == "transfer-encoding: chunked") {
            let mut body = String::new();
            let mut rest = rest;
            loop {
                let (size, after) = rest.split_once("\r\n").expect("a chunk-size line");
                let size = usize::from_str_radix(size, 16).expect("hex");
                rest = &after[size + 2..];
                if size == 0 {
                    break;
                }
                body.push_str(&after[..size]);
            }
            (body, rest)
        } else if status.contains(" 204 ") || status.contains(" 100 ") {
            (String::new(), rest)
        } else {
            (rest.to_owned(), "")
        };
        out.push((status, headers, body));
        all = rest;
    }
    out
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let (addr, _signal) = start(QUICK).await;
    let all = exchange(
        addr,
        b"GET /a?x=1 HTTP/1.1\r\nHost: t\r\n\r\n\
          POST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello\
          GET /c HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, close\r\n\r\n",
    )
    .await;
    let got = responses(&all);
    // The `Connection` header that closes is not the handler's (Go's server drops it).
    let bodies: Vec<&str> = got.iter().map(|r| r.2.as_str()).collect();
    assert_eq!(
        bodies,
        ["GET /a?x=1 body=", "POST /b body=hello", "GET /c body="]
    );
    assert!(got.iter().all(|r| r.0 == "HTTP/1.1 200 OK"), "{all}");
    assert!(got[0].1.iter().any(|h| h.starts_with("date: ")), "{all}");
    assert!(
        !got[0].1.iter().any(|h| h.starts_with("connection")),
        "{all}"
    );
    assert!(got[2].1.contains(&"connection: close".to_owned()), "{all}");
}

#[tokio::test]
async fn a_chunked_request_body_is_decoded_and_the_connection_goes_on() {
    let (addr, _signal) = start(QUICK).await;
    let all = exchange(
        addr,
        b"PUT /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
          3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n\
          GET /next HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    let bodies: Vec<String> = responses(&all).into_iter().map(|r| r.2).collect();
    assert_eq!(bodies, ["PUT /up body=abcde", "GET /next body="], "{all}");
}

#[tokio::test]
async fn a_body_nobody_read_is_skipped_when_it_has_arrived_and_closes_the_connection_otherwise() {
    let (addr, _signal) = start(QUICK).await;
    let all = exchange(
        addr,
        b"POST /ignore HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc\
          GET /after HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    let bodies: Vec<String> = responses(&all).into_iter().map(|r| r.2).collect();
    assert_eq!(bodies, ["POST /ignore body=", "GET /after body="], "{all}");

    // Most of the body is still to come: the connection is not reused.
    let mut stream = connect_sending(
        addr,
        b"POST /ignore HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nab",
    )
    .await;
    let all = read_to_close(&mut stream).await;
    let got = responses(&all);
    assert_eq!(got.len(), 1, "{all}");
    assert_eq!(got[0].2, "POST /ignore body=");
}

#[tokio::test]
async fn http10_clients_keep_the_connection_only_when_they_ask() {
    let (addr, _signal) = start(QUICK).await;
    let all = exchange(
        addr,
        b"GET /old HTTP/1.0\r\n\r\nGET /never HTTP/1.0\r\n\r\n",
    )
    .await;
    let got = responses(&all);
    assert_eq!(got.len(), 1, "{all}");
    assert_eq!(got[0].0, "HTTP/1.0 200 OK");

    let all = exchange(
        addr,
        b"GET /kept HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /stream HTTP/1.0\r\n\r\n",
    )
    .await;
    let got = responses(&all);
    assert_eq!(got.len(), 2, "{all}");
    assert!(
        got[0].1.contains(&"connection: keep-alive".to_owned()),
        "{all}"
    );
    // Unknown length to an HTTP/1.0 client: no framing, the close ends it.
    assert!(
        !got[1].1.iter().any(|h| h.starts_with("transfer-encoding")),
        "{all}"
    );
    assert_eq!(got[1].2, "one,two");
}

#[tokio::test]
async fn bodies_are_framed_by_length_chunks_or_not_at_all() {
    let (addr, _signal) = start(QUICK).await;
    let all = exchange(
        addr,
        b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /big HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /empty HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    let mut got = responses(&all);
    assert_eq!(got.len(), 3, "{all}");
    let big = got.remove(1).2;
    let expected = "x".repeat(3 * COPY_UP_TO) + &"y".repeat(10) + &"z".repeat(COPY_UP_TO + 1);
    assert!(big == expected, "the large chunked body differs");
    assert!(
        got[0].1.contains(&"transfer-encoding: chunked".to_owned()),
        "{all}"
    );
    assert_eq!(got[0].2, "one,two");
    assert_eq!(got[1].0, "HTTP/1.1 204 No Content");
    assert!(
        !got[1].1.iter().any(|h| h.starts_with("content-length")),
        "{all}"
    );

    // A `Transfer-Encoding` in the response's headers does not reach the wire: the body's
    // length frames it.
    let all = exchange(
        addr,
        b"GET /framed HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        !all.to_ascii_lowercase().contains("transfer-encoding"),
        "{all}"
    );
    assert!(
        all.ends_with("\r\ncontent-length: 3\r\nconnection: close\r\n\r\nabc"),
        "{all}"
    );

    // HEAD: the length of the body a GET would get, and no body.
    let all = exchange(
        addr,
        b"HEAD /head HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        all.to_ascii_lowercase()
            .contains("\r\ncontent-length: 16\r\n"),
        "{all}"
    );
    assert!(all.ends_with("\r\n\r\n"), "{all}");
}

#[tokio::test]
async fn heads_go_cannot_parse_get_gos_answers_and_the_connection_closes() {
    let (addr, _signal) = start(QUICK).await;
    let bad_request = "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
                       Connection: close\r\n\r\n400 Bad Request";
    for request in [
        &b"GET / HTTP/1.1\r\nHost: t\r\nbad header\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n",
        b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"\x01\x02 nonsense\r\n\r\n",
    ] {
        let all = exchange(addr, request).await;
        assert_eq!(all, bad_request, "{}", String::from_utf8_lossy(request));
    }
    let all = exchange(
        addr,
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked, br\r\n\r\n",
    )
    .await;
    assert!(all.starts_with("HTTP/1.1 501 Not Implemented\r\n"), "{all}");
    let many: String = (0..MAX_HEADERS + 1)
        .map(|i| format!("x-{i}: v\r\n"))
        .collect();
    let all = exchange(
        addr,
        format!("GET / HTTP/1.1\r\nHost: t\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert!(all.starts_with("HTTP/1.1 431 "), "{all}");
}

#[tokio::test]
async fn chunked_with_a_length_is_read_as_chunked_then_the_connection_closes() {
    let (addr, _signal) = start(QUICK).await;
    let all = exchange(
        addr,
        b"POST /smuggle HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\
          Transfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n\
          GET /hidden HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .await;
    let got = responses(&all);
    assert_eq!(got.len(), 1, "{all}");
    assert_eq!(got[0].2, "POST /smuggle body=ab");
    assert!(got[0].1.contains(&"connection: close".to_owned()), "{all}");
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_is_read() {
    let (addr, _signal) = start(QUICK).await;
    let mut stream = connect_sending(addr, b"PUT /x HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\nConnection: close\r\n\r\n").await;
    let mut interim = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut interim))
        .await
        .expect("an interim response")
        .expect("read");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"ok").await.expect("write body");
    let all = read_to_close(&mut stream).await;
    assert_eq!(responses(&all)[0].2, "PUT /x body=ok", "{all}");
}

#[tokio::test]
async fn an_idle_connection_closes_after_the_idle_timeout_and_a_slow_head_after_its_own() {
    let (addr, _signal) = start(Timeouts {
        idle: Duration::from_millis(300),
        head: Duration::from_millis(100),
    })
    .await;
    let mut stream = connect_sending(addr, b"GET /one HTTP/1.1\r\nHost: t\r\n\r\n").await;
    // Answered, then closed once idle.
    let all = read_to_close(&mut stream).await;
    assert_eq!(responses(&all).len(), 1, "{all}");

    let mut stream = connect_sending(addr, b"GET /half HTTP/1.1\r\n").await;
    let all = read_to_close(&mut stream).await;
    assert_eq!(all, "", "a head that never ends gets no answer");
}

#[tokio::test]
async fn a_drain_closes_idle_connections_and_lets_a_request_under_way_finish() {
    let (addr, signal) = start(QUICK).await;
    let mut idle = connect_sending(addr, b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await.expect("first response");
    let mut busy = connect_sending(addr, b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let drained = tokio::spawn(signal.drain());
    let rest = read_to_close(&mut idle).await;
    assert_eq!(
        responses(&format!("HTTP/1.1 200 {rest}")).len(),
        1,
        "{rest}"
    );
    let all = read_to_close(&mut busy).await;
    let got = responses(&all);
    assert_eq!(got[0].2, "GET /slow body=", "{all}");
    assert!(got[0].1.contains(&"connection: close".to_owned()), "{all}");
    tokio::time::timeout(Duration::from_secs(10), drained)
        .await
        .expect("the drain completes")
        .expect("drain task");
}

#[tokio::test]
async fn bytes_go_accepts_in_a_target_are_escaped_not_refused() {
    let (addr, _signal) = start(QUICK).await;
    let all = exchange(
        addr,
        b"GET /a`b<c>?q=\"x\"&r=<`> HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    let got = responses(&all);
    assert_eq!(
        got[0].2, "GET /a%60b%3Cc%3E?q=%22x%22&r=%3C`%3E body=",
        "{all}"
    );
    // A byte no URI may hold still is.
    let all = exchange(addr, b"GET /a\x7fb HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(all.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{all}");
}

/// A writer that takes at most 7 bytes per write, across the slices it is given.
struct Trickle(Vec<u8>);

impl AsyncWrite for Trickle {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = buf.len().min(7);
        self.0.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut n = 0;
        for b in bufs {
            let take = b.len().min(7 - n);
            self.0.extend_from_slice(&b[..take]);
            n += take;
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn queued_pieces_go_out_in_order_through_short_writes() {
    let large = |c: u8, n: usize| Bytes::from(vec![c; n]);
    let mut queue = WriteQueue::default();
    let mut expected = Vec::new();
    queue.buf.extend_from_slice(b"head;");
    expected.extend_from_slice(b"head;");
    for piece in [
        large(b'a', COPY_UP_TO + 1),
        Bytes::from_static(b"small;"),
        large(b'b', 3 * COPY_UP_TO),
        large(b'c', COPY_UP_TO + 5),
    ] {
        expected.extend_from_slice(&piece);
        queue.push(piece);
    }
    queue.buf.extend_from_slice(b";tail");
    expected.extend_from_slice(b";tail");
    assert_eq!(queue.large.len(), 3);
    let mut writer = Trickle(Vec::new());
    queue.flush(&mut writer).await.expect("flush");
    assert!(writer.0 == expected, "the bytes differ");
    assert!(queue.is_empty());

    // No large piece: the buffer alone, through the same short writes.
    queue.push(Bytes::from_static(
        b"only a small piece, longer than one write",
    ));
    let mut writer = Trickle(Vec::new());
    queue.flush(&mut writer).await.expect("flush");
    assert_eq!(writer.0, b"only a small piece, longer than one write");
    assert!(queue.is_empty());
}

#[tokio::test]
async fn an_unread_body_still_arriving_is_taken_in_not_reset() {
    let (addr, _signal) = start(QUICK).await;
    let mut stream = connect_sending(
        addr,
        b"POST /ignore HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n",
    )
    .await;
    // More of the body arrives while the server answers without reading it, and after: the
    // server takes it in (and drops it) for a while instead of closing on it, which would reset
    // the connection, and on a real network could take the answer with it.
    let piece = vec![b'x'; 64 * 1024];
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        stream
            .write_all(&piece)
            .await
            .unwrap_or_else(|e| panic!("piece {i} of the body refused: {e}"));
    }
    // The answer, then the end of the stream.
    let all = read_to_close(&mut stream).await;
    let got = responses(&all);
    assert_eq!(got.len(), 1, "{all}");
    assert_eq!(got[0].2, "POST /ignore body=");
    assert!(got[0].1.contains(&"connection: close".to_owned()), "{all}");
}

/// A head whose fields are kept as received gives the handler what the map would: the same
/// fields (those of `Connection` left out alike), framing and keep-alive; a head that needs the
/// map gets it.
#[test]
fn fields_as_received_are_the_map_the_listener_would_make() {
    let heads: [(&str, bool); 17] = [
        ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", true),
        (
            "GET /p?q HTTP/1.1\r\nHost: a\r\nUser-Agent: x\r\nAccept: */*\r\n\r\n",
            true,
        ),
        (
            "GET / HTTP/1.1\r\nhost: a\r\nX-A: 1\r\nx-a: 2\r\nX-B: \r\n\r\n",
            true,
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nClose: x\r\n\r\n",
            true,
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive\r\nKeep-Alive: 5\r\n\r\n",
            true,
        ),
        ("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true),
        ("GET / HTTP/1.0\r\nHost: a\r\n\r\n", true),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n",
            true,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n",
            true,
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-Ip: 1\r\n\r\n",
            true,
        ),
        ("GET / HTTP/1.1\r\nHost: a\r\nV: caf\u{e9}\t!\r\n\r\n", true),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: X-A\r\nX-A: 1\r\n\r\n",
            false,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            false,
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\nUpgrade: h2c\r\n\r\n",
            false,
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nProxy-Authorization: x\r\n\r\n",
            false,
        ),
        ("GET / HTTP/1.1\r\nHost: a\r\nKeep-Alive: 5\r\n\r\n", false),
    ];
    // Too many fields to keep as received, or too long a head: the map.
    let many = format!(
        "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
        (0..32)
            .map(|i| format!("X-{i}: {i}\r\n"))
            .collect::<String>()
    );
    let long = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
        "v".repeat(65_536)
    );
    let heads = heads
        .iter()
        .copied()
        .chain([(many.as_str(), false), (long.as_str(), false)]);
    for (head, kept) in heads {
        let parse = |received| {
            let mut buf = BytesMut::from(head.as_bytes());
            parse_head_as(&mut buf, received)
                .expect("a valid head")
                .expect("a whole head")
        };
        let (raw, map) = (parse(true), parse(false));
        assert_eq!(raw.fields.is_some(), kept, "{head:?}");
        assert!(map.fields.is_none());
        let headers = match raw.fields {
            Some(fields) => {
                assert!(raw.parts.headers.is_empty());
                fields.header_map(0).expect("fields as received")
            }
            None => raw.parts.headers,
        };
        assert_eq!(headers, map.parts.headers, "{head:?}");
        assert_eq!(
            (raw.parts.method, raw.parts.uri, raw.parts.version),
            (map.parts.method, map.parts.uri, map.parts.version),
            "{head:?}"
        );
        assert_eq!(raw.decoder, map.decoder, "{head:?}");
        assert_eq!(
            (raw.keep_alive, raw.expects_continue),
            (map.keep_alive, map.expects_continue),
            "{head:?}"
        );
    }
    // A length the map path refuses is refused as received too.
    for head in [
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    ] {
        for received in [true, false] {
            let mut buf = BytesMut::from(head.as_bytes());
            assert!(parse_head_as(&mut buf, received).is_err(), "{head:?}");
        }
    }
}

#[tokio::test]
async fn a_finished_connections_read_buffer_goes_to_the_next_one() {
    let (addr, _signal) = start(QUICK).await;
    let response = exchange(
        addr,
        b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    // The connection ended on this thread (the test's runtime has one): its buffer was kept.
    let kept = read_buffer();
    assert!(kept.is_empty());
    assert!(kept.capacity() >= HEAD_READ, "{}", kept.capacity());
}

/// How many buffers of each kind this thread keeps (read, write).
fn spares_kept() -> (usize, usize) {
    (
        SPARE_READ.with_borrow(Vec::len),
        SPARE_WRITE.with_borrow(Vec::len),
    )
}

/// Waits (generously) until this thread keeps `want` spare buffers of each kind.
async fn spares_become(want: (usize, usize)) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while spares_kept() != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "spares kept {:?}, expected {want:?}",
            spares_kept()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_connection_waiting_for_its_next_request_holds_no_buffers() {
    let (addr, _signal) = start(QUICK).await;
    assert_eq!(spares_kept(), (0, 0));
    let mut stream = connect_sending(addr, b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut got = Vec::new();
    for (n, path) in ["/one", "/two"].into_iter().enumerate() {
        if n > 0 {
            stream
                .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .expect("write");
        }
        let expected = format!("GET {path} body=");
        while !String::from_utf8_lossy(&got).ends_with(&expected) {
            let mut piece = [0u8; 1024];
            let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut piece))
                .await
                .expect("a response")
                .expect("read");
            assert!(read > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&piece[..read]);
        }
        // Answered, kept alive and idle: its read and write buffers are the thread's spares
        // (the test's runtime has one thread), and the next request takes them back.
        spares_become((1, 1)).await;
    }
    assert_eq!(responses(&String::from_utf8_lossy(&got)).len(), 2);
}

#[test]
fn a_read_buffer_is_kept_only_when_it_is_whole_and_of_the_usual_size() {
    // Nothing else holds it: kept, and handed out again empty.
    let mut buf = read_buffer();
    buf.reserve(HEAD_READ);
    let start = buf.as_ptr();
    buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    let head = buf.split_to(buf.len()).freeze();
    drop(head);
    recycle_read_buffer(buf);
    let mut again = read_buffer();
    assert!(again.is_empty());
    assert_eq!(again.as_ptr(), start);
    assert!(again.capacity() >= HEAD_READ);

    // A request still holds its first bytes: what is handed out next never overlaps them.
    again.extend_from_slice(b"first");
    let held = again.split_to(5).freeze();
    recycle_read_buffer(again);
    let mut next = read_buffer();
    next.reserve(HEAD_READ);
    next.extend_from_slice(b"second");
    assert_eq!(&held[..], b"first");
    let (held_at, next_at) = (held.as_ptr() as usize, next.as_ptr() as usize);
    assert!(next_at >= held_at + held.len() || next_at + next.capacity() <= held_at);

    // Bytes left unread when a connection ended never reach the next one.
    let mut left = BytesMut::with_capacity(2 * HEAD_READ);
    left.extend_from_slice(b"GET /pipelined HTTP/1.1\r\n");
    recycle_read_buffer(left);
    let reused = read_buffer();
    assert!(reused.is_empty());
    assert!(reused.capacity() >= HEAD_READ);

    // A large one (a connection that read a large head) is not kept.
    recycle_read_buffer(BytesMut::with_capacity(64 * 1024));
    assert_eq!(read_buffer().capacity(), 0);
}
