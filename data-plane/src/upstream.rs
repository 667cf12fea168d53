//! Upstream HTTP/1.1 connections, pooled per server authority and driven straight from the request
//! path: a request takes an idle connection (most recently used first) or dials a new one, sends
//! on it, and the connection goes back to the pool the moment the response body has been read to
//! its end. Unlike hyper-util's general-purpose client, nothing here races a checkout against a
//! dial, spawns a task per request to watch for the connection becoming idle again, or clones a
//! URI and a pool key per request: on one core those were a measurable part of a proxied request.
//!
//! Semantics follow Go's `http.Transport` as Traefik configures it: idle connections are kept
//! for 90 s, at most [`MAX_IDLE_PER_HOST`] per server, a dial times out after 30 s, a request
//! that an idle connection closed under it before it was written is retried on a new connection
//! (it was never sent, so this is safe for any method), and so is a replayable request (no body,
//! an idempotent method) that a connection idle for a while took and then closed without an
//! answer: its origin closed it for idleness as the request arrived.
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
use http_body_util::Empty;
use hyper::{
    body::{Body as HttpBody, Frame, Incoming, SizeHint},
    client::conn::http1,
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

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
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

impl UpstreamError {
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect(_))
    }
}

type Map<B> = HashMap<Authority, Vec<Idle<B>>, foldhash::fast::RandomState>;

/// The HTTP/1.1 connection pool, shared by every listener of a proxy (clones share it). `B`: the
/// request body type ([`RequestBody`] in the proxy).
pub struct Http1Pool<B = RequestBody> {
    idle: Arc<Mutex<Map<B>>>,
}

impl<B> Clone for Http1Pool<B> {
    fn clone(&self) -> Self {
        Self {
            idle: Arc::clone(&self.idle),
        }
    }
}

impl<B> Default for Http1Pool<B> {
    fn default() -> Self {
        Self {
            idle: Arc::default(),
        }
    }
}

impl<B> std::fmt::Debug for Http1Pool<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1Pool").finish_non_exhaustive()
    }
}

struct Idle<B> {
    sender: http1::SendRequest<B>,
    since: Instant,
}

impl<B> Http1Pool<B>
where
    B: HttpBody + From<Empty<Bytes>> + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Sends `req` (origin-form target, `Host` already set) to the server at `authority`.
    pub async fn send(
        &self,
        authority: &Authority,
        mut req: Request<B>,
    ) -> Result<Response<UpstreamBody<B>>, UpstreamError> {
        loop {
            let (mut sender, idle) = match self.checkout(authority).await {
                Some((sender, idle)) => (sender, Some(idle)),
                None => (connect(authority).await?, None),
            };
            // Only a connection that has idled for a while can be closed by its origin for
            // idleness just as this request reaches it; a copy for that case is made only then.
            let replay = idle
                .filter(|idle| *idle >= REPLAY_AFTER_IDLE)
                .and_then(|_| replay_copy(&req));
            match sender.try_send_request(req).await {
                Ok(response) => {
                    let give_back = GiveBack {
                        pool: self.clone(),
                        authority: authority.clone(),
                        sender,
                    };
                    return Ok(response.map(|body| UpstreamBody::pooled(body, give_back)));
                }
                Err(mut e) => match (e.take_message(), replay) {
                    // Not written: the idle connection was closed under us. A fresh one gets it.
                    (Some(back), _) if idle.is_some() => req = back,
                    (None, Some(copy)) if closed_without_answer(e.error()) => {
                        tracing::debug!(%authority, error = %e.error(), "replaying a request an idle connection closed");
                        req = copy;
                    }
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }

    /// The most recently used idle connection to `authority` that can take a request now, dropping
    /// the ones that closed or idled too long.
    async fn checkout(&self, authority: &Authority) -> Option<(http1::SendRequest<B>, Duration)> {
        let mut busy = Vec::new();
        let found = loop {
            let Some(Idle { sender, since }) = self.pop(authority) else {
                break None;
            };
            let idle = since.elapsed();
            if sender.is_closed() || idle > IDLE_TIMEOUT {
                continue;
            }
            if sender.is_ready() {
                break Some((sender, idle));
            }
            // Given back when its response body ended, a connection is made ready by its task
            // within a turn of the scheduler. One still busy after that is writing the rest of
            // an upload its origin answered early: it goes back to the pool rather than hold
            // this request up behind a slow client.
            tokio::task::yield_now().await;
            if sender.is_ready() {
                break Some((sender, idle));
            }
            if !sender.is_closed() {
                busy.push(Idle { sender, since });
            }
        };
        if !busy.is_empty()
            && let Ok(mut map) = self.idle.lock()
        {
            let list = map.entry(authority.clone()).or_default();
            // Oldest first, as they were.
            list.splice(0..0, busy.into_iter().rev());
        }
        found
    }

    fn pop(&self, authority: &Authority) -> Option<Idle<B>> {
        let mut map = self.idle.lock().ok()?;
        let list = map.get_mut(authority)?;
        let idle = list.pop();
        if list.is_empty() {
            map.remove(authority);
        }
        idle
    }
}

impl<B> Http1Pool<B> {
    fn give_back(&self, authority: Authority, sender: http1::SendRequest<B>) {
        if sender.is_closed() {
            return;
        }
        let Ok(mut map) = self.idle.lock() else {
            return;
        };
        let now = Instant::now();
        let list = map.entry(authority).or_default();
        // The oldest idle connections are at the front: expire them as new ones arrive, so a pool
        // that only ever grows back to the same size holds no dead connections.
        let expired = list
            .iter()
            .take_while(|i| now.duration_since(i.since) > IDLE_TIMEOUT || i.sender.is_closed())
            .count();
        list.drain(..expired);
        if list.len() < MAX_IDLE_PER_HOST {
            list.push(Idle { sender, since: now });
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

/// How long a connection must have been idle for a request sent on it to be replayed when the
/// origin closes it without an answer. Origins close idle connections after seconds (Node's
/// default is 5 s, nginx's 75 s); a connection in steady use is never closed for idleness, and a
/// request on it is not copied.
const REPLAY_AFTER_IDLE: Duration = if cfg!(test) {
    Duration::ZERO
} else {
    Duration::from_secs(1)
};

/// A copy of `req` to send again, when it is replayable as Go's `Transport` defines it: no body
/// and an idempotent method, or an `Idempotency-Key` header.
fn replay_copy<B: HttpBody + From<Empty<Bytes>>>(req: &Request<B>) -> Option<Request<B>> {
    let idempotent = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    ) || req.headers().contains_key("idempotency-key")
        || req.headers().contains_key("x-idempotency-key");
    if !idempotent || !req.body().is_end_stream() {
        return None;
    }
    let mut copy = Request::new(B::from(Empty::new()));
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

/// The connection ended after the request was written and before any answer (Go: "server
/// closed idle connection", or a reset).
fn closed_without_answer(error: &hyper::Error) -> bool {
    if error.is_incomplete_message() || error.is_canceled() {
        return true;
    }
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            );
        }
        source = e.source();
    }
    false
}

/// What the proxy sends upstream: the client's request body, or none once it is known to be
/// empty (so that a request without a body can be sent again, see [`replay_copy`]).
pub enum RequestBody {
    Client(Incoming),
    Empty,
}

impl From<Empty<Bytes>> for RequestBody {
    fn from(_: Empty<Bytes>) -> Self {
        RequestBody::Empty
    }
}

impl From<Incoming> for RequestBody {
    fn from(body: Incoming) -> Self {
        if body.is_end_stream() {
            RequestBody::Empty
        } else {
            RequestBody::Client(body)
        }
    }
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Client(body) => Pin::new(body).poll_frame(cx),
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Client(body) => body.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Client(body) => body.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// Dials `authority` (every resolved address in turn, each within [`CONNECT_TIMEOUT`]) and starts
/// the connection's task.
async fn connect<B>(authority: &Authority) -> Result<http1::SendRequest<B>, UpstreamError>
where
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
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
                let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(%addr, error = %e, "upstream connection ended with an error");
                    }
                });
                return Ok(sender);
            }
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => last = format!("{addr}: timed out after {CONNECT_TIMEOUT:?}"),
        }
    }
    Err(UpstreamError::Connect(last))
}

/// What returns a connection to its pool.
struct GiveBack<B> {
    pool: Http1Pool<B>,
    authority: Authority,
    sender: http1::SendRequest<B>,
}

/// A response body from upstream. A pooled HTTP/1.1 connection goes back to its pool once the
/// body has been read to its end; a body dropped before that closes the connection with it (the
/// rest of the message would otherwise still be on the wire).
pub struct UpstreamBody<B = RequestBody> {
    body: Incoming,
    give_back: Option<GiveBack<B>>,
}

impl<B> UpstreamBody<B> {
    fn pooled(body: Incoming, give_back: GiveBack<B>) -> Self {
        let mut body = Self {
            body,
            give_back: Some(give_back),
        };
        if body.body.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some(GiveBack {
            pool,
            authority,
            sender,
        }) = self.give_back.take()
        {
            pool.give_back(authority, sender);
        }
    }
}

impl<B> Drop for UpstreamBody<B> {
    fn drop(&mut self) {
        // hyper does not poll a body that says it has ended (a known length, all read).
        if self.body.is_end_stream() {
            self.release();
        }
    }
}

impl<B> From<Incoming> for UpstreamBody<B> {
    /// A body whose connection is not pooled here (h2c).
    fn from(body: Incoming) -> Self {
        Self {
            body,
            give_back: None,
        }
    }
}

impl<B> std::fmt::Debug for UpstreamBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("pooled", &self.give_back.is_some())
            .finish()
    }
}

impl<B> HttpBody for UpstreamBody<B> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(),
            // An error ends the connection: it is not given back.
            Poll::Ready(Some(Err(_))) => this.give_back = None,
            Poll::Ready(Some(Ok(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests;
