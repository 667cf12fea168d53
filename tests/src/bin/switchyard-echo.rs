//! `switchyard-echo --listen ADDR --name NAME`: a tiny HTTP/1.1 + h2c backend for the demo fleet
//! and tests. Every request is answered 200 with `X-Backend: NAME` and a JSON description of what
//! arrived (backend, method, raw path, raw query, host, headers); `/__status/NNN` answers with
//! status NNN. Connections are kept alive. Once bound it prints `listening on ADDR` (so tests can
//! pass port 0 and read the real port from its output). Nothing from the network can panic it.

use std::{
    collections::BTreeMap, convert::Infallible, net::SocketAddr, process::ExitCode, sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpListener;

const USAGE: &str = "usage: switchyard-echo --listen ADDR --name NAME";

/// The parsed command line.
struct Args {
    listen: SocketAddr,
    name: String,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut listen = None;
    let mut name = None;
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_owned(), Some(value.into())),
            _ => (arg, None),
        };
        let slot = match flag.as_str() {
            "--listen" => &mut listen,
            "--name" => &mut name,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        };
        let value = inline
            .or_else(|| args.next())
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        *slot = Some(value);
    }
    let listen = listen.ok_or_else(|| format!("--listen is required\n{USAGE}"))?;
    let name = name.ok_or_else(|| format!("--name is required\n{USAGE}"))?;
    let listen = listen
        .parse()
        .map_err(|e| format!("--listen `{listen}` is not an address (IP:PORT): {e}"))?;
    Ok(Args { listen, name })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("switchyard-echo: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("switchyard-echo: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(addr) => println!("switchyard-echo {} listening on {addr}", args.name),
        Err(e) => {
            eprintln!("switchyard-echo: no local address: {e}");
            return ExitCode::FAILURE;
        }
    }
    let name: Arc<str> = Arc::from(args.name);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                eprintln!("switchyard-echo: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let name = name.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let response = answer(&name, &req);
                async move { Ok::<_, Infallible>(response) }
            });
            // Errors are the peer's business (resets, garbage); the connection simply ends.
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn text(value: &HeaderValue) -> String {
    String::from_utf8_lossy(value.as_bytes()).into_owned()
}

fn answer(name: &str, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in req.headers() {
        headers
            .entry(k.as_str().to_owned())
            .or_default()
            .push(text(v));
    }
    // HTTP/2 carries the host in `:authority` rather than a Host header.
    let host = req
        .headers()
        .get(http::header::HOST)
        .map(text)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()));
    let body = serde_json::json!({
        "backend": name,
        "version": format!("{:?}", req.version()),
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query(),
        "host": host,
        "headers": headers,
    });
    let status = req
        .uri()
        .path()
        .strip_prefix("/__status/")
        .and_then(|rest| rest.split('/').next())
        .and_then(|code| code.parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .unwrap_or(StatusCode::OK);
    let mut text = serde_json::to_string_pretty(&body).unwrap_or_default();
    text.push('\n');
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(name) {
        response.headers_mut().insert("x-backend", v);
    }
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::parse_args;

    fn args(list: &[&str]) -> Result<(String, String), String> {
        parse_args(list.iter().map(|s| (*s).to_owned())).map(|a| (a.listen.to_string(), a.name))
    }

    #[test]
    fn both_flags_in_either_spelling() {
        assert_eq!(
            args(&["--listen", "127.0.0.1:9101", "--name", "blue"]),
            Ok(("127.0.0.1:9101".into(), "blue".into()))
        );
        assert_eq!(
            args(&["--name=green", "--listen=127.0.0.1:0"]),
            Ok(("127.0.0.1:0".into(), "green".into()))
        );
    }

    #[test]
    fn missing_or_bad_values_are_explained() {
        assert!(
            args(&["--listen"])
                .unwrap_err()
                .contains("--listen needs a value")
        );
        assert!(
            args(&["--name", "x"])
                .unwrap_err()
                .contains("--listen is required")
        );
        assert!(
            args(&["--listen", "nope", "--name", "x"])
                .unwrap_err()
                .contains("`nope`")
        );
        assert!(
            args(&["--bogus"])
                .unwrap_err()
                .contains("unknown argument `--bogus`")
        );
    }
}
