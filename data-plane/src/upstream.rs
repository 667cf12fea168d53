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
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Method, Request, Response, uri::Authority};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use tokio::{io::AsyncWriteExt, net::TcpStream};

use self::h1::{Conn, Decoded, Decoder, ReadError, RequestFraming};

mod h1;

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
}

impl UpstreamError {
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect(_))
    }
}

type Map = HashMap<Authority, Vec<Idle>, foldhash::fast::RandomState>;

/// The HTTP/1.1 connection pool, shared by every listener of a proxy (clones share it).
#[derive(Clone, Default)]
pub struct Http1Pool {
    idle: Arc<Mutex<Map>>,
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

/// How one attempt at a request ended without a response.
struct Failed {
    error: UpstreamError,
    /// Nothing of the request reached the origin in a usable form: any request may be sent again.
    unsent: bool,
    /// The connection ended after the whole request was written and before any answer.
    unanswered: bool,
}

impl Http1Pool {
    /// Sends `req` (origin-form target, `Host` already set) to the server at `authority`.
    pub async fn send<B>(
        &self,
        authority: &Authority,
        req: Request<B>,
    ) -> Result<Response<UpstreamBody>, UpstreamError>
    where
        B: HttpBody<Data = Bytes> + Unpin,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, mut body) = req.into_parts();
        let (head, framing) = h1::encode_head(&parts, body.is_end_stream(), authority.as_str());
        let replayable = framing == RequestFraming::None && replayable(&parts);
        loop {
            let (mut conn, idle) = match self.checkout(authority) {
                Some((conn, idle)) => (conn, Some(idle)),
                None => (connect(authority).await?, None),
            };
            match exchange(&mut conn, &head, framing, &mut body, &parts.method).await {
                Ok((head, keep_alive)) => {
                    let give_back = keep_alive.then(|| GiveBack {
                        pool: self.clone(),
                        authority: authority.clone(),
                    });
                    let decoder = Decoder::from(head.framing);
                    let body = UpstreamBody::h1(conn, decoder, give_back);
                    return Ok(Response::from_parts(head.parts, body));
                }
                Err(failed) => {
                    let Some(idle) = idle else {
                        return Err(failed.error);
                    };
                    // On a reused connection only: one the origin had closed before it was
                    // written to gets any request again; one it closed, unanswered, just as a
                    // request arrived after a while idle gets a replayable request again.
                    if failed.unsent {
                        continue;
                    }
                    if failed.unanswered && replayable && idle >= REPLAY_AFTER_IDLE {
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
        loop {
            let Idle { conn, since } = self.pop(authority)?;
            let idle = since.elapsed();
            if idle <= IDLE_TIMEOUT && !conn.closed_while_idle() {
                return Some((conn, idle));
            }
        }
    }

    fn pop(&self, authority: &Authority) -> Option<Idle> {
        let mut map = self.idle.lock().ok()?;
        let list = map.get_mut(authority)?;
        let idle = list.pop();
        if list.is_empty() {
            map.remove(authority);
        }
        idle
    }

    fn give_back(&self, authority: Authority, conn: Conn) {
        let Ok(mut map) = self.idle.lock() else {
            return;
        };
        let now = Instant::now();
        let list = map.entry(authority).or_default();
        // The oldest idle connections are at the front: expire them as new ones arrive, so a pool
        // that only ever grows back to the same size holds no dead connections.
        let expired = list
            .iter()
            .take_while(|i| {
                now.duration_since(i.since) > IDLE_TIMEOUT || i.conn.closed_while_idle()
            })
            .count();
        list.drain(..expired);
        if list.len() < MAX_IDLE_PER_HOST {
            list.push(Idle { conn, since: now });
        }
    }

    /// Idle connections held to `authority` (tests).
    pub fn idle_count(&self, authority: &Authority) -> usize {
        self.idle
            .lock()
            .map(|map| map.get(authority).map_or(0, Vec::len))
            .unwrap_or(0)
    }
}

/// Writes the request on `conn` and reads the response head. While a body is being sent the
/// origin may answer early (a 413, say): the answer wins, the rest of the body is not sent and
/// the connection is not reused (Go's Transport does not reuse one whose request was not fully
/// written either). Returns the head and whether the connection can be reused after its body.
async fn exchange<B>(
    conn: &mut Conn,
    head: &[u8],
    framing: RequestFraming,
    body: &mut B,
    method: &Method,
) -> Result<(h1::Head, bool), Failed>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if let Err(e) = conn.stream.write_all(head).await {
        return Err(Failed {
            error: UpstreamError::Write(e),
            unsent: true,
            unanswered: false,
        });
    }
    let Conn { stream, buf } = conn;
    if framing != RequestFraming::None {
        let (mut reader, mut writer) = stream.split();
        tokio::select! {
            biased;
            early = h1::read_head(&mut reader, buf, method) => {
                return match early {
                    Ok(head) => Ok((head, false)),
                    Err(e) => Err(Failed { error: e.into(), unsent: false, unanswered: false }),
                };
            }
            sent = send_body(&mut writer, body, framing) => match sent {
                Ok(()) => {}
                // The origin may have answered, then closed: an answer is read below.
                Err(UpstreamError::Write(e)) => {
                    return match h1::read_head(&mut reader, buf, method).await {
                        Ok(head) => Ok((head, false)),
                        Err(_) => Err(Failed { error: UpstreamError::Write(e), unsent: false, unanswered: false }),
                    };
                }
                Err(error) => return Err(Failed { error, unsent: false, unanswered: false }),
            },
        }
    }
    match h1::read_head(stream, buf, method).await {
        Ok(head) => {
            let keep_alive = head.keep_alive;
            Ok((head, keep_alive))
        }
        Err(ReadError::ClosedBeforeResponse) => Err(Failed {
            error: ReadError::ClosedBeforeResponse.into(),
            unsent: false,
            unanswered: true,
        }),
        Err(e) => Err(Failed {
            error: e.into(),
            unsent: false,
            unanswered: false,
        }),
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
fn replayable(parts: &http::request::Parts) -> bool {
    matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    ) || parts.headers.contains_key("idempotency-key")
        || parts.headers.contains_key("x-idempotency-key")
}

/// Sends the request body, framed.
async fn send_body<B>(
    writer: &mut tokio::net::tcp::WriteHalf<'_>,
    body: &mut B,
    framing: RequestFraming,
) -> Result<(), UpstreamError>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| UpstreamError::RequestBody(e.into()))?;
        // Trailers are not forwarded (nor were they by hyper's client).
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        let written = if framing == RequestFraming::Chunked {
            writer.write_all(&h1::chunk(&data)).await
        } else {
            writer.write_all(&data).await
        };
        written.map_err(UpstreamError::Write)?;
    }
    if framing == RequestFraming::Chunked {
        writer
            .write_all(h1::LAST_CHUNK)
            .await
            .map_err(UpstreamError::Write)?;
    }
    Ok(())
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
/// side asks for it; the connection goes back to its pool the moment the body has ended, and a
/// body dropped before that closes the connection with it (the rest of the message would
/// otherwise still be on the wire).
pub struct UpstreamBody {
    inner: Inner,
}

enum Inner {
    H1 {
        /// `None` once the body has ended.
        conn: Option<Conn>,
        decoder: Decoder,
        /// `None`: the connection is closed at the end.
        give_back: Option<GiveBack>,
    },
    /// From hyper-util's client (h2c), which pools its own connections.
    H2(Incoming),
}

impl UpstreamBody {
    fn h1(conn: Conn, decoder: Decoder, give_back: Option<GiveBack>) -> Self {
        let mut body = Self {
            inner: Inner::H1 {
                conn: Some(conn),
                decoder,
                give_back,
            },
        };
        // Nothing to read (a known empty length): hyper will not poll for it.
        if decoder == Decoder::Done {
            body.finish();
        }
        body
    }

    /// The body has ended: its connection goes back to the pool if it may, else it closes.
    fn finish(&mut self) {
        if let Inner::H1 {
            conn, give_back, ..
        } = &mut self.inner
            && let Some(conn) = conn.take()
            && let Some(GiveBack { pool, authority }) = give_back.take()
            // Bytes after the response: the origin is confused, the connection is not reused.
            && conn.buf.is_empty()
        {
            pool.give_back(authority, conn);
        }
    }
}

impl From<Incoming> for UpstreamBody {
    /// A body whose connection is not pooled here (h2c).
    fn from(body: Incoming) -> Self {
        Self {
            inner: Inner::H2(body),
        }
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Inner::H1 {
                decoder, give_back, ..
            } => f
                .debug_struct("UpstreamBody")
                .field("decoder", decoder)
                .field("pooled", &give_back.is_some())
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
        let this = self.get_mut();
        let (conn, decoder) = match &mut this.inner {
            Inner::H2(body) => return Pin::new(body).poll_frame(cx).map_err(Into::into),
            Inner::H1 { conn, decoder, .. } => (conn, decoder),
        };
        let Some(c) = conn.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = match h1::poll_decode(c, decoder, cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(polled) => polled,
        };
        match polled {
            Ok(Decoded::Data(data)) => {
                if *decoder == Decoder::Done {
                    this.finish();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Ok(Decoded::Trailers(trailers)) => {
                this.finish();
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            Ok(Decoded::End | Decoded::NeedMore) => {
                this.finish();
                Poll::Ready(None)
            }
            Err(e) => {
                // The connection is broken: closed, never given back.
                *conn = None;
                Poll::Ready(Some(Err(e.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::H1 { decoder, .. } => *decoder == Decoder::Done,
            Inner::H2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::H1 {
                decoder: Decoder::Length(n),
                ..
            } => SizeHint::with_exact(*n),
            Inner::H1 {
                decoder: Decoder::Done,
                ..
            } => SizeHint::with_exact(0),
            Inner::H1 { .. } => SizeHint::default(),
            Inner::H2(body) => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests;
