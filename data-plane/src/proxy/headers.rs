//! The headers a proxied request and its response are rewritten with, as Traefik does with
//! untrusted forwarding headers (the default): the client's `X-Forwarded-*` replaced by the
//! proxy's own, hop-by-hop headers (RFC 9110 §7.6.1) dropped in both directions. Pure functions
//! over a `HeaderMap`; nothing here routes or forwards.

use std::{
    net::{IpAddr, SocketAddr},
    sync::LazyLock,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::{
    middleware::split_host_port,
    upstream::h1::{AddedFields, HOP_BY_HOP, RawFields, list_elements},
};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static X_FORWARDED_SERVER: HeaderName = HeaderName::from_static("x-forwarded-server");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Forwarding headers Traefik drops from untrusted clients besides the ones it sets.
static UNTRUSTED_FORWARDED: [HeaderName; 5] = [
    HeaderName::from_static("x-forwarded-uri"),
    HeaderName::from_static("x-forwarded-method"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-forwarded-tls-client-cert"),
    HeaderName::from_static("x-forwarded-tls-client-cert-info"),
];

/// `X-Forwarded-Server`: this machine's host name, read once as Go's `os.Hostname` does on Linux.
static HOSTNAME: LazyLock<Option<HeaderValue>> = LazyLock::new(|| {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .and_then(|name| HeaderValue::from_str(name.trim()).ok())
        .filter(|name| !name.is_empty())
});

/// What [`strip_hop_by_hop`] looks for.
static HOP_BY_HOP_SIEVE: LazyLock<Sieve> = LazyLock::new(|| Sieve::of(&HOP_BY_HOP));
/// What [`forwarded_fields`] removes: the client's forwarding headers, those the proxy sets
/// included.
static CLIENT_FORWARDED: LazyLock<[&HeaderName; 11]> = LazyLock::new(|| {
    let [a, b, c, d, e] = &UNTRUSTED_FORWARDED;
    [
        a,
        b,
        c,
        d,
        e,
        &X_FORWARDED_FOR,
        &X_REAL_IP,
        &X_FORWARDED_PROTO,
        &X_FORWARDED_HOST,
        &X_FORWARDED_PORT,
        &X_FORWARDED_SERVER,
    ]
});
static FORWARDED_SIEVE: LazyLock<Sieve> =
    LazyLock::new(|| Sieve::of(CLIENT_FORWARDED.iter().copied()));
/// Bits of [`present`]'s answer for `HOP_BY_HOP`'s `Connection` (0) and `TE` (5).
const CONNECTION_FOUND: u32 = 1 << 0;
const TE_FOUND: u32 = 1 << 5;

/// The client end of a downstream connection, with its address as the forwarding headers write
/// it (made once per connection, shared by its requests).
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    forwarded_for: Option<HeaderValue>,
}

impl Peer {
    /// A connection from the address of the thread's last one shares that one's value (a proxy
    /// behind a load balancer, or polled by a health checker, sees few addresses); another
    /// address's is made, two allocations (~560 instructions per connection, callgrind).
    pub fn new(addr: SocketAddr) -> Self {
        thread_local! {
            static LAST: std::cell::RefCell<Option<(IpAddr, Option<HeaderValue>)>> =
                const { std::cell::RefCell::new(None) };
        }
        let ip = addr.ip();
        let forwarded_for = LAST.with_borrow_mut(|last| match last {
            Some((seen, value)) if *seen == ip => value.clone(),
            _ => {
                let value = HeaderValue::from_maybe_shared(Bytes::from(ip_text(ip))).ok();
                *last = Some((ip, value.clone()));
                value
            }
        });
        Self {
            addr,
            forwarded_for,
        }
    }
}

/// `ip` as `Display` writes it (an IPv4-mapped IPv6 address as IPv4); IPv4 without the
/// formatting machinery, which cost ~1 300 instructions per connection (callgrind).
fn ip_text(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let mut text = String::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text.push('.');
                }
                if octet >= 100 {
                    text.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    text.push(char::from(b'0' + octet / 10 % 10));
                }
                text.push(char::from(b'0' + octet % 10));
            }
            text
        }
        v6 => v6.to_string(),
    }
}

/// Traefik (forwardedHeaders untrusted by default) drops client-supplied `X-Forwarded-*` and
/// sets its own: removes the client's (those the proxy sets too) from the fields as `received`,
/// or else from `headers`, and makes the proxy's, to be inserted into the map where a
/// middleware may read or change them, else written after the request's other fields (six
/// inserts, each hashed, were a tenth of the proxy's user-space work per request).
/// `host_value` is `host` as the request carried it.
pub(super) fn forwarded_fields(
    headers: &mut HeaderMap,
    received: Option<&mut RawFields>,
    host_value: Option<&HeaderValue>,
    host: &str,
    peer: &Peer,
    scheme: &'static str,
) -> AddedFields {
    let names = CLIENT_FORWARDED.map(Some);
    match received {
        Some(fields) => fields.leave_out_where(|name| {
            FORWARDED_SIEVE.may_hold_bytes(name)
                && names
                    .iter()
                    .flatten()
                    .any(|n| name.eq_ignore_ascii_case(n.as_str().as_bytes()))
        }),
        None => {
            let found = present(headers, &names, &FORWARDED_SIEVE);
            remove_marked(headers, &names, found);
        }
    }
    let host_value = host_value.filter(|_| !host.is_empty());
    // The port of the request host, else the scheme's default — not the listening port.
    let port = split_host_port(host)
        .1
        .and_then(port_value)
        .unwrap_or_else(|| HeaderValue::from_static(if scheme == "https" { "443" } else { "80" }));
    let ip = peer.forwarded_for.as_ref();
    AddedFields {
        fields: [
            ip.map(|ip| (&X_FORWARDED_FOR, ip.clone())),
            ip.map(|ip| (&X_REAL_IP, ip.clone())),
            Some((&X_FORWARDED_PROTO, HeaderValue::from_static(scheme))),
            host_value.map(|v| (&X_FORWARDED_HOST, v.clone())),
            Some((&X_FORWARDED_PORT, port)),
            HOSTNAME
                .as_ref()
                .map(|name| (&X_FORWARDED_SERVER, name.clone())),
        ],
    }
}

/// `port` as a header value. The requests a thread serves mostly name one port (their
/// listener's), so the last one is kept: a clone of it shares its bytes, where a new value cost
/// an allocation per request (~300 instructions, callgrind).
fn port_value(port: &str) -> Option<HeaderValue> {
    thread_local! {
        static LAST: std::cell::RefCell<Option<HeaderValue>> = const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some(value) if value.as_bytes() == port.as_bytes() => Some(value.clone()),
        _ => {
            let value = HeaderValue::from_str(port).ok()?;
            *last = Some(value.clone());
            Some(value)
        }
    })
}

/// Which of `names` (at most 32) `headers` holds, as bits by position. A request or response
/// carries a handful of headers and rarely any of these: one pass over its names finds them
/// without hashing a name per lookup, and `sieve` (made from at least `names`) passes over most
/// names with one test.
fn present(headers: &HeaderMap, names: &[Option<&HeaderName>], sieve: &Sieve) -> u32 {
    debug_assert!(names.len() <= 32);
    let mut present = 0u32;
    if headers.keys_len() * names.len() > 512 {
        for (i, name) in names.iter().enumerate() {
            if name.is_some_and(|n| headers.contains_key(n)) {
                present |= 1 << i;
            }
        }
        return present;
    }
    for key in headers.keys() {
        let key = key.as_str();
        if !sieve.may_hold(key) {
            continue;
        }
        if let Some(i) = names
            .iter()
            .position(|n| n.is_some_and(|n| n.as_str() == key))
        {
            present |= 1 << i;
        }
    }
    present
}

/// The lengths and first bytes of a set of header names, as bits: a name with a length or a
/// first byte none of them has is not among them. (Our own `X-Forwarded-*`, set before the
/// request's hop-by-hop headers are looked for, share lengths with those but not a first byte.)
struct Sieve {
    lengths: u64,
    firsts: u128,
}

impl Sieve {
    fn of<'a>(names: impl IntoIterator<Item = &'a HeaderName>) -> Self {
        let mut sieve = Self {
            lengths: 0,
            firsts: 0,
        };
        for name in names {
            let (length, first) = Self::bits(name.as_str().as_bytes());
            sieve.lengths |= length;
            sieve.firsts |= first;
        }
        sieve
    }

    fn may_hold(&self, name: &str) -> bool {
        self.may_hold_bytes(name.as_bytes())
    }

    /// [`Self::may_hold`] for a name as received, in any case.
    fn may_hold_bytes(&self, name: &[u8]) -> bool {
        let (length, first) = Self::bits(name);
        self.lengths & length != 0 && self.firsts & first != 0
    }

    /// A bit for the length (63 for every length from 63 on) and one for the first byte,
    /// lowercased (127 for every byte from 127 on; names are not empty, the empty string gets
    /// bit 0).
    fn bits(name: &[u8]) -> (u64, u128) {
        let first = name.first().copied().unwrap_or(0).to_ascii_lowercase();
        (1 << name.len().min(63), 1 << first.min(127))
    }
}

fn remove_marked(headers: &mut HeaderMap, names: &[Option<&HeaderName>], mut marked: u32) {
    while marked != 0 {
        if let Some(name) = names[marked.trailing_zeros() as usize] {
            headers.remove(name);
        }
        marked &= marked - 1;
    }
}

/// Takes a request's `Connection` header away with the headers it names, as Traefik's entry point
/// does before routing and the middlewares: a client can then not name the forwarding headers
/// the proxy sets, nor one a middleware adds, to have them removed on the way out. The other
/// hop-by-hop headers go when the request is forwarded ([`strip_hop_by_hop`]).
pub(super) fn take_connection(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        remove_connection_named(headers);
        headers.remove(header::CONNECTION);
    }
}

/// Removes the headers named in `Connection`, which are hop-by-hop too (Go removes them all,
/// even one literally named `Close`; not `Host`, which Go keeps apart from the headers). Most
/// name only `close` or `keep-alive` and no such header is present: nothing is allocated for
/// those, and in a map of a few names a token is compared with them as text rather than hashed.
pub(crate) fn remove_connection_named(headers: &mut HeaderMap) {
    let few = headers.keys_len() <= 16;
    let holds = |token: &str| {
        if few {
            headers
                .keys()
                .any(|k| k.as_str().eq_ignore_ascii_case(token))
        } else {
            headers.contains_key(token)
        }
    };
    let named: Vec<HeaderName> = list_elements(headers, &header::CONNECTION)
        .filter(|t| !t.eq_ignore_ascii_case("host") && holds(t))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
}

pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let names = HOP_BY_HOP.each_ref().map(Some);
    let found = present(headers, &names, &HOP_BY_HOP_SIEVE);
    if found == 0 {
        return;
    }
    // Go's reverse proxy keeps `TE: trailers` (gRPC needs it) and drops any other `TE`.
    let te_trailers = found & TE_FOUND != 0
        && list_elements(headers, &header::TE).any(|t| t.eq_ignore_ascii_case("trailers"));
    if found & CONNECTION_FOUND != 0 {
        remove_connection_named(headers);
    }
    remove_marked(headers, &names, found);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_headers_replace_client_values() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.append("x-forwarded-for", HeaderValue::from_static("7.7.7.7"));
        h.insert("x-forwarded-prefix", HeaderValue::from_static("/evil"));
        h.insert("x-forwarded-uri", HeaderValue::from_static("/evil"));
        h.insert("x-real-ip", HeaderValue::from_static("6.6.6.6"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        forward(&mut h, "a.example:8081", "http");
        assert_eq!(h["x-forwarded-for"], "127.0.0.2");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-real-ip"], "127.0.0.2");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.example:8081");
        assert_eq!(h["x-forwarded-port"], "8081");
        assert_eq!(h["x-keep"], "1");
        assert!(!h.contains_key("x-forwarded-prefix"));
        assert!(!h.contains_key("x-forwarded-uri"));
    }

    fn forward(headers: &mut HeaderMap, host: &str, scheme: &'static str) {
        let value = HeaderValue::from_str(host).unwrap();
        let peer = Peer::new("[::ffff:127.0.0.2]:5000".parse().unwrap());
        forwarded_fields(headers, None, Some(&value), host, &peer, scheme).insert_into(headers);
    }

    /// Traefik: the port of the request host, else the scheme's default (not the listener's).
    #[test]
    fn forwarded_port_defaults_to_the_scheme_port() {
        let mut h = HeaderMap::new();
        forward(&mut h, "a.example", "http");
        assert_eq!(h["x-forwarded-port"], "80");
        forward(&mut h, "a.example", "https");
        assert_eq!(h["x-forwarded-port"], "443");
        // No host: a client's `X-Forwarded-Host` is dropped, not replaced.
        h.insert("x-forwarded-host", HeaderValue::from_static("evil.example"));
        forward(&mut h, "", "http");
        assert!(!h.contains_key("x-forwarded-host"));
    }

    /// The kept client-address value stands only for its own address.
    #[test]
    fn a_peer_value_is_its_address() {
        for addr in [
            "10.0.0.9:5000",
            "10.0.0.9:5001",
            "10.0.0.10:5000",
            "[2001:db8::1]:443",
            "[::ffff:10.0.0.10]:80",
            "10.0.0.10:81",
            "[2001:db8::1]:444",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            let peer = Peer::new(addr);
            assert_eq!(peer.addr, addr);
            let text = ip_text(addr.ip());
            assert_eq!(
                peer.forwarded_for.as_ref().map(HeaderValue::as_bytes),
                Some(text.as_bytes()),
                "{addr}"
            );
        }
    }

    /// The kept port value stands only for its own port.
    #[test]
    fn a_port_value_is_its_port() {
        for port in ["8081", "8081", "9", "8081", "65535", "x"] {
            let value = port_value(port);
            assert_eq!(
                value.as_ref().map(HeaderValue::as_bytes),
                Some(port.as_bytes())
            );
        }
        assert_eq!(port_value("\n"), None);
        assert_eq!(port_value("8081").unwrap(), "8081");
    }

    /// Many headers take the lookup path instead of the scan; both find the same ones.
    #[test]
    fn hop_by_hop_headers_are_found_among_many() {
        for extra in [0, 100] {
            let mut h = HeaderMap::new();
            for i in 0..extra {
                h.insert(
                    HeaderName::from_bytes(format!("x-extra-{i}").as_bytes()).unwrap(),
                    HeaderValue::from_static("1"),
                );
            }
            h.insert("connection", HeaderValue::from_static("x-named"));
            h.insert("x-named", HeaderValue::from_static("1"));
            h.insert("upgrade", HeaderValue::from_static("websocket"));
            h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
            h.insert("te", HeaderValue::from_static("trailers"));
            strip_hop_by_hop(&mut h);
            assert_eq!(h.len(), extra + 1, "{extra}");
            assert_eq!(h["te"], "trailers");
        }
    }

    #[test]
    fn te_trailers_is_kept() {
        let mut h = HeaderMap::new();
        h.insert("te", HeaderValue::from_static("gzip, trailers"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h["te"], "trailers");
        let mut h = HeaderMap::new();
        h.insert("te", HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h);
        assert!(!h.contains_key("te"));
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

    /// The scan (with its sieve) finds exactly what a lookup per name finds, among names that
    /// share a length or a first byte with the ones looked for.
    #[test]
    fn present_finds_what_lookups_find() {
        let pool = [
            "connection",
            "keep-alive",
            "user-agent",
            "upgrade",
            "trailer",
            "tracers",
            "te",
            "tk",
            "x-forwarded-for",
            "x-forwarded-uri",
            "x-forwarded-proto",
            "proxy-authorization",
            "proxy-authorisation",
        ];
        let hop_by_hop = HOP_BY_HOP.each_ref().map(Some);
        let mut forwarded: Vec<Option<&HeaderName>> =
            UNTRUSTED_FORWARDED.iter().map(Some).collect();
        forwarded.extend([Some(&X_FORWARDED_FOR), None, Some(&X_FORWARDED_HOST)]);
        for subset in 0u32..1 << pool.len() {
            let mut h = HeaderMap::new();
            for (i, name) in pool.iter().enumerate() {
                if subset & 1 << i != 0 {
                    h.insert(*name, HeaderValue::from_static("1"));
                }
            }
            for (names, sieve) in [
                (&hop_by_hop[..], &*HOP_BY_HOP_SIEVE),
                (&forwarded[..], &*FORWARDED_SIEVE),
            ] {
                let looked_up = names.iter().enumerate().fold(0, |bits, (i, n)| {
                    bits | u32::from(n.is_some_and(|n| h.contains_key(n))) << i
                });
                assert_eq!(present(&h, names, sieve), looked_up, "{subset:#b}");
            }
        }
    }

    #[test]
    fn a_connection_token_names_a_header_in_any_case() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("Keep-Alive, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        remove_connection_named(&mut h);
        assert!(!h.contains_key("x-secret"));
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn client_addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "9.10.99.100",
            "127.0.0.1",
            "192.168.100.254",
            "255.255.255.255",
            "::1",
            "::ffff:10.20.30.40",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_canonical().to_string(), "{ip}");
        }
    }

    #[test]
    fn the_connection_and_te_bits_name_those_headers() {
        assert_eq!(
            HOP_BY_HOP[CONNECTION_FOUND.trailing_zeros() as usize],
            header::CONNECTION
        );
        assert_eq!(HOP_BY_HOP[TE_FOUND.trailing_zeros() as usize], header::TE);
    }
}
