//! Upstream HTTP/1.1 connections, pooled per server authority and driven straight from the request
//! path: a request takes an idle connection (most recently used first) or dials a new one, writes
//! itself on it and reads the response head in its own task ([`h1`]); the response body is read
//! from the socket as the downstream connection asks for it, and the connection goes back to the
//! pool the moment that body has ended. There is no task per connection, no channel between the
//! request and its connection, and no check-out race: on one core those (hyper's client) were a
//! measurable part of a proxied request.
//!
//! Semantics follow Go's `http.Transport` as Traefik configures it: idle connections are kept
//! for 90 s, at most [`MAX_IDLE_PER_HOST`] per server, a dial times out after 30 s, a request
//! that an idle connection closed under it before it was written is retried on a new connection
//! (it was never sent, so this is safe for any method), and so is a replayable request (no body,
//! an idempotent method) that a connection idle for a while took and then closed without an
//! answer: its origin closed it for idleness as the request arrived. A connection whose request
//! body was cut short by an early answer is not reused.
//!
//! Must not: hold the pool's lock across an `.await`, or serve anything but HTTP/1.1 (h2c uses
//! hyper-util's client, which multiplexes).

use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use bytes::BytesMut;
use http::{Method, Request, Response, uri::Authority};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use tokio::{
    io::AsyncWriteExt,
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
};

use self::h1::{Conn, Decoded, Decoder, ReadError, RequestFraming};

pub(crate) mod h1;

/// Traefik's default `dialTimeout`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Go's `http.DefaultTransport` `IdleConnTimeout`, which Traefik keeps.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Traefik's default `maxIdleConnsPerHost`.
pub const MAX_IDLE_PER_HOST: usize = 200;

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect: {0}")]
    Connect(String),
    #[error("write request: {0}")]
    Write(std::io::Error),
    #[error("read response: {0}")]
    Read(#[from] ReadError),
    #[error("request body: {0}")]
    RequestBody(Box<dyn std::error::Error + Send + Sync>),
    #[error("{0}")]
    InvalidRequest(&'static str),
}

impl UpstreamError {
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect(_))
    }
}

type Map = HashMap<PoolKey, Vec<Idle>, foldhash::fast::RandomState>;

/// A server's authority as the pool's key, hashed and compared as text. `Authority` hashes
/// byte by byte (it compares without case), which cost more than the rest of a checkout; an
/// authority written in two cases only makes two pools.
struct PoolKey(Authority);

impl std::hash::Hash for PoolKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.as_str().hash(state);
    }
}

impl PartialEq for PoolKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for PoolKey {}

impl std::borrow::Borrow<str> for PoolKey {
    fn borrow(&self) -> &str {
        self.0.as_str()
    }
}

/// The HTTP/1.1 connection pool, shared by every listener of a proxy (clones share it).
#[derive(Clone, Default)]
pub struct Http1Pool {
    idle: Arc<Mutex<Map>>,
    sweeping: Arc<AtomicBool>,
}

/// How often idle connections are checked for closing, besides when their server's connections
/// are taken or given back.
const SWEEP_EVERY: Duration = Duration::from_secs(15);

/// Drops every idle connection that idled too long or that its origin closed.
fn sweep(idle: &Mutex<Map>, now: Instant) {
    let dropped: Vec<Idle> = {
        let Ok(mut map) = idle.lock() else {
            return;
        };
        let mut dropped = Vec::new();
        map.retain(|_, list| {
            let (keep, gone): (Vec<Idle>, Vec<Idle>) = std::mem::take(list)
                .into_iter()
                .partition(|i| i.usable(now));
            *list = keep;
            dropped.extend(gone);
            !list.is_empty()
        });
        dropped
    };
    drop(dropped);
}

impl std::fmt::Debug for Http1Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1Pool").finish_non_exhaustive()
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

impl Idle {
    /// Still fit for a request at `now`: not idle too long, not closed by its origin.
    fn usable(&self, now: Instant) -> bool {
        now.duration_since(self.since) <= IDLE_TIMEOUT && !self.conn.closed_while_idle()
    }
}

/// How one attempt at a request ended without a response.
struct Failed {
    error: UpstreamError,
    /// Nothing of the request reached the origin in a usable form: any request may be sent again.
    unsent: bool,
    /// The connection ended after the whole request was written and before any answer.
    unanswered: bool,
}

/// A request written for an HTTP/1.1 server ([`Http1Pool::prepare`]), to be sent with
/// [`Http1Pool::send_prepared`]. What the wait for the origin holds: the request's parts, fields
/// and forwarding fields were needed only to write its head, and a request future that kept them
/// across that wait was ~2 KB larger (it is written once per request and once more per
/// connection).
pub(crate) struct Prepared<B> {
    /// The request head, written into the buffer of the connection taken for it (if any).
    head: Vec<u8>,
    framing: RequestFraming,
    body: Option<B>,
    method: Method,
    /// It may be sent again after a connection idle for a while closed it unanswered: no body,
    /// and an idempotent method or an idempotency key.
    replayable: bool,
    /// The response's fields as received ([`FieldsAs::Received`]).
    raw: bool,
    /// The idle connection taken when the head was written.
    first: Option<(Conn, Duration)>,
}

impl Http1Pool {
    /// Sends `req` (origin-form target, `Host` already set) to the server at `authority`.
    pub async fn send<B>(
        &self,
        authority: &Authority,
        req: Request<B>,
    ) -> Result<Response<UpstreamBody>, UpstreamError>
    where
        B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    {
        let mut prepared =
            self.prepare(authority, req, None, &h1::AddedFields::NONE, FieldsAs::Map)?;
        self.send_prepared(authority, &mut prepared).await
    }

    /// Takes an idle connection to `authority` (if there is one) and writes the head of `req`
    /// into its buffer: the fields `received` (if its map holds none), then its map's, then
    /// `added`. The response's fields will be handed over as `fields` asks.
    pub(crate) fn prepare<B: HttpBody>(
        &self,
        authority: &Authority,
        req: Request<B>,
        received: Option<&h1::RawFields>,
        added: &h1::AddedFields,
        fields: FieldsAs,
    ) -> Result<Prepared<B>, UpstreamError> {
        let (parts, body) = req.into_parts();
        let mut first = self.checkout(authority);
        // The buffer goes on with the connection that carries the request.
        let mut head = match &mut first {
            Some((conn, _)) => std::mem::take(&mut conn.out),
            None => Vec::new(),
        };
        let encoded = h1::encode_head_into(
            &mut head,
            &parts,
            received,
            added,
            body.is_end_stream(),
            authority.as_str(),
        );
        let Some(framing) = encoded else {
            // Not written to: it serves the next request (a middleware could set such a
            // length; the servers refuse one from a client).
            if let Some((mut conn, _)) = first {
                head.clear();
                conn.out = head;
                self.give_back(authority.clone(), conn);
            }
            return Err(UpstreamError::InvalidRequest("invalid Content-Length"));
        };
        Ok(Prepared {
            head,
            framing,
            replayable: framing == RequestFraming::None && replayable(&parts, received),
            body: Some(body),
            method: parts.method,
            raw: fields == FieldsAs::Received,
            first,
        })
    }

    /// Sends `prepared` to the server at `authority` on the connection taken for it, else on an
    /// idle one, else on a new one, and reads the response head.
    pub(crate) async fn send_prepared<B>(
        &self,
        authority: &Authority,
        prepared: &mut Prepared<B>,
    ) -> Result<Response<UpstreamBody>, UpstreamError>
    where
        B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    {
        loop {
            let (conn, idle) = match prepared.first.take().or_else(|| self.checkout(authority)) {
                Some((conn, idle)) => (conn, Some(idle)),
                // Boxed: rare, and the request future is moved once per request.
                None => (Box::pin(connect(authority)).await?, None),
            };
            let exchanged = exchange(
                conn,
                &prepared.head,
                prepared.framing,
                &mut prepared.body,
                &prepared.method,
                prepared.raw,
            )
            .await;
            match exchanged {
                Ok(Exchanged {
                    head: response,
                    mut reader,
                    upload,
                }) => {
                    if let Reader::Whole(conn) = &mut reader
                        && prepared.head.capacity() <= h1::KEEP_OUT
                    {
                        conn.out = std::mem::take(&mut prepared.head);
                    }
                    let head = response;
                    let give_back = head.keep_alive.then(|| GiveBack {
                        pool: self.clone(),
                        authority: authority.clone(),
                    });
                    let decoder = Decoder::from(head.framing);
                    let mut body = UpstreamBody::h1(reader, decoder, give_back, upload);
                    body.fields = head.fields;
                    return Ok(Response::from_parts(head.parts, body));
                }
                Err(failed) => {
                    let Some(idle) = idle else {
                        return Err(failed.error);
                    };
                    // On a reused connection only: one the origin had closed before it was
                    // written to gets any request again (its body was not touched); one it
                    // closed, unanswered, just as a request arrived after a while idle gets a
                    // replayable request (no body) again.
                    if failed.unsent {
                        continue;
                    }
                    if failed.unanswered && prepared.replayable && idle >= REPLAY_AFTER_IDLE {
                        tracing::debug!(%authority, error = %failed.error, "replaying a request an idle connection closed");
                        continue;
                    }
                    return Err(failed.error);
                }
            }
        }
    }

    /// The most recently used idle connection to `authority` that is still open, dropping the
    /// ones that closed or idled too long.
    fn checkout(&self, authority: &Authority) -> Option<(Conn, Duration)> {
        let now = Instant::now();
        loop {
            let idle = self.pop(authority)?;
            if idle.usable(now) {
                return Some((idle.conn, now.duration_since(idle.since)));
            }
        }
    }

    /// The most recently given back connection to `authority`. An emptied list stays in the
    /// map (the sweep removes it), so that a busy server's list is not dropped and made again
    /// on every request.
    fn pop(&self, authority: &Authority) -> Option<Idle> {
        self.idle.lock().ok()?.get_mut(authority.as_str())?.pop()
    }

    /// Pools `conn` unless its server already has [`MAX_IDLE_PER_HOST`] idle connections. Dead
    /// and expired ones are dropped by the sweep and at checkout, not here on the request path.
    fn give_back(&self, authority: Authority, conn: Conn) {
        let refused = {
            let Ok(mut map) = self.idle.lock() else {
                return;
            };
            let list = map.entry(PoolKey(authority)).or_default();
            if list.len() < MAX_IDLE_PER_HOST {
                list.push(Idle {
                    conn,
                    since: Instant::now(),
                });
                None
            } else {
                Some(conn)
            }
        };
        // Closed after the lock is released (a close is a system call).
        drop(refused);
        self.start_sweeper();
    }

    /// Starts, once per pool, the task that closes connections that idled too long or that
    /// their origin closed, for every server, including servers no request goes to any more.
    fn start_sweeper(&self) {
        // A load first: this runs on every give-back, the swap once.
        if self.sweeping.load(Ordering::Relaxed) || self.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        // Outside a runtime (nothing in the proxy gives a connection back there) there is
        // nothing to spawn on: the next give-back tries again.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.sweeping.store(false, Ordering::Relaxed);
            return;
        };
        let idle = Arc::downgrade(&self.idle);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                // Ends with the pool.
                let Some(idle) = idle.upgrade() else {
                    return;
                };
                sweep(&idle, Instant::now());
            }
        });
    }

    /// Idle connections held to `authority` (tests).
    pub fn idle_count(&self, authority: &Authority) -> usize {
        self.idle
            .lock()
            .map(|map| map.get(authority.as_str()).map_or(0, Vec::len))
            .unwrap_or(0)
    }
}

/// What an exchange leaves for the response body: the read side and, when the origin answered
/// before the request body was all sent, the upload still going.
struct Exchanged {
    head: h1::Head,
    reader: Reader,
    upload: Option<Upload>,
}

/// The rest of a request body being sent; gives the write side back when done.
type Upload = Pin<Box<dyn Future<Output = (Result<(), UpstreamError>, OwnedWriteHalf)> + Send>>;

/// Where a response body is read from.
enum Reader {
    /// The whole connection (it can go back to the pool).
    Whole(Conn),
    /// The read side of a connection whose write side an upload holds.
    Half(OwnedReadHalf, BytesMut),
}

/// Writes the request on `conn` and reads the response head. A request body is sent while the
/// origin may already answer (a 413, or a streaming echo): the answer is returned at once and
/// the upload goes on next to the response body ([`UpstreamBody`] drives both); the connection
/// is reused only if both end (Go's Transport likewise).
async fn exchange<B>(
    mut conn: Conn,
    head: &[u8],
    framing: RequestFraming,
    body: &mut Option<B>,
    method: &Method,
    raw: bool,
) -> Result<Exchanged, Failed>
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let failed = |error, unanswered| Failed {
        error,
        unsent: false,
        unanswered,
    };
    if let Err(e) = conn.stream.write_all(head).await {
        return Err(Failed {
            error: UpstreamError::Write(e),
            unsent: true,
            unanswered: false,
        });
    }
    if framing != RequestFraming::None
        && let Some(body) = body.take()
    {
        // Boxed: the request future of every proxied request is moved at least once, and
        // most requests have no body.
        match Box::pin(upload(conn, body, framing, method, raw)).await? {
            Uploaded::Answered(exchanged) => return Ok(exchanged),
            Uploaded::Sent(whole) => conn = whole,
        }
    }
    match h1::read_head(&mut conn.stream, &mut conn.buf, method, raw).await {
        Ok(head) => Ok(Exchanged {
            head,
            reader: Reader::Whole(conn),
            upload: None,
        }),
        Err(ReadError::ClosedBeforeResponse) => {
            Err(failed(ReadError::ClosedBeforeResponse.into(), true))
        }
        Err(e) => Err(failed(e.into(), false)),
    }
}

/// How [`upload`] ended.
enum Uploaded {
    /// The origin answered before the body was all sent (or while it could not be).
    Answered(Exchanged),
    /// The body was sent; the response head is to be read.
    Sent(Conn),
}

/// Sends the request body on `conn` while watching for an early answer.
async fn upload<B>(
    conn: Conn,
    body: B,
    framing: RequestFraming,
    method: &Method,
    raw: bool,
) -> Result<Uploaded, Failed>
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let failed = |error| Failed {
        error,
        unsent: false,
        unanswered: false,
    };
    let Conn {
        stream,
        mut buf,
        out,
    } = conn;
    let (mut reader, writer) = stream.into_split();
    let mut upload: Upload = Box::pin(send_body(writer, body, framing));
    tokio::select! {
        biased;
        early = h1::read_head(&mut reader, &mut buf, method, raw) => {
            let head = early.map_err(|e| failed(e.into()))?;
            let reader = Reader::Half(reader, buf);
            Ok(Uploaded::Answered(Exchanged { head, reader, upload: Some(upload) }))
        }
        (sent, writer) = &mut upload => match sent {
            Ok(()) => {
                let stream = reader
                    .reunite(writer)
                    .map_err(|e| failed(UpstreamError::Write(std::io::Error::other(e))))?;
                Ok(Uploaded::Sent(Conn::with_buffers(stream, buf, out)))
            }
            // The origin may have answered, then closed: an answer is read below.
            Err(UpstreamError::Write(e)) => {
                let mut head = h1::read_head(&mut reader, &mut buf, method, raw)
                    .await
                    .map_err(|_| failed(UpstreamError::Write(e)))?;
                head.keep_alive = false;
                let reader = Reader::Half(reader, buf);
                Ok(Uploaded::Answered(Exchanged { head, reader, upload: None }))
            }
            Err(error) => Err(failed(error)),
        },
    }
}

/// How long a connection must have been idle for a request sent on it to be replayed when the
/// origin closes it without an answer. Origins close idle connections after seconds (Node's
/// default is 5 s, nginx's 75 s); a request on a connection in steady use is never replayed.
const REPLAY_AFTER_IDLE: Duration = if cfg!(test) {
    Duration::ZERO
} else {
    Duration::from_secs(1)
};

/// Whether a request without a body may be sent again, as Go's `Transport` decides: an
/// idempotent method, or an `Idempotency-Key` header.
fn replayable(parts: &http::request::Parts, received: Option<&h1::RawFields>) -> bool {
    static KEYS: [http::HeaderName; 2] = [
        http::HeaderName::from_static("idempotency-key"),
        http::HeaderName::from_static("x-idempotency-key"),
    ];
    matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    ) || KEYS.iter().any(|key| {
        parts.headers.contains_key(key)
            || received.is_some_and(|fields| fields.forwarded_count(key) > 0)
    })
}

/// Sends the request body, framed; gives the write side back.
async fn send_body<B>(
    mut writer: OwnedWriteHalf,
    body: B,
    framing: RequestFraming,
) -> (Result<(), UpstreamError>, OwnedWriteHalf)
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let sent = pump(&mut writer, body, framing).await;
    (sent, writer)
}

async fn pump<B>(
    writer: &mut OwnedWriteHalf,
    mut body: B,
    framing: RequestFraming,
) -> Result<(), UpstreamError>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let mut sent = 0u64;
    while framing.length().is_none_or(|n| sent < n)
        && let Some(frame) = body.frame().await
    {
        let frame = frame.map_err(|e| UpstreamError::RequestBody(e.into()))?;
        // Trailers are not forwarded (nor were they by hyper's client).
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        let written = match framing {
            RequestFraming::Length(n) if sent > n => {
                return Err(UpstreamError::InvalidRequest(
                    "request body longer than its Content-Length",
                ));
            }
            RequestFraming::Chunked => writer.write_all(&h1::chunk(&data)).await,
            _ => writer.write_all(&data).await,
        };
        written.map_err(UpstreamError::Write)?;
    }
    match framing {
        RequestFraming::Length(n) if sent < n => Err(UpstreamError::InvalidRequest(
            "request body shorter than its Content-Length",
        )),
        RequestFraming::Chunked => writer
            .write_all(h1::LAST_CHUNK)
            .await
            .map_err(UpstreamError::Write),
        _ => Ok(()),
    }
}

/// Dials `authority`: every resolved address in turn, each within [`CONNECT_TIMEOUT`].
async fn connect(authority: &Authority) -> Result<Conn, UpstreamError> {
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = authority.port_u16().unwrap_or(80);
    let addrs: Vec<SocketAddr> = match host.parse() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| UpstreamError::Connect(format!("resolve {host}: {e}")))?
            .collect(),
    };
    let mut last = format!("{host} resolves to no address");
    for addr in addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(Conn::new(stream));
            }
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => last = format!("{addr}: timed out after {CONNECT_TIMEOUT:?}"),
        }
    }
    Err(UpstreamError::Connect(last))
}

/// Where a connection goes back to once its response body has ended.
struct GiveBack {
    pool: Http1Pool,
    authority: Authority,
}

/// A response body from upstream. An HTTP/1.1 body is read from its connection as the downstream
/// side asks for it; the connection goes back to its pool the moment the body has ended (and the
/// request body, if the origin answered before it was all sent, has been sent too), and a body
/// dropped before that closes the connection with it (the rest of the message would otherwise
/// still be on the wire).
pub struct UpstreamBody {
    inner: Inner,
    /// The response's fields as received, when they were asked for that way
    /// ([`FieldsAs::Received`]); the response's header map is then empty.
    fields: Option<Box<h1::RawFields>>,
}

/// How [`Http1Pool::send_as`] hands a response's header fields over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldsAs {
    /// In the response's header map.
    Map,
    /// As received, on the body ([`UpstreamBody::take_fields`]), where the head allows it
    /// (else in the map): for a response that goes on to an HTTP/1.1 client untouched.
    Received,
}

enum Inner {
    H1(H1Body),
    /// From hyper-util's client (h2c), which pools its own connections.
    H2(Incoming),
}

struct H1Body {
    /// `None` once the body has ended.
    reader: Option<Reader>,
    decoder: Decoder,
    /// `None`: the connection is closed at the end.
    give_back: Option<GiveBack>,
    /// The request body still being sent.
    upload: Option<Upload>,
    /// The write side, once that upload is done.
    writer: Option<OwnedWriteHalf>,
}

impl H1Body {
    /// Drives the upload, if one is still going; the write side is kept when it completes.
    fn poll_upload(&mut self, cx: &mut Context<'_>) {
        if let Some(upload) = &mut self.upload
            && let Poll::Ready((sent, writer)) = upload.as_mut().poll(cx)
        {
            self.upload = None;
            match sent {
                Ok(()) => self.writer = Some(writer),
                Err(e) => {
                    tracing::debug!(error = %e, "request body not sent in full after the response head");
                    self.give_back = None;
                }
            }
        }
    }

    /// The body has ended: its connection goes back to the pool if it may, else it closes.
    fn finish(&mut self) {
        let (Some(reader), Some(GiveBack { pool, authority })) =
            (self.reader.take(), self.give_back.take())
        else {
            return;
        };
        let conn = match reader {
            Reader::Whole(conn) => conn,
            // Whole again only if the upload has ended (else it is cut short, the connection
            // closed).
            Reader::Half(read, buf) => match self.writer.take().map(|w| read.reunite(w)) {
                Some(Ok(stream)) => Conn::with_buffers(stream, buf, Vec::new()),
                _ => return,
            },
        };
        // Bytes after the response: the origin is confused, the connection is not reused.
        if conn.buf.is_empty() {
            pool.give_back(authority, conn);
        }
    }
}

impl UpstreamBody {
    fn h1(
        reader: Reader,
        decoder: Decoder,
        give_back: Option<GiveBack>,
        upload: Option<Upload>,
    ) -> Self {
        let mut body = H1Body {
            reader: Some(reader),
            decoder,
            give_back,
            upload,
            writer: None,
        };
        // Nothing to read (a known empty length): hyper will not poll for it.
        if decoder == Decoder::Done {
            body.finish();
        }
        Self {
            inner: Inner::H1(body),
            fields: None,
        }
    }

    /// The response's fields as received, if they were kept that way.
    pub fn take_fields(&mut self) -> Option<Box<h1::RawFields>> {
        self.fields.take()
    }
}

impl From<Incoming> for UpstreamBody {
    /// A body whose connection is not pooled here (h2c).
    fn from(body: Incoming) -> Self {
        Self {
            inner: Inner::H2(body),
            fields: None,
        }
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Inner::H1(body) => f
                .debug_struct("UpstreamBody")
                .field("decoder", &body.decoder)
                .field("pooled", &body.give_back.is_some())
                .field("uploading", &body.upload.is_some())
                .finish(),
            Inner::H2(_) => f.debug_struct("UpstreamBody").finish_non_exhaustive(),
        }
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let body = match &mut self.get_mut().inner {
            Inner::H2(body) => return Pin::new(body).poll_frame(cx).map_err(Into::into),
            Inner::H1(body) => body,
        };
        body.poll_upload(cx);
        let polled = match &mut body.reader {
            None => return Poll::Ready(None),
            Some(Reader::Whole(conn)) => {
                h1::poll_decode(&mut conn.stream, &mut conn.buf, &mut body.decoder, cx)
            }
            Some(Reader::Half(read, buf)) => h1::poll_decode(read, buf, &mut body.decoder, cx),
        };
        let Poll::Ready(polled) = polled else {
            return Poll::Pending;
        };
        match polled {
            Ok(Decoded::Data(data)) => {
                if body.decoder == Decoder::Done {
                    body.finish();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Ok(Decoded::Trailers(trailers)) => {
                body.finish();
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            Ok(Decoded::End | Decoded::NeedMore) => {
                body.finish();
                Poll::Ready(None)
            }
            Err(e) => {
                // The connection is broken: closed, never given back.
                body.reader = None;
                Poll::Ready(Some(Err(e.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::H1(body) => body.decoder == Decoder::Done,
            Inner::H2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::H1(body) => match body.decoder {
                Decoder::Length(n) => SizeHint::with_exact(n),
                Decoder::Done => SizeHint::with_exact(0),
                _ => SizeHint::default(),
            },
            Inner::H2(body) => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests;
