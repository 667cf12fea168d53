//! Entry-point listeners, reconciled per snapshot in two phases: `prepare` binds every new address
//! (a bind failure fails the apply → NACK, nothing live touched), `commit` starts the new accept
//! loops and stops accepting on removed ones. Stopping a listener never cuts its connections:
//! they finish on their own, and only process shutdown drains them (with a deadline).

use std::{
    collections::HashMap,
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use arc_swap::ArcSwap;
use bytes::BytesMut;
use http::{Request, Response};
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use switchyard_shared::drain;
use tokio::{io::AsyncWriteExt, net::TcpListener, sync::watch};

use crate::{
    proxy::{Body, Handler, Peer, Upstreams},
    spare::FutureBoxes,
    state::Table,
    tls::TlsState,
    upstream::{FieldsAs, h1::RawFields},
};

pub mod h1;
mod sniff;

pub use h1::RequestBody;

/// Parses an entry-point address (`:80`, `0.0.0.0:80`, `[::1]:8080`, `localhost:80`).
pub fn parse_listen_address(address: &str) -> Result<SocketAddr, String> {
    let address = address.trim();
    let address = address.strip_suffix("/tcp").unwrap_or(address);
    if let Some(port) = address.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("`{address}`: invalid port"))?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
    }
    if let Some(port) = address.strip_prefix("localhost:") {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("`{address}`: invalid port"))?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    address
        .parse()
        .map_err(|_| format!("`{address}` is not an IP:port listen address"))
}

/// Builds the request handler of an entry point: `(entry point name, local port)`.
pub type MakeHandler = Arc<dyn Fn(&str, u16) -> Handler + Send + Sync>;

struct Active {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
}

/// Listeners bound but not yet accepting.
pub struct Prepared {
    new: Vec<(String, SocketAddr, TcpListener)>,
    keep: Vec<String>,
}

/// The set of live entry-point listeners.
pub struct Listeners {
    active: HashMap<String, Active>,
    make_handler: MakeHandler,
    /// Taken at shutdown so the drain can complete.
    drain: Option<drain::Watch>,
}

impl Listeners {
    pub fn new(make_handler: MakeHandler, drain: drain::Watch) -> Self {
        Self {
            active: HashMap::new(),
            make_handler,
            drain: Some(drain),
        }
    }

    /// Listeners whose handlers serve from `table`, sharing one set of upstream clients (the
    /// proxy's).
    pub fn serving(table: &Arc<ArcSwap<Table>>, drain: drain::Watch) -> Self {
        let table = Arc::clone(table);
        let upstreams = Upstreams::new();
        Self::new(
            Arc::new(move |entry_point: &str, port: u16| Handler {
                table: Arc::clone(&table),
                entry_point: Arc::from(entry_point),
                upstreams: upstreams.clone(),
                port,
            }),
            drain,
        )
    }

    /// Binds what `desired` adds or moves. Nothing live changes.
    pub async fn prepare(&self, desired: &[(String, SocketAddr)]) -> Result<Prepared, String> {
        let mut prepared = Prepared {
            new: Vec::new(),
            keep: Vec::new(),
        };
        for (name, addr) in desired {
            match self.active.get(name) {
                Some(a) if a.addr == *addr || (addr.port() == 0 && a.addr.ip() == addr.ip()) => {
                    prepared.keep.push(name.clone());
                }
                _ => {
                    let listener = TcpListener::bind(addr)
                        .await
                        .map_err(|e| format!("entry point {name}: cannot listen on {addr}: {e}"))?;
                    let bound = listener.local_addr().unwrap_or(*addr);
                    prepared.new.push((name.clone(), bound, listener));
                }
            }
        }
        Ok(prepared)
    }

    /// Starts the prepared listeners and stops accepting on the others.
    pub fn commit(&mut self, prepared: Prepared) {
        let wanted: Vec<&String> = prepared
            .keep
            .iter()
            .chain(prepared.new.iter().map(|(n, _, _)| n))
            .collect();
        let removed: Vec<String> = self
            .active
            .keys()
            .filter(|k| !wanted.contains(k))
            .cloned()
            .collect();
        for name in removed {
            if let Some(a) = self.active.remove(&name) {
                tracing::info!(entry_point = %name, addr = %a.addr, "entry point removed; no longer accepting");
                let _ = a.stop.send(true);
            }
        }
        let Some(drain) = self.drain.clone() else {
            return; // shutting down
        };
        for (name, addr, listener) in prepared.new {
            if let Some(old) = self.active.remove(&name) {
                let _ = old.stop.send(true);
            }
            let (stop, stop_rx) = watch::channel(false);
            let handler = (self.make_handler)(&name, addr.port());
            tracing::info!(entry_point = %name, %addr, "listening");
            tokio::spawn(accept_loop(
                listener,
                Arc::new(handler),
                stop_rx,
                drain.clone(),
            ));
            self.active.insert(name, Active { addr, stop });
        }
    }

    /// `name=addr` of every live listener, sorted.
    pub fn describe(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .active
            .iter()
            .map(|(n, a)| format!("{n}={}", a.addr))
            .collect();
        out.sort();
        out
    }

    /// Stops accepting everywhere (process shutdown).
    pub fn stop_all(&mut self) {
        self.drain = None;
        for (_, a) in self.active.drain() {
            let _ = a.stop.send(true);
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    handler: Arc<Handler>,
    mut stop: watch::Receiver<bool>,
    drain: drain::Watch,
) {
    let plain = Arc::new(FutureBoxes::new(KEPT_CONNECTION_BOXES));
    loop {
        // Asked at every turn: a listener that always has a connection waiting never polls
        // `changed` below.
        if !matches!(stop.has_changed(), Ok(false)) {
            return;
        }
        let (stream, peer) = tokio::select! {
            // The accept first: when a connection is waiting, the stop's waker is not
            // registered and taken off again for it.
            biased;
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        // One `Arc` per connection, not a copy of the handler (its upstream clients are large).
        let handler = Arc::clone(&handler);
        let drain = drain.clone();
        // Each connection is its own task. tokio moves a task's future whole when spawning it
        // and again when it ends, so what is spawned is a box (the TLS handshake and stream,
        // with rustls inline, and the HTTP connections are several KB): see
        // `the_connection_future_and_task_are_small`.
        match tls_to_sniff(&handler) {
            None => {
                let served = plain.boxed(serve_plain(stream, handler, peer, drain));
                tokio::spawn(plain_connection(served, Arc::clone(&plain)));
            }
            // The peek and its timer (~350 bytes) would be in every plain connection's future.
            Some(tls) => {
                tokio::spawn(Box::pin(serve_sniffed(stream, tls, handler, peer, drain)));
            }
        }
    }
}

/// Plain connections' futures kept boxed for the next connections, per accept loop: one is ~4.5
/// KB, past what `malloc` keeps per thread, so a box of its own cost a slow `malloc` and `free`
/// per connection.
const KEPT_CONNECTION_BOXES: usize = 64;

/// A connection's TLS state if it must be sniffed for a ClientHello: only where TLS routers
/// exist (Traefik does the same), so plain-only entry points pay nothing.
fn tls_to_sniff(handler: &Handler) -> Option<Arc<TlsState>> {
    let table = handler.table.load();
    let has_tls_routes = table
        .entry_point(&handler.entry_point)
        .is_some_and(|t| !t.tls.is_empty());
    // Pending ACME TLS-ALPN-01 challenges: any entry point may be the CA's port 443.
    table
        .tls
        .clone()
        .filter(|t| has_tls_routes || t.has_challenges())
}

/// The task of a plain connection: its boxed future, whose box is kept once it is done.
async fn plain_connection<F: Future<Output = ()>>(
    mut served: Pin<Box<F>>,
    boxes: Arc<FutureBoxes<F>>,
) {
    served.as_mut().await;
    boxes.keep(served);
}

/// A connection on an entry point with TLS routers: TLS if it starts with a ClientHello, else
/// plain.
async fn serve_sniffed(
    stream: tokio::net::TcpStream,
    tls: Arc<TlsState>,
    handler: Arc<Handler>,
    peer: SocketAddr,
    drain: drain::Watch,
) {
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE_RECORD => {
            Box::pin(serve_tls(stream, tls, handler, peer, drain)).await;
        }
        Ok(Ok(1)) => Box::pin(serve_plain(stream, handler, peer, drain)).await,
        _ => {}
    }
}

/// A plain connection: HTTP/1.1 (ours) or h2c (hyper's). It is closed without shutting its
/// write side down first: the close sends the same FIN, one system call fewer.
async fn serve_plain(
    stream: tokio::net::TcpStream,
    handler: Arc<Handler>,
    peer: SocketAddr,
    drain: drain::Watch,
) {
    let (mut reader, writer) = stream.into_split();
    let mut buf = h1::read_buffer();
    match sniff_start(&mut reader, &mut buf, peer, &drain).await {
        Some(sniff::Protocol::Http1) => {
            let reader = h1::ReadSide::Tcp(reader);
            let mut writer = NodelayOnceWritten::new(writer);
            serve_h1(reader, &mut writer, buf, handler, peer, false, &drain).await;
            writer.half.forget();
        }
        Some(sniff::Protocol::H2c) => {
            let Ok(stream) = reader.reunite(writer) else {
                return;
            };
            // HTTP/2 writes frames of many streams as they come.
            let _ = stream.set_nodelay(true);
            let io = sniff::Replay::new(buf.freeze(), TokioIo::new(stream), sniff::Ending::Close);
            serve_h2(io, handler, peer, false, drain).await;
        }
        None => {}
    }
}

/// [`connection`] once it starts with a TLS ClientHello.
async fn serve_tls(
    stream: tokio::net::TcpStream,
    tls: Arc<TlsState>,
    handler: Arc<Handler>,
    peer: SocketAddr,
    drain: drain::Watch,
) {
    // The handshake alone writes more than once.
    let _ = stream.set_nodelay(true);
    let stream = match handshake(stream, &tls, &handler.entry_point).await {
        Ok(stream) => stream,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
    };
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut buf = h1::read_buffer();
    match sniff_start(&mut reader, &mut buf, peer, &drain).await {
        Some(sniff::Protocol::Http1) => {
            let reader = h1::ReadSide::Tls(reader);
            serve_h1(reader, &mut writer, buf, handler, peer, true, &drain).await;
            // TLS ends with its close_notify.
            let _ = writer.shutdown().await;
        }
        Some(sniff::Protocol::H2c) => {
            let stream = reader.unsplit(writer);
            let io =
                sniff::Replay::new(buf.freeze(), TokioIo::new(stream), sniff::Ending::Shutdown);
            serve_h2(io, handler, peer, true, drain).await;
        }
        None => {}
    }
}

/// The write side of a plain HTTP/1.1 connection, which turns Nagle's algorithm off before any
/// write that follows a successful one: Nagle only holds data back while earlier data is
/// unacknowledged, so the first write goes out at once either way, and a connection answered
/// once and closed makes no `setsockopt` (nginx sets `TCP_NODELAY` on kept-alive connections
/// only, and where it streams).
struct NodelayOnceWritten {
    half: tokio::net::tcp::OwnedWriteHalf,
    /// Something was written.
    wrote: bool,
    /// `TCP_NODELAY` was asked for.
    set: bool,
}

impl NodelayOnceWritten {
    fn new(half: tokio::net::tcp::OwnedWriteHalf) -> Self {
        Self {
            half,
            wrote: false,
            set: false,
        }
    }

    /// Before each write: off with Nagle once something went out.
    fn before_write(&mut self) {
        if self.wrote && !self.set {
            self.set = true;
            let _ = self.half.as_ref().set_nodelay(true);
        }
    }

    fn after_write(&mut self, polled: &Poll<std::io::Result<usize>>) {
        if matches!(polled, Poll::Ready(Ok(n)) if *n > 0) {
            self.wrote = true;
        }
    }
}

impl tokio::io::AsyncWrite for NodelayOnceWritten {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.before_write();
        let polled = Pin::new(&mut self.half).poll_write(cx, buf);
        self.after_write(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.before_write();
        let polled = Pin::new(&mut self.half).poll_write_vectored(cx, bufs);
        self.after_write(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.half.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.half).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.half).poll_shutdown(cx)
    }
}

/// Reads the start of a connection into `buf` and tells its protocol; `None` when the
/// connection ended before its first request, or a drain started first (a connection that has
/// not said anything yet is simply closed).
async fn sniff_start<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    peer: SocketAddr,
    drain: &drain::Watch,
) -> Option<sniff::Protocol> {
    let sniffed = tokio::select! {
        sniffed = sniff::sniff(reader, buf) => sniffed,
        _ = drain.signaled() => return None,
    };
    sniffed
        .inspect_err(
            |e| tracing::debug!(%peer, error = %e, "connection ended before its first request"),
        )
        .ok()
        .flatten()
}

/// HTTP/1.1 (our server) on a connection whose start is in `buf`.
async fn serve_h1<W: tokio::io::AsyncWrite + Unpin>(
    reader: h1::ReadSide,
    writer: &mut W,
    buf: BytesMut,
    handler: Arc<Handler>,
    peer: SocketAddr,
    tls: bool,
    drain: &drain::Watch,
) {
    let service = Served {
        handler,
        peer: Peer::new(peer),
        tls,
    };
    h1::serve(reader, writer, buf, &service, drain, h1::Timeouts::TRAEFIK).await;
}

/// The handler of one HTTP/1.1 connection's requests.
struct Served {
    handler: Arc<Handler>,
    peer: Peer,
    tls: bool,
}

impl h1::Service for Served {
    type Body = Body;

    fn call(
        &self,
        req: Request<RequestBody>,
        fields: Option<Box<RawFields>>,
    ) -> impl Future<Output = Response<Body>> + Send {
        self.handler
            .serve(req, fields, &self.peer, self.tls, FieldsAs::Received)
    }
}

/// Bound on sniffing and the TLS handshake, so idle sockets cannot pile up.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// First byte of a TLS handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

async fn handshake(
    stream: tokio::net::TcpStream,
    tls: &TlsState,
    entry_point: &str,
) -> Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, String> {
    let acceptor =
        tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
    let start = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor)
        .await
        .map_err(|_| "timed out reading the ClientHello".to_owned())?
        .map_err(|e| e.to_string())?;
    let sni = start.client_hello().server_name().map(str::to_owned);
    if crate::acme_challenge::wants_tls_alpn(start.client_hello().alpn())
        && let Some(config) = tls.challenge_config(sni.as_deref())
    {
        tracing::info!(sni = ?sni, "answering an ACME TLS-ALPN-01 challenge");
        let mut stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, start.into_stream(config))
            .await
            .map_err(|_| "TLS handshake timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        // The validation is the handshake itself; nothing is served on this connection.
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
        return Err("ACME TLS-ALPN-01 challenge answered".to_owned());
    }
    let config = tls
        .config_for(entry_point, sni.as_deref())
        .ok_or_else(|| "no TLS configuration".to_owned())?;
    tokio::time::timeout(HANDSHAKE_TIMEOUT, start.into_stream(config))
        .await
        .map_err(|_| "TLS handshake timed out".to_owned())?
        .map_err(|e| e.to_string())
}

/// An HTTP/2 connection with prior knowledge (also over TLS, as hyper-util's auto builder did),
/// served by hyper. A drain lets the requests in flight finish, then sends GOAWAY.
async fn serve_h2<I>(io: I, handler: Arc<Handler>, peer: SocketAddr, tls: bool, drain: drain::Watch)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    // The handler and the client address, shared by the connection's requests (an `Arc` clone
    // per request).
    let connection = Arc::new((handler, Peer::new(peer)));
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let connection = Arc::clone(&connection);
        async move {
            let (handler, peer) = &*connection;
            let req = req.map(RequestBody::from);
            Ok::<_, Infallible>(handler.serve(req, None, peer, tls, FieldsAs::Map).await)
        }
    });
    let mut conn =
        Box::pin(http2::Builder::new(TokioExecutor::new()).serve_connection(io, service));
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = drain.signaled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use tokio::io::AsyncReadExt;

    /// Nagle only holds data back while earlier data is unacknowledged: the first write needs
    /// no `TCP_NODELAY`, every later one does (plain and vectored alike).
    #[tokio::test]
    async fn nagle_goes_off_before_the_second_write() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (stream, _) = listener.accept().await.expect("accept");
        let (_reader, half) = stream.into_split();
        let mut writer = NodelayOnceWritten::new(half);
        let nodelay = |w: &NodelayOnceWritten| w.half.as_ref().nodelay().expect("TCP_NODELAY");
        assert!(!nodelay(&writer), "an accepted socket starts with Nagle on");
        writer.write_all(b"").await.expect("empty write");
        writer.write_all(b"first ").await.expect("first write");
        assert!(
            !nodelay(&writer),
            "set before the first write that went out"
        );
        let second = [std::io::IoSlice::new(b"sec"), std::io::IoSlice::new(b"ond")];
        let n = writer.write_vectored(&second).await.expect("second write");
        assert!(nodelay(&writer), "not set before the second write");
        let mut got = vec![0u8; 6 + n];
        client.read_exact(&mut got).await.expect("read");
        assert_eq!(&got[..6], b"first ");
    }

    /// A handler with no routes.
    fn empty_handler(port: u16) -> Arc<Handler> {
        Arc::new(Handler {
            table: Arc::new(arc_swap::ArcSwap::from_pointee(
                crate::state::Table::default(),
            )),
            entry_point: Arc::from("web"),
            upstreams: crate::proxy::Upstreams::new(),
            port,
        })
    }

    /// The accept loop polls `accept` first; a stop is still seen while connections keep
    /// waiting, and none of them is accepted after it.
    #[tokio::test]
    async fn a_stop_is_seen_while_connections_wait() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let mut waiting = Vec::new();
        for _ in 0..4 {
            waiting.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
        }
        let (stop, stop_rx) = watch::channel(false);
        stop.send(true).expect("the loop's receiver is alive");
        let (_signal, drain) = drain::channel();
        let looping = accept_loop(listener, empty_handler(addr.port()), stop_rx, drain);
        tokio::time::timeout(Duration::from_secs(10), looping)
            .await
            .expect("the accept loop ended");
        // Never accepted, they are reset with the listener; an accepted one would wait for its
        // request (the drain has not started) and the read would not end.
        for mut client in waiting {
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_secs(10), client.read(&mut byte))
                .await
                .expect("the connection was accepted and kept");
            assert!(
                matches!(read, Ok(0) | Err(_)),
                "read {read:?} from a connection the stopped loop should not have taken"
            );
        }
    }

    /// A plain connection's future, which every connection writes into its box and idles in
    /// between requests, and the task that holds the box. The future: the request and the
    /// response are made in plain code and only what a wait needs is held across it (5 008
    /// bytes in a test build when the handler's request future held the request in its several
    /// forms and the response was written by an `async` function holding the response and its
    /// pieces, 2 024 then, 1 760 since the next head is read in a function of its own).
    #[tokio::test]
    async fn the_connection_future_and_task_are_small() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (stream, peer) = listener.accept().await.expect("accept");
        let (_signal, drain) = drain::channel();
        let served = serve_plain(stream, empty_handler(addr.port()), peer, drain);
        let size = std::mem::size_of_val(&served);
        assert!(size <= 2_000, "the connection future is {size} bytes");
        let boxes = Arc::new(FutureBoxes::new(1));
        let task = plain_connection(boxes.boxed(served), boxes);
        // 10 400 bytes when the TLS states and hyper's connection were inline (every connection
        // then copied that much when spawned and again when it ended), 792 with the TLS sniff's
        // peek and timer inline, 136 with the TLS decision in the task, two pointers' worth since.
        let size = std::mem::size_of_val(&task);
        assert!(size <= 64, "the connection task is {size} bytes");
    }

    #[test]
    fn listen_address_forms() {
        assert_eq!(
            parse_listen_address(":80").unwrap().to_string(),
            "0.0.0.0:80"
        );
        assert_eq!(
            parse_listen_address("localhost:81").unwrap().to_string(),
            "127.0.0.1:81"
        );
        assert_eq!(
            parse_listen_address("[::1]:82/tcp").unwrap().to_string(),
            "[::1]:82"
        );
        assert!(parse_listen_address("example.com:80").is_err());
        assert!(parse_listen_address(":http").is_err());
    }
}
