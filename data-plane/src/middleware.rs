//! HTTP middlewares, compiled from the snapshot once per apply. A middleware acts on the request
//! before it is forwarded (and may answer it itself, e.g. a redirect) and on the response on the
//! way back. Pure: no I/O, no clock. Chains are flattened by the applier.

use std::str::FromStr;

use http::{HeaderName, HeaderValue, Method, StatusCode, Uri, header::HOST, request, response};
use switchyard_shared::snapshot::MiddlewareKind;
use thiserror::Error;

/// A middleware that cannot be built from its snapshot definition.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct MiddlewareError(String);

/// A header to set (`Some`) or remove (`None`, Traefik's empty value).
type HeaderOp = (HeaderName, Option<HeaderValue>);

/// One compiled middleware.
#[derive(Debug)]
pub enum Middleware {
    StripPrefix(Vec<String>),
    AddPrefix(String),
    Headers {
        request: Vec<HeaderOp>,
        response: Vec<HeaderOp>,
    },
    RedirectScheme {
        scheme: String,
        port: Option<String>,
        permanent: bool,
    },
}

/// What a request-phase middleware decided.
#[derive(Debug)]
pub enum Action {
    /// Forward (possibly modified).
    Continue,
    /// Answer with this status and `Location`.
    Redirect(StatusCode, HeaderValue),
    /// Answer 400: the request became unsafe to forward (stripPrefix left a `.` or `..`
    /// segment, which Traefik ≥ 3.7.3 refuses).
    Reject,
}

/// `X-Forwarded-Prefix`, set by stripPrefix.
pub static X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");

/// Request extension: stripPrefix removed the whole path. The URI then says `/` (what is sent
/// upstream), but a following addPrefix must see the empty path Traefik has at that point, so
/// `/api` stripped of `/api` and prefixed with `/v2` becomes `/v2`, not `/v2/`.
#[derive(Clone, Copy, Debug)]
struct EmptyPath;

impl Middleware {
    /// Compiles a non-chain middleware. Chains are expanded by the caller.
    pub fn build(kind: &MiddlewareKind) -> Result<Option<Self>, MiddlewareError> {
        Ok(Some(match kind {
            MiddlewareKind::StripPrefix { prefixes } => Middleware::StripPrefix(prefixes.clone()),
            MiddlewareKind::AddPrefix { prefix } => {
                // Traefik adds the missing leading slash.
                let prefix = if prefix.starts_with('/') {
                    prefix.clone()
                } else {
                    format!("/{prefix}")
                };
                Middleware::AddPrefix(prefix)
            }
            MiddlewareKind::Headers { request, response } => Middleware::Headers {
                request: header_ops(request)?,
                response: header_ops(response)?,
            },
            MiddlewareKind::RedirectScheme {
                scheme,
                port,
                permanent,
            } => Middleware::RedirectScheme {
                scheme: scheme.clone(),
                port: port.clone(),
                permanent: *permanent,
            },
            MiddlewareKind::Chain(_) => return Ok(None),
        }))
    }

    /// Request phase. `scheme` is the scheme the client used (`http` or `https`).
    pub fn on_request(&self, parts: &mut request::Parts, scheme: &str) -> Action {
        match self {
            Middleware::StripPrefix(prefixes) => {
                let path = parts.uri.path();
                if let Some(prefix) = prefixes.iter().find(|p| path.starts_with(p.as_str())) {
                    let rest = &path[prefix.len()..];
                    let new_path = if rest.starts_with('/') {
                        rest.to_owned()
                    } else {
                        format!("/{rest}")
                    };
                    if new_path
                        .split('/')
                        .any(|segment| segment == "." || segment == "..")
                    {
                        return Action::Reject;
                    }
                    // Appended: each stripPrefix of a chain adds its value, as in Traefik.
                    if let Ok(v) = HeaderValue::from_str(prefix) {
                        parts.headers.append(X_FORWARDED_PREFIX.clone(), v);
                    }
                    let emptied = rest.is_empty();
                    set_path(&mut parts.uri, &new_path);
                    if emptied {
                        parts.extensions.insert(EmptyPath);
                    } else {
                        parts.extensions.remove::<EmptyPath>();
                    }
                }
                Action::Continue
            }
            Middleware::AddPrefix(prefix) => {
                let path = match parts.extensions.remove::<EmptyPath>() {
                    Some(EmptyPath) => "",
                    None => parts.uri.path(),
                };
                let new_path = format!("{prefix}{path}");
                set_path(&mut parts.uri, &new_path);
                Action::Continue
            }
            Middleware::Headers { request, .. } => {
                apply_ops(&mut parts.headers, request);
                Action::Continue
            }
            Middleware::RedirectScheme {
                scheme: target,
                port,
                permanent,
            } => redirect_scheme(parts, scheme, target, port.as_deref(), *permanent),
        }
    }

    /// Whether [`Self::on_request`] reads or changes headers other than `Host` and the one
    /// stripPrefix appends.
    pub fn changes_request_headers(&self) -> bool {
        matches!(self, Middleware::Headers { request, .. } if !request.is_empty())
    }

    /// Whether [`Self::on_response`] changes anything.
    pub fn changes_responses(&self) -> bool {
        matches!(self, Middleware::Headers { response, .. } if !response.is_empty())
    }

    /// Response phase.
    pub fn on_response(&self, parts: &mut response::Parts) {
        if let Middleware::Headers { response, .. } = self {
            apply_ops(&mut parts.headers, response);
        }
    }
}

fn header_ops(list: &[(String, String)]) -> Result<Vec<HeaderOp>, MiddlewareError> {
    list.iter()
        .map(|(name, value)| {
            let name = HeaderName::from_str(name)
                .map_err(|_| MiddlewareError(format!("`{name}` is not a valid header name")))?;
            let value = if value.is_empty() {
                None
            } else {
                Some(HeaderValue::from_str(value).map_err(|_| {
                    MiddlewareError(format!("the value of header `{name}` is not valid"))
                })?)
            };
            Ok((name, value))
        })
        .collect()
}

fn apply_ops(headers: &mut http::HeaderMap, ops: &[HeaderOp]) {
    for (name, value) in ops {
        match value {
            Some(v) => {
                headers.insert(name.clone(), v.clone());
            }
            None => {
                headers.remove(name);
            }
        }
    }
}

/// Replaces the path of `uri`, keeping its query.
pub fn set_path(uri: &mut Uri, path: &str) {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = std::mem::take(uri).into_parts();
    if let Ok(pq) = pq.parse() {
        parts.path_and_query = Some(pq);
    }
    if let Ok(new) = Uri::from_parts(parts) {
        *uri = new;
    }
}

fn default_port(scheme: &str) -> Option<&'static str> {
    match scheme {
        "http" | "ws" => Some("80"),
        "https" | "wss" => Some("443"),
        _ => None,
    }
}

/// Traefik's redirectScheme: same host (port replaced), same path and query; no redirect when
/// the request already uses the target scheme and port (an unset port means the scheme's
/// default, so `http` without a port redirects `host:8080` to `host`). 301/308 when permanent,
/// 302/307 when not (308/307 for every method but GET, HEAD included, as Traefik 3.7 answers).
fn redirect_scheme(
    parts: &request::Parts,
    scheme: &str,
    target: &str,
    port: Option<&str>,
    permanent: bool,
) -> Action {
    let raw_host = parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| parts.headers.get(HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("");
    let (host, request_port) = split_host_port(raw_host);
    let effective_request_port = request_port.or(default_port(scheme));
    if scheme == target && port.or(default_port(target)) == effective_request_port {
        return Action::Continue;
    }
    let mut location = format!("{target}://{host}");
    if let Some(p) = port
        && Some(p) != default_port(target)
    {
        location.push(':');
        location.push_str(p);
    }
    location.push_str(
        parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/"),
    );
    let status = match (permanent, parts.method == Method::GET) {
        (true, true) => StatusCode::MOVED_PERMANENTLY,
        (true, false) => StatusCode::PERMANENT_REDIRECT,
        (false, true) => StatusCode::FOUND,
        (false, false) => StatusCode::TEMPORARY_REDIRECT,
    };
    match HeaderValue::from_str(&location) {
        Ok(v) => Action::Redirect(status, v),
        Err(_) => Action::Continue,
    }
}

/// Splits `host[:port]` (IPv6 in brackets kept with its brackets).
pub fn split_host_port(raw: &str) -> (&str, Option<&str>) {
    if raw.starts_with('[') {
        return match raw.find(']') {
            Some(end) => {
                let host = &raw[..=end];
                let rest = &raw[end + 1..];
                (host, rest.strip_prefix(':').filter(|p| !p.is_empty()))
            }
            None => (raw, None),
        };
    }
    match raw.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p).filter(|p| !p.is_empty())),
        _ => (raw, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, uri: &str, host: &str) -> request::Parts {
        let (parts, ()) = http::Request::builder()
            .method(method)
            .uri(uri)
            .header("host", host)
            .body(())
            .unwrap()
            .into_parts();
        parts
    }

    #[test]
    fn strip_prefix_keeps_leading_slash_and_sets_header() {
        let m = Middleware::StripPrefix(vec!["/api".into(), "/other".into()]);
        let mut p = parts("GET", "/api/users?x=1", "a");
        m.on_request(&mut p, "http");
        assert_eq!(p.uri.to_string(), "/users?x=1");
        assert_eq!(p.headers["x-forwarded-prefix"], "/api");
        let mut p = parts("GET", "/api", "a");
        m.on_request(&mut p, "http");
        assert_eq!(p.uri.path(), "/");
        let mut p = parts("GET", "/apix", "a");
        m.on_request(&mut p, "http");
        assert_eq!(p.uri.path(), "/x");
        let mut p = parts("GET", "/nope", "a");
        m.on_request(&mut p, "http");
        assert_eq!(p.uri.path(), "/nope");
        assert!(!p.headers.contains_key("x-forwarded-prefix"));
    }

    /// Traefik ≥ 3.7.3 answers 400 rather than forward `/./x` or `/../x`.
    #[test]
    fn strip_prefix_rejects_dot_segments() {
        let m = Middleware::StripPrefix(vec!["/a".into()]);
        for path in ["/a./x", "/a../x", "/a."] {
            let mut p = parts("GET", path, "a");
            assert!(
                matches!(m.on_request(&mut p, "http"), Action::Reject),
                "{path}"
            );
        }
        let mut p = parts("GET", "/a.b/x", "a");
        assert!(matches!(m.on_request(&mut p, "http"), Action::Continue));
    }

    #[test]
    fn strip_prefix_appends_forwarded_prefix() {
        let first = Middleware::StripPrefix(vec!["/t".into()]);
        let second = Middleware::StripPrefix(vec!["/u".into()]);
        let mut p = parts("GET", "/t/u/v", "a");
        first.on_request(&mut p, "http");
        second.on_request(&mut p, "http");
        assert_eq!(p.uri.path(), "/v");
        let values: Vec<_> = p.headers.get_all("x-forwarded-prefix").iter().collect();
        assert_eq!(values, ["/t", "/u"]);
    }

    #[test]
    fn add_prefix_prepends() {
        let m = Middleware::build(&MiddlewareKind::AddPrefix {
            prefix: "v1".into(),
        })
        .unwrap()
        .unwrap();
        let mut p = parts("GET", "/users?q", "a");
        m.on_request(&mut p, "http");
        assert_eq!(p.uri.to_string(), "/v1/users?q");
    }

    #[test]
    fn headers_set_and_remove() {
        let m = Middleware::build(&MiddlewareKind::Headers {
            request: vec![("X-A".into(), "1".into()), ("X-Gone".into(), String::new())],
            response: vec![("X-R".into(), "2".into())],
        })
        .unwrap()
        .unwrap();
        let mut p = parts("GET", "/", "a");
        p.headers.insert("x-gone", HeaderValue::from_static("bye"));
        m.on_request(&mut p, "http");
        assert_eq!(p.headers["x-a"], "1");
        assert!(!p.headers.contains_key("x-gone"));
        let (mut rp, ()) = http::Response::new(()).into_parts();
        m.on_response(&mut rp);
        assert_eq!(rp.headers["x-r"], "2");
    }

    #[test]
    fn redirect_scheme_codes_and_location() {
        let m = |permanent, port: Option<&str>| Middleware::RedirectScheme {
            scheme: "https".into(),
            port: port.map(str::to_owned),
            permanent,
        };
        let cases = [
            (
                true,
                None,
                "GET",
                StatusCode::MOVED_PERMANENTLY,
                "https://a.example/p?q=1",
            ),
            (
                true,
                None,
                "POST",
                StatusCode::PERMANENT_REDIRECT,
                "https://a.example/p?q=1",
            ),
            (
                false,
                None,
                "GET",
                StatusCode::FOUND,
                "https://a.example/p?q=1",
            ),
            (
                false,
                None,
                "PUT",
                StatusCode::TEMPORARY_REDIRECT,
                "https://a.example/p?q=1",
            ),
            (
                false,
                Some("8443"),
                "GET",
                StatusCode::FOUND,
                "https://a.example:8443/p?q=1",
            ),
            (
                false,
                Some("443"),
                "GET",
                StatusCode::FOUND,
                "https://a.example/p?q=1",
            ),
        ];
        for (permanent, port, method, status, location) in cases {
            let mut p = parts(method, "/p?q=1", "a.example:8080");
            match m(permanent, port).on_request(&mut p, "http") {
                Action::Redirect(s, l) => {
                    assert_eq!(s, status);
                    assert_eq!(l, location);
                }
                other => panic!("expected a redirect, got {other:?}"),
            }
        }
    }

    #[test]
    fn redirect_to_same_scheme_passes() {
        let m = Middleware::RedirectScheme {
            scheme: "http".into(),
            port: None,
            permanent: false,
        };
        let mut p = parts("GET", "/", "a.example");
        assert!(matches!(m.on_request(&mut p, "http"), Action::Continue));
    }

    /// Observed on Traefik 3.7.15 (`tests/conformance/026-redirectscheme-http.yml`).
    #[test]
    fn redirect_to_same_scheme_without_port_means_default_port() {
        let m = Middleware::RedirectScheme {
            scheme: "http".into(),
            port: None,
            permanent: false,
        };
        for (host, redirected) in [("a.example:80", false), ("a.example:8080", true)] {
            let mut p = parts("GET", "/x", host);
            match m.on_request(&mut p, "http") {
                Action::Redirect(status, location) => {
                    assert!(redirected, "{host}");
                    assert_eq!(status, StatusCode::FOUND);
                    assert_eq!(location, "http://a.example/x");
                }
                Action::Continue => assert!(!redirected, "{host}"),
                Action::Reject => panic!("unexpected rejection"),
            }
        }
    }

    #[test]
    fn redirect_of_head_is_temporary_redirect() {
        let m = Middleware::RedirectScheme {
            scheme: "https".into(),
            port: None,
            permanent: false,
        };
        let mut p = parts("HEAD", "/", "a.example");
        assert!(matches!(
            m.on_request(&mut p, "http"),
            Action::Redirect(StatusCode::TEMPORARY_REDIRECT, _)
        ));
    }

    #[test]
    fn add_prefix_after_stripping_everything_sees_an_empty_path() {
        let strip = Middleware::StripPrefix(vec!["/api".into()]);
        let add = Middleware::AddPrefix("/v2".into());
        let mut p = parts("GET", "/api?z=1", "a");
        strip.on_request(&mut p, "http");
        assert_eq!(p.uri.to_string(), "/?z=1");
        add.on_request(&mut p, "http");
        assert_eq!(p.uri.to_string(), "/v2?z=1");
        let mut p = parts("GET", "/api/", "a");
        strip.on_request(&mut p, "http");
        add.on_request(&mut p, "http");
        assert_eq!(p.uri.path(), "/v2/");
    }

    #[test]
    fn host_port_split() {
        assert_eq!(split_host_port("a:80"), ("a", Some("80")));
        assert_eq!(split_host_port("a"), ("a", None));
        assert_eq!(split_host_port("[::1]:80"), ("[::1]", Some("80")));
        assert_eq!(split_host_port("[::1]"), ("[::1]", None));
        assert_eq!(split_host_port("::1"), ("::1", None));
    }
}
