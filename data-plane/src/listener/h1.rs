//! The HTTP/1.1 server side of the wire (RFC 9112), written for the proxy's one job, as the
//! client side is (`crate::upstream::h1`): read a request head, hand the request to the
//! handler in this connection's own task, write the response head and body, and read the next
//! request. No task, channel or timer is made per request; the request body, when there is one,
//! is read from the socket by whoever polls it (the upstream writer), and its read side comes
//! back to the connection when it ends or is dropped. A body nobody read is skipped if it has
//! all arrived; otherwise the response says `Connection: close`, and after it the write side is
//! shut and what still arrives is taken in and dropped for a while (`LINGER`), so that the
//! close does not reset the connection under a client still sending.
//!
//! Behaviour follows Go's server, which Traefik runs: a head it cannot parse gets Go's plain-text
//! error and the connection closes; `Content-Length` is added when the whole body is known, else
//! an HTTP/1.1 client gets a chunked body and an HTTP/1.0 one a body ended by the close; an
//! HTTP/1.0 client keeps its connection only with `Connection: keep-alive`. A connection idle
//! between requests closes after [`Timeouts::idle`] (Traefik's `idleTimeout`), and a head must
//! arrive within [`Timeouts::head`] of its first byte.
//!
//! What it does not do: upgrades (`Upgrade` is a hop-by-hop header the handler drops; nothing is
//! tunnelled), response trailers (dropped, as hyper's server did unless asked for), or a late
//! `100 Continue` (it is sent as soon as a request that expects it has been read, before the
//! handler runs).

use std::{
    cell::RefCell,
    future::{Future, poll_fn},
    io::{self, IoSlice, Write as _},
    mem::MaybeUninit,
    pin::{Pin, pin},
    sync::{Arc, Mutex},
    task::{Context, Poll, ready},
    time::{Duration, SystemTime},
};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use switchyard_shared::drain;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpStream, tcp::OwnedReadHalf},
    time::{Instant, Sleep},
};

use crate::spare::{self, Spares};
use crate::upstream::h1::{
    ConnectionSays, Decoded, Decoder, FieldSpans, Fields, MAX_HEAD_BYTES, MAX_HEADERS, RawFields,
    chunk_size_line, list_elements, poll_decode, poll_fill_up_to, take, visible_ascii,
};

/// Room a read for a request head asks for (a request body is read with the larger reads of the
/// body decoder): 4 KiB, as Go's server reads. A connection waiting for its next request holds
/// no read buffer at all (see [`poll_head`]).
const HEAD_READ: usize = 4 * 1024;

/// Read buffers of finished connections, and of connections waiting for their next request,
/// kept per thread for the connections that read next (a buffer is ~4 KiB: 64 are 256 KiB at
/// most). A connection per request otherwise took a new one each time, past `malloc`'s
/// per-thread cache, and its first split made its shared header anew.
const SPARE_READ_BUFFERS: usize = 64;

/// Room a response head is written into at once (growing from nothing took a `malloc` and five
/// `realloc`s per connection).
const HEAD_WRITE: usize = 1024;

/// Write buffers of connections between two responses, kept per thread like the read buffers
/// (64 of ~1 KiB), so that an idle connection holds none.
const SPARE_WRITE_BUFFERS: usize = 64;

thread_local! {
    static SPARE_READ: Spares<BytesMut> = const { RefCell::new(Vec::new()) };
    static SPARE_WRITE: Spares<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A read buffer for a new connection: a finished connection's, else an empty one.
pub(crate) fn read_buffer() -> BytesMut {
    spare::take(&SPARE_READ).unwrap_or_default()
}

/// Keeps a finished connection's read buffer for [`read_buffer`] when nothing else holds its
/// memory any more and it is of the usual size (a connection that read a large head keeps its
/// larger buffer to itself).
fn recycle_read_buffer(mut buf: BytesMut) {
    buf.clear();
    if !buf.try_reclaim(HEAD_READ) || !(HEAD_READ..=2 * HEAD_READ).contains(&buf.capacity()) {
        return;
    }
    spare::keep(&SPARE_READ, buf, SPARE_READ_BUFFERS);
}

/// Room left in a request's header map for the forwarding headers the proxy adds, so that
/// adding them does not grow the map (here, and where the proxy makes a map of fields kept as
/// received).
pub(crate) const ADDED_HEADERS: usize = 8;
/// Largest body piece copied next to the head or the chunk framing into one write; a larger one
/// is written from where it is, in the same system call (vectored).
const COPY_UP_TO: usize = 8 * 1024;

/// How long a connection may wait.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Idle between requests (Traefik's `respondingTimeouts.idleTimeout`).
    pub idle: Duration,
    /// From the first byte of a request head to its end (within Traefik's `readTimeout`, which
    /// also bounds the body; a body is not bounded here).
    pub head: Duration,
}

impl Timeouts {
    /// Traefik's defaults.
    pub const TRAEFIK: Timeouts = Timeouts {
        idle: Duration::from_secs(180),
        head: Duration::from_secs(60),
    };
}

/// What answers a connection's requests.
pub trait Service {
    type Body: ResponseBody;

    /// Answers `req`, whose fields are `fields` when they came as received (its map is then
    /// empty).
    fn call(
        &self,
        req: Request<RequestBody>,
        fields: Option<Box<RawFields>>,
    ) -> impl Future<Output = Response<Self::Body>> + Send;
}

/// A response body, which may carry its response's fields as the origin sent them: they are
/// written before the response's header map (then empty, unless something was added).
pub trait ResponseBody: HttpBody<Data = Bytes, Error: std::fmt::Display> + Unpin {
    /// Those fields, taken off the body.
    fn take_fields(&mut self) -> Option<Box<RawFields>> {
        None
    }
}

/// The read side of a client connection, lent to a request body while the request has one.
pub enum ReadSide {
    Tcp(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for ReadSide {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadSide::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            ReadSide::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

/// A request body: none, read off an HTTP/1.1 connection, or an HTTP/2 stream's (hyper's).
pub enum RequestBody {
    Empty,
    H1(H1Body),
    H2(Incoming),
}

impl From<Incoming> for RequestBody {
    fn from(body: Incoming) -> Self {
        RequestBody::H2(body)
    }
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestBody::Empty => f.write_str("RequestBody::Empty"),
            RequestBody::H1(b) => f
                .debug_struct("RequestBody::H1")
                .field("decoder", &b.lent.as_ref().map(|l| l.decoder))
                .finish(),
            RequestBody::H2(_) => f.write_str("RequestBody::H2"),
        }
    }
}

/// The body of a request read from an HTTP/1.1 connection. It holds the connection's read side
/// while it is being read, and gives it back (into `slot`) when it ends or is dropped.
pub struct H1Body {
    lent: Option<Lent>,
    slot: Arc<Mutex<Option<Lent>>>,
}

/// What a request body borrows from its connection.
struct Lent {
    reader: ReadSide,
    buf: BytesMut,
    decoder: Decoder,
    /// The body could not be read to its end (the connection is not reused).
    broken: bool,
}

impl H1Body {
    fn give_back(&mut self) {
        if let Some(lent) = self.lent.take()
            && let Ok(mut slot) = self.slot.lock()
        {
            *slot = Some(lent);
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(lent) = &mut self.lent else {
            return Poll::Ready(None);
        };
        let decoded = ready!(poll_decode(
            &mut lent.reader,
            &mut lent.buf,
            &mut lent.decoder,
            cx
        ));
        let frame = match decoded {
            // More to come: the read side stays lent.
            Ok(Decoded::Data(data)) if lent.decoder != Decoder::Done => {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            Ok(Decoded::Data(data)) => Some(Ok(Frame::data(data))),
            Ok(Decoded::Trailers(trailers)) => Some(Ok(Frame::trailers(trailers))),
            Ok(Decoded::End | Decoded::NeedMore) => None,
            Err(e) => {
                lent.broken = true;
                Some(Err(e.into()))
            }
        };
        self.give_back();
        Poll::Ready(frame)
    }
}

impl Drop for H1Body {
    fn drop(&mut self) {
        self.give_back();
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::H1(body) => body.poll_frame(cx),
            RequestBody::H2(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::H1(body) => body
                .lent
                .as_ref()
                .is_none_or(|l| l.decoder == Decoder::Done),
            RequestBody::H2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::H1(body) => match body.lent.as_ref().map(|l| l.decoder) {
                None | Some(Decoder::Done) => SizeHint::with_exact(0),
                Some(Decoder::Length(n)) => SizeHint::with_exact(n),
                Some(_) => SizeHint::default(),
            },
            RequestBody::H2(body) => body.size_hint(),
        }
    }
}

/// Serves HTTP/1.1 requests on a connection until it ends: the client closes, asks to close,
/// idles too long, sends something unparseable, or a drain starts. `buf` holds what was read
/// already (the sniffed start). The caller closes the connection afterwards.
pub async fn serve<S: Service, W: AsyncWrite + Unpin>(
    reader: ReadSide,
    writer: &mut W,
    buf: BytesMut,
    service: &S,
    drain: &drain::Watch,
    timeouts: Timeouts,
) {
    let mut conn = Conn {
        reader: Some(reader),
        buf,
        out: WriteQueue::default(),
        unread_body: false,
        deadline: Deadline {
            at: Instant::now(),
            sleep: None,
        },
    };
    let mut draining = Draining {
        signal: pin!(drain.signaled()),
        seen: false,
    };
    loop {
        let Some(parsed) = next_head(&mut conn, &mut draining, timeouts, writer).await else {
            return;
        };
        // The request is made and the response started in plain code, and the request is
        // moved, never borrowed, here: the connection's future, which every connection writes
        // into its box, holds neither across a wait.
        let Call {
            request,
            fields,
            slot,
            asked,
            expects_continue,
        } = conn.call(parsed);
        if expects_continue && let Err(e) = writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await
        {
            tracing::debug!(error = %e, "connection ended while writing a response");
            return;
        }
        let response = service.call(request, fields).await;
        match conn.respond(response, slot, asked, writer, drain).await {
            Ok(true) => {}
            Ok(false) if conn.unread_body => {
                if let Some(reader) = &mut conn.reader {
                    linger(writer, reader).await;
                }
                return;
            }
            Ok(false) => return,
            Err(e) => {
                tracing::debug!(error = %e, "connection ended while writing a response");
                return;
            }
        }
    }
}

/// The connection's next request head; `None` when the connection is to end: closed, idle too
/// long, draining, or its head refused (answered here, as Go's server answers it). A function of
/// its own, so that the head's result, which the refusal's write would hold, is not part of the
/// connection's future at every wait.
async fn next_head<F: Future, W: AsyncWrite + Unpin>(
    conn: &mut Conn,
    draining: &mut Draining<'_, F>,
    timeouts: Timeouts,
    writer: &mut W,
) -> Option<Parsed> {
    let reader = conn.reader.as_mut()?;
    conn.deadline.at = Instant::now() + timeouts.idle;
    conn.out.release();
    let head = poll_fn(|cx| {
        poll_head(
            reader,
            &mut conn.buf,
            &mut conn.deadline,
            draining,
            timeouts,
            cx,
        )
    });
    match head.await {
        Ok(parsed) => parsed,
        Err(rejection) => {
            let _ = writer.write_all(rejection.response().as_bytes()).await;
            None
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        recycle_read_buffer(std::mem::take(&mut self.buf));
        self.out.release();
    }
}

struct Conn {
    /// `None` while a request body holds it, or once it is lost.
    reader: Option<ReadSide>,
    /// Read but not used yet.
    buf: BytesMut,
    /// What is to be written (kept for its allocations).
    out: WriteQueue,
    /// The last request's body was not read to its end (the client may still be sending it).
    unread_body: bool,
    deadline: Deadline,
}

impl Conn {
    /// The handler's request made from `parsed`, lent the read side if it has a body.
    fn call(&mut self, parsed: Parsed) -> Call {
        let Parsed {
            parts,
            fields,
            decoder,
            keep_alive,
            expects_continue,
        } = parsed;
        let (body, slot) = if decoder == Decoder::Done {
            (RequestBody::Empty, None)
        } else {
            let slot = Arc::new(Mutex::new(None));
            let lent = self.reader.take().map(|reader| Lent {
                reader,
                buf: std::mem::take(&mut self.buf),
                decoder,
                broken: false,
            });
            let body = H1Body {
                lent,
                slot: Arc::clone(&slot),
            };
            (RequestBody::H1(body), Some(slot))
        };
        let asked = Asked {
            method_head: parts.method == Method::HEAD,
            http10: parts.version == Version::HTTP_10,
            keep_alive,
        };
        Call {
            expects_continue: expects_continue && slot.is_some(),
            request: Request::from_parts(parts, body),
            fields,
            slot,
            asked,
        }
    }

    /// Writes the handler's `response` to the request `asked`, whose body (if any) was lent
    /// through `slot`; `Ok(true)`: the connection can take another request. The head is written
    /// into the queue before the future is made, which holds the response's body only.
    fn respond<'a, W: AsyncWrite + Unpin, B: ResponseBody + 'a>(
        &'a mut self,
        response: Response<B>,
        slot: Option<Arc<Mutex<Option<Lent>>>>,
        asked: Asked,
        writer: &'a mut W,
        drain: &drain::Watch,
    ) -> impl Future<Output = io::Result<bool>> + 'a {
        // A body the handler is done with is taken back now, so that the response can say
        // whether the connection goes on; one still held (an upload going on next to the
        // response) is taken back after it.
        let mut taken_back = slot.as_ref().and_then(|slot| self.take_back(slot));
        let asked = Asked {
            keep_alive: asked.keep_alive && !drain.is_signaled() && taken_back != Some(false),
            ..asked
        };
        let (mut body, framing, keep_alive) = write_head(&mut self.out, response, asked);
        async move {
            let reusable = if framing == Framing::Nothing {
                drop(body);
                self.out.flush(writer).await?;
                keep_alive
            } else {
                write_body(writer, &mut self.out, &mut body, framing, keep_alive).await?
            };
            if let Some(slot) = &slot
                && taken_back.is_none()
            {
                // Dropped by now, unless something still holds it (then the connection is not
                // reused).
                taken_back = Some(self.take_back(slot).unwrap_or(false));
            }
            Ok(reusable && taken_back != Some(false))
        }
    }

    /// Takes the read side back from a request body that ended or was dropped; `None` while the
    /// body is still held. `Some(true)`: the body was read to its end, or the rest of it had
    /// arrived and is skipped; `Some(false)`: the connection cannot take another request.
    fn take_back(&mut self, slot: &Mutex<Option<Lent>>) -> Option<bool> {
        let mut lent = slot.lock().ok()?.take()?;
        if lent.broken {
            return Some(false);
        }
        while lent.decoder != Decoder::Done {
            match lent.decoder.decode(&mut lent.buf) {
                Ok(Decoded::Data(_) | Decoded::Trailers(_)) => {}
                Ok(Decoded::End) => break,
                Ok(Decoded::NeedMore) => {
                    // The client may still be sending it.
                    self.unread_body = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let done = lent.decoder == Decoder::Done;
        self.reader = Some(lent.reader);
        self.buf = lent.buf;
        Some(done)
    }
}

/// How long, and how much of, a request body nobody read is discarded once the response is
/// written and the write side shut down, before the connection closes. Closing a socket with
/// bytes unread makes the kernel reset the connection, and a client still sending its body could
/// lose the response to that reset (a 404 or a 413 to an upload); Go's server likewise shuts its
/// write side and waits 500 ms.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 256 * 1024;

async fn linger<W: AsyncWrite + Unpin>(writer: &mut W, reader: &mut ReadSide) {
    if writer.shutdown().await.is_err() {
        return;
    }
    let mut scratch = BytesMut::with_capacity(16 * 1024);
    let mut left = LINGER_BYTES;
    let discard = async {
        while left > 0 {
            scratch.clear();
            match reader.read_buf(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, discard).await;
}

/// The drain, watched while a connection waits for a request.
struct Draining<'a, F> {
    signal: Pin<&'a mut F>,
    seen: bool,
}

impl<F: Future> Draining<'_, F> {
    fn poll(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.seen && self.signal.as_mut().poll(cx).is_ready() {
            self.seen = true;
        }
        self.seen
    }
}

/// A connection's timer. It is set once and moved only when it fires before the deadline
/// (which each request pushes back without touching the timer), so that a busy connection pays
/// a clock read per request, not a timer.
struct Deadline {
    at: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Deadline {
    /// Brings the deadline forward to `at` if that is sooner.
    fn tighten(&mut self, at: Instant) {
        if at >= self.at {
            return;
        }
        self.at = at;
        if let Some(sleep) = &mut self.sleep
            && sleep.deadline() > at
        {
            sleep.as_mut().reset(at);
        }
    }

    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let at = self.at;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            if Instant::now() >= self.at {
                return true;
            }
            sleep.as_mut().reset(self.at);
        }
    }
}

/// Waits for the next request head: `Ok(None)` when the client closed, idled too long, or a
/// drain started between requests. While nothing of the head has arrived, the connection holds
/// no read buffer: it takes one for each read and gives it back when the read has to wait, so
/// that an idle keep-alive connection costs its task and its socket, not 4 KiB more.
fn poll_head<F: Future>(
    reader: &mut ReadSide,
    buf: &mut BytesMut,
    deadline: &mut Deadline,
    draining: &mut Draining<'_, F>,
    timeouts: Timeouts,
    cx: &mut Context<'_>,
) -> Poll<Result<Option<Parsed>, Rejection>> {
    loop {
        if !buf.is_empty() {
            match parse_head(buf) {
                Ok(Some(parsed)) => return Poll::Ready(Ok(Some(parsed))),
                Ok(None) if buf.len() >= MAX_HEAD_BYTES => {
                    return Poll::Ready(Err(Rejection::TooLarge));
                }
                Ok(None) => deadline.tighten(Instant::now() + timeouts.head),
                Err(rejection) => return Poll::Ready(Err(rejection)),
            }
        }
        if buf.capacity() == 0 {
            *buf = read_buffer();
        }
        match poll_fill_up_to(reader, buf, HEAD_READ, cx) {
            Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Ok(None)),
            Poll::Ready(Ok(_)) => continue,
            Poll::Pending if buf.is_empty() => recycle_read_buffer(std::mem::take(buf)),
            Poll::Pending => {}
        }
        // Draining: a connection between requests closes; a request under way is served.
        if draining.poll(cx) && buf.is_empty() {
            return Poll::Ready(Ok(None));
        }
        if deadline.poll_expired(cx) {
            return Poll::Ready(Ok(None));
        }
        return Poll::Pending;
    }
}

/// A request head, parsed.
struct Parsed {
    parts: http::request::Parts,
    /// The fields as received, when the map (`parts.headers`, then empty) was not made.
    fields: Option<Box<RawFields>>,
    decoder: Decoder,
    /// The client lets the connection live on after this exchange.
    keep_alive: bool,
    expects_continue: bool,
}

/// A head refused before it reaches the handler, answered as Go's server answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rejection {
    BadRequest,
    TooLarge,
    UnsupportedTransferEncoding,
}

impl Rejection {
    /// Go's bytes: status line, a plain-text type, `Connection: close`, and the status as body.
    fn response(self) -> &'static str {
        match self {
            Rejection::BadRequest => {
                "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
                 Connection: close\r\n\r\n400 Bad Request"
            }
            Rejection::TooLarge => {
                "HTTP/1.1 431 Request Header Fields Too Large\r\n\
                 Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n\
                 431 Request Header Fields Too Large"
            }
            Rejection::UnsupportedTransferEncoding => {
                "HTTP/1.1 501 Not Implemented\r\nContent-Type: text/plain; charset=utf-8\r\n\
                 Connection: close\r\n\r\nUnsupported transfer encoding"
            }
        }
    }
}

/// Parses a complete request head off the front of `buf` (`None`: not complete yet).
fn parse_head(buf: &mut BytesMut) -> Result<Option<Parsed>, Rejection> {
    parse_head_as(buf, true)
}

/// [`parse_head`]; `received`: the fields may be kept as received (tests compare both ways).
fn parse_head_as(buf: &mut BytesMut, received: bool) -> Result<Option<Parsed>, Rejection> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let base = buf.as_ptr() as usize;
    let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut request,
        buf,
        &mut slots,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Rejection::TooLarge),
        Err(_) => return Err(Rejection::BadRequest),
    };
    let at = |s: &[u8]| s.as_ptr() as usize - base;
    let method = request.method.unwrap_or_default();
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| Rejection::BadRequest)?;
    let version = match request.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let target = request.path.unwrap_or_default();
    let target = (at(target.as_bytes()), target.len());
    let mut spans = FieldSpans::EMPTY;
    spans.record(base, request.headers);
    let head = take(buf, len);
    let uri =
        request_uri(head.slice(target.0..target.0 + target.1)).ok_or(Rejection::BadRequest)?;
    let mut parts = Request::new(()).into_parts().0;
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    // `Connection` goes no further than here, with the fields it names (Go's server takes
    // `Connection: close` away before the handler sees it, and Traefik's entry point the rest
    // before routing): read from the bytes and left out of the map. One that names fields
    // other than `close` and `keep-alive` is read from the map and taken out of it, here if it
    // says `close` (HTTP/1.1), else by the proxy's handler.
    let says = spans.connection(&head);
    // Most requests: their fields go on as received, and no map is made for them.
    if let Some(says) = says.filter(|_| received)
        && let Some(fields) = RawFields::of(&head, &spans, says, true)
    {
        let decoder = length_framing(fields.values(&header::CONTENT_LENGTH))?;
        return Ok(Some(Parsed {
            parts,
            fields: Some(fields),
            decoder,
            keep_alive: !says.close && (version == Version::HTTP_11 || says.keep_alive),
            expects_continue: false,
        }));
    }
    let mut headers = spans
        .header_map(&head, ADDED_HEADERS, says.map_or(0, |s| s.fields))
        .map_err(|_| Rejection::BadRequest)?;
    let (decoder, framing_closes) = request_framing(&mut headers, version)?;
    let says = says.unwrap_or_else(|| {
        let has = |token: &str| {
            list_elements(&headers, &header::CONNECTION).any(|t| t.eq_ignore_ascii_case(token))
        };
        let says = ConnectionSays {
            close: has("close"),
            keep_alive: has("keep-alive"),
            fields: 0,
        };
        if says.close && version == Version::HTTP_11 {
            crate::proxy::headers::remove_connection_named(&mut headers);
            headers.remove(header::CONNECTION);
        }
        says
    });
    let keep_alive =
        !framing_closes && !says.close && (version == Version::HTTP_11 || says.keep_alive);
    let expects_continue = version == Version::HTTP_11
        && headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    parts.headers = headers;
    Ok(Some(Parsed {
        parts,
        fields: None,
        decoder,
        keep_alive,
        expects_continue,
    }))
}

/// The request target as a URI. Go takes as they come some bytes `http::Uri` refuses (`` ` ``,
/// `<` and `>` in the path; `"`, `<` and `>` in the query) or reads as the start of a fragment
/// (`#`, which RFC 9112 does not allow in a target and Go keeps in the path or query): those
/// are percent-encoded here. Go escapes such a path when it forwards it (`/a%60b`), so the
/// backend gets the same path; a query Go forwards as it came, which `Uri` cannot hold, so the
/// backend gets those bytes escaped (the same value for any URL decoder).
fn request_uri(target: Bytes) -> Option<Uri> {
    let escape = |b: u8, in_query: bool| match b {
        b'#' | b'<' | b'>' => true,
        b'`' => !in_query,
        b'"' => in_query,
        _ => false,
    };
    let mut in_query = false;
    let clean = target.iter().all(|&b| {
        in_query |= b == b'?';
        !escape(b, in_query)
    });
    if clean {
        return Uri::from_maybe_shared(target).ok();
    }
    let mut escaped = Vec::with_capacity(target.len() + 16);
    let mut in_query = false;
    for &b in &target {
        in_query |= b == b'?';
        if escape(b, in_query) {
            escaped.extend_from_slice(format!("%{b:02X}").as_bytes());
        } else {
            escaped.push(b);
        }
    }
    Uri::from_maybe_shared(Bytes::from(escaped)).ok()
}

/// RFC 9112 §6.3 for a request: its body's framing, and whether that framing forces the
/// connection to close after it. No `Transfer-Encoding` and no `Content-Length`: no body.
fn request_framing(
    headers: &mut HeaderMap,
    version: Version,
) -> Result<(Decoder, bool), Rejection> {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        // An HTTP/1.0 message cannot be chunked (hyper refused those before).
        if version == Version::HTTP_10 {
            return Err(Rejection::BadRequest);
        }
        let mut codings = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|c| !c.is_empty());
        let chunked_alone = codings
            .next()
            .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
            && codings.next().is_none();
        if !chunked_alone {
            return Err(Rejection::UnsupportedTransferEncoding);
        }
        // With a Content-Length as well the message may be an attack: the length is dropped
        // (Go does the same), and the connection closes after it.
        let both = headers.remove(header::CONTENT_LENGTH).is_some();
        return Ok((Decoder::ChunkSize, both));
    }
    let values = headers.get_all(header::CONTENT_LENGTH);
    Ok((
        length_framing(values.iter().map(HeaderValue::as_bytes))?,
        false,
    ))
}

/// The framing `Content-Length` fields with these values give a request body (none: no body).
fn length_framing<'a>(values: impl Iterator<Item = &'a [u8]>) -> Result<Decoder, Rejection> {
    let mut length = None;
    for value in values {
        for part in value.split(|b| *b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                return Err(Rejection::BadRequest);
            }
            let n = std::str::from_utf8(part)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(Rejection::BadRequest)?;
            if length.is_some_and(|l| l != n) {
                return Err(Rejection::BadRequest);
            }
            length = Some(n);
        }
    }
    Ok(match length {
        None | Some(0) => Decoder::Done,
        Some(n) => Decoder::Length(n),
    })
}

/// What the response depends on in its request.
#[derive(Clone, Copy)]
struct Asked {
    method_head: bool,
    http10: bool,
    keep_alive: bool,
}

/// A request for the handler ([`Conn::call`]).
struct Call {
    request: Request<RequestBody>,
    fields: Option<Box<RawFields>>,
    /// Where the request's body gives the read side back (`None`: no body).
    slot: Option<Arc<Mutex<Option<Lent>>>>,
    asked: Asked,
    /// The client waits for `100 Continue` before it sends the body.
    expects_continue: bool,
}

/// How a response body goes on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// None (HEAD, 1xx, 204, 304).
    Nothing,
    Length(u64),
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client, length unknown).
    UntilClose,
}

/// Writes the head of `response` into `out`; returns its body, how the body goes on the wire and
/// whether the connection may take another request after it.
fn write_head<B: ResponseBody>(
    out: &mut WriteQueue,
    response: Response<B>,
    request: Asked,
) -> (B, Framing, bool) {
    let (parts, mut body) = response.into_parts();
    let fields = body.take_fields();
    let status = parts.status;
    let headers = &parts.headers;
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let declared = match &fields {
        Some(fields) => fields.forwarded_value(&header::CONTENT_LENGTH),
        None => headers
            .get(header::CONTENT_LENGTH)
            .map(HeaderValue::as_bytes),
    }
    .and_then(visible_ascii)
    .and_then(|v| v.trim().parse::<u64>().ok());
    let exact = body.size_hint().exact();
    let mut keep_alive = request.keep_alive
        && !list_elements(headers, &header::CONNECTION).any(|t| t.eq_ignore_ascii_case("close"));
    // Go adds the length of a body it has whole, except an empty one to a HEAD request.
    let added_length = match (declared, exact) {
        (None, Some(n)) if !bodiless && (!request.method_head || n > 0) => Some(n),
        _ => None,
    };
    let framing = if request.method_head || bodiless {
        Framing::Nothing
    } else if let Some(n) = declared.or(added_length) {
        Framing::Length(n)
    } else if !request.http10 {
        Framing::Chunked
    } else {
        keep_alive = false;
        Framing::UntilClose
    };

    out.clear();
    out.make_room();
    let wbuf = &mut out.buf;
    wbuf.extend_from_slice(if request.http10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    wbuf.extend_from_slice(status.as_str().as_bytes());
    wbuf.push(b' ');
    wbuf.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    wbuf.extend_from_slice(b"\r\n");
    if let Some(fields) = &fields {
        fields.write_forwarded(wbuf);
    }
    for (name, value) in headers {
        // The framing is this connection's (a `Transfer-Encoding` a middleware set would
        // contradict it).
        if name != header::TRANSFER_ENCODING {
            field(wbuf, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    let dated = fields
        .as_ref()
        .is_some_and(|f| f.forwarded_value(&header::DATE).is_some());
    if !dated && !headers.contains_key(header::DATE) {
        DATE.with_borrow_mut(|date| field(wbuf, b"date", date.now()));
    }
    if let Some(n) = added_length {
        // Formatted in place, not through a `String`.
        wbuf.extend_from_slice(b"content-length: ");
        let _ = write!(wbuf, "{n}\r\n");
    }
    if framing == Framing::Chunked {
        field(wbuf, b"transfer-encoding", b"chunked");
    }
    if !headers.contains_key(header::CONNECTION) {
        if !keep_alive && !request.http10 {
            field(wbuf, b"connection", b"close");
        } else if keep_alive && request.http10 {
            field(wbuf, b"connection", b"keep-alive");
        }
    }
    wbuf.extend_from_slice(b"\r\n");
    // The head's bytes are the upstream connection's read buffer: let it go before that
    // connection can be reused, so that its next read reuses the buffer.
    drop(parts);
    if let Some(fields) = fields {
        fields.recycle();
    }
    (body, framing, keep_alive)
}

/// Writes `body` after its head (in `out`) as `framing` says; `Ok(true)`: it ended cleanly and
/// the connection may take another request (`keep_alive`).
async fn write_body<W: AsyncWrite + Unpin, B: ResponseBody>(
    writer: &mut W,
    out: &mut WriteQueue,
    body: &mut B,
    framing: Framing,
    mut keep_alive: bool,
) -> io::Result<bool> {
    let mut sent = 0u64;
    loop {
        // What the body has ready joins what is waiting to be written, in one write; the
        // writing waits for the body only when there is nothing else to write.
        let frame = if out.is_empty() {
            poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
        } else if out.is_full() {
            out.flush(writer).await?;
            continue;
        } else {
            match poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    out.flush(writer).await?;
                    continue;
                }
            }
        };
        let data = match frame {
            None => break,
            Some(Err(e)) => {
                // The message cannot be completed: what was written goes, then the connection
                // closes (a chunked body without its last chunk, or a short length).
                tracing::debug!(error = %e, "response body failed");
                out.flush(writer).await?;
                return Ok(false);
            }
            // Trailers are not forwarded.
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                _ => continue,
            },
        };
        let data = match framing {
            Framing::Length(n) => {
                let room = n - sent;
                if data.len() as u64 > room {
                    // More than the length said: the excess is not sent, nor is the connection
                    // reused.
                    keep_alive = false;
                    data.slice(..room as usize)
                } else {
                    data
                }
            }
            _ => data,
        };
        sent += data.len() as u64;
        if framing == Framing::Chunked {
            chunk_size_line(&mut out.buf, data.len());
            out.push(data);
            out.buf.extend_from_slice(b"\r\n");
        } else {
            out.push(data);
        }
        if matches!(framing, Framing::Length(n) if sent >= n) || body.is_end_stream() {
            break;
        }
    }
    let complete = match framing {
        Framing::Chunked => {
            out.buf.extend_from_slice(b"0\r\n\r\n");
            true
        }
        Framing::Length(n) => sent == n,
        _ => true,
    };
    out.flush(writer).await?;
    Ok(keep_alive && complete && framing != Framing::UntilClose)
}

/// Bytes to write: a buffer for heads, framing and small body pieces, and the large pieces
/// (kept where they are, not copied) each with the place in that buffer it goes before. A flush
/// writes it all with as few vectored writes as the socket takes.
#[derive(Default)]
struct WriteQueue {
    buf: Vec<u8>,
    large: Vec<(usize, Bytes)>,
}

/// Most large pieces queued before a flush.
const MAX_LARGE: usize = 8;

impl WriteQueue {
    fn clear(&mut self) {
        self.buf.clear();
        self.large.clear();
    }

    /// Room for a usual response head: a spare buffer if the queue has given its own back.
    fn make_room(&mut self) {
        if self.buf.capacity() == 0
            && let Some(spare) = spare::take(&SPARE_WRITE)
        {
            self.buf = spare;
        }
        self.buf.reserve(HEAD_WRITE);
    }

    /// Between responses (everything written): gives the buffer back to the thread's spares if
    /// it is of the usual size; a larger one, grown by a chunked body, is freed.
    fn release(&mut self) {
        if !self.is_empty() {
            return;
        }
        let buf = std::mem::take(&mut self.buf);
        if (HEAD_WRITE..=4 * HEAD_WRITE).contains(&buf.capacity()) {
            spare::keep(&SPARE_WRITE, buf, SPARE_WRITE_BUFFERS);
        }
        // `large` keeps its room (at most `MAX_LARGE` entries, a few hundred bytes): freed here,
        // a connection streaming large bodies would allocate it again for every response.
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.large.is_empty()
    }

    /// Enough is queued that it should go before anything else joins it.
    fn is_full(&self) -> bool {
        self.large.len() >= MAX_LARGE || self.buf.len() >= 64 * 1024
    }

    fn push(&mut self, data: Bytes) {
        if data.len() <= COPY_UP_TO {
            self.buf.extend_from_slice(&data);
        } else {
            self.large.push((self.buf.len(), data));
        }
    }

    /// Writes everything queued and empties the queue. The future holds a count, not the
    /// pieces: it is part of every connection's.
    async fn flush<W: AsyncWrite + Unpin>(&mut self, writer: &mut W) -> io::Result<()> {
        let mut written = 0;
        poll_fn(|cx| self.poll_write_out(writer, &mut written, cx)).await?;
        self.clear();
        Ok(())
    }

    /// Writes what is queued from `written` bytes on, in as few writes as the socket takes.
    fn poll_write_out<W: AsyncWrite + Unpin>(
        &self,
        writer: &mut W,
        written: &mut usize,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let n = if self.large.is_empty() {
                let Some(rest) = self.buf.get(*written..).filter(|rest| !rest.is_empty()) else {
                    return Poll::Ready(Ok(()));
                };
                ready!(Pin::new(&mut *writer).poll_write(cx, rest))?
            } else {
                let mut slices = [IoSlice::new(&[]); 2 * MAX_LARGE + 1];
                let count = self.slices_from(*written, &mut slices);
                if count == 0 {
                    return Poll::Ready(Ok(()));
                }
                ready!(Pin::new(&mut *writer).poll_write_vectored(cx, &slices[..count]))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
    }

    /// The queued bytes in order, the first `skip` of them left out: the buffer up to the first
    /// large piece, that piece, and so on. Returns how many slices it filled.
    fn slices_from<'a>(
        &'a self,
        mut skip: usize,
        slices: &mut [IoSlice<'a>; 2 * MAX_LARGE + 1],
    ) -> usize {
        let mut count = 0;
        let mut add = |piece: &'a [u8]| {
            if skip >= piece.len() {
                skip -= piece.len();
            } else {
                slices[count] = IoSlice::new(&piece[skip..]);
                skip = 0;
                count += 1;
            }
        };
        let mut from = 0;
        for (at, data) in &self.large {
            add(&self.buf[from..*at]);
            add(data);
            from = *at;
        }
        add(&self.buf[from..]);
        count
    }
}

fn field(wbuf: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    wbuf.extend_from_slice(name);
    wbuf.extend_from_slice(b": ");
    wbuf.extend_from_slice(value);
    wbuf.extend_from_slice(b"\r\n");
}

/// The `Date` of responses, formatted once per second per thread.
struct DateCache {
    second: u64,
    text: Vec<u8>,
}

impl DateCache {
    fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if second != self.second || self.text.is_empty() {
            self.second = second;
            self.text = httpdate::fmt_http_date(now).into_bytes();
        }
        &self.text
    }
}

thread_local! {
    static DATE: RefCell<DateCache> = const {
        RefCell::new(DateCache {
            second: 0,
            text: Vec::new(),
        })
    };
}

#[cfg(test)]
mod tests;
