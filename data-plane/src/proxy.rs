//! The request handler: load the current table once, match, run the middlewares, pick a server,
//! forward with a pooled client, and turn every failure into a response in one place
//! ([`error_response`], after linkerd's synthetic responses). No lock is taken and the table is
//! loaded once per request.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, Version,
    header::{self, HOST},
    uri::{PathAndQuery, Scheme},
};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

use crate::{
    middleware::{Action, split_host_port},
    router::{RequestView, routing_path},
    state::{Redirect, Table},
};

/// The body of every response the proxy sends.
pub type Body = Either<Incoming, Full<Bytes>>;

/// What went wrong, mapped to a status by [`error_response`].
#[derive(Debug)]
pub enum ProxyError {
    /// No router matched (404).
    NoRoute,
    /// The path has an invalid escape (400).
    BadPath,
    /// The service has no server (503).
    NoServer,
    /// The upstream refused, reset or sent garbage (502).
    Upstream(String),
}

/// The one place errors become responses.
pub fn error_response(error: &ProxyError) -> Response<Body> {
    let (status, text): (StatusCode, &'static str) = match error {
        ProxyError::NoRoute => (StatusCode::NOT_FOUND, "404 page not found\n"),
        ProxyError::BadPath => (StatusCode::BAD_REQUEST, "400 Bad Request\n"),
        ProxyError::NoServer => (StatusCode::SERVICE_UNAVAILABLE, "no available server\n"),
        ProxyError::Upstream(_) => (StatusCode::BAD_GATEWAY, "Bad Gateway\n"),
    };
    let mut response = Response::new(Either::Right(Full::new(Bytes::from_static(
        text.as_bytes(),
    ))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Pooled upstream clients, one per protocol.
#[derive(Clone, Debug)]
pub struct Upstreams {
    http1: Client<HttpConnector, Incoming>,
    h2c: Client<HttpConnector, Incoming>,
}

/// Traefik's default `dialTimeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

impl Upstreams {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.enforce_http(false);
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector.clone());
        let h2c = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Self { http1, h2c }
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
    /// The local port, for `X-Forwarded-Port`.
    pub port: u16,
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static X_FORWARDED_SERVER: HeaderName = HeaderName::from_static("x-forwarded-server");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Hop-by-hop headers (RFC 9110 §7.6.1) never forwarded.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

impl Handler {
    /// Serves one request; never fails (errors become responses). `tls`: the connection was
    /// TLS-terminated here (TLS routers apply, `X-Forwarded-Proto: https`).
    pub async fn serve(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        tls: bool,
    ) -> Response<Body> {
        match self.forward(req, peer, tls).await {
            Ok(resp) => resp,
            Err(e) => {
                if let ProxyError::Upstream(reason) = &e {
                    tracing::debug!(%reason, "upstream error");
                }
                error_response(&e)
            }
        }
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        tls: bool,
    ) -> Result<Response<Body>, ProxyError> {
        let table = self.table.load();
        let tables = table
            .entry_point(&self.entry_point)
            .ok_or(ProxyError::NoRoute)?;
        let (mut parts, body) = req.into_parts();
        let host = request_host(&parts.uri, &parts.headers).to_owned();
        if !tls && let Some(redirect) = &tables.redirect {
            return Ok(entry_point_redirect(redirect, &host, &parts));
        }
        let routes = if tls { &tables.tls } else { &tables.plain };
        let route = {
            let path = routing_path(parts.uri.path()).map_err(|_| ProxyError::BadPath)?;
            let view = RequestView {
                host: &host,
                path: &path,
                query: parts.uri.query(),
                method: &parts.method,
                headers: &parts.headers,
                client_ip: peer.ip(),
            };
            routes.find(&view).cloned().ok_or(ProxyError::NoRoute)?
        };
        // Release the table: in-flight requests keep only what they use.
        drop(table);

        let scheme = if tls { "https" } else { "http" };
        set_forwarded_headers(&mut parts.headers, &host, peer, self.port, scheme);
        for m in &route.middlewares {
            if let Action::Redirect(status, location) = m.on_request(&mut parts, scheme) {
                let mut resp = Response::new(Either::Right(Full::new(Bytes::new())));
                *resp.status_mut() = status;
                resp.headers_mut().insert(header::LOCATION, location);
                return Ok(resp);
            }
        }
        let (lb, server) = route.service.pick().ok_or(ProxyError::NoServer)?;

        strip_hop_by_hop(&mut parts.headers);
        if lb.pass_host_header {
            if !parts.headers.contains_key(HOST)
                && let Ok(v) = HeaderValue::from_str(&host)
            {
                parts.headers.insert(HOST, v);
            }
        } else {
            parts.headers.insert(HOST, server.host_header.clone());
        }
        let path_and_query = upstream_path(&server.base_path, &parts.uri)?;
        let mut uri_parts = http::uri::Parts::default();
        uri_parts.scheme = Some(Scheme::HTTP);
        uri_parts.authority = Some(server.authority.clone());
        uri_parts.path_and_query = Some(path_and_query);
        parts.uri = Uri::from_parts(uri_parts).map_err(|e| ProxyError::Upstream(e.to_string()))?;
        parts.version = if server.h2c {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        let client = if server.h2c {
            &self.upstreams.h2c
        } else {
            &self.upstreams.http1
        };
        let response = client
            .request(Request::from_parts(parts, body))
            .await
            .map_err(|e| {
                if e.is_connect() {
                    ProxyError::Upstream(format!("connect to {}: {e}", server.url))
                } else {
                    ProxyError::Upstream(format!("{}: {e}", server.url))
                }
            })?;
        let (mut rparts, rbody) = response.into_parts();
        strip_hop_by_hop(&mut rparts.headers);
        for m in route.middlewares.iter().rev() {
            m.on_response(&mut rparts);
        }
        Ok(Response::from_parts(rparts, Either::Left(rbody)))
    }
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

/// The request host: the URI authority (absolute-form, HTTP/2 `:authority`), else `Host`.
fn request_host<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> &'a str {
    uri.authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("")
}

/// Traefik (forwardedHeaders untrusted by default) drops client-supplied `X-Forwarded-*` and
/// sets its own.
fn set_forwarded_headers(
    headers: &mut HeaderMap,
    host: &str,
    peer: SocketAddr,
    port: u16,
    scheme: &'static str,
) {
    let ip = peer.ip().to_canonical().to_string();
    for h in [
        &X_FORWARDED_FOR,
        &X_FORWARDED_PROTO,
        &X_FORWARDED_HOST,
        &X_FORWARDED_PORT,
        &X_FORWARDED_SERVER,
        &X_REAL_IP,
    ] {
        headers.remove(h);
    }
    if let Ok(v) = HeaderValue::from_str(&ip) {
        headers.insert(X_FORWARDED_FOR.clone(), v.clone());
        headers.insert(X_REAL_IP.clone(), v);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(scheme));
    if let Ok(v) = HeaderValue::from_str(host) {
        headers.insert(X_FORWARDED_HOST.clone(), v);
    }
    let forwarded_port = split_host_port(host)
        .1
        .and_then(|p| HeaderValue::from_str(p).ok())
        .unwrap_or_else(|| HeaderValue::from(port));
    headers.insert(X_FORWARDED_PORT.clone(), forwarded_port);
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for h in &HOP_BY_HOP {
        headers.remove(h);
    }
    // `Upgrade` is hop-by-hop as well; WebSocket pass-through is not supported yet.
    headers.remove(header::UPGRADE);
}

fn upstream_path(base: &str, uri: &Uri) -> Result<PathAndQuery, ProxyError> {
    let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
    if base.is_empty() {
        return PathAndQuery::try_from(pq).map_err(|e| ProxyError::Upstream(e.to_string()));
    }
    let joined = format!("{base}{pq}");
    PathAndQuery::try_from(joined.as_str()).map_err(|e| ProxyError::Upstream(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn forwarded_headers_replace_client_values() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        set_forwarded_headers(
            &mut h,
            "a.example:8081",
            "127.0.0.2:5000".parse().unwrap(),
            80,
            "http",
        );
        assert_eq!(h["x-forwarded-for"], "127.0.0.2");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.example:8081");
        assert_eq!(h["x-forwarded-port"], "8081");
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
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
