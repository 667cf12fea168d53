//! `switchyard-echo --listen ADDR --name NAME`: a tiny HTTP/1.1 + h2c backend for the demo fleet
//! and tests. Every request is answered 200 with `X-Backend: NAME` and a JSON description of what
//! arrived (method, raw path, query, host, headers); `/__status/NNN` answers with status NNN.

use std::{collections::BTreeMap, convert::Infallible, net::SocketAddr, process::ExitCode};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpListener;

fn usage() -> ExitCode {
    eprintln!("usage: switchyard-echo --listen ADDR --name NAME");
    ExitCode::from(2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut listen: Option<String> = None;
    let mut name: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next(),
            "--name" => name = args.next(),
            _ => return usage(),
        }
    }
    let (Some(listen), Some(name)) = (listen, name) else {
        return usage();
    };
    let addr: SocketAddr = match listen.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("switchyard-echo: --listen `{listen}`: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("switchyard-echo: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let name: &'static str = Box::leak(name.into_boxed_str());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| async move {
                Ok::<_, Infallible>(answer(name, &req))
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(name: &str, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in req.headers() {
        headers
            .entry(k.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let body = serde_json::json!({
        "backend": name,
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query(),
        "host": req.headers().get(http::header::HOST).map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned()),
        "headers": headers,
    });
    let status = req
        .uri()
        .path()
        .strip_prefix("/__status/")
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
