//! The headers a proxied request and its response are rewritten with, as Traefik does with
//! untrusted forwarding headers (the default): the client's `X-Forwarded-*` replaced by the
//! proxy's own, hop-by-hop headers (RFC 9110 §7.6.1) dropped in both directions. Pure functions
//! over a `HeaderMap`; nothing here routes or forwards.

use std::{net::SocketAddr, sync::LazyLock};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::{middleware::split_host_port, upstream::h1::list_elements};

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

/// Hop-by-hop headers (RFC 9110 §7.6.1) never forwarded; `Upgrade` among them, as WebSocket
/// pass-through is not supported yet.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];
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
    pub fn new(addr: SocketAddr) -> Self {
        let ip = addr.ip().to_canonical().to_string();
        Self {
            addr,
            forwarded_for: HeaderValue::from_maybe_shared(Bytes::from(ip)).ok(),
        }
    }
}

/// Traefik (forwardedHeaders untrusted by default) drops client-supplied `X-Forwarded-*` and
/// sets its own. `host_value` is `host` as the request carried it.
pub(super) fn set_forwarded_headers(
    headers: &mut HeaderMap,
    host_value: Option<&HeaderValue>,
    host: &str,
    peer: &Peer,
    scheme: &'static str,
) {
    // What is set below replaces any client value (`insert` drops every previous one); the
    // rest is removed.
    let host_value = host_value.filter(|_| !host.is_empty());
    let mut dropped: [Option<&HeaderName>; 8] = [None; 8];
    for (slot, name) in dropped.iter_mut().zip(&UNTRUSTED_FORWARDED) {
        *slot = Some(name);
    }
    dropped[5] = host_value.is_none().then_some(&X_FORWARDED_HOST);
    dropped[6] = HOSTNAME.is_none().then_some(&X_FORWARDED_SERVER);
    dropped[7] = peer.forwarded_for.is_none().then_some(&X_FORWARDED_FOR);
    remove_present(headers, &dropped);
    // Room for the (up to) six set below at once: a map parsed from a request with few headers
    // would otherwise grow, and rehash, two or three times.
    headers.reserve(6);
    if let Some(ip) = &peer.forwarded_for {
        headers.insert(X_FORWARDED_FOR.clone(), ip.clone());
        headers.insert(X_REAL_IP.clone(), ip.clone());
    } else {
        headers.remove(&X_REAL_IP);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(scheme));
    if let Some(v) = host_value {
        headers.insert(X_FORWARDED_HOST.clone(), v.clone());
    }
    // The port of the request host, else the scheme's default — not the listening port.
    let forwarded_port = split_host_port(host)
        .1
        .and_then(|p| HeaderValue::from_str(p).ok())
        .unwrap_or_else(|| HeaderValue::from_static(if scheme == "https" { "443" } else { "80" }));
    headers.insert(X_FORWARDED_PORT.clone(), forwarded_port);
    if let Some(name) = &*HOSTNAME {
        headers.insert(X_FORWARDED_SERVER.clone(), name.clone());
    }
}

/// Removes the named headers `headers` holds.
fn remove_present(headers: &mut HeaderMap, names: &[Option<&HeaderName>]) {
    let present = present(headers, names);
    remove_marked(headers, names, present);
}

/// Which of `names` (at most 32) `headers` holds, as bits by position. A request or response
/// carries a handful of headers and rarely any of these: one pass comparing names finds them
/// without hashing a name per lookup.
fn present(headers: &HeaderMap, names: &[Option<&HeaderName>]) -> u32 {
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
        if let Some(i) = names.iter().position(|n| *n == Some(key)) {
            present |= 1 << i;
        }
    }
    present
}

fn remove_marked(headers: &mut HeaderMap, names: &[Option<&HeaderName>], mut marked: u32) {
    while marked != 0 {
        if let Some(name) = names[marked.trailing_zeros() as usize] {
            headers.remove(name);
        }
        marked &= marked - 1;
    }
}

/// Removes the headers named in `Connection`, which are hop-by-hop too (Go removes them all,
/// even one literally named `Close`). Most name only `close` or `keep-alive` and no such header
/// is present: nothing is allocated for those.
pub(crate) fn remove_connection_named(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = list_elements(headers, &header::CONNECTION)
        .filter(|t| headers.contains_key(*t))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
}

pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let names = HOP_BY_HOP.each_ref().map(Some);
    let found = present(headers, &names);
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
        set_forwarded_headers(headers, Some(&value), host, &peer, scheme);
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

    #[test]
    fn the_connection_and_te_bits_name_those_headers() {
        assert_eq!(
            HOP_BY_HOP[CONNECTION_FOUND.trailing_zeros() as usize],
            header::CONNECTION
        );
        assert_eq!(HOP_BY_HOP[TE_FOUND.trailing_zeros() as usize], header::TE);
    }
}
