//! The request handler: load the current table once, match, run the middlewares, pick a server,
//! forward with a pooled client, and turn every failure into a response in one place
//! ([`error_response`], after linkerd's synthetic responses). No lock is taken and the table is
//! loaded once per request.

use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{
    HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version,
    header::{self, HOST},
    uri::{PathAndQuery, Scheme},
};
use http_body_util::{Either, Full};
use hyper_util::{
    client::legacy::{Client, ResponseFuture, connect::HttpConnector},
    rt::TokioExecutor,
};

use crate::{
    listener::{RequestBody, h1::ResponseBody},
    middleware::{Action, Middleware, split_host_port},
    router::{Headers, RequestView, forwarded_path, routing_path},
    state::{Redirect, Route, Table, Upstream},
    upstream::{
        CONNECT_TIMEOUT, FieldsAs, Http1Pool, Prepared, UpstreamBody,
        h1::{AddedFields, RawFields},
    },
};

pub(crate) mod headers;

pub use headers::Peer;
use headers::{forwarded_fields, strip_hop_by_hop, take_connection};

/// The body of every response the proxy sends.
pub type Body = Either<UpstreamBody, Full<Bytes>>;

impl ResponseBody for Body {
    fn take_fields(&mut self) -> Option<Box<RawFields>> {
        match self {
            Either::Left(body) => body.take_fields(),
            Either::Right(_) => None,
        }
    }
}

/// What went wrong, mapped to a status by [`error_response`].
#[derive(Debug)]
pub enum ProxyError {
    /// No router matched (404).
    NoRoute,
    /// The path has an invalid escape, or the request target is not a path (400).
    BadPath,
    /// An HTTP/1.1 request without a `Host` header (400), as Go's server answers.
    MissingHost,
    /// Several `Host` headers (400), as Go's server answers.
    SeveralHosts,
    /// stripPrefix left `.` or `..` segments in the path (400, Traefik ≥ 3.7.3).
    UnsafePath,
    /// The service has no server (503).
    NoServer,
    /// The upstream refused, reset or sent garbage (502).
    Upstream(String),
}

/// The one place errors become responses. Bodies and headers are Traefik's, byte for byte (the
/// conformance suite compares them): Go's `http.NotFound` for 404, Go's server for a request it
/// cannot parse (400), Traefik's status text for 502.
pub fn error_response(error: &ProxyError) -> Response<Body> {
    const TEXT_PLAIN: &str = "text/plain; charset=utf-8";
    let (status, text, content_type, nosniff): (StatusCode, &'static str, Option<&str>, bool) =
        match error {
            ProxyError::NoRoute => (
                StatusCode::NOT_FOUND,
                "404 page not found\n",
                Some(TEXT_PLAIN),
                true,
            ),
            ProxyError::BadPath | ProxyError::SeveralHosts => (
                StatusCode::BAD_REQUEST,
                "400 Bad Request",
                Some(TEXT_PLAIN),
                false,
            ),
            ProxyError::MissingHost => (
                StatusCode::BAD_REQUEST,
                "400 Bad Request: missing required Host header",
                Some(TEXT_PLAIN),
                false,
            ),
            ProxyError::UnsafePath => (
                StatusCode::BAD_REQUEST,
                "Bad Request\n",
                Some(TEXT_PLAIN),
                true,
            ),
            ProxyError::NoServer => (
                StatusCode::SERVICE_UNAVAILABLE,
                "no available server\n",
                Some(TEXT_PLAIN),
                true,
            ),
            ProxyError::Upstream(_) => (StatusCode::BAD_GATEWAY, "Bad Gateway", None, false),
        };
    let mut response = Response::new(Either::Right(Full::new(Bytes::from_static(
        text.as_bytes(),
    ))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if let Some(content_type) = content_type {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    if nosniff {
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
    }
    response
}

/// Pooled upstream connections: HTTP/1.1 in our own pool, h2c (multiplexed) through hyper-util's
/// client.
#[derive(Clone, Debug)]
pub struct Upstreams {
    http1: Http1Pool,
    h2c: Client<HttpConnector, RequestBody>,
}

impl Upstreams {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.enforce_http(false);
        let h2c = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .pool_idle_timeout(crate::upstream::IDLE_TIMEOUT)
            .build(connector);
        Self {
            http1: Http1Pool::default(),
            h2c,
        }
    }
}

impl Default for Upstreams {
    fn default() -> Self {
        Self::new()
    }
}

/// Per-listener context.
#[derive(Clone, Debug)]
pub struct Handler {
    pub table: Arc<ArcSwap<Table>>,
    pub entry_point: Arc<str>,
    pub upstreams: Upstreams,
    /// The local port. (`X-Forwarded-Port` does not use it: Traefik sends the port of the
    /// request host, else the scheme's default.)
    pub port: u16,
}

impl Handler {
    /// Answers `req` from `peer`; never fails (errors become responses). `tls`: the connection
    /// was TLS-terminated here (TLS routers apply, `X-Forwarded-Proto: https`). `fields`: how
    /// the HTTP/1.1 origin's response fields may be handed over ([`FieldsAs::Received`] for an
    /// HTTP/1.1 client, whose server writes them). `received`: the request's fields as the client
    /// sent them, its map then empty (an HTTP/1.x client's request, [`RawFields`]); they go on
    /// that way unless something needs a map after all.
    ///
    /// Routing, the middlewares and the upstream request's head are done before the future is
    /// made, so that it holds only what the wait for the origin needs ([`Forward`]): an `async`
    /// function keeps its arguments and every local in scope at an `.await` for its whole life,
    /// and the request in its several forms made it ~3.3 KB, written once per request and once
    /// more per connection (~1 KB now).
    pub fn serve<'a>(
        &'a self,
        req: Request<RequestBody>,
        received: Option<Box<RawFields>>,
        peer: &Peer,
        tls: bool,
        fields: FieldsAs,
    ) -> impl Future<Output = Response<Body>> + Send + use<'a> {
        let mut next = match self.prepare(req, received, peer, tls, fields) {
            Ok(next) => next,
            Err(e) => Next::Answer(error_response(&e)),
        };
        async move {
            match next {
                Next::Answer(response) => response,
                Next::Forward(ref mut forward) => forward.send(&self.upstreams).await,
            }
        }
    }

    /// Routes `req`, runs its middlewares and makes the request for the server picked.
    fn prepare(
        &self,
        req: Request<RequestBody>,
        mut received: Option<Box<RawFields>>,
        peer: &Peer,
        tls: bool,
        fields: FieldsAs,
    ) -> Result<Next, ProxyError> {
        let table = self.table.load();
        // ACME HTTP-01 before routing and before entry-point redirection.
        if let Some(answer) = table.acme_http.respond(&self.entry_point, req.uri().path()) {
            return Ok(Next::Answer(answer));
        }
        let tables = table
            .entry_point(&self.entry_point)
            .ok_or(ProxyError::NoRoute)?;
        let (mut parts, body) = req.into_parts();
        // Fields as received come without `Connection` and the fields it names.
        if received.is_none() {
            take_connection(&mut parts.headers);
        }
        if let Some(answer) = check_request(&mut parts, received.as_deref())? {
            return Ok(Next::Answer(answer));
        }
        // The request host as a header value: a clone of `Host` shares its bytes.
        let host_value = request_host(&parts.uri, &parts.headers, received.as_deref());
        let host = host_value
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !tls && let Some(redirect) = &tables.redirect {
            return Ok(Next::Answer(entry_point_redirect(redirect, host, &parts)));
        }
        let routes = if tls { &tables.tls } else { &tables.plain };
        let route = {
            let path = routing_path(parts.uri.path()).map_err(|_| ProxyError::BadPath)?;
            let view = RequestView {
                host,
                path: &path,
                query: parts.uri.query(),
                method: &parts.method,
                headers: match &received {
                    Some(fields) => Headers::Received(fields),
                    None => Headers::Map(&parts.headers),
                },
                client_ip: peer.addr.ip(),
            };
            routes.find(&view).cloned().ok_or(ProxyError::NoRoute)?
        };
        // Release the table: in-flight requests keep only what they use.
        drop(table);

        // Middlewares read and change a map.
        if !route.middlewares.is_empty() {
            into_map(&mut received, &mut parts.headers)?;
        }
        let scheme = if tls { "https" } else { "http" };
        let mut forwarded = forwarded_fields(
            &mut parts.headers,
            received.as_deref_mut(),
            host_value.as_ref(),
            host,
            peer,
            scheme,
        );
        // A middleware that reads or changes headers finds ours in the map, as in Traefik.
        if route
            .middlewares
            .iter()
            .any(|m| m.changes_request_headers())
        {
            forwarded.insert_into(&mut parts.headers);
        }
        for (i, m) in route.middlewares.iter().enumerate() {
            match m.on_request(&mut parts, scheme) {
                Action::Continue => {}
                Action::Redirect(status, location) => {
                    // Traefik writes the status text as the body, without a content type.
                    let text = status.canonical_reason().unwrap_or_default();
                    let mut resp = Response::new(Either::Right(Full::new(Bytes::from_static(
                        text.as_bytes(),
                    ))));
                    *resp.status_mut() = status;
                    resp.headers_mut().insert(header::LOCATION, location);
                    return Ok(Next::Answer(decorate(resp, &route.middlewares[..i])));
                }
                Action::Reject => {
                    let resp = error_response(&ProxyError::UnsafePath);
                    return Ok(Next::Answer(decorate(resp, &route.middlewares[..i])));
                }
            }
        }
        // The origin's fields go on as received unless a middleware changes them.
        let fields = if route.middlewares.iter().any(|m| m.changes_responses()) {
            FieldsAs::Map
        } else {
            fields
        };
        // Errors from here on are the service's, inside the middleware chain (as in Traefik).
        let req = Request::from_parts(parts, body);
        let outgoing = self.upstream_request(&route, host_value, req, received, forwarded, fields);
        Ok(match outgoing {
            Ok((server, outgoing)) => Next::Forward(Forward {
                route,
                server,
                outgoing,
            }),
            Err(e) => Next::Answer(failed(&e, &route)),
        })
    }

    /// Picks a server and makes the request for it; `forwarded` goes into its map unless it is
    /// for the HTTP/1.1 client, which writes it after the map's fields. The fields `received`
    /// go on as they are to an HTTP/1.1 server that gets the client's `Host`.
    fn upstream_request(
        &self,
        route: &Route,
        host: Option<HeaderValue>,
        req: Request<RequestBody>,
        mut received: Option<Box<RawFields>>,
        mut forwarded: AddedFields,
        fields: FieldsAs,
    ) -> Result<(Arc<Upstream>, Outgoing), ProxyError> {
        let (mut parts, body) = req.into_parts();
        let (lb, server) = route.service.pick().ok_or(ProxyError::NoServer)?;

        // Go's client sends the request host (the absolute-form authority wins over `Host`), and
        // the server's address when that is empty.
        let host = host.filter(|h| lb.pass_host_header && !h.is_empty());
        let pass_host = host.is_some();
        if let Some(fields) = &received
            && (server.h2c
                || !pass_host
                || parts.uri.authority().is_some()
                || fields.forwarded_count(&HOST) == 0)
        {
            into_map(&mut received, &mut parts.headers)?;
        }
        // Fields kept as received hold no hop-by-hop field, and their `Host` goes on.
        if received.is_none() {
            strip_hop_by_hop(&mut parts.headers);
            if let Some(host) = host.filter(|_| parts.uri.authority().is_some()) {
                parts.headers.insert(HOST, host);
            } else if !pass_host || !parts.headers.contains_key(HOST) {
                parts.headers.insert(HOST, server.host_header.clone());
            }
        }
        // Traefik ignores the path of a server URL unless `preservePath` (not supported yet) is
        // set, so `server.base_path` is not prefixed.
        let path_and_query = upstream_path("", &parts.uri)?;
        if !server.h2c {
            // HTTP/1.1 sends the origin-form target; the pool is keyed by the server's authority.
            parts.uri = Uri::from(path_and_query);
            parts.version = Version::HTTP_11;
            let prepared = self.upstreams.http1.prepare(
                &server.authority,
                Request::from_parts(parts, body),
                received.as_deref(),
                &forwarded,
                fields,
            );
            if let Some(received) = received {
                received.recycle();
            }
            let prepared = prepared.map_err(|e| upstream_error(&server.url, false, &e))?;
            return Ok((server.clone(), Outgoing::Http1(prepared)));
        }
        forwarded.insert_into(&mut parts.headers);
        let mut uri_parts = http::uri::Parts::default();
        uri_parts.scheme = Some(Scheme::HTTP);
        uri_parts.authority = Some(server.authority.clone());
        uri_parts.path_and_query = Some(path_and_query);
        parts.uri = Uri::from_parts(uri_parts).map_err(|e| ProxyError::Upstream(e.to_string()))?;
        parts.version = Version::HTTP_2;
        let sent = self.upstreams.h2c.request(Request::from_parts(parts, body));
        Ok((server.clone(), Outgoing::H2c(sent)))
    }
}

/// What is left of a request once [`Handler::prepare`] is done with it.
enum Next {
    /// Answered without the origin (or failed): a redirect, an ACME answer, an error.
    Answer(Response<Body>),
    Forward(Forward),
}

/// A request on its way to `server`, for `route`.
struct Forward {
    /// Its middlewares decorate the response.
    route: Arc<Route>,
    server: Arc<Upstream>,
    outgoing: Outgoing,
}

/// A request made for one of the upstream clients. (The h2c variant is small, and rare; boxing
/// the other would cost an allocation per request.)
#[allow(clippy::large_enum_variant)]
enum Outgoing {
    /// Its head written, for our HTTP/1.1 pool.
    Http1(Prepared<RequestBody>),
    /// hyper-util's h2c client's future, made but not polled yet.
    H2c(ResponseFuture),
}

impl Forward {
    /// Sends the request and answers with the origin's response, or the proxy's own (502).
    async fn send(&mut self, upstreams: &Upstreams) -> Response<Body> {
        let sent = match &mut self.outgoing {
            Outgoing::Http1(prepared) => upstreams
                .http1
                .send_prepared(&self.server.authority, prepared)
                .await
                .map_err(|e| upstream_error(&self.server.url, e.is_connect(), &e)),
            Outgoing::H2c(sent) => sent
                .await
                .map(|response| response.map(UpstreamBody::from))
                .map_err(|e| upstream_error(&self.server.url, e.is_connect(), &e)),
        };
        match sent {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                // Answer in the client's protocol: an HTTP/1.0 upstream must not turn a
                // keep-alive HTTP/1.1 client connection into a closing HTTP/1.0 one.
                parts.version = Version::HTTP_11;
                strip_hop_by_hop(&mut parts.headers);
                decorate(
                    Response::from_parts(parts, Either::Left(body)),
                    &self.route.middlewares,
                )
            }
            Err(e) => failed(&e, &self.route),
        }
    }
}

/// The response for a request to `route`'s service that failed: the proxy's answers (502, 503)
/// sit inside the middleware chain too, as in Traefik.
fn failed(error: &ProxyError, route: &Route) -> Response<Body> {
    if let ProxyError::Upstream(reason) = error {
        tracing::debug!(%reason, "upstream error");
    }
    decorate(error_response(error), &route.middlewares)
}

/// A failed forward to the server at `url` (502), saying whether the dial failed.
fn upstream_error(url: &str, connect: bool, error: &dyn std::fmt::Display) -> ProxyError {
    if connect {
        ProxyError::Upstream(format!("connect to {url}: {error}"))
    } else {
        ProxyError::Upstream(format!("{url}: {error}"))
    }
}

/// Runs the response phase of `middlewares` (innermost first) on `response`.
fn decorate(response: Response<Body>, middlewares: &[Arc<Middleware>]) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    for m in middlewares.iter().rev() {
        m.on_response(&mut parts);
    }
    Response::from_parts(parts, body)
}

/// Traefik's entry-point redirection: same host (port replaced), same path and query.
fn entry_point_redirect(
    redirect: &Redirect,
    host: &str,
    parts: &http::request::Parts,
) -> Response<Body> {
    let (bare_host, _) = split_host_port(host);
    let default_port = match redirect.scheme.as_str() {
        "https" => "443",
        "http" => "80",
        _ => "",
    };
    let mut location = format!("{}://{bare_host}", redirect.scheme);
    if !redirect.port.is_empty() && redirect.port != default_port {
        location.push(':');
        location.push_str(&redirect.port);
    }
    location.push_str(parts.uri.path_and_query().map_or("/", |pq| pq.as_str()));
    let get_like = parts.method == http::Method::GET || parts.method == http::Method::HEAD;
    let status = match (redirect.permanent, get_like) {
        (true, true) => StatusCode::MOVED_PERMANENTLY,
        (true, false) => StatusCode::PERMANENT_REDIRECT,
        (false, true) => StatusCode::FOUND,
        (false, false) => StatusCode::TEMPORARY_REDIRECT,
    };
    let mut resp = Response::new(Either::Right(Full::new(Bytes::new())));
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// What Go's server and Traefik's entry point do before routing: reject what Go cannot parse
/// (400), answer `OPTIONS *` (200), and normalise the target as Traefik does — the path as
/// [`forwarded_path`] gives it (what middlewares see and the backend receives) and `;` in the
/// query read as `&` (Go's `AllowQuerySemicolons`, which Traefik applies).
fn check_request(
    parts: &mut http::request::Parts,
    received: Option<&RawFields>,
) -> Result<Option<Response<Body>>, ProxyError> {
    if parts.version == Version::HTTP_11 {
        let hosts = match received {
            Some(fields) => fields.forwarded_count(&HOST) as usize,
            None => parts.headers.get_all(HOST).iter().take(2).count(),
        };
        match hosts {
            0 => return Err(ProxyError::MissingHost),
            1 => {}
            _ => return Err(ProxyError::SeveralHosts),
        }
    }
    if parts.uri.path() == "*" && parts.uri.authority().is_none() {
        if parts.method == http::Method::OPTIONS {
            let mut resp = Response::new(Either::Right(Full::new(Bytes::new())));
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            return Ok(Some(resp));
        }
        return Err(ProxyError::BadPath);
    }
    // Authority-form (`GET host:80`) is for CONNECT only.
    if parts.uri.scheme().is_none() && parts.uri.authority().is_some() {
        return Err(ProxyError::BadPath);
    }
    let path = forwarded_path(parts.uri.path()).map_err(|_| ProxyError::BadPath)?;
    let query = parts.uri.query().filter(|q| q.contains(';'));
    if matches!(path, std::borrow::Cow::Borrowed(_)) && query.is_none() {
        return Ok(None);
    }
    let query = parts.uri.query().map(|q| q.replace(';', "&"));
    let target = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.into_owned(),
    };
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.path_and_query = Some(PathAndQuery::try_from(target).map_err(|_| ProxyError::BadPath)?);
    parts.uri = Uri::from_parts(uri).map_err(|_| ProxyError::BadPath)?;
    Ok(None)
}

/// The request host: the URI authority (absolute-form, HTTP/2 `:authority`), else `Host`.
fn request_host(
    uri: &Uri,
    headers: &HeaderMap,
    received: Option<&RawFields>,
) -> Option<HeaderValue> {
    match (uri.authority(), received) {
        (Some(authority), _) => HeaderValue::from_str(authority.as_str()).ok(),
        (None, Some(fields)) => fields
            .forwarded_bytes(&HOST)
            .and_then(|host| HeaderValue::from_maybe_shared(host).ok()),
        (None, None) => headers.get(HOST).cloned(),
    }
}

/// The fields kept as received, moved into the request's map for what needs one after all.
fn into_map(
    received: &mut Option<Box<RawFields>>,
    headers: &mut HeaderMap,
) -> Result<(), ProxyError> {
    if let Some(fields) = received.take() {
        // The listener parsed them, as it parses what goes into a map: this cannot fail.
        let map = fields.header_map(crate::listener::h1::ADDED_HEADERS);
        fields.recycle();
        *headers = map.map_err(|_| ProxyError::BadPath)?;
    }
    Ok(())
}

fn upstream_path(base: &str, uri: &Uri) -> Result<PathAndQuery, ProxyError> {
    if base.is_empty() {
        // A clone shares the request's bytes: no copy, no second validation.
        return Ok(uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")));
    }
    let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let joined = format!("{base}{pq}");
    PathAndQuery::try_from(joined.as_str()).map_err(|e| ProxyError::Upstream(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::h1::encode_head;

    /// The request future holds what the wait for the origin needs, not the request: routing
    /// and the upstream request's head are done before it is made. It is written once per
    /// request, and its size is part of every connection's (3 328 bytes in a test build when it
    /// held the request in its several forms, 912 since).
    #[tokio::test]
    async fn the_request_future_is_small() {
        let handler = Handler {
            table: Arc::new(ArcSwap::from_pointee(Table::default())),
            entry_point: Arc::from("web"),
            upstreams: Upstreams::new(),
            port: 80,
        };
        let peer = Peer::new(std::net::SocketAddr::from(([127, 0, 0, 1], 40000)));
        let req = Request::new(RequestBody::Empty);
        let future = handler.serve(req, None, &peer, false, FieldsAs::Received);
        let size = std::mem::size_of_val(&future);
        assert!(size <= 1024, "the request future is {size} bytes");
        // No table: the request is answered without the origin.
        assert_eq!(future.await.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn errors_map_to_statuses() {
        assert_eq!(error_response(&ProxyError::NoRoute).status(), 404);
        assert_eq!(error_response(&ProxyError::BadPath).status(), 400);
        assert_eq!(error_response(&ProxyError::NoServer).status(), 503);
        assert_eq!(
            error_response(&ProxyError::Upstream("x".into())).status(),
            502
        );
    }

    fn request(target: &str, hosts: &[&str]) -> http::request::Parts {
        let mut builder = Request::builder().uri(target);
        for h in hosts {
            builder = builder.header(HOST, *h);
        }
        builder.body(()).unwrap().into_parts().0
    }

    /// What goes upstream from fields kept as received is what goes from their map: the
    /// client's forwarding headers replaced by the proxy's, hop-by-hop fields left out, the same
    /// framing (compared as lines, names in any case, each name's values in order).
    #[test]
    fn received_fields_go_upstream_as_the_map_would() {
        let peer = Peer::new("10.0.0.9:5000".parse().unwrap());
        let heads = [
            "GET / HTTP/1.1\r\nHost: a:8080\r\nUser-Agent: u\r\nAccept: */*\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nx-FORWARDED-for: 6.6.6.6\r\nX-Real-IP: 6\r\n\
             X-Forwarded-Prefix: /evil\r\nX-Forwarded-Custom: kept\r\nX-A: 1\r\nx-a: 2\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\n\r\n",
            "GET / HTTP/1.1\r\nConnection: close\r\nClose: 1\r\nHost: a\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: a\r\nIdempotency-Key: k\r\n\r\n",
        ];
        let lines = |head: Vec<u8>| {
            let head = String::from_utf8(head).unwrap();
            let mut lines: Vec<(String, String)> = head
                .lines()
                .skip(1)
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let (name, value) = l.split_once(": ").unwrap();
                    (name.to_ascii_lowercase(), value.to_owned())
                })
                .collect();
            // Stable: each name's values keep their order.
            lines.sort_by(|a, b| a.0.cmp(&b.0));
            (head.lines().next().unwrap().to_owned(), lines)
        };
        for head in heads {
            let mut received = RawFields::of_request(head).expect("kept as received");
            let mut map = received.header_map(0).unwrap();
            let method = if head.starts_with("POST") {
                http::Method::POST
            } else {
                http::Method::GET
            };
            let parts = || {
                let mut parts = Request::new(()).into_parts().0;
                parts.method = method.clone();
                parts.uri = Uri::from_static("/p?q");
                parts
            };
            let host_value = received
                .forwarded_bytes(&HOST)
                .map(|h| HeaderValue::from_maybe_shared(h).unwrap());
            let host = host_value.as_ref().map_or("", |h| h.to_str().unwrap());
            let mut empty = HeaderMap::new();
            let added = forwarded_fields(
                &mut empty,
                Some(&mut received),
                host_value.as_ref(),
                host,
                &peer,
                "http",
            );
            assert!(empty.is_empty());
            let (raw_head, raw_framing) =
                encode_head(&parts(), Some(&received), &added, true, "origin:80").unwrap();
            let added = forwarded_fields(&mut map, None, host_value.as_ref(), host, &peer, "http");
            strip_hop_by_hop(&mut map);
            let mut map_parts = parts();
            map_parts.headers = map;
            let (map_head, map_framing) =
                encode_head(&map_parts, None, &added, true, "origin:80").unwrap();
            assert_eq!(lines(raw_head), lines(map_head), "{head:?}");
            assert_eq!(raw_framing, map_framing, "{head:?}");
        }
    }

    #[test]
    fn requests_are_checked_like_go_does() {
        let status =
            |target: &str, hosts: &[&str]| match check_request(&mut request(target, hosts), None) {
                Ok(None) => 0,
                Ok(Some(resp)) => resp.status().as_u16(),
                Err(e) => error_response(&e).status().as_u16(),
            };
        assert_eq!(status("/a", &["a"]), 0);
        assert_eq!(status("/a", &[]), 400);
        assert_eq!(status("/a", &["a", "b"]), 400);
        assert_eq!(status("/a%zz", &["a"]), 400);
        assert_eq!(status("a.example:80", &["a"]), 400);
        assert_eq!(status("*", &["a"]), 400);
        let mut options = request("*", &["a"]);
        options.method = http::Method::OPTIONS;
        assert_eq!(
            check_request(&mut options, None).unwrap().unwrap().status(),
            200
        );
    }

    #[test]
    fn target_is_normalised_before_routing() {
        let target = |t: &str| {
            let mut parts = request(t, &["a"]);
            check_request(&mut parts, None).unwrap();
            parts.uri.to_string()
        };
        assert_eq!(target("/a/../b%2f%7e?x=1"), "/b%2F~?x=1");
        assert_eq!(target("/p?a=1;b=2"), "/p?a=1&b=2");
        assert_eq!(target("/plain?q"), "/plain?q");
    }

    #[test]
    fn error_bodies_are_traefiks() {
        let not_found = error_response(&ProxyError::NoRoute);
        assert_eq!(not_found.headers()["x-content-type-options"], "nosniff");
        let bad_gateway = error_response(&ProxyError::Upstream("x".into()));
        assert!(!bad_gateway.headers().contains_key("content-type"));
    }

    #[test]
    fn base_path_is_prefixed() {
        let uri: Uri = "/a?b=1".parse().unwrap();
        assert_eq!(
            upstream_path("/base", &uri).unwrap().as_str(),
            "/base/a?b=1"
        );
        assert_eq!(upstream_path("", &uri).unwrap().as_str(), "/a?b=1");
    }
}
