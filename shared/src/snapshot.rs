//! The domain snapshot: what a proxy serves. Converted from the wire type with validation
//! (`TryFrom<pb::Snapshot>`, whose errors name the object) and to it deterministically
//! (`From<&Snapshot>`), so the version hash is stable.

use prost::{
    Message,
    encoding::{WireType, encode_key, encode_varint},
};
use std::{borrow::Borrow, sync::Arc};

use thiserror::Error;

use crate::{
    pb,
    rule::{Expr, Matcher},
    wire::{self, Value},
};

/// A compiled routing configuration. `R` is how a router is held: by value where a snapshot is
/// decoded (a proxy: one flat list, freed at once), shared (`Arc<Router>`, [`SharedSnapshot`])
/// where the controller reuses the routers of its previous compile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot<R = Router> {
    /// Sorted by name.
    pub entry_points: Vec<EntryPoint>,
    /// Sorted by name.
    pub routers: Vec<R>,
    /// Sorted by name.
    pub services: Vec<Service>,
    /// Sorted by name.
    pub middlewares: Vec<Middleware>,
    /// The certificate store, sorted by first name.
    pub certificates: Vec<Certificate>,
    /// Sorted by name.
    pub tls_options: Vec<TlsOptions>,
    /// `tls.stores.default.defaultCertificate`; `None`: the proxy generates a self-signed one.
    pub default_certificate: Option<Certificate>,
    /// ACME HTTP-01 challenges in flight, sorted by token.
    pub http_challenges: Vec<AcmeHttpChallenge>,
    /// ACME TLS-ALPN-01 challenges in flight, sorted by domain.
    pub tls_challenges: Vec<AcmeTlsChallenge>,
}

/// A snapshot whose routers are shared with the controller's compile cache.
pub type SharedSnapshot = Snapshot<Arc<Router>>;

impl<R> Default for Snapshot<R> {
    fn default() -> Self {
        Self {
            entry_points: Vec::new(),
            routers: Vec::new(),
            services: Vec::new(),
            middlewares: Vec::new(),
            certificates: Vec::new(),
            tls_options: Vec::new(),
            default_certificate: None,
            http_challenges: Vec::new(),
            tls_challenges: Vec::new(),
        }
    }
}

/// An HTTP-01 challenge: `GET /.well-known/acme-challenge/<token>` on `entry_point` answers
/// `key_authorization`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcmeHttpChallenge {
    pub token: String,
    pub key_authorization: String,
    pub domain: String,
    pub entry_point: String,
}

/// A TLS-ALPN-01 challenge: handshakes for `domain` offering ALPN `acme-tls/1` get this
/// self-signed certificate (with the acmeIdentifier extension).
#[derive(Clone, PartialEq, Eq)]
pub struct AcmeTlsChallenge {
    pub domain: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for AcmeTlsChallenge {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeTlsChallenge")
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

/// A listening address declared centrally (a proxy may override it locally).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryPoint {
    pub name: String,
    /// `[host]:port`; an empty host means every interface.
    pub address: String,
    /// `http.redirections.entryPoint`.
    pub redirect: Option<EntryPointRedirect>,
}

/// Redirects every plain-HTTP request of an entry point (Traefik's entry-point redirection).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryPointRedirect {
    pub to: String,
    /// Port for the `Location` (empty: none).
    pub port: String,
    pub scheme: String,
    pub permanent: bool,
}

/// A certificate and its key (PEM).
#[derive(Clone, PartialEq, Eq)]
pub struct Certificate {
    pub cert_pem: String,
    pub key_pem: String,
    /// Lower-cased DNS names, possibly `*.` wildcards; sorted.
    pub names: Vec<String>,
    pub source: String,
    pub not_after_unix: i64,
}

impl std::fmt::Debug for Certificate {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("names", &self.names)
            .field("source", &self.source)
            .field("not_after_unix", &self.not_after_unix)
            .finish_non_exhaustive()
    }
}

/// TLS options (Traefik `tls.options.<name>`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    pub name: String,
    pub min_version: String,
    pub max_version: String,
    pub cipher_suites: Vec<String>,
    pub alpn_protocols: Vec<String>,
    pub sni_strict: bool,
    /// `(CA PEMs, clientAuthType)`; `None`: no client certificates.
    pub client_auth: Option<ClientAuth>,
}

/// Client certificate policy of a TLS options set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientAuth {
    pub ca_pems: Vec<String>,
    pub client_auth_type: String,
}

/// TLS settings of a router; presence makes it a TLS-only router.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterTls {
    /// Qualified TLS options name.
    pub options: String,
}

/// An HTTP router.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Router {
    /// Qualified `name@provider`.
    pub name: String,
    pub provider: String,
    /// Entry point names; never empty after compilation.
    pub entry_points: Vec<String>,
    pub rule: Expr,
    pub priority: i64,
    /// Qualified middleware names, in order.
    pub middlewares: Vec<String>,
    /// Qualified service name.
    pub service: String,
    /// The rule as written (for humans).
    pub rule_text: String,
    /// `Some`: serves only TLS connections; `None`: only plain HTTP.
    pub tls: Option<RouterTls>,
}

/// A named HTTP service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub kind: ServiceKind,
}

/// The service types the proxy implements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceKind {
    LoadBalancer(LoadBalancer),
    /// Weighted round robin over other services.
    Weighted(Vec<WeightedService>),
}

/// `loadBalancer` with its servers in provider order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadBalancer {
    pub servers: Vec<Server>,
    /// Forward the client's `Host` (Traefik default `true`).
    pub pass_host_header: bool,
}

/// One upstream server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    pub url: String,
    pub weight: u32,
}

/// A child of a weighted service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightedService {
    /// Qualified service name.
    pub name: String,
    pub weight: u32,
}

/// A named middleware.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Middleware {
    pub name: String,
    pub kind: MiddlewareKind,
}

/// The middleware types the proxy implements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MiddlewareKind {
    StripPrefix {
        prefixes: Vec<String>,
    },
    AddPrefix {
        prefix: String,
    },
    Headers {
        /// `(name, value)`; an empty value removes the header.
        request: Vec<(String, String)>,
        response: Vec<(String, String)>,
    },
    RedirectScheme {
        scheme: String,
        port: Option<String>,
        permanent: bool,
    },
    /// Qualified names of other middlewares, in order.
    Chain(Vec<String>),
}

/// A wire snapshot that cannot be turned into a domain snapshot. Names the object.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("router {router}: {reason}")]
    Router { router: String, reason: String },
    #[error("service {service}: {reason}")]
    Service { service: String, reason: String },
    #[error("middleware {middleware}: {reason}")]
    Middleware { middleware: String, reason: String },
    #[error("entry point {entry_point}: {reason}")]
    EntryPoint { entry_point: String, reason: String },
    /// The encoding itself is malformed ([`Snapshot::decode`]).
    #[error("content does not decode: {0}")]
    Wire(String),
}

/// Maximum nesting of a rule tree accepted from the wire (guards the proxy's stack).
pub const MAX_RULE_DEPTH: usize = 64;

impl<R: Borrow<Router>> From<&Snapshot<R>> for pb::Snapshot {
    fn from(s: &Snapshot<R>) -> Self {
        pb::Snapshot {
            entry_points: s.entry_points.iter().map(entry_point_to_pb).collect(),
            routers: s.routers.iter().map(|r| router_to_pb(r.borrow())).collect(),
            services: s.services.iter().map(service_to_pb).collect(),
            middlewares: s.middlewares.iter().map(middleware_to_pb).collect(),
            certificates: s.certificates.iter().map(certificate_to_pb).collect(),
            tls_options: s.tls_options.iter().map(tls_options_to_pb).collect(),
            default_certificate: s.default_certificate.as_ref().map(certificate_to_pb),
            http_challenges: s.http_challenges.iter().map(http_challenge_to_pb).collect(),
            tls_challenges: s.tls_challenges.iter().map(tls_challenge_to_pb).collect(),
        }
    }
}

fn entry_point_to_pb(e: &EntryPoint) -> pb::EntryPoint {
    pb::EntryPoint {
        name: e.name.clone(),
        address: e.address.clone(),
        redirect: e.redirect.as_ref().map(|r| pb::EntryPointRedirect {
            to: r.to.clone(),
            port: r.port.clone(),
            scheme: r.scheme.clone(),
            permanent: r.permanent,
        }),
    }
}

fn tls_options_to_pb(o: &TlsOptions) -> pb::TlsOptions {
    pb::TlsOptions {
        name: o.name.clone(),
        min_version: o.min_version.clone(),
        max_version: o.max_version.clone(),
        cipher_suites: o.cipher_suites.clone(),
        alpn_protocols: o.alpn_protocols.clone(),
        sni_strict: o.sni_strict,
        client_auth: o.client_auth.as_ref().map(|c| pb::ClientAuth {
            ca_pems: c.ca_pems.clone(),
            client_auth_type: c.client_auth_type.clone(),
        }),
    }
}

fn http_challenge_to_pb(c: &AcmeHttpChallenge) -> pb::AcmeHttpChallenge {
    pb::AcmeHttpChallenge {
        token: c.token.clone(),
        key_authorization: c.key_authorization.clone(),
        domain: c.domain.clone(),
        entry_point: c.entry_point.clone(),
    }
}

fn tls_challenge_to_pb(c: &AcmeTlsChallenge) -> pb::AcmeTlsChallenge {
    pb::AcmeTlsChallenge {
        domain: c.domain.clone(),
        cert_pem: c.cert_pem.clone(),
        key_pem: c.key_pem.clone(),
    }
}

fn certificate_to_pb(c: &Certificate) -> pb::Certificate {
    pb::Certificate {
        cert_pem: c.cert_pem.clone(),
        key_pem: c.key_pem.clone(),
        names: c.names.clone(),
        source: c.source.clone(),
        not_after_unix: c.not_after_unix,
    }
}

fn certificate_from_pb(c: pb::Certificate) -> Certificate {
    Certificate {
        cert_pem: c.cert_pem,
        key_pem: c.key_pem,
        names: c.names,
        source: c.source,
        not_after_unix: c.not_after_unix,
    }
}

fn router_to_pb(r: &Router) -> pb::Router {
    pb::Router {
        name: r.name.clone(),
        provider: r.provider.clone(),
        entry_points: r.entry_points.clone(),
        rule: Some(expr_to_pb(&r.rule)),
        priority: r.priority,
        middlewares: r.middlewares.clone(),
        service: r.service.clone(),
        rule_text: r.rule_text.clone(),
        tls: r.tls.as_ref().map(|t| pb::RouterTls {
            options: t.options.clone(),
        }),
    }
}

/// Encodes a rule tree.
pub fn expr_to_pb(e: &Expr) -> pb::Expr {
    use pb::expr::Kind;
    let kind = match e {
        Expr::All(items) => Kind::All(pb::ExprList {
            items: items.iter().map(expr_to_pb).collect(),
        }),
        Expr::Any(items) => Kind::Any(pb::ExprList {
            items: items.iter().map(expr_to_pb).collect(),
        }),
        Expr::Not(inner) => Kind::Not(Box::new(expr_to_pb(inner))),
        Expr::Matcher(m) => Kind::Matcher(matcher_to_pb(m)),
    };
    pb::Expr { kind: Some(kind) }
}

fn matcher_to_pb(m: &Matcher) -> pb::Matcher {
    use pb::MatcherKind as K;
    let kind = match m {
        Matcher::Host(_) => K::Host,
        Matcher::HostRegexp(_) => K::HostRegexp,
        Matcher::Path(_) => K::Path,
        Matcher::PathPrefix(_) => K::PathPrefix,
        Matcher::PathRegexp(_) => K::PathRegexp,
        Matcher::Method(_) => K::Method,
        Matcher::Header(..) => K::Header,
        Matcher::HeaderRegexp(..) => K::HeaderRegexp,
        Matcher::Query(..) => K::Query,
        Matcher::QueryRegexp(..) => K::QueryRegexp,
        Matcher::ClientIp(_) => K::ClientIp,
    };
    pb::Matcher {
        kind: kind as i32,
        args: m.args().into_iter().map(str::to_owned).collect(),
    }
}

fn service_to_pb(s: &Service) -> pb::Service {
    use pb::service::Kind;
    let kind = match &s.kind {
        ServiceKind::LoadBalancer(lb) => Kind::LoadBalancer(pb::LoadBalancer {
            servers: lb
                .servers
                .iter()
                .map(|s| pb::Server {
                    url: s.url.clone(),
                    weight: s.weight,
                })
                .collect(),
            pass_host_header: lb.pass_host_header,
        }),
        ServiceKind::Weighted(children) => Kind::Weighted(pb::Weighted {
            services: children
                .iter()
                .map(|c| pb::WeightedService {
                    name: c.name.clone(),
                    weight: c.weight,
                })
                .collect(),
        }),
    };
    pb::Service {
        name: s.name.clone(),
        kind: Some(kind),
    }
}

fn header_values(list: &[(String, String)]) -> Vec<pb::HeaderValue> {
    list.iter()
        .map(|(name, value)| pb::HeaderValue {
            name: name.clone(),
            value: value.clone(),
        })
        .collect()
}

fn middleware_to_pb(m: &Middleware) -> pb::Middleware {
    use pb::middleware::Kind;
    let kind = match &m.kind {
        MiddlewareKind::StripPrefix { prefixes } => Kind::StripPrefix(pb::StripPrefix {
            prefixes: prefixes.clone(),
        }),
        MiddlewareKind::AddPrefix { prefix } => Kind::AddPrefix(pb::AddPrefix {
            prefix: prefix.clone(),
        }),
        MiddlewareKind::Headers { request, response } => Kind::Headers(pb::Headers {
            custom_request_headers: header_values(request),
            custom_response_headers: header_values(response),
        }),
        MiddlewareKind::RedirectScheme {
            scheme,
            port,
            permanent,
        } => Kind::RedirectScheme(pb::RedirectScheme {
            scheme: scheme.clone(),
            port: port.clone().unwrap_or_default(),
            permanent: *permanent,
        }),
        MiddlewareKind::Chain(names) => Kind::Chain(pb::Chain {
            middlewares: names.clone(),
        }),
    };
    pb::Middleware {
        name: m.name.clone(),
        kind: Some(kind),
    }
}

impl TryFrom<pb::Snapshot> for Snapshot {
    type Error = SnapshotError;

    fn try_from(s: pb::Snapshot) -> Result<Self, Self::Error> {
        Ok(Snapshot {
            entry_points: s
                .entry_points
                .into_iter()
                .map(entry_point_from_pb)
                .collect::<Result<_, _>>()?,
            routers: s
                .routers
                .into_iter()
                .map(router_from_pb)
                .collect::<Result<_, _>>()?,
            services: s
                .services
                .into_iter()
                .map(service_from_pb)
                .collect::<Result<_, _>>()?,
            middlewares: s
                .middlewares
                .into_iter()
                .map(middleware_from_pb)
                .collect::<Result<_, _>>()?,
            certificates: s
                .certificates
                .into_iter()
                .map(certificate_from_pb)
                .collect(),
            tls_options: s.tls_options.into_iter().map(tls_options_from_pb).collect(),
            default_certificate: s.default_certificate.map(certificate_from_pb),
            http_challenges: s
                .http_challenges
                .into_iter()
                .map(http_challenge_from_pb)
                .collect(),
            tls_challenges: s
                .tls_challenges
                .into_iter()
                .map(tls_challenge_from_pb)
                .collect(),
        })
    }
}

impl<R: Borrow<Router>> Snapshot<R> {
    /// The encoding of `pb::Snapshot::from(self)`, byte for byte, without building that wire
    /// form first: routers (the bulk of a big snapshot) are written field by field from the domain
    /// type, every other element through its own wire form, one at a time. At 50 000 routers the
    /// whole wire form was 50 000 copies of every router string, made and freed per change.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(128 * (self.routers.len() + self.services.len()) + 1024);
        let mut scratch = Vec::new();
        let mut element = |field: u32, buf: &mut Vec<u8>, write: &dyn Fn(&mut Vec<u8>)| {
            scratch.clear();
            write(&mut scratch);
            encode_key(field, WireType::LengthDelimited, buf);
            encode_varint(scratch.len() as u64, buf);
            buf.extend_from_slice(&scratch);
        };
        for e in &self.entry_points {
            element(1, &mut buf, &|b| entry_point_to_pb(e).encode_raw(b));
        }
        for r in &self.routers {
            element(2, &mut buf, &|b| encode_router(r.borrow(), b));
        }
        for s in &self.services {
            element(3, &mut buf, &|b| service_to_pb(s).encode_raw(b));
        }
        for m in &self.middlewares {
            element(4, &mut buf, &|b| middleware_to_pb(m).encode_raw(b));
        }
        for c in &self.certificates {
            element(5, &mut buf, &|b| certificate_to_pb(c).encode_raw(b));
        }
        for o in &self.tls_options {
            element(6, &mut buf, &|b| tls_options_to_pb(o).encode_raw(b));
        }
        if let Some(c) = &self.default_certificate {
            element(7, &mut buf, &|b| certificate_to_pb(c).encode_raw(b));
        }
        for c in &self.http_challenges {
            element(8, &mut buf, &|b| http_challenge_to_pb(c).encode_raw(b));
        }
        for c in &self.tls_challenges {
            element(9, &mut buf, &|b| tls_challenge_to_pb(c).encode_raw(b));
        }
        buf
    }
}

/// `router_to_pb(r).encode_raw(buf)` without the copy: the same fields in the same order, the
/// proto3 defaults (empty strings, zero) left out as prost leaves them out.
fn encode_router(r: &Router, buf: &mut Vec<u8>) {
    use prost::encoding::{int64, message, string};
    if !r.name.is_empty() {
        string::encode(1, &r.name, buf);
    }
    if !r.provider.is_empty() {
        string::encode(2, &r.provider, buf);
    }
    string::encode_repeated(3, &r.entry_points, buf);
    message::encode(4, &expr_to_pb(&r.rule), buf);
    if r.priority != 0 {
        int64::encode(5, &r.priority, buf);
    }
    string::encode_repeated(6, &r.middlewares, buf);
    if !r.service.is_empty() {
        string::encode(7, &r.service, buf);
    }
    if !r.rule_text.is_empty() {
        string::encode(8, &r.rule_text, buf);
    }
    if let Some(tls) = &r.tls {
        message::encode(
            9,
            &pb::RouterTls {
                options: tls.options.clone(),
            },
            buf,
        );
    }
}

impl Snapshot {
    /// Decodes an encoded `pb::Snapshot` (the bytes its version is the hash of) straight into the
    /// domain snapshot, one list element at a time, with the checks of
    /// `TryFrom<pb::Snapshot>`. The wire form of the whole snapshot never exists next to the
    /// result: at 50 000 routers that saves a second copy of every router at the peak of an apply
    /// and a pass over it. Unknown fields are skipped, as protobuf decoders do.
    pub fn decode(content: &[u8]) -> Result<Self, SnapshotError> {
        Self::decode_with(content, Text::Keep)
    }

    /// [`Snapshot::decode`] for serving: the routers' `rule_text` and `provider`, which are for
    /// humans and which a proxy never reads, are skipped rather than decoded (two allocations per
    /// router, ~4 MB at the peak of an apply at 50 000 routers) and left empty.
    pub fn decode_to_serve(content: &[u8]) -> Result<Self, SnapshotError> {
        Self::decode_with(content, Text::Skip)
    }

    fn decode_with(content: &[u8], text: Text) -> Result<Self, SnapshotError> {
        fn message_bytes(field: u32, value: Value<'_>) -> Result<&[u8], SnapshotError> {
            match value {
                Value::Bytes(bytes) => Ok(bytes),
                _ => Err(SnapshotError::Wire(format!(
                    "field {field} is not length-delimited"
                ))),
            }
        }
        fn element<M: Message + Default>(field: u32, value: Value<'_>) -> Result<M, SnapshotError> {
            M::decode(message_bytes(field, value)?)
                .map_err(|e| SnapshotError::Wire(format!("field {field}: {e}")))
        }
        // Every list sized exactly before the decode: growing by doubling would copy each list
        // several times and leave up to half of it unused, at the peak of the apply.
        let mut counts = [0usize; 10];
        for field in wire::fields(content) {
            let (number, _) = field.map_err(SnapshotError::Wire)?;
            if let Some(count) = counts.get_mut(number as usize) {
                *count += 1;
            }
        }
        let mut s = Snapshot {
            entry_points: Vec::with_capacity(counts[1]),
            routers: Vec::with_capacity(counts[2]),
            services: Vec::with_capacity(counts[3]),
            middlewares: Vec::with_capacity(counts[4]),
            certificates: Vec::with_capacity(counts[5]),
            tls_options: Vec::with_capacity(counts[6]),
            default_certificate: None,
            http_challenges: Vec::with_capacity(counts[8]),
            tls_challenges: Vec::with_capacity(counts[9]),
        };
        let mut default_certificate: Option<pb::Certificate> = None;
        for field in wire::fields(content) {
            let (number, value) = field.map_err(SnapshotError::Wire)?;
            match number {
                1 => s
                    .entry_points
                    .push(entry_point_from_pb(element(number, value)?)?),
                2 => s.routers.push(router_from_pb(match text {
                    Text::Keep => element(number, value)?,
                    Text::Skip => element::<ServedRouter>(number, value)?.into(),
                })?),
                3 => s.services.push(service_from_pb(element(number, value)?)?),
                4 => s
                    .middlewares
                    .push(middleware_from_pb(element(number, value)?)?),
                5 => s
                    .certificates
                    .push(certificate_from_pb(element(number, value)?)),
                6 => s
                    .tls_options
                    .push(tls_options_from_pb(element(number, value)?)),
                // A singular message field seen twice is merged, as protobuf specifies.
                7 => default_certificate
                    .get_or_insert_with(Default::default)
                    .merge(message_bytes(number, value)?)
                    .map_err(|e| SnapshotError::Wire(format!("field 7: {e}")))?,
                8 => s
                    .http_challenges
                    .push(http_challenge_from_pb(element(number, value)?)),
                9 => s
                    .tls_challenges
                    .push(tls_challenge_from_pb(element(number, value)?)),
                _ => {}
            }
        }
        s.default_certificate = default_certificate.map(certificate_from_pb);
        Ok(s)
    }
}

/// One encoded router (an element of `Snapshot.routers`) decoded as [`Snapshot::decode_to_serve`]
/// decodes it.
pub(crate) fn decode_router_to_serve(bytes: &[u8]) -> Result<Router, SnapshotError> {
    let wire =
        ServedRouter::decode(bytes).map_err(|e| SnapshotError::Wire(format!("field 2: {e}")))?;
    router_from_pb(wire.into())
}

/// One encoded service (an element of `Snapshot.services`), decoded.
pub(crate) fn decode_service(bytes: &[u8]) -> Result<Service, SnapshotError> {
    let wire =
        pb::Service::decode(bytes).map_err(|e| SnapshotError::Wire(format!("field 3: {e}")))?;
    service_from_pb(wire)
}

/// Whether [`Snapshot::decode_with`] keeps the text fields only humans read.
#[derive(Clone, Copy)]
enum Text {
    Keep,
    Skip,
}

/// `pb::Router` without `provider` (2) and `rule_text` (8): decoding skips them as unknown
/// fields, without allocating.
#[derive(Clone, PartialEq, Message)]
struct ServedRouter {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, repeated, tag = "3")]
    entry_points: Vec<String>,
    #[prost(message, optional, tag = "4")]
    rule: Option<pb::Expr>,
    #[prost(int64, tag = "5")]
    priority: i64,
    #[prost(string, repeated, tag = "6")]
    middlewares: Vec<String>,
    #[prost(string, tag = "7")]
    service: String,
    #[prost(message, optional, tag = "9")]
    tls: Option<pb::RouterTls>,
}

impl From<ServedRouter> for pb::Router {
    fn from(r: ServedRouter) -> Self {
        pb::Router {
            name: r.name,
            provider: String::new(),
            entry_points: r.entry_points,
            rule: r.rule,
            priority: r.priority,
            middlewares: r.middlewares,
            service: r.service,
            rule_text: String::new(),
            tls: r.tls,
        }
    }
}

fn entry_point_from_pb(e: pb::EntryPoint) -> Result<EntryPoint, SnapshotError> {
    if e.name.is_empty() || e.address.is_empty() {
        return Err(SnapshotError::EntryPoint {
            entry_point: e.name,
            reason: "name and address are required".into(),
        });
    }
    Ok(EntryPoint {
        name: e.name,
        address: e.address,
        redirect: e.redirect.map(|r| EntryPointRedirect {
            to: r.to,
            port: r.port,
            scheme: r.scheme,
            permanent: r.permanent,
        }),
    })
}

fn tls_options_from_pb(o: pb::TlsOptions) -> TlsOptions {
    TlsOptions {
        name: o.name,
        min_version: o.min_version,
        max_version: o.max_version,
        cipher_suites: o.cipher_suites,
        alpn_protocols: o.alpn_protocols,
        sni_strict: o.sni_strict,
        client_auth: o.client_auth.map(|c| ClientAuth {
            ca_pems: c.ca_pems,
            client_auth_type: c.client_auth_type,
        }),
    }
}

fn http_challenge_from_pb(c: pb::AcmeHttpChallenge) -> AcmeHttpChallenge {
    AcmeHttpChallenge {
        token: c.token,
        key_authorization: c.key_authorization,
        domain: c.domain,
        entry_point: c.entry_point,
    }
}

fn tls_challenge_from_pb(c: pb::AcmeTlsChallenge) -> AcmeTlsChallenge {
    AcmeTlsChallenge {
        domain: c.domain,
        cert_pem: c.cert_pem,
        key_pem: c.key_pem,
    }
}

fn router_from_pb(r: pb::Router) -> Result<Router, SnapshotError> {
    let fail = |reason: String| SnapshotError::Router {
        router: r.name.clone(),
        reason,
    };
    let rule = r
        .rule
        .as_ref()
        .ok_or_else(|| fail("has no rule".into()))
        .and_then(|e| expr_from_pb(e, 0).map_err(fail))?;
    if r.service.is_empty() {
        return Err(fail("has no service".into()));
    }
    Ok(Router {
        name: r.name,
        provider: r.provider,
        entry_points: exact(r.entry_points),
        rule,
        priority: r.priority,
        middlewares: exact(r.middlewares),
        service: r.service,
        rule_text: r.rule_text,
        tls: r.tls.map(|t| RouterTls { options: t.options }),
    })
}

/// `list` in an allocation of its own length. prost grows a repeated field as it decodes it
/// (room for 4 strings for a router's one entry point, 72 bytes unused); a decode keeps every
/// router's lists, so at 50 000 routers that slack was ~5 MB at the peak of an apply. The larger
/// block goes back to the allocator at once and is what the next router's decode reuses.
fn exact<T>(list: Vec<T>) -> Vec<T> {
    if list.capacity() == list.len() {
        return list;
    }
    let mut owned = Vec::with_capacity(list.len());
    owned.extend(list);
    owned
}

/// The decoded rule trees of `items`, in a list of exactly their number (`collect` through a
/// `Result` starts at room for 4 and doubles).
fn exprs_from_pb(items: &[pb::Expr], depth: usize) -> Result<Vec<Expr>, String> {
    let mut exprs = Vec::with_capacity(items.len());
    for item in items {
        exprs.push(expr_from_pb(item, depth)?);
    }
    Ok(exprs)
}

/// Decodes a rule tree, rejecting empty nodes, unknown matchers, wrong arity and excessive depth.
pub fn expr_from_pb(e: &pb::Expr, depth: usize) -> Result<Expr, String> {
    use pb::expr::Kind;
    if depth > MAX_RULE_DEPTH {
        return Err(format!("rule is nested deeper than {MAX_RULE_DEPTH}"));
    }
    match e.kind.as_ref() {
        None => Err("rule has an empty expression node".into()),
        Some(Kind::All(list)) | Some(Kind::Any(list)) if list.items.is_empty() => {
            Err("rule has an empty operator node".into())
        }
        Some(Kind::All(list)) => Ok(Expr::All(exprs_from_pb(&list.items, depth + 1)?)),
        Some(Kind::Any(list)) => Ok(Expr::Any(exprs_from_pb(&list.items, depth + 1)?)),
        Some(Kind::Not(inner)) => Ok(Expr::Not(Box::new(expr_from_pb(inner, depth + 1)?))),
        Some(Kind::Matcher(m)) => matcher_from_pb(m).map(Expr::Matcher),
    }
}

fn matcher_from_pb(m: &pb::Matcher) -> Result<Matcher, String> {
    use pb::MatcherKind as K;
    let kind = K::try_from(m.kind).map_err(|_| format!("unknown matcher kind {}", m.kind))?;
    let args = &m.args;
    let one = |name: &str| -> Result<String, String> {
        match args.as_slice() {
            [a] => Ok(a.clone()),
            _ => Err(format!("{name} takes 1 argument, got {}", args.len())),
        }
    };
    let two = |name: &str| -> Result<(String, String), String> {
        match args.as_slice() {
            [a, b] => Ok((a.clone(), b.clone())),
            _ => Err(format!("{name} takes 2 arguments, got {}", args.len())),
        }
    };
    let one_or_two = |name: &str| -> Result<(String, Option<String>), String> {
        match args.as_slice() {
            [a] => Ok((a.clone(), None)),
            [a, b] => Ok((a.clone(), Some(b.clone()))),
            _ => Err(format!("{name} takes 1 or 2 arguments, got {}", args.len())),
        }
    };
    Ok(match kind {
        K::Unspecified => return Err("matcher kind is unspecified".into()),
        K::Host => Matcher::Host(one("Host")?),
        K::HostRegexp => Matcher::HostRegexp(one("HostRegexp")?),
        K::Path => Matcher::Path(one("Path")?),
        K::PathPrefix => Matcher::PathPrefix(one("PathPrefix")?),
        K::PathRegexp => Matcher::PathRegexp(one("PathRegexp")?),
        K::Method => Matcher::Method(one("Method")?),
        K::Header => {
            let (k, v) = two("Header")?;
            Matcher::Header(Box::new((k, v)))
        }
        K::HeaderRegexp => {
            let (k, v) = two("HeaderRegexp")?;
            Matcher::HeaderRegexp(Box::new((k, v)))
        }
        K::Query => {
            let (k, v) = one_or_two("Query")?;
            Matcher::Query(Box::new((k, v)))
        }
        K::QueryRegexp => {
            let (k, v) = one_or_two("QueryRegexp")?;
            Matcher::QueryRegexp(Box::new((k, v)))
        }
        K::ClientIp => Matcher::ClientIp(one("ClientIP")?),
    })
}

fn service_from_pb(s: pb::Service) -> Result<Service, SnapshotError> {
    use pb::service::Kind;
    let kind = match s.kind {
        None => {
            return Err(SnapshotError::Service {
                service: s.name,
                reason: "has no type".into(),
            });
        }
        Some(Kind::LoadBalancer(lb)) => ServiceKind::LoadBalancer(LoadBalancer {
            servers: lb
                .servers
                .into_iter()
                .map(|s| Server {
                    url: s.url,
                    weight: s.weight,
                })
                .collect(),
            pass_host_header: lb.pass_host_header,
        }),
        Some(Kind::Weighted(w)) => ServiceKind::Weighted(
            w.services
                .into_iter()
                .map(|c| WeightedService {
                    name: c.name,
                    weight: c.weight,
                })
                .collect(),
        ),
    };
    Ok(Service { name: s.name, kind })
}

fn header_pairs(list: Vec<pb::HeaderValue>) -> Vec<(String, String)> {
    list.into_iter().map(|h| (h.name, h.value)).collect()
}

fn middleware_from_pb(m: pb::Middleware) -> Result<Middleware, SnapshotError> {
    use pb::middleware::Kind;
    let kind = match m.kind {
        None => {
            return Err(SnapshotError::Middleware {
                middleware: m.name,
                reason: "has no type".into(),
            });
        }
        Some(Kind::StripPrefix(s)) => MiddlewareKind::StripPrefix {
            prefixes: s.prefixes,
        },
        Some(Kind::AddPrefix(a)) => MiddlewareKind::AddPrefix { prefix: a.prefix },
        Some(Kind::Headers(h)) => MiddlewareKind::Headers {
            request: header_pairs(h.custom_request_headers),
            response: header_pairs(h.custom_response_headers),
        },
        Some(Kind::RedirectScheme(r)) => MiddlewareKind::RedirectScheme {
            scheme: r.scheme,
            port: (!r.port.is_empty()).then_some(r.port),
            permanent: r.permanent,
        },
        Some(Kind::Chain(c)) => MiddlewareKind::Chain(c.middlewares),
    };
    Ok(Middleware { name: m.name, kind })
}

#[cfg(test)]
mod tests;
