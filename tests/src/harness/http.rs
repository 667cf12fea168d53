//! HTTP clients for tests, each returning an observation (`Result<Reply, String>`) rather than
//! panicking, so they compose with `eventually`:
//! - [`get`] / [`send`]: one request on a fresh connection (hyper's HTTP/1.1 client);
//! - [`get_h2c`]: the same over HTTP/2 with prior knowledge (h2c, no upgrade);
//! - [`Pool`]: hyper-util's pooled client, keep-alive across requests (what load loops use);
//! - [`KeepAlive`]: one raw `TcpStream` carrying many sequential HTTP/1.1 requests, parsed by hand,
//!   so a test sees exactly when the server closes or resets *that* connection.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Per request; far above what a loopback request takes, so only a hang trips it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A response as the test saw it.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The first value of header `name`, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `X-Backend`: which `switchyard-echo` answered.
    pub fn backend(&self) -> Option<&str> {
        self.header("x-backend")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The request as a `switchyard-echo` backend saw it.
    pub fn echo(&self) -> Result<Echoed, String> {
        Echoed::parse(&self.body).map_err(|e| format!("{e}; reply: {self}"))
    }

    /// `Ok` when the status is 200 and `switchyard-echo` `backend` answered.
    pub fn expect_backend(&self, backend: &str) -> Result<(), String> {
        if self.status == 200 && self.backend() == Some(backend) {
            Ok(())
        } else {
            Err(format!("expected 200 from backend {backend}, got {self}"))
        }
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut body = self.text();
        if body.len() > 400 {
            let mut cut = 400;
            while !body.is_char_boundary(cut) {
                cut -= 1;
            }
            body.truncate(cut);
            body.push('…');
        }
        write!(f, "{} {:?} {body:?}", self.status, self.headers)
    }
}

/// What `switchyard-echo` reports about the request it received.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Echoed {
    pub backend: String,
    /// The HTTP version the request reached the backend in (`HTTP/1.1`, `HTTP/2.0`).
    pub version: Option<String>,
    pub method: String,
    /// The raw path as received (no normalisation).
    pub path: String,
    /// The raw query, `None` when the request had none.
    pub query: Option<String>,
    pub host: Option<String>,
    /// Lower-case header name → every value, in order.
    pub headers: BTreeMap<String, Vec<String>>,
}

impl Echoed {
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let v: Value = serde_json::from_slice(body).map_err(|e| format!("not echo JSON: {e}"))?;
        let text = |key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
        let headers = v
            .get("headers")
            .and_then(Value::as_object)
            .ok_or("echo JSON without `headers`")?
            .iter()
            .map(|(name, values)| {
                let values = values
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default();
                (name.clone(), values)
            })
            .collect();
        Ok(Self {
            backend: text("backend").ok_or("echo JSON without `backend`")?,
            version: text("version"),
            method: text("method").ok_or("echo JSON without `method`")?,
            path: text("path").ok_or("echo JSON without `path`")?,
            query: text("query"),
            host: text("host"),
            headers,
        })
    }

    /// The first value of request header `name` (any case) as the backend received it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .and_then(|v| v.first())
            .map(String::as_str)
    }
}

/// `GET path` with `Host: host` on a fresh connection to `addr`.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Result<Reply, String> {
    send(addr, Method::GET, host, path, &[]).await
}

/// One request with extra headers on a fresh HTTP/1.1 connection to `addr`.
pub async fn send(
    addr: SocketAddr,
    method: Method,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let request = build(method, host, path, headers)?;
    let exchange = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake with {addr}: {e}"))?;
        tokio::spawn(conn);
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request to {addr}: {e}"))?;
        collect(response).await
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("request to {addr} {host}{path} timed out"))?
}

/// `GET path` with `Host: host` on a fresh HTTP/2 connection to `addr`, prior knowledge (the
/// connection opens with the HTTP/2 preface; `Host` becomes `:authority`).
pub async fn get_h2c(addr: SocketAddr, host: &str, path: &str) -> Result<Reply, String> {
    let request = build(Method::GET, host, &format!("http://{host}{path}"), &[])?;
    let exchange = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(|e| format!("HTTP/2 handshake with {addr}: {e}"))?;
        tokio::spawn(conn);
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP/2 request to {addr}: {e}"))?;
        if response.version() != http::Version::HTTP_2 {
            return Err(format!("answered in {:?}", response.version()));
        }
        collect(response).await
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("h2c request to {addr} {host}{path} timed out"))?
}

fn build(
    method: Method,
    host: &str,
    uri: &str,
    headers: &[(&str, &str)],
) -> Result<Request<Full<Bytes>>, String> {
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header(http::header::HOST, host);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("bad request {uri}: {e}"))
}

async fn collect(response: http::Response<hyper::body::Incoming>) -> Result<Reply, String> {
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("reading the body: {e}"))?
        .to_bytes();
    Ok(Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

/// hyper-util's pooled client: connections are kept alive and reused across requests, like a
/// real HTTP client in front of a proxy.
#[derive(Clone)]
pub struct Pool {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Pool {
    fn default() -> Self {
        Self::new()
    }
}

impl Pool {
    pub fn new() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build_http(),
        }
    }

    /// `GET http://addr/path` with `Host: host` (the Host header wins over the URI's authority).
    pub async fn get(&self, addr: SocketAddr, host: &str, path: &str) -> Result<Reply, String> {
        let request = build(Method::GET, host, &format!("http://{addr}{path}"), &[])?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("request to {addr}: {e:?}"))?;
            collect(response).await
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("request to {addr} {host}{path} timed out"))?
    }
}

/// One raw HTTP/1.1 connection carrying sequential requests. Any close, reset, `Connection:
/// close` or malformed response is an `Err` naming how many requests the connection carried.
pub struct KeepAlive {
    addr: SocketAddr,
    stream: TcpStream,
    buf: Vec<u8>,
    requests: u64,
}

impl KeepAlive {
    pub async fn connect(addr: SocketAddr) -> Result<Self, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        Ok(Self {
            addr,
            stream,
            buf: Vec::new(),
            requests: 0,
        })
    }

    /// Requests answered so far on this connection.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// `GET path` with `Host: host` on this connection.
    pub async fn get(&mut self, host: &str, path: &str) -> Result<Reply, String> {
        let n = self.requests + 1;
        let addr = self.addr;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: switchyard-tests\r\n\r\n");
        let reply = tokio::time::timeout(REQUEST_TIMEOUT, async {
            self.stream
                .write_all(request.as_bytes())
                .await
                .map_err(|e| format!("writing request {n}: {e}"))?;
            self.read_response().await
        })
        .await
        .map_err(|_| format!("request {n} on the keep-alive connection to {addr} timed out"))?
        .map_err(|e| {
            format!(
                "keep-alive connection to {addr}, request {n} (after {} answered): {e}",
                n - 1
            )
        })?;
        self.requests = n;
        if reply
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            return Err(format!(
                "the server announced `Connection: close` on request {n}: {reply}"
            ));
        }
        Ok(reply)
    }

    /// Reads more bytes into the buffer; EOF or a reset is an error.
    async fn fill(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 16 * 1024];
        let read = self
            .stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("connection error: {e}"))?;
        if read == 0 {
            return Err("the server closed the connection".into());
        }
        self.buf.extend_from_slice(&chunk[..read]);
        Ok(())
    }

    /// Takes `n` bytes off the front of the buffer, reading as needed.
    async fn take(&mut self, n: usize) -> Result<Vec<u8>, String> {
        while self.buf.len() < n {
            self.fill().await?;
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Takes one CRLF-terminated line (without the CRLF).
    async fn line(&mut self) -> Result<String, String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).collect();
                return Ok(String::from_utf8_lossy(&line[..i]).into_owned());
            }
            if self.buf.len() > 64 * 1024 {
                return Err("a header line longer than 64 KiB".into());
            }
            self.fill().await?;
        }
    }

    async fn read_response(&mut self) -> Result<Reply, String> {
        // Interim (1xx) responses carry no body; skip them.
        let (status, headers) = loop {
            let status_line = self.line().await?;
            let status = status_line
                .strip_prefix("HTTP/1.1 ")
                .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
                .and_then(|rest| rest.get(..3))
                .and_then(|code| code.parse::<u16>().ok())
                .ok_or_else(|| format!("not an HTTP/1.x status line: {status_line:?}"))?;
            let mut headers = HeaderMap::new();
            loop {
                let line = self.line().await?;
                if line.is_empty() {
                    break;
                }
                let (name, value) = line
                    .split_once(':')
                    .ok_or_else(|| format!("malformed header line {line:?}"))?;
                let name = HeaderName::from_bytes(name.trim().as_bytes())
                    .map_err(|e| format!("header name {name:?}: {e}"))?;
                let value = HeaderValue::from_str(value.trim())
                    .map_err(|e| format!("header value {value:?}: {e}"))?;
                headers.append(name, value);
            }
            if !(100..200).contains(&status) {
                break (status, headers);
            }
        };
        let chunked = headers
            .get_all(http::header::TRANSFER_ENCODING)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.contains("chunked")));
        let body = if status == 204 || status == 304 {
            Vec::new()
        } else if chunked {
            let mut body = Vec::new();
            loop {
                let size_line = self.line().await?;
                let size = size_line.split(';').next().unwrap_or_default().trim();
                let size = usize::from_str_radix(size, 16)
                    .map_err(|e| format!("chunk size {size_line:?}: {e}"))?;
                if size == 0 {
                    // Trailers, then the empty line.
                    while !self.line().await?.is_empty() {}
                    break;
                }
                body.extend(self.take(size).await?);
                let crlf = self.take(2).await?;
                if crlf != b"\r\n" {
                    return Err("a chunk not followed by CRLF".into());
                }
            }
            body
        } else if let Some(length) = headers.get(http::header::CONTENT_LENGTH) {
            let length = length
                .to_str()
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or_else(|| format!("bad Content-Length {length:?}"))?;
            self.take(length).await?
        } else {
            return Err(format!(
                "status {status} without Content-Length or chunked encoding: \
                 the body would end only with the connection ({headers:?})"
            ));
        };
        Ok(Reply {
            status,
            headers,
            body: Bytes::from(body),
        })
    }
}
