//! The HTTP/1.1 client side of the wire (RFC 9112), written for the proxy's one job: send a
//! request head the proxy has already prepared, read the response head, and hand the response
//! body to the downstream connection as it arrives. It runs in the request's own task: nothing is
//! spawned per connection, and no channel or waker sits between the socket and the handler.
//!
//! What it does not do: upgrades (`Upgrade` is stripped before a request gets here, and a 101 is
//! an error), pipelining (one request per connection at a time), or request trailers (dropped, as
//! hyper's client did).

use std::{
    cell::RefCell,
    future::Future as _,
    io::{self, Write as _},
    mem::MaybeUninit,
    pin::pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes, BytesMut};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version, header, request, response,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt},
    net::TcpStream,
};

use crate::spare::{self, Spares};

/// Most header fields in a response head (hyper's default, which the proxy had before).
pub(crate) const MAX_HEADERS: usize = 100;
/// Largest response head, and largest trailer section (hyper's default read-buffer limit).
pub const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;
/// How much room a read into a connection's buffer asks for.
const READ_SIZE: usize = 16 * 1024;
/// Longest chunk-size line (size, extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;

/// One upstream connection: the socket, what was read from it but not used yet, and the
/// allocation of the last request head written on it (the next one is written there).
pub struct Conn {
    pub stream: TcpStream,
    pub buf: BytesMut,
    pub out: Vec<u8>,
}

/// Largest request head allocation a pooled connection keeps for the next head.
pub const KEEP_OUT: usize = 4 * 1024;

impl Conn {
    pub fn new(stream: TcpStream) -> Self {
        Self::with_buffers(stream, BytesMut::new(), Vec::new())
    }

    pub fn with_buffers(stream: TcpStream, buf: BytesMut, out: Vec<u8>) -> Self {
        Self { stream, buf, out }
    }

    /// Whether the origin closed (or wrote to) this idle connection. Costs no system call while
    /// the socket has had no event since its last read.
    pub fn closed_while_idle(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => false,
            Poll::Ready(Err(_)) => true,
            // Readable: end of stream, an error, or bytes nobody asked for. Or a stale event,
            // which the read clears.
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                !matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }
}

/// Reads more from `reader` into `buf`; `Ok(0)` at the end of the stream.
pub fn poll_fill<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    poll_fill_up_to(reader, buf, READ_SIZE, cx)
}

/// [`poll_fill`] with room for at least `room` bytes.
pub fn poll_fill_up_to<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    room: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    buf.reserve(room);
    pin!(reader.read_buf(buf)).poll(cx)
}

/// How the request body is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body is sent.
    None,
    /// The request carries `Content-Length` (the client's): the body must be exactly that long.
    Length(u64),
    /// `Transfer-Encoding: chunked` (added here).
    Chunked,
}

impl RequestFraming {
    /// The body's declared length.
    pub fn length(self) -> Option<u64> {
        match self {
            RequestFraming::Length(n) => Some(n),
            _ => None,
        }
    }
}

/// [`encode_head_into`] a new buffer.
#[cfg(test)]
pub fn encode_head(
    parts: &request::Parts,
    raw: Option<&RawFields>,
    added: &AddedFields,
    body_empty: bool,
    authority: &str,
) -> Option<(Vec<u8>, RequestFraming)> {
    let mut head = Vec::new();
    let framing = encode_head_into(&mut head, parts, raw, added, body_empty, authority)?;
    Some((head, framing))
}

/// Writes the request head into `head` (cleared first, its allocation reused): origin-form
/// target, the fields `raw` as received, then the map's, then `added`, and the framing the body
/// needs. `body_empty`: the body is known to have nothing in it. `None`: the request's
/// `Content-Length` is not a length (hyper's server and h2 reject those before they get here).
pub fn encode_head_into(
    head: &mut Vec<u8>,
    parts: &request::Parts,
    raw: Option<&RawFields>,
    added: &AddedFields,
    body_empty: bool,
    authority: &str,
) -> Option<RequestFraming> {
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    // The received fields take at most their head's length.
    let fields: usize = raw.map_or(0, |r| r.head.len())
        + parts
            .headers
            .iter()
            .chain(added.iter())
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>();
    head.clear();
    head.reserve(parts.method.as_str().len() + target.len() + fields + 64);
    head.extend_from_slice(parts.method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    let has_host = parts.headers.contains_key(header::HOST)
        || raw.is_some_and(|r| r.forwarded_count(&header::HOST) > 0);
    if !has_host {
        field(head, "host", authority.as_bytes());
    }
    if let Some(raw) = raw {
        raw.write_forwarded(head);
    }
    for (name, value) in parts.headers.iter().chain(added.iter()) {
        field(head, name.as_str(), value.as_bytes());
    }
    let length = match raw.and_then(|r| r.forwarded_value(&header::CONTENT_LENGTH)) {
        Some(value) => Some(value),
        None => parts
            .headers
            .get(header::CONTENT_LENGTH)
            .map(HeaderValue::as_bytes),
    };
    let length = match length {
        None => None,
        Some(value) => Some(
            std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())?,
        ),
    };
    let framing = match length {
        Some(0) => RequestFraming::None,
        Some(n) => RequestFraming::Length(n),
        None if body_empty => {
            // Go sends an explicit zero length for the methods that normally carry a body.
            if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) {
                field(head, "content-length", b"0");
            }
            RequestFraming::None
        }
        None => {
            field(head, "transfer-encoding", b"chunked");
            RequestFraming::Chunked
        }
    };
    head.extend_from_slice(b"\r\n");
    Some(framing)
}

/// Fields a request head gets after its map's (the proxy's forwarding headers), up to six.
pub(crate) struct AddedFields {
    pub(crate) fields: [Option<(&'static HeaderName, HeaderValue)>; 6],
}

impl AddedFields {
    pub(crate) const NONE: Self = Self {
        fields: [None, None, None, None, None, None],
    };

    fn iter(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        self.fields
            .iter()
            .flatten()
            .map(|(name, value)| (*name, value))
    }

    /// Moved into `headers` instead (none are left here), each replacing any field of its name.
    pub(crate) fn insert_into(&mut self, headers: &mut HeaderMap) {
        // Room for all at once: a map parsed from a request with few headers would otherwise
        // grow, and rehash, two or three times.
        headers.reserve(self.fields.len());
        for (name, value) in self.fields.iter_mut().filter_map(Option::take) {
            headers.insert(name.clone(), value);
        }
    }
}

fn field(head: &mut Vec<u8>, name: impl AsRef<[u8]>, value: &[u8]) {
    head.extend_from_slice(name.as_ref());
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

/// A chunk of a chunked request body, framed.
pub fn chunk(data: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(data.len() + 20);
    chunk_size_line(&mut framed, data.len());
    framed.extend_from_slice(data);
    framed.extend_from_slice(b"\r\n");
    framed
}

/// Appends the size line of a chunk of `len` bytes (hex, CRLF), formatted in place.
pub(crate) fn chunk_size_line(out: &mut Vec<u8>, len: usize) {
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{len:x}\r\n");
}

/// The end of a chunked request body (no trailers).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Why a response could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The connection ended before the first byte of a response.
    #[error("connection closed before a response")]
    ClosedBeforeResponse,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("malformed response: {0}")]
    Malformed(String),
}

/// A response head and what follows it.
pub struct Head {
    /// Its headers are empty when `fields` holds them.
    pub parts: response::Parts,
    /// The fields as received, when they were asked for that way and can go on as they are
    /// (boxed: a response is moved several times on its way).
    pub fields: Option<Box<RawFields>>,
    pub framing: Framing,
    /// The connection can take another request once this response's body has been read.
    pub keep_alive: bool,
}

/// How much body follows a response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked,
    /// Until the origin closes the connection.
    UntilClose,
}

/// Reads the response head for a request sent with `method` from `reader` (what was read
/// before is in `buf`), skipping interim (1xx) responses. `raw`: keep the fields as received
/// ([`RawFields`]) where they allow it, instead of making a header map. Cancel-safe: what was
/// read stays in `buf`.
pub async fn read_head<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    method: &Method,
    raw: bool,
) -> Result<Head, ReadError> {
    let mut got_any = !buf.is_empty();
    loop {
        if !buf.is_empty() {
            match parse_head(buf, method, raw)? {
                Some(head) if head.parts.status.is_informational() => continue,
                Some(head) => return Ok(head),
                None if buf.len() >= MAX_HEAD_BYTES => {
                    return Err(ReadError::Malformed(format!(
                        "response head larger than {MAX_HEAD_BYTES} bytes"
                    )));
                }
                None => {}
            }
        }
        match std::future::poll_fn(|cx| poll_fill(reader, buf, cx)).await {
            Ok(0) if !got_any => return Err(ReadError::ClosedBeforeResponse),
            Ok(0) => {
                return Err(ReadError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed in the middle of the response head",
                )));
            }
            Ok(_) => got_any = true,
            Err(e) if !got_any && is_reset(&e) => return Err(ReadError::ClosedBeforeResponse),
            Err(e) => return Err(e.into()),
        }
    }
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

/// Parses a complete head off the front of `buf` (`None`: not complete yet). An interim
/// response is taken off too, and returned for the caller to skip.
fn parse_head(buf: &mut BytesMut, method: &Method, raw: bool) -> Result<Option<Head>, ReadError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let base = buf.as_ptr() as usize;
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut slots,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ReadError::Malformed(e.to_string())),
    };
    let code = response.code.unwrap_or(0);
    let status = StatusCode::from_u16(code)
        .map_err(|_| ReadError::Malformed(format!("status code {code}")))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(ReadError::Malformed(
            "101 Switching Protocols to a request that asked for no upgrade".into(),
        ));
    }
    let version = match response.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut spans = FieldSpans::EMPTY;
    spans.record(base, response.headers);
    let head = take(buf, len);
    let raw = raw
        .then(|| spans.connection(&head))
        .flatten()
        .and_then(|says| RawFields::of(&head, &spans, says, false));
    if let Some(mut fields) = raw {
        let (framing, framing_closes) = framing(&*fields, version, status, method)?;
        fields.leave_out_framing(framing);
        let keep_alive = !framing_closes && fields.keeps_alive(version);
        let mut parts = response::Response::new(()).into_parts().0;
        parts.status = status;
        parts.version = version;
        return Ok(Some(Head {
            parts,
            fields: Some(fields),
            framing,
            keep_alive,
        }));
    }
    let mut headers = spans.header_map(&head, 0, 0).map_err(|bad| {
        ReadError::Malformed(match bad {
            BadField::Name(name) => format!("header name {name:?}"),
            BadField::Value(name) => format!("value of header {name}"),
        })
    })?;
    let (framing, framing_closes) = framing(&headers, version, status, method)?;
    if framing == Framing::Chunked {
        // The length is not the body's (Go drops it too): the client side frames it anew.
        headers.remove(header::CONTENT_LENGTH);
    }
    let keep_alive = !framing_closes && keeps_alive(&headers, version);
    let mut parts = response::Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(Head {
        parts,
        fields: None,
        framing,
        keep_alive,
    }))
}

/// Where each field of a parsed head lies in the buffer it was parsed from, as offsets (name
/// start and end, value start and end), so that the map can be made once the head is taken off
/// that buffer: names copied into the map, values sharing the head's bytes.
pub(crate) struct FieldSpans {
    spans: [(u32, u32, u32, u32); MAX_HEADERS],
    count: usize,
}

/// A field the map cannot hold.
#[derive(Debug)]
pub(crate) enum BadField {
    /// Not a header name (as text, lossy).
    Name(String),
    /// Not a header value: the field's name.
    Value(HeaderName),
}

impl FieldSpans {
    /// No spans yet.
    pub(crate) const EMPTY: Self = Self {
        spans: [(0, 0, 0, 0); MAX_HEADERS],
        count: 0,
    };

    /// Records the spans of `fields`, parsed from a buffer starting at address `base`. Filled in
    /// place: a 1.6 KB value returned from a constructor was copied out on every head.
    pub(crate) fn record(&mut self, base: usize, fields: &[httparse::Header<'_>]) {
        self.count = fields.len().min(MAX_HEADERS);
        for (span, h) in self.spans.iter_mut().zip(fields) {
            let at = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
            let name = at(h.name.as_bytes());
            let value = at(h.value);
            *span = (
                name,
                name + h.name.len() as u32,
                value,
                value + h.value.len() as u32,
            );
        }
    }

    /// The fields of `head` (the bytes the spans were taken from) as a map with room for
    /// `extra` more, but those whose bit is set in `skip`.
    pub(crate) fn header_map(
        &self,
        head: &Bytes,
        extra: usize,
        skip: u128,
    ) -> Result<HeaderMap, BadField> {
        let mut headers = HeaderMap::with_capacity(self.count + extra);
        for (i, &(ns, ne, vs, ve)) in self.spans[..self.count].iter().enumerate() {
            if skip & (1 << i) != 0 {
                continue;
            }
            let name_bytes = &head[ns as usize..ne as usize];
            let name = HeaderName::from_bytes(name_bytes)
                .map_err(|_| BadField::Name(String::from_utf8_lossy(name_bytes).into_owned()))?;
            match HeaderValue::from_maybe_shared(head.slice(vs as usize..ve as usize)) {
                Ok(value) => headers.append(name, value),
                Err(_) => return Err(BadField::Value(name)),
            };
        }
        Ok(headers)
    }

    /// What the `Connection` fields of `head` say, read from its bytes, when their tokens are
    /// only `close` and `keep-alive`; `None` when they name other fields (a map is needed to
    /// find those).
    pub(crate) fn connection(&self, head: &[u8]) -> Option<ConnectionSays> {
        let mut says = ConnectionSays::default();
        let (mut close, mut keep_alive) = (0, 0);
        for (i, &(ns, ne, vs, ve)) in self.spans[..self.count].iter().enumerate() {
            // Most fields are passed over on their length.
            if !matches!(ne - ns, 5 | 10) {
                continue;
            }
            let name = &head[ns as usize..ne as usize];
            let bit = 1 << i;
            if name.eq_ignore_ascii_case(b"close") {
                close |= bit;
            } else if name.eq_ignore_ascii_case(b"keep-alive") {
                keep_alive |= bit;
            } else if name.eq_ignore_ascii_case(b"connection") {
                says.fields |= bit;
                let value = &head[vs as usize..ve as usize];
                // The usual values, without splitting a list.
                if value.eq_ignore_ascii_case(b"close") {
                    says.close = true;
                    continue;
                } else if value.eq_ignore_ascii_case(b"keep-alive") {
                    says.keep_alive = true;
                    continue;
                }
                // A value that is not text has no tokens, as for `list_elements`.
                let Some(value) = visible_ascii(value) else {
                    continue;
                };
                for token in value.split(',').map(str::trim_ascii) {
                    if token.eq_ignore_ascii_case("close") {
                        says.close = true;
                    } else if token.eq_ignore_ascii_case("keep-alive") {
                        says.keep_alive = true;
                    } else if !token.is_empty() {
                        return None;
                    }
                }
            }
        }
        if says.close {
            says.fields |= close;
        }
        if says.keep_alive {
            says.fields |= keep_alive;
        }
        Some(says)
    }
}

/// What a head's `Connection` fields say ([`FieldSpans::connection`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ConnectionSays {
    pub(crate) close: bool,
    pub(crate) keep_alive: bool,
    /// The `Connection` fields and the fields their tokens name (Go removes even one named
    /// `close`), as bits by position.
    pub(crate) fields: u128,
}

/// RFC 9112 §6.3: the body's length, and whether the framing forces the connection to close.
fn framing(
    headers: &impl Fields,
    version: Version,
    status: StatusCode,
    method: &Method,
) -> Result<(Framing, bool), ReadError> {
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Length(0), false));
    }
    // Transfer-Encoding is an HTTP/1.1 thing (an HTTP/1.0 message's is ignored, as Go does).
    // Only `chunked` alone is forwarded: the proxy drops the header (hop-by-hop), so any other
    // coding would reach the client undeclared; Go's Transport refuses it too.
    if version == Version::HTTP_11 && headers.has(&header::TRANSFER_ENCODING) {
        let mut codings = headers
            .values(&header::TRANSFER_ENCODING)
            .flat_map(|v| v.split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|c| !c.is_empty());
        let chunked_alone = codings
            .next()
            .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
            && codings.next().is_none();
        if !chunked_alone {
            return Err(ReadError::Malformed("unsupported transfer encoding".into()));
        }
        // With a Content-Length as well, the message may be an attack: read it, then close.
        return Ok((Framing::Chunked, headers.has(&header::CONTENT_LENGTH)));
    }
    let mut length = None;
    for value in headers.values(&header::CONTENT_LENGTH) {
        for part in value.split(|b| *b == b',') {
            let n = std::str::from_utf8(part)
                .ok()
                .map(str::trim)
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| ReadError::Malformed("invalid Content-Length".into()))?;
            if length.is_some_and(|l| l != n) {
                return Err(ReadError::Malformed(
                    "conflicting Content-Length values".into(),
                ));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(n) => (Framing::Length(n), false),
        None => (Framing::UntilClose, true),
    })
}

/// The elements of a comma-separated list header (`Connection`, `TE`…) over all its fields,
/// trimmed, empty ones left out (RFC 9110 §5.6.1). A field that is not visible ASCII has none.
pub fn list_elements<'a>(
    headers: &'a impl Fields,
    name: &HeaderName,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .values(name)
        .filter_map(visible_ascii)
        .flat_map(|v| v.split(','))
        .map(str::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// `value` as text if it is visible ASCII, spaces and tabs (what `HeaderValue::to_str` takes).
pub(crate) fn visible_ascii(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

/// A head's fields, looked up by name: a header map, or [`RawFields`].
pub trait Fields {
    /// The values of the fields named `name`, in order.
    fn values<'a>(&'a self, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a;

    fn has(&self, name: &HeaderName) -> bool {
        self.values(name).next().is_some()
    }
}

impl Fields for HeaderMap {
    fn values<'a>(&'a self, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.get_all(name).into_iter().map(HeaderValue::as_bytes)
    }
}

/// Most fields a response head may have to be kept as [`RawFields`] (one bit each in a `u32`).
const RAW_MAX: usize = 32;

/// A head's fields as they were received, written out from the head's own bytes with no header
/// map made (building, hashing and dropping that map was a sixth of the proxy's user-space work
/// per request, and the request's map as much again): a response's from the origin, going on to
/// an HTTP/1.1 client untouched; a request's from an HTTP/1.x client, going on to an HTTP/1.1
/// server through a router without middlewares. The hop-by-hop fields are left out, as the map
/// would have lost them. A head that needs more than dropping a few known fields (other
/// hop-by-hop fields, `Connection` naming others, more than [`RAW_MAX`] fields, a head over
/// 64 KiB; in a request also `Transfer-Encoding` and `Expect`) gets a map instead.
pub struct RawFields {
    head: Bytes,
    /// Name start, name end, value start, value end, in `head`.
    spans: [(u16, u16, u16, u16); RAW_MAX],
    count: usize,
    /// Bit `i`: field `i` goes on.
    forward: u32,
    /// The fields the proxy reads, found as the head is sorted (one pass, not one per lookup).
    connection: u32,
    transfer_encoding: u32,
    content_length: u32,
    date: u32,
    host: u32,
    /// What `Connection` says: `close`, `keep-alive`.
    says_close: bool,
    says_keep_alive: bool,
}

/// Most boxes of [`RawFields`] a thread keeps for the next heads (~330 bytes each).
const MAX_SPARE_FIELDS: usize = 256;

thread_local! {
    /// Boxes of heads that went on, for the next heads: a request and a response each took one
    /// from `malloc` and gave it back, and with dozens of exchanges under way glibc's per-thread
    /// cache (7 blocks of a size) overflowed into its slower paths, ~600 instructions per
    /// request (callgrind). The boxes themselves are what is kept.
    #[allow(clippy::vec_box)]
    static SPARE_FIELDS: Spares<Box<RawFields>> = const { RefCell::new(Vec::new()) };
}

impl RawFields {
    const EMPTY: Self = Self {
        head: Bytes::new(),
        spans: [(0, 0, 0, 0); RAW_MAX],
        count: 0,
        forward: 0,
        connection: 0,
        transfer_encoding: 0,
        content_length: 0,
        date: 0,
        host: 0,
        says_close: false,
        says_keep_alive: false,
    };

    /// Gives the box back for the next head, letting go of this head's bytes (a connection's
    /// read buffer is reused in place once nothing shares it).
    pub(crate) fn recycle(mut self: Box<Self>) {
        self.head = Bytes::new();
        spare::keep(&SPARE_FIELDS, self, MAX_SPARE_FIELDS);
    }

    /// The fields of `head` as recorded in `spans` (its `Connection` fields saying `says`), of a
    /// request or a response; `None` if a map is needed.
    pub(crate) fn of(
        head: &Bytes,
        spans: &FieldSpans,
        says: ConnectionSays,
        request: bool,
    ) -> Option<Box<Self>> {
        if spans.count > RAW_MAX || head.len() > usize::from(u16::MAX) {
            return None;
        }
        // Dropped on the way, as from a map: `Connection`, `Keep-Alive`, a response's framing
        // (written anew), and a field a `Connection` token names (Go removes even one named
        // `close`). Any other hop-by-hop field, a token naming another field, and a request's
        // `Transfer-Encoding` or `Expect` (rare, and read from the map): the map's path.
        // A box a finished head gave back, else a new one: every field below is set (the spans
        // past `count` are never read).
        let mut fields = spare::take(&SPARE_FIELDS).unwrap_or_else(|| Box::new(Self::EMPTY));
        fields.head = head.clone();
        fields.count = spans.count;
        fields.forward = 0;
        fields.connection = 0;
        fields.transfer_encoding = 0;
        fields.content_length = 0;
        fields.date = 0;
        fields.host = 0;
        fields.says_close = says.close;
        fields.says_keep_alive = says.keep_alive;
        let mut keep_alive = 0;
        let pairs = fields.spans.iter_mut().zip(&spans.spans[..spans.count]);
        for (i, (raw, &(ns, ne, vs, ve))) in pairs.enumerate() {
            // Within the head, which is shorter than 64 KiB.
            *raw = (ns as u16, ne as u16, vs as u16, ve as u16);
            let name = &head[ns as usize..ne as usize];
            let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
            let bit = 1 << i;
            match name.len() {
                4 if is("host") => fields.host |= bit,
                4 if is("date") => fields.date |= bit,
                6 if request && is("expect") => return None,
                10 if is("connection") => fields.connection |= bit,
                // A request's, unless `Connection` names it, is the handler's to see until it
                // is forwarded: the map keeps it that long.
                10 if request && is("keep-alive") && says.fields & u128::from(bit) == 0 => {
                    return None;
                }
                10 if is("keep-alive") => keep_alive |= bit,
                14 if is("content-length") => fields.content_length |= bit,
                17 if !request && is("transfer-encoding") => fields.transfer_encoding |= bit,
                2 | 7 | 16 | 17 | 18 | 19 if HOP_BY_HOP.iter().any(|h| is(h.as_str())) => {
                    return None;
                }
                _ => {}
            }
        }
        // At most 32 fields here.
        let dropped = says.fields as u32 | keep_alive | fields.transfer_encoding;
        fields.forward = ((1u64 << fields.count) - 1) as u32 & !dropped;
        Some(fields)
    }

    /// A mask of the fields named `name`.
    fn named(&self, name: &HeaderName) -> u32 {
        if *name == header::CONNECTION {
            return self.connection;
        } else if *name == header::TRANSFER_ENCODING {
            return self.transfer_encoding;
        } else if *name == header::CONTENT_LENGTH {
            return self.content_length;
        } else if *name == header::DATE {
            return self.date;
        } else if *name == header::HOST {
            return self.host;
        }
        let name = name.as_str().as_bytes();
        let mut mask = 0;
        for (i, &(ns, ne, _, _)) in self.spans[..self.count].iter().enumerate() {
            if self.head[usize::from(ns)..usize::from(ne)].eq_ignore_ascii_case(name) {
                mask |= 1 << i;
            }
        }
        mask
    }

    /// [`keeps_alive`], from what `Connection` was found to say.
    fn keeps_alive(&self, version: Version) -> bool {
        !self.says_close && (version == Version::HTTP_11 || self.says_keep_alive)
    }

    /// A body framed anew (chunked) goes without its `Content-Length`, as with a map.
    fn leave_out_framing(&mut self, framing: Framing) {
        if framing == Framing::Chunked {
            self.forward &= !self.content_length;
        }
    }

    /// The fields that go on, as (name, value), in the order received.
    pub fn forwarded(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let forward = self.forward;
        self.spans[..self.count]
            .iter()
            .enumerate()
            .filter(move |(i, _)| forward & (1 << i) != 0)
            .map(|(_, &(ns, ne, vs, ve))| {
                (
                    &self.head[usize::from(ns)..usize::from(ne)],
                    &self.head[usize::from(vs)..usize::from(ve)],
                )
            })
    }

    /// Writes the fields that go on as `name: value` lines. Where the head has them that way, one
    /// after the other, they are copied as one piece (a request or response usually goes on
    /// whole but for a field or two), not a name, a value and two separators at a time.
    pub fn write_forwarded(&self, out: &mut Vec<u8>) {
        let spans = &self.spans[..self.count];
        // The start of the run being copied, and the end of its last field's value.
        let mut run: Option<(usize, usize)> = None;
        for (i, &(ns, ne, vs, ve)) in spans.iter().enumerate() {
            let (ns, ne, vs, ve) = (ns.into(), ne.into(), vs.into(), ve.into());
            let goes_on = self.forward & (1 << i) != 0;
            let as_written = goes_on && self.head.get(ne..vs) == Some(b": ");
            match run {
                Some((start, end)) if as_written && self.head.get(end..ns) == Some(b"\r\n") => {
                    run = Some((start, ve));
                    continue;
                }
                Some((start, end)) => {
                    out.extend_from_slice(&self.head[start..end]);
                    out.extend_from_slice(b"\r\n");
                    run = None;
                }
                None => {}
            }
            if as_written {
                run = Some((ns, ve));
            } else if goes_on {
                field(out, &self.head[ns..ne], &self.head[vs..ve]);
            }
        }
        if let Some((start, end)) = run {
            out.extend_from_slice(&self.head[start..end]);
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The first value of a field named `name` that goes on.
    pub fn forwarded_value(&self, name: &HeaderName) -> Option<&[u8]> {
        self.forwarded_span(name)
            .map(|(vs, ve)| &self.head[usize::from(vs)..usize::from(ve)])
    }

    /// [`Self::forwarded_value`], sharing the head's bytes.
    pub(crate) fn forwarded_bytes(&self, name: &HeaderName) -> Option<Bytes> {
        self.forwarded_span(name)
            .map(|(vs, ve)| self.head.slice(usize::from(vs)..usize::from(ve)))
    }

    fn forwarded_span(&self, name: &HeaderName) -> Option<(u16, u16)> {
        let i = (self.named(name) & self.forward).trailing_zeros() as usize;
        let &(_, _, vs, ve) = self.spans[..self.count].get(i)?;
        Some((vs, ve))
    }

    /// The values of the fields named `name` that go on, in order.
    pub(crate) fn forwarded_values<'a>(
        &'a self,
        name: &HeaderName,
    ) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.values_in(self.named(name) & self.forward)
    }

    /// The values of the fields whose bits `mask` sets, in order.
    fn values_in(&self, mask: u32) -> impl Iterator<Item = &[u8]> {
        self.spans[..self.count]
            .iter()
            .enumerate()
            .filter(move |(i, _)| mask & (1 << i) != 0)
            .map(|(_, &(_, _, vs, ve))| &self.head[usize::from(vs)..usize::from(ve)])
    }

    /// How many fields named `name` go on.
    pub(crate) fn forwarded_count(&self, name: &HeaderName) -> u32 {
        (self.named(name) & self.forward).count_ones()
    }

    /// Leaves out the fields whose name `drop` picks.
    pub(crate) fn leave_out_where(&mut self, drop: impl Fn(&[u8]) -> bool) {
        for (i, &(ns, ne, _, _)) in self.spans[..self.count].iter().enumerate() {
            if self.forward & (1 << i) != 0 && drop(&self.head[usize::from(ns)..usize::from(ne)]) {
                self.forward &= !(1 << i);
            }
        }
    }

    /// The fields that go on as a map, with room for `extra` more: for whatever needs one after
    /// all (a middleware, an h2c server).
    pub(crate) fn header_map(&self, extra: usize) -> Result<HeaderMap, BadField> {
        let mut spans = FieldSpans::EMPTY;
        spans.count = self.count;
        for (wide, &(ns, ne, vs, ve)) in spans.spans.iter_mut().zip(&self.spans[..self.count]) {
            *wide = (ns.into(), ne.into(), vs.into(), ve.into());
        }
        spans.header_map(&self.head, extra, u128::from(!self.forward))
    }
}

#[cfg(test)]
impl RawFields {
    /// The fields of a whole request head, if they can be kept as received.
    pub(crate) fn of_request(head: &str) -> Option<Box<Self>> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        let head = Bytes::copy_from_slice(head.as_bytes());
        request.parse(&head).ok()?;
        let mut spans = FieldSpans::EMPTY;
        spans.record(head.as_ptr() as usize, request.headers);
        let says = spans.connection(&head)?;
        Self::of(&head, &spans, says, true)
    }
}

impl Fields for RawFields {
    fn values<'a>(&'a self, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.values_in(self.named(name))
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1, and Go's list) never forwarded; `Upgrade` among them,
/// as WebSocket pass-through is not supported yet.
pub(crate) static HOP_BY_HOP: [HeaderName; 9] = [
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

/// Whether the `Connection` header (or its absence, by version) lets the connection live on.
fn keeps_alive(headers: &impl Fields, version: Version) -> bool {
    let has = |token: &str| {
        list_elements(headers, &header::CONNECTION).any(|t| t.eq_ignore_ascii_case(token))
    };
    if has("close") {
        return false;
    }
    version == Version::HTTP_11 || has("keep-alive")
}

/// Takes `n` bytes off the front of `buf`, sharing its bytes (no copy). Once everything taken
/// is dropped (a head's header map, a body piece once written), the next read reuses the buffer
/// in place: a connection allocates its read buffer once, not a piece per message. A piece
/// still alive at the next read makes that read allocate anew.
pub(crate) fn take(buf: &mut BytesMut, n: usize) -> Bytes {
    buf.split_to(n).freeze()
}

/// Where a response body's decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    /// Bytes left of a `Content-Length` body.
    Length(u64),
    /// Bytes left until the origin closes.
    UntilClose,
    /// Before a chunk-size line.
    ChunkSize,
    /// Bytes left of a chunk's data.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// The trailer section after the last chunk.
    Trailers,
    Done,
}

impl From<Framing> for Decoder {
    fn from(framing: Framing) -> Self {
        match framing {
            Framing::Length(0) => Decoder::Done,
            Framing::Length(n) => Decoder::Length(n),
            Framing::Chunked => Decoder::ChunkSize,
            Framing::UntilClose => Decoder::UntilClose,
        }
    }
}

/// What the decoder made of the buffer.
pub enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body has ended (nothing more to hand out).
    End,
    /// More bytes are needed.
    NeedMore,
}

impl Decoder {
    /// Takes what it can off the front of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> io::Result<Decoded> {
        loop {
            match *self {
                Decoder::Done => return Ok(Decoded::End),
                Decoder::Length(left) | Decoder::ChunkData(left) if !buf.is_empty() => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let data = take(buf, n);
                    let left = left - n as u64;
                    *self = match *self {
                        Decoder::Length(_) if left == 0 => Decoder::Done,
                        Decoder::Length(_) => Decoder::Length(left),
                        _ if left == 0 => Decoder::ChunkEnd,
                        _ => Decoder::ChunkData(left),
                    };
                    return Ok(Decoded::Data(data));
                }
                Decoder::UntilClose if !buf.is_empty() => {
                    let n = buf.len();
                    return Ok(Decoded::Data(take(buf, n)));
                }
                Decoder::Length(_) | Decoder::ChunkData(_) | Decoder::UntilClose => {
                    return Ok(Decoded::NeedMore);
                }
                Decoder::ChunkSize => {
                    let Some(lf) = buf.iter().position(|b| *b == b'\n') else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err(invalid("chunk-size line too long"));
                        }
                        return Ok(Decoded::NeedMore);
                    };
                    if lf > MAX_CHUNK_LINE {
                        return Err(invalid("chunk-size line too long"));
                    }
                    let size = chunk_size(&buf[..lf])?;
                    buf.advance(lf + 1);
                    *self = if size == 0 {
                        Decoder::Trailers
                    } else {
                        Decoder::ChunkData(size)
                    };
                }
                Decoder::ChunkEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(invalid("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    *self = Decoder::ChunkSize;
                }
                Decoder::Trailers => return trailers(buf, self),
            }
        }
    }
}

/// The trailer section: empty (`CRLF`) or header fields then `CRLF`.
fn trailers(buf: &mut BytesMut, decoder: &mut Decoder) -> io::Result<Decoded> {
    if buf.starts_with(b"\r\n") {
        buf.advance(2);
        *decoder = Decoder::Done;
        return Ok(Decoded::End);
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (len, fields) = match httparse::parse_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(done)) => done,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
            return Err(invalid("trailer section too large"));
        }
        Ok(httparse::Status::Partial) => return Ok(Decoded::NeedMore),
        Err(e) => return Err(invalid(&format!("trailer section: {e}"))),
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for f in fields {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(f.name.as_bytes()),
            HeaderValue::from_bytes(f.value),
        ) {
            map.append(name, value);
        }
    }
    buf.advance(len);
    *decoder = Decoder::Done;
    Ok(Decoded::Trailers(map))
}

/// The size on a chunk-size line (`line`: up to, not including, its LF): at least one hex digit,
/// then optional extensions (`;name=value`, ignored), then CR. Anything else — no digit, a bare
/// LF, a CR or LF inside an extension — is an error: a decoder that guessed here could read the
/// next response's bytes as this one's.
fn chunk_size(line: &[u8]) -> io::Result<u64> {
    let Some(line) = line.strip_suffix(b"\r") else {
        return Err(invalid("chunk-size line not ended by CRLF"));
    };
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(invalid("invalid chunk size"));
    }
    let rest = line[digits..].trim_ascii_start();
    if !(rest.is_empty() || rest[0] == b';') || rest.contains(&b'\r') {
        return Err(invalid("invalid chunk size"));
    }
    line[..digits].iter().try_fold(0u64, |n, b| {
        let d = (*b as char).to_digit(16).map(u64::from);
        d.and_then(|d| n.checked_mul(16)?.checked_add(d))
            .ok_or_else(|| invalid("invalid chunk size"))
    })
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// Polls `reader` (what was read before is in `buf`) for the next piece of a body decoded by
/// `decoder`.
pub fn poll_decode<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    decoder: &mut Decoder,
    cx: &mut Context<'_>,
) -> Poll<io::Result<Decoded>> {
    loop {
        match decoder.decode(buf)? {
            Decoded::NeedMore => {}
            decoded => return Poll::Ready(Ok(decoded)),
        }
        if ready!(poll_fill(reader, buf, cx))? == 0 {
            if *decoder == Decoder::UntilClose {
                *decoder = Decoder::Done;
                return Poll::Ready(Ok(Decoded::End));
            }
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the body ended",
            )));
        }
    }
}

#[cfg(test)]
mod tests;
