//! What the matcher reads from a request, in the form Traefik compares it: the canonical host,
//! the routing path and the decoded query. Pure string work; borrows whenever the input is already
//! in that form, because it runs on every request.

use std::borrow::Cow;

/// The request path holds a malformed percent-escape (`%zz`, or `%` / `%4` at the end); Traefik
/// (and Go's URL parser before it) answers 400.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid percent-encoding in request path")]
pub struct InvalidPath;

// ---------------------------------------------------------------------------------------------
// Host

/// The host as `Host(…)` compares it: port and IPv6 brackets removed, spaces trimmed,
/// lower-cased, one trailing dot removed. Borrows when the input is already in that form.
pub fn normalize_host(raw: &str) -> Cow<'_, str> {
    match canonical_host(raw) {
        Cow::Borrowed(host) => Cow::Borrowed(strip_trailing_dot(host)),
        Cow::Owned(mut host) => {
            if host.ends_with('.') {
                host.pop();
            }
            Cow::Owned(host)
        }
    }
}

/// Traefik's canonical host (`requestdecorator`): `parseHost` then `ToLower(TrimSpace(…))`.
pub(super) fn canonical_host(raw: &str) -> Cow<'_, str> {
    let host = strip_port(raw);
    let bytes = host.as_bytes();
    // Fast path: one pass over what is nearly always a short, lower-case ASCII name.
    let plain = |b: &u8| b.is_ascii_graphic() && !b.is_ascii_uppercase();
    if bytes.iter().all(plain) {
        return Cow::Borrowed(host);
    }
    let host = host.trim();
    if host.is_ascii() {
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        }
    } else if host.chars().any(|c| c.to_lowercase().ne([c])) {
        // Go's `strings.ToLower` maps rune by rune; only `HostRegexp` can tell.
        Cow::Owned(host.chars().flat_map(char::to_lowercase).collect())
    } else {
        Cow::Borrowed(host)
    }
}

pub(super) fn strip_trailing_dot(host: &str) -> &str {
    host.strip_suffix('.').unwrap_or(host)
}

/// Go's `net.SplitHostPort` host part; when that fails, `[v6]` loses its brackets and anything
/// else (a bare IPv6 address, garbage) is kept whole.
fn strip_port(addr: &str) -> &str {
    let bytes = addr.as_bytes();
    // One pass: the last colon, whether there is another, the first `[` and `]`.
    let (mut last_colon, mut colons, mut open, mut close) = (None, 0usize, None, None);
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b':' => {
                last_colon = Some(i);
                colons += 1;
            }
            b'[' if open.is_none() => open = Some(i),
            b']' if close.is_none() => close = Some(i),
            _ => {}
        }
    }
    let Some(colon) = last_colon else {
        return addr;
    };
    let split = match (open, close) {
        // `[host]:port`: the only `[` opens, the first `]` closes right before the last colon,
        // and no bracket follows.
        (Some(0), Some(close))
            if close + 1 == colon
                && !addr[1..].contains('[')
                && !addr[close + 1..].contains(']') =>
        {
            Some(&addr[1..close])
        }
        // `host:port`: a single colon and no bracket at all.
        (None, None) if colons == 1 => Some(&addr[..colon]),
        _ => None,
    };
    split.unwrap_or_else(|| {
        addr.strip_prefix('[')
            .and_then(|a| a.strip_suffix(']'))
            .unwrap_or(addr)
    })
}

// ---------------------------------------------------------------------------------------------
// Path

/// The path the `Path*` matchers see (Traefik ≥ 3.4.1), from the raw (escaped) request path:
///
/// 1. percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded; escapes of
///    reserved ones (RFC 3986 gen-delims, sub-delims and `%`) stay encoded with upper-case hex, so
///    `/foo%2Fbar` is not `/foo/bar`; other escapes (`%20`, UTF-8 sequences) are decoded as in
///    Traefik's `withRoutingPath`, except bytes that are not valid UTF-8, which stay encoded;
/// 2. `//`, `.` and `..` segments are resolved like Go's `path.Clean`, keeping a trailing slash
///    (`sanitizePath`, on by default), after decoding, so `%2E%2E` climbs too.
///
/// Borrows when nothing changes, which is the common case. Only this path is for matching; what
/// is forwarded upstream is the proxy's concern.
pub fn routing_path(raw_path: &str) -> Result<Cow<'_, str>, InvalidPath> {
    if is_plain_and_clean(raw_path.as_bytes()) {
        return Ok(Cow::Borrowed(raw_path));
    }
    let decoded = decode_path(raw_path)?;
    Ok(match decoded {
        Cow::Borrowed(path) if is_clean(path) => Cow::Borrowed(path),
        Cow::Borrowed(path) => Cow::Owned(clean(path)),
        Cow::Owned(path) if is_clean(&path) => Cow::Owned(path),
        Cow::Owned(path) => Cow::Owned(clean(&path)),
    })
}

/// The path Traefik (≥ 3.4.1) hands to middlewares and forwards upstream, from the raw request
/// path: escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) decoded, every other escape kept
/// with upper-case hex (`normalizePath`: `/%7euser` → `/~user`, `/caf%c3%a9` → `/caf%C3%A9`,
/// `/a%2fb` → `/a%2Fb`), then `//`, `.` and `..` resolved as for [`routing_path`]
/// (`sanitizePath`: `/a/../b` → `/b`, `/a/%2E%2E/b` → `/b`).
///
/// Unlike the routing path, nothing else is decoded, so what the backend receives stays a valid
/// escaped path; raw bytes that may not appear in a path (`"`, `{`, `|`, `\`, non-ASCII…) are
/// escaped, as Go's `URL.EscapedPath` does. Borrows when nothing changes.
pub fn forwarded_path(raw_path: &str) -> Result<Cow<'_, str>, InvalidPath> {
    let bytes = raw_path.as_bytes();
    if is_plain_and_clean(bytes) && bytes.iter().all(|&b| is_path_char(b)) {
        return Ok(Cow::Borrowed(raw_path));
    }
    let normalized = normalize_escapes(raw_path)?;
    Ok(match normalized {
        Cow::Borrowed(path) if is_clean(path) => Cow::Borrowed(path),
        Cow::Borrowed(path) => Cow::Owned(clean(path)),
        Cow::Owned(path) if is_clean(&path) => Cow::Owned(path),
        Cow::Owned(path) => Cow::Owned(clean(&path)),
    })
}

/// A byte that may stand unescaped in a path as Go writes one (RFC 3986 `pchar`, `/`, and the
/// `[` `]` Go leaves alone).
fn is_path_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@[]/".contains(&b)
}

/// Step 1 of [`forwarded_path`]: unreserved escapes decoded, the others upper-cased, raw bytes
/// that are not path characters escaped.
fn normalize_escapes(raw: &str) -> Result<Cow<'_, str>, InvalidPath> {
    let bytes = raw.as_bytes();
    let Some(first) = bytes.iter().position(|&b| b == b'%' || !is_path_char(b)) else {
        return Ok(Cow::Borrowed(raw));
    };
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(&bytes[..first]);
    let mut at = first;
    while let Some(&c) = bytes.get(at) {
        if c != b'%' {
            if is_path_char(c) {
                out.push(c);
            } else {
                push_escape(&mut out, c);
            }
            at += 1;
            continue;
        }
        let b = escaped_byte(bytes, at).ok_or(InvalidPath)?;
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b);
        } else {
            push_escape(&mut out, b);
        }
        at += 3;
    }
    if out == bytes {
        return Ok(Cow::Borrowed(raw));
    }
    // Valid by construction: every byte written is ASCII.
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| InvalidPath)
}

/// The hot path in one loop: rooted, no escape, no empty (but the last), `.` or `..` segment.
fn is_plain_and_clean(path: &[u8]) -> bool {
    let [b'/', rest @ ..] = path else {
        return false;
    };
    // Length of the current segment and how many of its bytes are dots.
    let (mut len, mut dots) = (0usize, 0usize);
    let dot_segment = |len: usize, dots: usize| dots == len && (len == 1 || len == 2);
    for &b in rest {
        match b {
            b'%' => return false,
            b'/' => {
                if len == 0 || dot_segment(len, dots) {
                    return false;
                }
                (len, dots) = (0, 0);
            }
            b'.' => (len, dots) = (len + 1, dots + 1),
            _ => len += 1,
        }
    }
    !dot_segment(len, dots)
}

/// RFC 3986 reserved characters plus `%`: they keep their escape in the routing path.
fn is_reserved(b: u8) -> bool {
    b"%:/?#[]@!$&'()*+,;=".contains(&b)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The byte encoded by the escape starting at `bytes[at] == b'%'`.
fn escaped_byte(bytes: &[u8], at: usize) -> Option<u8> {
    let hi = hex_value(*bytes.get(at + 1)?)?;
    let lo = hex_value(*bytes.get(at + 2)?)?;
    Some(hi << 4 | lo)
}

fn push_escape(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
}

fn decode_path(raw: &str) -> Result<Cow<'_, str>, InvalidPath> {
    let bytes = raw.as_bytes();
    // Fast path: validate, and stop at the first escape that would change.
    let mut at = 0;
    loop {
        let Some(offset) = bytes[at..].iter().position(|&b| b == b'%') else {
            return Ok(Cow::Borrowed(raw));
        };
        at += offset;
        let b = escaped_byte(bytes, at).ok_or(InvalidPath)?;
        let upper = bytes[at + 1..at + 3]
            .iter()
            .all(|c| !c.is_ascii_lowercase());
        if !(is_reserved(b) && upper) {
            break;
        }
        at += 3;
    }

    let mut out = Vec::with_capacity(raw.len());
    out.extend_from_slice(&bytes[..at]);
    let mut run = Vec::new();
    while at < bytes.len() {
        if bytes[at] != b'%' {
            out.push(bytes[at]);
            at += 1;
            continue;
        }
        let b = escaped_byte(bytes, at).ok_or(InvalidPath)?;
        if b.is_ascii() {
            if is_reserved(b) {
                push_escape(&mut out, b);
            } else {
                out.push(b);
            }
            at += 3;
            continue;
        }
        // A run of escaped non-ASCII bytes: decode what forms UTF-8, keep the rest escaped so the
        // routing path stays a string (Go would keep the raw bytes).
        run.clear();
        while let Some(b) = bytes
            .get(at)
            .filter(|&&c| c == b'%')
            .and_then(|_| escaped_byte(bytes, at))
            .filter(|b| !b.is_ascii())
        {
            run.push(b);
            at += 3;
        }
        for chunk in run.utf8_chunks() {
            out.extend_from_slice(chunk.valid().as_bytes());
            for &b in chunk.invalid() {
                push_escape(&mut out, b);
            }
        }
    }
    // Valid by construction: raw characters are copied whole, decoded bytes are ASCII or valid
    // UTF-8 sequences.
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| InvalidPath)
}

/// Whether [`clean`] would return the path unchanged.
fn is_clean(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        // Not rooted (`*`, empty): rare, let `clean` decide.
        return false;
    };
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if segment == "." || segment == ".." || (segment.is_empty() && !last) {
            return false;
        }
    }
    true
}

/// Go's `url.URL.JoinPath()` with no elements, as Traefik's `sanitizePath` uses it: `path.Clean`
/// on the path made rooted, then un-rooted again if it was not, and a trailing slash restored.
fn clean(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            // Rooted: `..` at the root is dropped, so the stack never holds `..`.
            ".." => {
                segments.pop();
            }
            segment => segments.push(segment),
        }
    }
    let rooted = path.starts_with('/');
    // Go checks the rooted form: `"/" + path` ends with `/` when the path is empty.
    let trailing = path.is_empty() || path.ends_with('/');
    let mut out = String::with_capacity(path.len() + 1);
    if rooted {
        out.push('/');
    }
    out.push_str(&segments.join("/"));
    if trailing && !out.ends_with('/') {
        out.push('/');
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Query

/// The `key=value` pairs Go's `url.ParseQuery` keeps: split on `&`, empty pairs skipped, pairs
/// holding a `;` rejected (Go ≥ 1.17). Pairs with a bad escape are dropped by the callers.
pub(super) fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty() && !pair.contains(';'))
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// Whether `raw` is a valid query component that decodes (`%XX`, `+` → space) to `want`; no
/// allocation.
pub(super) fn unescape_eq(raw: &str, want: &str) -> bool {
    let (raw, want) = (raw.as_bytes(), want.as_bytes());
    let (mut at, mut matched) = (0, 0);
    while let Some(&c) = raw.get(at) {
        let (b, len) = match c {
            b'%' => match escaped_byte(raw, at) {
                Some(b) => (b, 3),
                None => return false,
            },
            b'+' => (b' ', 1),
            c => (c, 1),
        };
        if want.get(matched) != Some(&b) {
            return false;
        }
        matched += 1;
        at += len;
    }
    matched == want.len()
}

/// Go's `url.QueryUnescape`; `None` on a bad escape. Bytes that are not UTF-8 become U+FFFD, as
/// Go's regexp reads them.
pub(super) fn query_unescape(raw: &str) -> Option<Cow<'_, str>> {
    if !raw.bytes().any(|b| b == b'%' || b == b'+') {
        return Some(Cow::Borrowed(raw));
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while let Some(&c) = bytes.get(at) {
        match c {
            b'%' => {
                out.push(escaped_byte(bytes, at)?);
                at += 3;
            }
            b'+' => {
                out.push(b' ');
                at += 1;
            }
            c => {
                out.push(c);
                at += 1;
            }
        }
    }
    Some(Cow::Owned(match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }))
}
