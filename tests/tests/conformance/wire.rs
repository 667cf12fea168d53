//! The conformance suite's HTTP ends: the echo backends both proxies forward to, and a raw
//! HTTP/1.1 client that writes request targets byte for byte from a chosen loopback address.

use std::{
    convert::Infallible,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket},
};

/// Per HTTP exchange.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Echo backends

/// Starts a backend answering every request with JSON describing it: which backend, method,
/// path and query exactly as received, and every header in order. It also sets the response
/// header `X-Echo-Backend` (so `customResponseHeaders` can be seen removing a backend header).
pub(crate) async fn start_echo(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = listener.local_addr().expect("echo address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<Incoming>| async move {
                    let headers: Vec<serde_json::Value> = req
                        .headers()
                        .iter()
                        .map(|(n, v)| {
                            serde_json::json!([n.as_str(), String::from_utf8_lossy(v.as_bytes())])
                        })
                        .collect();
                    let body = serde_json::json!({
                        "backend": name,
                        "method": req.method().as_str(),
                        "path": req.uri().path(),
                        "query": req.uri().query(),
                        "headers": headers,
                    });
                    let mut resp = hyper::Response::new(Full::new(Bytes::from(body.to_string())));
                    resp.headers_mut().insert(
                        "content-type",
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    resp.headers_mut().insert(
                        "x-echo-backend",
                        hyper::header::HeaderValue::from_static(name),
                    );
                    Ok::<_, Infallible>(resp)
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A loopback port nobody listens on (the harness's, outside the ephemeral range).
pub(crate) async fn free_port() -> u16 {
    switchyard_tests::harness::free_port().port()
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1 client

/// What came back, undigested.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one request on a fresh connection from `client` (bound to that loopback address) with
/// `Connection: close`, written byte for byte as given so that odd paths reach the proxy intact.
/// `keep_alive`: without `Connection: close`, the answer read up to its `Content-Length` (the
/// connection is then dropped), for what a proxy does only on a connection that goes on.
pub(crate) async fn exchange(
    to: SocketAddr,
    client: Ipv4Addr,
    request_line: (&str, &str, &str),
    host: Option<&str>,
    headers: &[(String, String)],
    keep_alive: bool,
) -> Result<Reply, String> {
    let (method, target, version) = request_line;
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(SocketAddr::new(IpAddr::V4(client), 0))
        .map_err(|e| format!("bind {client}: {e}"))?;
    let mut request = format!("{method} {target} {version}\r\n");
    if let Some(host) = host {
        let _ = write!(request, "Host: {host}\r\n");
    }
    for (name, value) in headers {
        let _ = write!(request, "{name}: {value}\r\n");
    }
    if !keep_alive {
        request.push_str("Connection: close\r\n");
    }
    request.push_str("\r\n");
    let io = async {
        let mut stream = socket
            .connect(to)
            .await
            .map_err(|e| format!("connect {to}: {e}"))?;
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut raw = Vec::new();
        if !keep_alive {
            stream
                .read_to_end(&mut raw)
                .await
                .map_err(|e| format!("read: {e}"))?;
            return Ok::<_, String>(raw);
        }
        // Bounded by the timeout below.
        while !complete_with_length(&raw)? {
            if stream
                .read_buf(&mut raw)
                .await
                .map_err(|e| format!("read: {e}"))?
                == 0
            {
                return Err(format!("connection closed after {} bytes", raw.len()));
            }
        }
        Ok(raw)
    };
    let raw = tokio::time::timeout(REQUEST_TIMEOUT, io)
        .await
        .map_err(|_| format!("no complete answer from {to} within {REQUEST_TIMEOUT:?}"))??;
    parse_reply(&raw, method == "HEAD")
}

/// Whether `raw` holds a whole response head and the `Content-Length` bytes it announces.
fn complete_with_length(raw: &[u8]) -> Result<bool, String> {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(false);
    };
    let head = String::from_utf8_lossy(&raw[..end]);
    let length = head
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .ok_or_else(|| format!("a kept-alive answer without a Content-Length: {head:?}"))?;
    Ok(raw.len() >= end + 4 + length)
}

pub(crate) fn parse_reply(raw: &[u8], head: bool) -> Result<Reply, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no header end in {:?}", String::from_utf8_lossy(raw)))?;
    let head_text = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head_text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if head {
        Vec::new()
    } else if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Ok(Reply {
        status,
        headers,
        body,
    })
}

pub(crate) fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    // Bounded: every iteration consumes at least the size line.
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}
