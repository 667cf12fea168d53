//! Table tests for the rule language (one per behaviour), the routing path, the order and the host
//! index (checked against a linear scan on random tables).

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr};

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use switchyard_shared::rule::{Expr, Matcher, default_priority};

use super::*;

// ---------------------------------------------------------------------------------------------
// Helpers

fn m(matcher: Matcher) -> Expr {
    Expr::Matcher(matcher)
}
fn host(h: &str) -> Expr {
    m(Matcher::Host(h.into()))
}
fn host_regexp(re: &str) -> Expr {
    m(Matcher::HostRegexp(re.into()))
}
fn path(p: &str) -> Expr {
    m(Matcher::Path(p.into()))
}
fn prefix(p: &str) -> Expr {
    m(Matcher::PathPrefix(p.into()))
}
fn path_regexp(re: &str) -> Expr {
    m(Matcher::PathRegexp(re.into()))
}
fn method(v: &str) -> Expr {
    m(Matcher::Method(v.into()))
}
fn header(k: &str, v: &str) -> Expr {
    m(Matcher::Header(Box::new((k.into(), v.into()))))
}
fn header_regexp(k: &str, re: &str) -> Expr {
    m(Matcher::HeaderRegexp(Box::new((k.into(), re.into()))))
}
fn query(k: &str, v: Option<&str>) -> Expr {
    m(Matcher::Query(Box::new((k.into(), v.map(Into::into)))))
}
fn query_regexp(k: &str, re: Option<&str>) -> Expr {
    m(Matcher::QueryRegexp(Box::new((
        k.into(),
        re.map(Into::into),
    ))))
}
fn client_ip(v: &str) -> Expr {
    m(Matcher::ClientIp(v.into()))
}
fn all(items: Vec<Expr>) -> Expr {
    Expr::All(items)
}
fn any(items: Vec<Expr>) -> Expr {
    Expr::Any(items)
}
fn not(e: Expr) -> Expr {
    Expr::Not(Box::new(e))
}

/// A request as the proxy sees it: raw host and raw path (turned into the routing path here).
#[derive(Clone)]
struct Req {
    host: String,
    path: String,
    query: Option<String>,
    method: Method,
    headers: HeaderMap,
    ip: IpAddr,
}

impl Req {
    fn new() -> Self {
        Req {
            host: String::new(),
            path: "/".into(),
            query: None,
            method: Method::GET,
            headers: HeaderMap::new(),
            ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        }
    }
    fn host(mut self, h: &str) -> Self {
        self.host = h.into();
        self
    }
    fn path(mut self, p: &str) -> Self {
        self.path = p.into();
        self
    }
    fn query(mut self, q: Option<&str>) -> Self {
        self.query = q.map(Into::into);
        self
    }
    fn method(mut self, m: Method) -> Self {
        self.method = m;
        self
    }
    fn header(mut self, k: &str, v: &[u8]) -> Self {
        self.headers.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_bytes(v).unwrap(),
        );
        self
    }
    fn ip(mut self, ip: &str) -> Self {
        self.ip = ip.parse().unwrap();
        self
    }

    /// Routes `self` through `table` (index and linear scan must agree) and returns the payload.
    fn route<'t, T: PartialEq + std::fmt::Debug>(&self, table: &'t RouteTable<T>) -> Option<&'t T> {
        let path = routing_path(&self.path).unwrap();
        let view = RequestView {
            host: &self.host,
            path: &path,
            query: self.query.as_deref(),
            method: &self.method,
            headers: Headers::Map(&self.headers),
            client_ip: self.ip,
        };
        let found = table.find(&view);
        assert_eq!(found, find_linear(table, &view), "index and scan disagree");
        found
    }
}

/// The reference: every route in order, no index.
fn find_linear<'t, T>(table: &'t RouteTable<T>, req: &RequestView<'_>) -> Option<&'t T> {
    let canonical = canonical_host(req.host);
    let ctx = Ctx {
        canonical: &canonical,
        host: strip_trailing_dot(&canonical),
        req,
        client_ip: req.client_ip.to_canonical(),
    };
    table
        .routes
        .iter()
        .find(|r| r.node.eval(&ctx))
        .map(|r| &r.payload)
}

fn one(rule: &Expr) -> RouteTable<()> {
    RouteTable::build([RouteInput {
        name: "r@test",
        rule,
        priority: 1,
        payload: (),
    }])
    .unwrap()
}

/// Asserts, for each request, whether `rule` matches it.
fn check(rule: Expr, cases: &[(Req, bool)]) {
    let table = one(&rule);
    for (req, want) in cases {
        let got = req.route(&table).is_some();
        assert_eq!(
            got, *want,
            "{rule} on host={:?} path={:?} query={:?} method={} headers={:?} ip={}",
            req.host, req.path, req.query, req.method, req.headers, req.ip
        );
    }
}

fn check_hosts(rule: Expr, cases: &[(&str, bool)]) {
    let cases: Vec<_> = cases
        .iter()
        .map(|&(h, want)| (Req::new().host(h), want))
        .collect();
    check(rule, &cases);
}

fn check_paths(rule: Expr, cases: &[(&str, bool)]) {
    let cases: Vec<_> = cases
        .iter()
        .map(|&(p, want)| (Req::new().path(p), want))
        .collect();
    check(rule, &cases);
}

fn check_queries(rule: Expr, cases: &[(Option<&str>, bool)]) {
    let cases: Vec<_> = cases
        .iter()
        .map(|&(q, want)| (Req::new().query(q), want))
        .collect();
    check(rule, &cases);
}

fn check_ips(rule: Expr, cases: &[(&str, bool)]) {
    let cases: Vec<_> = cases
        .iter()
        .map(|&(ip, want)| (Req::new().ip(ip), want))
        .collect();
    check(rule, &cases);
}

// ---------------------------------------------------------------------------------------------
// Host

#[test]
fn host_is_case_insensitive() {
    check_hosts(
        host("example.com"),
        &[
            ("example.com", true),
            ("EXAMPLE.Com", true),
            ("example.org", false),
            ("www.example.com", false),
        ],
    );
}

#[test]
fn host_ignores_port() {
    check_hosts(
        host("example.com"),
        &[
            ("example.com:8080", true),
            ("Example.com:443", true),
            ("example.com:", true),
        ],
    );
}

#[test]
fn host_ignores_trailing_dot_on_either_side() {
    check_hosts(
        host("example.com"),
        &[
            ("example.com.", true),
            ("example.com.:80", true),
            ("example.com..", false),
        ],
    );
    // The controller strips the rule's dot; a rule that still has one behaves the same.
    check_hosts(
        host("example.com."),
        &[
            ("example.com", true),
            ("example.com.", true),
            ("example.org", false),
        ],
    );
}

#[test]
fn host_trims_spaces() {
    check_hosts(
        host("example.com"),
        &[(" example.com ", true), ("example.com :80", true)],
    );
}

#[test]
fn host_matches_ipv6_without_brackets() {
    check_hosts(
        host("::1"),
        &[
            ("[::1]:8080", true),
            ("[::1]", true),
            ("::1", true),
            ("[::2]:80", false),
        ],
    );
    check_hosts(host("2001:db8::1"), &[("[2001:DB8::1]:443", true)]);
}

#[test]
fn empty_host_never_matches() {
    check_hosts(
        host("example.com"),
        &[("", false), (":80", false), (".", false)],
    );
    check_hosts(host("*.example.com"), &[("", false)]);
}

#[test]
fn host_with_port_never_matches() {
    check_hosts(
        host("example.com:8080"),
        &[
            ("example.com:8080", false),
            ("example.com", false),
            ("[example.com:8080]", false),
        ],
    );
}

#[test]
fn wildcard_matches_one_label() {
    check_hosts(
        host("*.example.com"),
        &[
            ("a.example.com", true),
            ("WWW.Example.COM:443", true),
            ("a.example.com.", true),
            ("example.com", false),
            ("a.b.example.com", false),
            ("aexample.com", false),
            ("a.example.org", false),
            // Traefik replaces the first label whatever it is, even empty.
            (".example.com", true),
        ],
    );
}

#[test]
fn star_matches_everything_even_without_host() {
    check_hosts(
        host("*"),
        &[
            ("", true),
            ("example.com", true),
            ("a.b.c:80", true),
            ("[::1]", true),
        ],
    );
}

#[test]
fn star_dot_matches_one_label_hosts() {
    // `*.` survives the controller (it is not `*`); in Traefik it matches dot-less hosts.
    check_hosts(
        host("*."),
        &[
            ("localhost", true),
            ("localhost.", true),
            ("LOCALHOST:80", true),
            ("a.b", false),
            ("", false),
        ],
    );
}

#[test]
fn host_regexp_is_unanchored_on_lowercased_host_without_port() {
    check_hosts(
        host_regexp(r"^[a-z]+\.example\.com$"),
        &[
            ("FOO.example.com:8080", true),
            ("foo.example.com", true),
            ("1.example.com", false),
            // No trailing-dot normalisation for HostRegexp.
            ("foo.example.com.", false),
        ],
    );
    check_hosts(
        host_regexp("example"),
        &[("www.example.com", true), ("[::1]:80", false)],
    );
    check_hosts(host_regexp(r"^::1$"), &[("[::1]:80", true)]);
}

#[test]
fn normalize_host_strips_port_brackets_case_and_dot() {
    let cases = [
        ("example.com", "example.com"),
        ("Example.COM:8080", "example.com"),
        ("example.com.", "example.com"),
        ("example.com.:443", "example.com"),
        (" example.com ", "example.com"),
        ("[::1]:80", "::1"),
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("[FE80::1]:", "fe80::1"),
        ("a:b:c", "a:b:c"),
        // Go's SplitHostPort failures keep the input (minus enclosing brackets).
        ("[a]b:80", "[a]b:80"),
        ("[x]:80]", "x]:80"),
        ("a[b:80", "a[b:80"),
        ("[a:80", "[a:80"),
        ("", ""),
        ("ÉCOLE.fr", "école.fr"),
    ];
    for (raw, want) in cases {
        assert_eq!(normalize_host(raw), want, "{raw:?}");
    }
}

#[test]
fn normalize_host_borrows_when_already_normal() {
    for raw in [
        "example.com",
        "example.com:443",
        "example.com.",
        "[::1]:80",
        "",
    ] {
        assert!(
            matches!(normalize_host(raw), Cow::Borrowed(_)),
            "{raw:?} allocated"
        );
    }
    assert!(matches!(normalize_host("Example.com"), Cow::Owned(_)));
}

// ---------------------------------------------------------------------------------------------
// Path

#[test]
fn path_is_exact() {
    check_paths(
        path("/foo"),
        &[
            ("/foo", true),
            ("/foo/", false),
            ("/foo/bar", false),
            ("/FOO", false),
            ("/fo", false),
        ],
    );
}

#[test]
fn path_decodes_unreserved_escapes() {
    check_paths(
        path("/foo"),
        &[("/f%6Fo", true), ("/f%6fo", true), ("/%66%6F%6F", true)],
    );
    check_paths(path("/a b"), &[("/a%20b", true)]);
    check_paths(path("/café"), &[("/caf%C3%A9", true), ("/caf%c3%a9", true)]);
}

#[test]
fn path_keeps_reserved_escapes() {
    check_paths(
        prefix("/foo/bar"),
        &[
            ("/foo%2Fbar", false),
            ("/foo%2fbar", false),
            ("/foo/bar", true),
        ],
    );
    check_paths(
        path("/foo%2Fbar"),
        &[
            ("/foo%2Fbar", true),
            ("/foo%2fbar", true),
            ("/foo/bar", false),
        ],
    );
    check_paths(path("/100%25"), &[("/100%25", true)]);
}

#[test]
fn path_keeps_trailing_slash() {
    check_paths(
        path("/foo/"),
        &[
            ("/foo/", true),
            ("/foo//", true),
            ("/foo", false),
            ("/foo/./", true),
        ],
    );
}

#[test]
fn path_resolves_dot_segments() {
    check_paths(
        path("/b"),
        &[
            ("/a/../b", true),
            ("/../b", true),
            ("/./b", true),
            ("//b", true),
            ("/a/%2E%2E/b", true),
            ("/a/%2e%2e/b", true),
            ("/a/..%2Fb", false),
        ],
    );
}

#[test]
fn prefix_is_plain() {
    check_paths(
        prefix("/api"),
        &[
            ("/api", true),
            ("/api/v1", true),
            ("/apix", true),
            ("/ap", false),
            ("/API", false),
            ("/%61pi", true),
            ("/x/../api/x", true),
        ],
    );
    check_paths(prefix("/"), &[("/", true), ("/anything", true)]);
}

#[test]
fn path_regexp_is_unanchored() {
    check_paths(
        path_regexp(r"^/v[0-9]+/"),
        &[("/v2/x", true), ("/x/v2/", false), ("/v/", false)],
    );
    check_paths(path_regexp("v[0-9]"), &[("/x/v2", true), ("/x", false)]);
    check_paths(path_regexp("%2F"), &[("/a%2fb", true)]);
}

#[test]
fn routing_path_normalises() {
    let cases = [
        ("/", "/"),
        ("/foo", "/foo"),
        ("/f%6Fo", "/foo"),
        ("/%41%42", "/AB"),
        ("/~%7E%7e", "/~~~"),
        ("/foo%2Fbar", "/foo%2Fbar"),
        ("/foo%2fbar", "/foo%2Fbar"),
        ("/%3a%40", "/%3A%40"),
        ("/%25", "/%25"),
        ("/%2541", "/%2541"),
        ("/a%20b", "/a b"),
        ("/caf%C3%A9", "/café"),
        ("/café", "/café"),
        ("/x%ff", "/x%FF"),
        ("/x%C3", "/x%C3"),
        ("/%C3%A9%FF%41", "/é%FFA"),
        ("/a//b", "/a/b"),
        ("/a/./b", "/a/b"),
        ("/a/../b", "/b"),
        ("/../a", "/a"),
        ("/a/b/", "/a/b/"),
        ("/a/b/.", "/a/b"),
        ("/a/b/..", "/a"),
        ("/a/b/../", "/a/"),
        ("//", "/"),
        ("/a/%2E/b", "/a/b"),
        ("/a%2F..%2Fb", "/a%2F..%2Fb"),
        ("/a/...", "/a/..."),
        ("/.well-known/x", "/.well-known/x"),
        ("/a/..b/", "/a/..b/"),
        ("/a/.", "/a"),
        ("/.", "/"),
        ("/..", "/"),
        ("*", "*"),
        ("", "/"),
    ];
    for (raw, want) in cases {
        assert_eq!(routing_path(raw).as_deref(), Ok(want), "{raw:?}");
    }
}

/// Observed on Traefik 3.7.15 by the conformance suite (`tests/conformance/008-*`, `009-*`).
#[test]
fn forwarded_path_decodes_only_unreserved_escapes_and_cleans() {
    let cases = [
        ("/", "/"),
        ("/foo/bar", "/foo/bar"),
        ("/%66oo/bar", "/foo/bar"),
        ("/%7euser", "/~user"),
        ("/foo%2fbar", "/foo%2Fbar"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/caf%C3%A9", "/caf%C3%A9"),
        ("/a%20b", "/a%20b"),
        ("/a%ff", "/a%FF"),
        ("/a%3bb", "/a%3Bb"),
        ("/public/../admin", "/admin"),
        ("/public/%2e%2e/admin", "/admin"),
        ("/public/..%2Fadmin", "/public/..%2Fadmin"),
        ("//admin", "/admin"),
        ("/x/y/../", "/x/"),
        ("/x/.", "/x"),
        ("/a/...", "/a/..."),
        ("/a\"b", "/a%22b"),
        ("/a{b}|^\\", "/a%7Bb%7D%7C%5E%5C"),
        ("/café", "/caf%C3%A9"),
        ("/a:b@c!$&'()*,;=[]", "/a:b@c!$&'()*,;=[]"),
    ];
    for (raw, want) in cases {
        assert_eq!(forwarded_path(raw).as_deref(), Ok(want), "{raw:?}");
    }
    assert!(matches!(forwarded_path("/a%2Fb"), Ok(Cow::Borrowed(_))));
    for raw in ["/%zz", "/%4", "/a%"] {
        assert_eq!(forwarded_path(raw), Err(InvalidPath), "{raw:?}");
    }
}

#[test]
fn routing_path_rejects_invalid_escapes() {
    for raw in ["/%zz", "/%4", "/%", "/a%g0", "/%%41", "/%C3%", "/ok/%2"] {
        assert_eq!(routing_path(raw), Err(InvalidPath), "{raw:?}");
    }
}

#[test]
fn routing_path_borrows_when_unchanged() {
    for raw in [
        "/",
        "/foo/bar",
        "/foo/bar/",
        "/a%2Fb",
        "/a-b_c~d.e",
        "/.well-known/x",
        "/a/...",
    ] {
        assert!(
            matches!(routing_path(raw), Ok(Cow::Borrowed(_))),
            "{raw:?} allocated"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Method, headers, query, client IP

#[test]
fn method_is_exact() {
    let get = Method::from_bytes(b"get").unwrap();
    check(
        method("GET"),
        &[
            (Req::new().method(Method::GET), true),
            (Req::new().method(Method::POST), false),
            (Req::new().method(get), false),
        ],
    );
}

#[test]
fn header_matches_any_value_exactly() {
    check(
        header("X-Env", "prod"),
        &[
            (Req::new().header("x-env", b"prod"), true),
            (Req::new().header("X-ENV", b"prod"), true),
            (
                Req::new().header("x-env", b"dev").header("x-env", b"prod"),
                true,
            ),
            (Req::new().header("x-env", b"Prod"), false),
            (Req::new().header("x-env", b"prod, dev"), false),
            (Req::new().header("x-other", b"prod"), false),
            (Req::new(), false),
        ],
    );
}

#[test]
fn header_host_never_matches() {
    // Go keeps the Host header out of `req.Header`, so Traefik never sees it there.
    check(
        header("Host", "example.com"),
        &[(
            Req::new()
                .host("example.com")
                .header("host", b"example.com"),
            false,
        )],
    );
    check(
        header_regexp("Host", "."),
        &[(Req::new().header("host", b"example.com"), false)],
    );
}

#[test]
fn header_regexp_matches_any_value_unanchored() {
    check(
        header_regexp("X-Env", "^pr"),
        &[
            (
                Req::new().header("x-env", b"dev").header("x-env", b"prod"),
                true,
            ),
            (Req::new().header("x-env", b"pr\xff"), true),
            (Req::new().header("x-env", b"dev"), false),
            (Req::new(), false),
        ],
    );
    check(
        header_regexp("User-Agent", "curl"),
        &[(Req::new().header("user-agent", b"x curl/8"), true)],
    );
}

#[test]
fn query_matches_any_value() {
    check_queries(
        query("k", Some("v")),
        &[
            (Some("k=v"), true),
            (Some("a=1&k=v"), true),
            (Some("k=w&k=v"), true),
            (Some("k=w"), false),
            (Some("k"), false),
            (Some("kk=v"), false),
            (Some(""), false),
            (None, false),
        ],
    );
}

#[test]
fn query_decodes_keys_and_values() {
    check_queries(
        query("k", Some("v")),
        &[
            (Some("%6B=v"), true),
            (Some("k=%76"), true),
            (Some("k=v+"), false),
        ],
    );
    check_queries(
        query("k", Some("a b")),
        &[
            (Some("k=a+b"), true),
            (Some("k=a%20b"), true),
            (Some("k=a b"), true),
        ],
    );
    check_queries(query("k", Some("v=w")), &[(Some("k=v=w"), true)]);
    check_queries(query("a+b", Some("v")), &[(Some("a+b=v"), false)]);
}

#[test]
fn query_skips_invalid_pairs() {
    check_queries(
        query("k", Some("v")),
        &[
            (Some("k=v;x=1"), false),
            (Some("x=1;k=v"), false),
            (Some("x=1;y&k=v"), true),
            (Some("k=v%zz"), false),
            (Some("k=%zz&k=v"), true),
            (Some("k%=v"), false),
            (Some("&&k=v&"), true),
        ],
    );
}

#[test]
fn query_without_value_means_empty_value() {
    check_queries(
        query("k", None),
        &[
            (Some("k"), true),
            (Some("k="), true),
            (Some("x=1&k"), true),
            (Some("k=v&k"), true),
            (Some("k=v"), false),
            (Some("kk"), false),
            (Some(""), false),
            (None, false),
        ],
    );
}

#[test]
fn query_regexp_matches_any_value() {
    check_queries(
        query_regexp("k", Some("^[0-9]+$")),
        &[
            (Some("k=42"), true),
            (Some("k=a&k=7"), true),
            (Some("k=%34%32"), true),
            (Some("k=4a"), false),
            (Some("k=4%zz"), false),
            (Some("x=1"), false),
        ],
    );
    check_queries(
        query_regexp("k", Some("[0-9]")),
        &[(Some("k=a1"), true), (Some("k=%ff1"), true)],
    );
}

#[test]
fn query_regexp_without_value_behaves_as_query() {
    check_queries(
        query_regexp("k", None),
        &[(Some("k"), true), (Some("k="), true), (Some("k=v"), false)],
    );
}

#[test]
fn client_ip_matches_address() {
    check_ips(
        client_ip("192.0.2.10"),
        &[
            ("192.0.2.10", true),
            ("192.0.2.11", false),
            ("::ffff:192.0.2.10", true),
            ("::1", false),
        ],
    );
    check_ips(client_ip("::1"), &[("::1", true), ("127.0.0.1", false)]);
}

#[test]
fn client_ip_matches_cidr() {
    check_ips(
        client_ip("10.0.0.0/8"),
        &[
            ("10.1.2.3", true),
            ("11.0.0.1", false),
            ("::ffff:10.9.9.9", true),
            ("::1", false),
        ],
    );
    check_ips(
        client_ip("2001:db8::/32"),
        &[
            ("2001:db8::1", true),
            ("2001:db9::1", false),
            ("10.0.0.1", false),
        ],
    );
    // Host bits in the rule are ignored, as Go's ParseCIDR does.
    check_ips(client_ip("10.1.2.3/8"), &[("10.200.0.1", true)]);
}

#[test]
fn client_ip_v4_mapped_rule_matches_v4_client() {
    check_ips(
        client_ip("::ffff:10.0.0.0/104"),
        &[
            ("10.1.2.3", true),
            ("::ffff:10.1.2.3", true),
            ("11.0.0.1", false),
        ],
    );
    check_ips(client_ip("::ffff:192.0.2.1"), &[("192.0.2.1", true)]);
}

// ---------------------------------------------------------------------------------------------
// Operators

#[test]
fn all_requires_every_item() {
    check(
        all(vec![host("example.com"), prefix("/api")]),
        &[
            (Req::new().host("example.com").path("/api/x"), true),
            (Req::new().host("example.com").path("/web"), false),
            (Req::new().host("other.com").path("/api"), false),
        ],
    );
    check(all(vec![]), &[(Req::new(), true)]);
}

#[test]
fn any_requires_one_item() {
    check(
        any(vec![host("a.com"), host("*.b.com"), path("/x")]),
        &[
            (Req::new().host("a.com"), true),
            (Req::new().host("www.b.com"), true),
            (Req::new().host("c.com").path("/x"), true),
            (Req::new().host("c.com"), false),
        ],
    );
    check(any(vec![]), &[(Req::new(), false)]);
}

#[test]
fn not_negates() {
    check(
        not(host("example.com")),
        &[
            (Req::new().host("example.com"), false),
            (Req::new().host("other.com"), true),
            (Req::new(), true),
        ],
    );
    check(
        all(vec![host("example.com"), not(prefix("/admin"))]),
        &[
            (Req::new().host("example.com").path("/x"), true),
            (Req::new().host("example.com").path("/admin/x"), false),
        ],
    );
    check(not(not(host("a.com"))), &[(Req::new().host("A.com"), true)]);
}

#[test]
fn nested_operators() {
    // (Host(a) || Host(b)) && (Method(POST) || !Query(debug))
    let rule = all(vec![
        any(vec![host("a.com"), host("b.com")]),
        any(vec![method("POST"), not(query("debug", None))]),
    ]);
    check(
        rule,
        &[
            (Req::new().host("b.com"), true),
            (Req::new().host("b.com").query(Some("debug")), false),
            (
                Req::new()
                    .host("a.com")
                    .query(Some("debug"))
                    .method(Method::POST),
                true,
            ),
            (Req::new().host("c.com"), false),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// Order

/// Builds a table of `(name, rule text for the default priority or explicit priority, rule)`.
fn table(routes: &[(&'static str, i64, Expr)]) -> RouteTable<&'static str> {
    RouteTable::build(routes.iter().map(|(name, priority, rule)| RouteInput {
        name,
        rule,
        priority: *priority,
        payload: *name,
    }))
    .unwrap()
}

#[test]
fn order_is_priority_then_name() {
    let regexp_text = r"HostRegexp(`[a-z]+\.traefik\.com`)";
    let host_text = "Host(`foobar.traefik.com`)";
    assert_eq!(default_priority(regexp_text), 34);
    assert_eq!(default_priority(host_text), 26);
    let regexp = host_regexp(r"[a-z]+\.traefik\.com");
    let exact = host("foobar.traefik.com");
    let foobar = Req::new().host("foobar.traefik.com");

    struct Case {
        what: &'static str,
        routes: Vec<(&'static str, i64, Expr)>,
        req: Req,
        want: Option<&'static str>,
    }
    let cases = [
        Case {
            what: "default priorities: the longer HostRegexp outranks Host (Traefik docs)",
            routes: vec![
                ("host@file", 26, exact.clone()),
                ("regexp@file", 34, regexp.clone()),
            ],
            req: foobar.clone(),
            want: Some("regexp@file"),
        },
        Case {
            what: "explicit priority fixes it",
            routes: vec![
                ("host@file", 35, exact.clone()),
                ("regexp@file", 34, regexp.clone()),
            ],
            req: foobar.clone(),
            want: Some("host@file"),
        },
        Case {
            what: "lower priority still serves what the higher one does not match",
            routes: vec![
                ("host@file", 26, exact.clone()),
                ("regexp@file", 34, regexp.clone()),
            ],
            req: Req::new().host("foobar.traefik.org"),
            want: None,
        },
        Case {
            what: "negative priority ranks below zero and default ones",
            routes: vec![
                ("catchall@file", -1, prefix("/")),
                ("zero@file", 0, prefix("/api")),
            ],
            req: Req::new().path("/api/x"),
            want: Some("zero@file"),
        },
        Case {
            what: "negative priority still matches when nothing else does",
            routes: vec![
                ("catchall@file", -1, prefix("/")),
                ("zero@file", 0, prefix("/api")),
            ],
            req: Req::new().path("/web"),
            want: Some("catchall@file"),
        },
        Case {
            what: "ties break by name ascending, whatever the input order",
            routes: vec![
                ("b@file", 10, prefix("/")),
                ("a@file", 10, prefix("/")),
                ("c@file", 10, prefix("/")),
            ],
            req: Req::new(),
            want: Some("a@file"),
        },
        Case {
            what: "host-indexed and generic routes interleave by priority",
            routes: vec![
                ("generic-high@file", 100, prefix("/")),
                ("host@file", 50, exact.clone()),
            ],
            req: foobar.clone(),
            want: Some("generic-high@file"),
        },
        Case {
            what: "an exact-host route beats a lower generic one",
            routes: vec![
                ("generic-low@file", 1, prefix("/")),
                ("host@file", 50, exact.clone()),
                ("wild@file", 60, host("*.traefik.com")),
            ],
            req: foobar.clone(),
            want: Some("wild@file"),
        },
        Case {
            what: "extreme priorities sort without overflow",
            routes: vec![
                ("min@file", i64::MIN, prefix("/")),
                ("max@file", i64::MAX, prefix("/")),
            ],
            req: Req::new(),
            want: Some("max@file"),
        },
    ];
    for case in cases {
        let t = table(&case.routes);
        assert_eq!(case.req.route(&t).copied(), case.want, "{}", case.what);
    }
}

#[test]
fn routes_are_stored_in_match_order() {
    let t = table(&[
        ("b@x", 1, prefix("/")),
        ("a@x", 1, prefix("/")),
        ("z@x", 5, prefix("/")),
        ("n@x", -5, prefix("/")),
    ]);
    let names: Vec<_> = t.routes.iter().map(|r| r.payload).collect();
    assert_eq!(names, ["z@x", "a@x", "b@x", "n@x"]);
    assert_eq!(t.len(), 4);
    assert!(!t.is_empty());
}

#[test]
fn table_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<RouteTable<std::sync::Arc<String>>>();
}

#[test]
fn routes_with_one_name_and_priority_keep_their_input_order() {
    // Names in order (the snapshot's case) and out of order take different sorts; in both the
    // earlier of two same-named, same-priority routes wins, and priority still comes first.
    for names in [["a", "a", "b", "c"], ["c", "a", "a", "b"]] {
        let rule = prefix("/");
        let t = RouteTable::build(names.iter().enumerate().map(|(i, name)| RouteInput {
            name,
            rule: &rule,
            priority: if *name == "b" { 5 } else { 10 },
            payload: i,
        }))
        .unwrap();
        let first_a = names.iter().position(|n| *n == "a").unwrap();
        assert_eq!(Req::new().route(&t), Some(&first_a), "{names:?}");
        let order: Vec<usize> = t.routes.iter().map(|r| r.payload).collect();
        let pos = |n: &str| names.iter().position(|m| *m == n).unwrap();
        assert_eq!(
            order,
            [first_a, first_a + 1, pos("c"), pos("b")],
            "{names:?}: a, a (input order), c, then b (lower priority)"
        );
    }
}

#[test]
fn empty_table_matches_nothing() {
    let t: RouteTable<()> = RouteTable::build([]).unwrap();
    assert!(t.is_empty());
    assert_eq!(Req::new().host("a.com").route(&t), None);
    assert!(RouteTable::<()>::default().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Build errors

#[test]
fn bad_regex_names_router() {
    for rule in [
        path_regexp("("),
        host_regexp("[a-"),
        header_regexp("X", "*"),
        query_regexp("k", Some("(?P<")),
        // Nested in an operator, and a construct neither RE2 nor `regex` has (back-reference).
        all(vec![host("a.com"), path_regexp(r"(a)\1")]),
    ] {
        let err = RouteTable::build([RouteInput {
            name: "api@docker",
            rule: &rule,
            priority: 1,
            payload: (),
        }])
        .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, RouterError::Regex { .. }), "{rule}: {text}");
        assert!(text.contains("api@docker"), "{text}");
    }
}

#[test]
fn bad_client_ip_names_router() {
    for value in ["10.0.0.0/33", "not-an-ip", "010.0.0.1", "fe80::1%eth0", ""] {
        let rule = client_ip(value);
        let err = RouteTable::build([RouteInput {
            name: "lan@file",
            rule: &rule,
            priority: 1,
            payload: (),
        }])
        .unwrap_err();
        assert!(
            matches!(err, RouterError::ClientIp { .. }),
            "{value}: {err}"
        );
        assert!(err.to_string().contains("lan@file"), "{err}");
    }
}

// ---------------------------------------------------------------------------------------------
// Host index

#[test]
fn path_index_looks_up_only_the_prefixes_of_the_request_path() {
    // 10 000 PathPrefix routers under one host, plus host-free and regexp routes.
    let rules: Vec<(String, Expr)> = (0..10_000)
        .map(|i| {
            let rule = all(vec![host("app.test"), prefix(&format!("/p{i}"))]);
            (format!("r{i:05}"), rule)
        })
        .chain([
            ("exact".into(), all(vec![host("app.test"), path("/p12/x")])),
            ("re".into(), all(vec![host("app.test"), path_regexp("^/q")])),
            ("either".into(), any(vec![prefix("/p77"), prefix("/z")])),
            ("y".into(), prefix("/y")),
        ])
        .collect();
    let t = RouteTable::build(rules.iter().map(|(name, rule)| RouteInput {
        name,
        rule,
        priority: default_priority(&rule.to_string()),
        payload: name.clone(),
    }))
    .unwrap();
    let candidates = |p: &str| -> Vec<&str> {
        let mut names: Vec<&str> = t
            .candidates("app.test", p)
            .map(|i| t.routes[i as usize].payload.as_str())
            .collect();
        names.sort_unstable();
        names
    };
    // `/p1234/x` can only be matched by the prefixes /p1, /p12, /p123, /p1234 and the route
    // without a path requirement.
    assert_eq!(
        candidates("/p1234/x"),
        ["r00001", "r00012", "r00123", "r01234", "re"]
    );
    assert_eq!(candidates("/p12/x"), ["exact", "r00001", "r00012", "re"]);
    assert_eq!(candidates("/z/1"), ["either", "re"]);
    assert_eq!(candidates("/nothing"), ["re"]);
    let route = |p: &str| Req::new().host("app.test").path(p).route(&t).cloned();
    // Longest rule wins (default priority), as in a linear scan (`route` checks both agree).
    assert_eq!(route("/p1234/x").as_deref(), Some("r01234"));
    // `…PathPrefix(`/p12`)` is a longer rule than `…Path(`/p12/x`)`.
    assert_eq!(route("/p12/x").as_deref(), Some("r00012"));
    // The host-free `either` is the longer rule.
    assert_eq!(route("/p77/x").as_deref(), Some("either"));
    assert_eq!(route("/q").as_deref(), Some("re"));
    assert_eq!(route("/nothing"), None);
    assert_eq!(
        Req::new()
            .host("other.test")
            .path("/z")
            .route(&t)
            .map(String::as_str),
        Some("either")
    );
}

#[test]
fn index_skips_routes_for_other_hosts() {
    let rules: Vec<(String, Expr)> = (0..1000)
        .map(|i| {
            let rule = all(vec![host(&format!("h{i}.example.com")), prefix("/")]);
            (format!("r{i:04}@file"), rule)
        })
        .chain([
            ("wild@file".into(), host("*.example.com")),
            ("catchall@file".into(), prefix("/")),
            ("not@file".into(), not(host("h1.example.com"))),
            (
                "any@file".into(),
                any(vec![host("h7.example.com"), host("x.org")]),
            ),
        ])
        .collect();
    let t = RouteTable::build(rules.iter().map(|(name, rule)| RouteInput {
        name,
        rule,
        priority: 0,
        payload: name.clone(),
    }))
    .unwrap();
    let candidates = |h: &str| -> Vec<&str> {
        t.candidates(&normalize_host(h), "/")
            .map(|i| t.routes[i as usize].payload.as_str())
            .collect()
    };
    assert_eq!(
        candidates("H7.example.com:443"),
        [
            "any@file",
            "catchall@file",
            "not@file",
            "r0007@file",
            "wild@file"
        ]
    );
    assert_eq!(
        candidates("x.org"),
        ["any@file", "catchall@file", "not@file"]
    );
    assert_eq!(candidates(""), ["catchall@file", "not@file"]);
    assert_eq!(
        Req::new()
            .host("h42.example.com")
            .route(&t)
            .map(String::as_str),
        Some("catchall@file")
    );
}

/// Deterministic xorshift64* so the test needs no dependency and always sees the same tables.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

const HOSTS: &[&str] = &[
    "a.example.com",
    "b.example.com",
    "example.com",
    "x.a.example.com",
    "other.org",
    "localhost",
    "::1",
];

fn random_expr(rng: &mut Rng, depth: u32) -> Expr {
    let leaf = depth == 0 || rng.below(3) > 0;
    if !leaf {
        let n = 1 + rng.below(3);
        let items = (0..n).map(|_| random_expr(rng, depth - 1)).collect();
        return match rng.below(3) {
            0 => all(items),
            1 => any(items),
            _ => not(random_expr(rng, depth - 1)),
        };
    }
    match rng.below(10) {
        0..=3 => host(rng.pick(HOSTS)),
        4 => host(rng.pick(&[
            "*.example.com",
            "*.a.example.com",
            "*",
            "*.",
            "example.com:80",
        ])),
        5 => host_regexp(rng.pick(&[r"^[ab]\.", "example", r"\.$"])),
        6 => prefix(rng.pick(&["/", "/api", "/b", "", "/a", "/api/x", "/b/", "/é"])),
        7 => path(rng.pick(&["/", "/api", "/b/c", "/api/x", "/é/x"])),
        8 => method(rng.pick(&["GET", "POST"])),
        _ => query("k", rng.pick(&[None, Some("v")])),
    }
}

fn random_request(rng: &mut Rng) -> Req {
    let base = rng.pick(HOSTS);
    let mut h = match rng.below(6) {
        0 => base.to_ascii_uppercase(),
        1 => format!("{base}."),
        2 => "".into(),
        3 => "z.b.example.com".into(),
        _ => base.into(),
    };
    if rng.below(3) == 0 {
        h = if h.contains(':') {
            format!("[{h}]:8443")
        } else {
            format!("{h}:8080")
        };
    }
    Req::new()
        .host(&h)
        .path(rng.pick(&[
            "/",
            "/api/x",
            "/b/c",
            "/b/./c",
            "/x",
            "/api",
            "/ap",
            "/é/x",
            "/%C3%A9/x",
            "/b/",
        ]))
        .query(rng.pick(&[None, Some("k"), Some("k=v"), Some("a=1")]))
        .method(if rng.below(2) == 0 {
            Method::GET
        } else {
            Method::POST
        })
}

#[test]
fn host_index_matches_linear_scan() {
    let mut rng = Rng(0x5EED_CAFE_F00D_0001);
    let mut matched = 0;
    for _ in 0..200 {
        let count = 1 + rng.below(12);
        let routes: Vec<(String, Expr, i64)> = (0..count)
            .map(|i| {
                let priority = rng.below(7) as i64 - 3;
                (format!("r{i}"), random_expr(&mut rng, 3), priority)
            })
            .collect();
        let t =
            RouteTable::build(
                routes
                    .iter()
                    .enumerate()
                    .map(|(i, (name, rule, p))| RouteInput {
                        name,
                        rule,
                        priority: *p,
                        payload: i,
                    }),
            )
            .unwrap();
        for _ in 0..100 {
            // `route` asserts that the index and the scan agree.
            matched += usize::from(random_request(&mut rng).route(&t).is_some());
        }
    }
    // The generator must exercise both outcomes.
    assert!(matched > 2_000 && matched < 18_000, "{matched}");
}

fn table_of(routes: &[(String, Expr, i64)]) -> RouteTable<String> {
    RouteTable::build(routes.iter().map(|(name, rule, priority)| RouteInput {
        name,
        rule,
        priority: *priority,
        payload: name.clone(),
    }))
    .unwrap()
}

#[test]
fn patched_tables_route_like_built_ones() {
    fn name_of(payload: &String) -> &str {
        payload
    }
    let mut rng = Rng(0x5EED_CAFE_F00D_0002);
    let mut differed = 0;
    for round in 0..300 {
        let count = rng.below(12);
        let old: Vec<(String, Expr, i64)> = (0..count)
            .map(|i| {
                let priority = rng.below(5) as i64 - 2;
                (format!("r{i}"), random_expr(&mut rng, 3), priority)
            })
            .collect();
        // Some routers go, some change, some are new.
        let mut new: Vec<(String, Expr, i64)> = Vec::new();
        for (name, rule, priority) in &old {
            match rng.below(6) {
                0 => {}
                1 => new.push((name.clone(), random_expr(&mut rng, 3), *priority)),
                2 => new.push((name.clone(), rule.clone(), rng.below(5) as i64 - 2)),
                _ => new.push((name.clone(), rule.clone(), *priority)),
            }
        }
        for i in 0..rng.below(4) {
            let priority = rng.below(5) as i64 - 2;
            new.push((format!("n{round}-{i}"), random_expr(&mut rng, 3), priority));
        }
        let unchanged = |r: &(String, Expr, i64)| old.contains(r);
        let gone: Vec<&str> = old
            .iter()
            .filter(|r| !new.contains(r))
            .map(|r| r.0.as_str())
            .collect();
        let added: Vec<RouteInput<'_, String>> = new
            .iter()
            .filter(|r| !unchanged(r))
            .map(|(name, rule, priority)| RouteInput {
                name,
                rule,
                priority: *priority,
                payload: name.clone(),
            })
            .collect();
        differed += usize::from(!gone.is_empty() || !added.is_empty());
        let patched = table_of(&old)
            .patch(
                |name| (!gone.contains(&name.as_str())).then(|| name.clone()),
                added,
                name_of,
            )
            .unwrap();
        let built = table_of(&new);
        assert_eq!(patched.len(), built.len());
        for _ in 0..60 {
            // `route` also checks each table's index against a scan of its routes.
            let req = random_request(&mut rng);
            assert_eq!(req.route(&patched), req.route(&built), "round {round}");
        }
    }
    assert!(differed > 200, "{differed}");
}

fn random_text(rng: &mut Rng) -> String {
    const PIECES: &[&str] = &[
        "%", "%2", "%2F", "%2f", "%2E", "%C3", "%A9", "%FF", "%zz", "[", "]", ":", ".", "..", "/",
        "//", "é", "A", "a", "0", "+", "&", "=", ";", " ", "*", "k", "v", "\t",
    ];
    (0..rng.below(12)).map(|_| rng.pick(PIECES)).collect()
}

#[test]
fn arbitrary_input_never_panics() {
    let rules = [
        all(vec![host("a.example.com"), prefix("/a")]),
        host("*.example.com"),
        host("*."),
        host_regexp("^[a-z]"),
        path_regexp("%2F"),
        query("k", Some("v")),
        query("k", None),
        query_regexp("k", Some("é")),
        header("X", "v"),
        header_regexp("X", "."),
        client_ip("10.0.0.0/8"),
        not(method("GET")),
    ];
    let t = RouteTable::build(rules.iter().enumerate().map(|(i, rule)| RouteInput {
        name: "r",
        rule,
        priority: i as i64,
        payload: i,
    }))
    .unwrap();
    let mut rng = Rng(0xA5A5_5A5A_0123_4567);
    for _ in 0..20_000 {
        let _ = routing_path(&random_text(&mut rng));
        // Idempotent on rooted paths (what requests carry; Go maps `..` to `` and `` to `/`).
        let raw_path = format!("/{}", random_text(&mut rng));
        if let Ok(path) = routing_path(&raw_path) {
            assert_eq!(routing_path(&path).as_deref(), Ok(&*path), "{raw_path:?}");
        }
        let raw_host = random_text(&mut rng);
        let normal = normalize_host(&raw_host);
        // Not idempotent on purpose: like Traefik, only one trailing dot goes.
        assert!(
            !normal.bytes().any(|b| b.is_ascii_uppercase()),
            "{raw_host:?}"
        );
        let req = Req::new()
            .host(&raw_host)
            .path(&format!("/{}", random_text(&mut rng).replace('%', "")))
            .query(Some(&random_text(&mut rng)))
            .header("x", random_text(&mut rng).trim().as_bytes());
        req.route(&t);
    }
}

/// Routes naming the same host or path share one copy of it (and the host index its key).
#[test]
fn repeated_hosts_and_paths_are_stored_once() {
    let rules = [
        all(vec![host("A.example"), prefix("/api")]),
        all(vec![host("a.example"), prefix("/web")]),
        all(vec![host("b.example"), prefix("/api")]),
        all(vec![host("b.example"), path("/api")]),
    ];
    let names = ["r0", "r1", "r2", "r3"];
    let table = RouteTable::build(rules.iter().zip(names).map(|(rule, name)| RouteInput {
        name,
        rule,
        priority: 1,
        payload: name,
    }))
    .unwrap();
    let parts = |payload: &str| {
        let route = table.routes.iter().find(|r| r.payload == payload).unwrap();
        let Node::All(items) = &route.node else {
            panic!("{payload}: not an &&")
        };
        let Node::Host(HostExpr::Exact(host)) = &items[0] else {
            panic!("{payload}: no exact host")
        };
        let (Node::PathPrefix(path) | Node::Path(path)) = &items[1] else {
            panic!("{payload}: no path")
        };
        (Arc::clone(host), Arc::clone(path))
    };
    let (r0, r1, r2, r3) = (parts("r0"), parts("r1"), parts("r2"), parts("r3"));
    assert!(Arc::ptr_eq(&r0.0, &r1.0), "a.example twice");
    assert!(Arc::ptr_eq(&r2.0, &r3.0), "b.example twice");
    assert!(Arc::ptr_eq(&r0.1, &r2.1), "/api as a prefix twice");
    assert!(Arc::ptr_eq(&r0.1, &r3.1), "/api as a prefix and a path");
    assert!(!Arc::ptr_eq(&r0.0, &r2.0));
    let (key, _) = table.exact.get_key_value("a.example").unwrap();
    assert!(Arc::ptr_eq(key, &r0.0), "the index shares the key");
}
