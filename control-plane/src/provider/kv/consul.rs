//! The Consul KV provider (`providers.consul`, provider name `consul`): Traefik's KV layout stored
//! in Consul, decoded by `provider/kv.rs`, watched with Consul's blocking queries on
//! `GET /v1/kv/<rootKey>?recurse&index=N&wait=…`. Also home of [`ConsulClient`], the small Consul
//! HTTP API client that the Consul Catalog provider uses too (no third-party Consul crate).
//!
//! Blocking-query rules (Consul API docs, "Blocking Queries"): the first request has no index and
//! answers at once; each later one passes the last `X-Consul-Index` and hangs until the data
//! changes or `wait` (plus Consul's jitter of up to wait/16) elapses. A returned index is no proof
//! of a change, so an unchanged decode is not re-sent. If the index goes *backwards* (the Consul
//! state was restored or the leader's store was rebuilt) the client resets to index 0 and re-reads
//! everything; an index of 0 is bumped to 1 so the next request still blocks.
//!
//! `404` on the KV prefix means "no key under rootKey": an explicitly empty configuration, so the
//! provider's routes are removed (Traefik semantics). Unreachable Consul: last good stays, the
//! status is reported, requests back off with full jitter.

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use switchyard_shared::backoff::Backoff;
use thiserror::Error;
use tokio::sync::watch;

use super::{IncrementalDecoder, Reporter};
use crate::{
    config::{ClientTlsConfig, ConsulKvProviderConfig},
    provider::{Provider, ProviderSink, ProviderTask, client_tls},
};

/// The provider name (`name@consul`).
pub const NAME: &str = "consul";

/// Consul's default and maximum `wait` for blocking queries.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);
const MAX_WAIT: Duration = Duration::from_secs(600);
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Characters kept as-is in a path segment or query value (RFC 3986 unreserved).
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A Consul API call that failed.
#[derive(Debug, Error)]
pub enum ConsulError {
    #[error("consul endpoint `{0}` is not a valid http:// or https:// address")]
    Endpoint(String),
    #[error("{0}")]
    Tls(String),
    #[error("cannot reach consul at {endpoint}: {source}")]
    Unreachable {
        endpoint: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("consul at {endpoint} did not answer within {}s", .after.as_secs())]
    Timeout { endpoint: String, after: Duration },
    #[error("reading consul's answer from {endpoint} failed: {source}")]
    Body {
        endpoint: String,
        #[source]
        source: hyper::Error,
    },
    #[error("consul answered {status} to GET {path}: {body}")]
    Status {
        path: String,
        status: http::StatusCode,
        body: String,
    },
    #[error("consul's answer to GET {path} has no valid X-Consul-Index header")]
    NoIndex { path: String },
    #[error("consul's answer to GET {path} is not the expected JSON: {source}")]
    Json {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("consul key `{key}` holds invalid base64: {source}")]
    Base64 {
        key: String,
        #[source]
        source: base64::DecodeError,
    },
}

/// How to reach Consul.
#[derive(Clone, Debug, Default)]
pub struct ConsulOptions {
    /// `host:port` or `http://host:port`, tried in turn.
    pub endpoints: Vec<String>,
    /// Sent as `X-Consul-Token`.
    pub token: Option<String>,
    /// `user:password` for HTTP basic authentication.
    pub basic_auth: Option<(String, String)>,
    /// Added to every query (`dc=…`, `ns=…`, `stale`…), already encoded.
    pub query: Vec<(String, String)>,
    /// The `wait` of blocking queries (capped at Consul's 10 minutes).
    pub wait: Duration,
    /// TLS to Consul (`https://` endpoints) and the option name errors should cite.
    pub tls: Option<(ClientTlsConfig, String)>,
}

/// One answer to a (blocking) GET.
#[derive(Debug)]
pub struct Answer {
    pub status: http::StatusCode,
    /// `X-Consul-Index`.
    pub index: u64,
    pub body: Bytes,
}

/// A minimal Consul HTTP API client: GETs with blocking-query parameters and the ACL token.
#[derive(Clone, Debug)]
pub struct ConsulClient {
    options: ConsulOptions,
    bases: Vec<String>,
    http: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    /// Index of the endpoint that answered last.
    current: usize,
}

impl ConsulClient {
    pub fn new(options: ConsulOptions) -> Result<Self, ConsulError> {
        let bases = options
            .endpoints
            .iter()
            .map(|e| {
                let base = if e.contains("://") {
                    e.trim_end_matches('/').to_owned()
                } else {
                    format!("http://{}", e.trim_end_matches('/'))
                };
                let plain = base.starts_with("http://") && base.len() > "http://".len();
                let tls = base.starts_with("https://") && base.len() > "https://".len();
                if plain || tls {
                    Ok(base)
                } else {
                    Err(ConsulError::Endpoint(e.clone()))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        if bases.is_empty() {
            return Err(ConsulError::Endpoint(String::new()));
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(3)));
        connector.set_nodelay(true);
        let tls_config = match &options.tls {
            Some((tls, option)) => client_tls::client_config(tls, option),
            None if bases.iter().any(|b| b.starts_with("https://")) => {
                client_tls::client_config(&ClientTlsConfig::default(), "consul https endpoint")
            }
            // Plain HTTP only: the TLS side of the connector is never used.
            None => Ok(client_tls::plain_only()),
        }
        .map_err(ConsulError::Tls)?;
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(client_tls::connector(
                tls_config,
                connector,
                client_tls::Alpn::Http1,
            ));
        Ok(Self {
            options,
            bases,
            http,
            current: 0,
        })
    }

    /// Percent-encodes one path segment or query value.
    pub fn encode(component: &str) -> String {
        utf8_percent_encode(component, COMPONENT).to_string()
    }

    /// `GET <path>?<query>`; `index` > 0 makes it a blocking query. On a connection failure the
    /// next endpoint is tried.
    pub async fn get(
        &mut self,
        path: &str,
        query: &[(&str, &str)],
        index: u64,
    ) -> Result<Answer, ConsulError> {
        let wait = self.options.wait.min(MAX_WAIT);
        let mut params: Vec<String> = query
            .iter()
            .map(|(k, v)| {
                if v.is_empty() {
                    (*k).to_owned()
                } else {
                    format!("{k}={}", Self::encode(v))
                }
            })
            .collect();
        params.extend(self.options.query.iter().map(|(k, v)| {
            if v.is_empty() {
                k.clone()
            } else {
                format!("{k}={v}")
            }
        }));
        if index > 0 {
            params.push(format!("index={index}"));
            params.push(format!("wait={}ms", wait.as_millis()));
        }
        let path_and_query = if params.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{}", params.join("&"))
        };
        // Consul may answer up to wait/16 late; allow that plus a margin.
        let deadline = if index > 0 {
            wait + wait / 16 + Duration::from_secs(5)
        } else {
            Duration::from_secs(10)
        };
        let mut last_error = None;
        for attempt in 0..self.bases.len() {
            let i = (self.current + attempt) % self.bases.len();
            let base = &self.bases[i];
            match self.get_one(base, &path_and_query, deadline).await {
                Ok(answer) => {
                    self.current = i;
                    return Ok(answer);
                }
                Err(e @ (ConsulError::Unreachable { .. } | ConsulError::Timeout { .. })) => {
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| ConsulError::Endpoint(String::new())))
    }

    async fn get_one(
        &self,
        base: &str,
        path_and_query: &str,
        deadline: Duration,
    ) -> Result<Answer, ConsulError> {
        let uri = format!("{base}{path_and_query}");
        let mut request = http::Request::get(&uri).header(http::header::ACCEPT, "application/json");
        if let Some(token) = &self.options.token {
            request = request.header("X-Consul-Token", token);
        }
        if let Some((user, password)) = &self.options.basic_auth {
            let credentials =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            request = request.header(http::header::AUTHORIZATION, format!("Basic {credentials}"));
        }
        let request = request
            .body(Empty::new())
            .map_err(|_| ConsulError::Endpoint(base.to_owned()))?;
        let call =
            async {
                let response = self.http.request(request).await.map_err(|source| {
                    ConsulError::Unreachable {
                        endpoint: base.to_owned(),
                        source,
                    }
                })?;
                let status = response.status();
                let index = response
                    .headers()
                    .get("X-Consul-Index")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|source| ConsulError::Body {
                        endpoint: base.to_owned(),
                        source,
                    })?
                    .to_bytes();
                Ok::<_, ConsulError>((status, index, body))
            };
        let (status, index, body) =
            tokio::time::timeout(deadline, call)
                .await
                .map_err(|_| ConsulError::Timeout {
                    endpoint: base.to_owned(),
                    after: deadline,
                })??;
        let path = path_and_query
            .split('?')
            .next()
            .unwrap_or_default()
            .to_owned();
        if !(status.is_success() || status == http::StatusCode::NOT_FOUND) {
            return Err(ConsulError::Status {
                path,
                status,
                body: String::from_utf8_lossy(&body)
                    .trim()
                    .chars()
                    .take(200)
                    .collect(),
            });
        }
        let index = index.ok_or(ConsulError::NoIndex { path })?;
        Ok(Answer {
            status,
            index,
            body,
        })
    }
}

/// The index to send next after an answer with `returned`, given the one we sent (`sent`):
/// backwards ⇒ 0 (full re-read), zero ⇒ 1 (still block), else the returned one.
pub fn next_index(sent: u64, returned: u64) -> u64 {
    if returned < sent {
        0
    } else if returned == 0 {
        1
    } else {
        returned
    }
}

/// The Consul KV provider.
#[derive(Debug)]
pub struct ConsulKvProvider {
    root_key: String,
    options: ConsulOptions,
}

impl ConsulKvProvider {
    pub fn new(config: &ConsulKvProviderConfig) -> Self {
        Self {
            root_key: config.root_key.trim_matches('/').to_owned(),
            options: ConsulOptions {
                endpoints: config.endpoints.clone(),
                token: config.token.clone(),
                basic_auth: None,
                query: Vec::new(),
                wait: DEFAULT_WAIT,
                tls: config
                    .tls
                    .clone()
                    .map(|t| (t, "providers.consul.tls".to_owned())),
            },
        }
    }

    /// Overrides the blocking-query `wait` (tests use short ones to exercise timeouts).
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.options.wait = wait;
        self
    }
}

impl Provider for ConsulKvProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(self: Box<Self>, sink: ProviderSink, shutdown: watch::Receiver<bool>) -> ProviderTask {
        Box::pin(run(*self, sink, shutdown))
    }
}

/// One entry of `GET /v1/kv/<prefix>?recurse`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct KvEntry {
    key: String,
    /// Base64; `null` for folder keys and empty values.
    #[serde(default)]
    value: Option<String>,
}

async fn run(provider: ConsulKvProvider, sink: ProviderSink, mut shutdown: watch::Receiver<bool>) {
    let mut reporter = Reporter::default();
    // What the keys decoded to, object by object, for the next change.
    let mut decoder = IncrementalDecoder::default();
    let mut client = match ConsulClient::new(provider.options.clone()) {
        Ok(c) => c,
        Err(e) => {
            reporter.error(&sink, e.to_string()).await;
            let _ = shutdown.changed().await;
            return;
        }
    };
    let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_MAX);
    let path = format!("/v1/kv/{}", ConsulClient::encode(&provider.root_key));
    let mut index = 0u64;
    loop {
        let answer = tokio::select! {
            _ = shutdown.changed() => return,
            answer = client.get(&path, &[("recurse", "")], index) => answer,
        };
        let result = answer.and_then(|answer| {
            let keys = parse_kv(&path, &answer)?;
            Ok((answer.index, keys))
        });
        match result {
            Ok((returned, keys)) => {
                backoff.reset();
                let changed = index == 0 || returned != index || reporter.errored();
                if returned < index {
                    tracing::info!(
                        provider = NAME,
                        sent = index,
                        returned,
                        "consul index went backwards; re-reading"
                    );
                }
                index = next_index(index, returned);
                if changed {
                    let decoded = decoder.decode(
                        NAME,
                        &provider.root_key,
                        keys.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                    );
                    if !reporter
                        .report(&sink, decoded.map_err(|e| e.to_string()))
                        .await
                    {
                        return;
                    }
                }
                continue;
            }
            Err(e) => {
                if !reporter.error(&sink, e.to_string()).await {
                    return;
                }
                // The next answer must come at once (not after a blocking `wait` on unchanged
                // data) so that recovery is reported as soon as Consul is back.
                index = 0;
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// `(key, value)` pairs of a recurse answer; `404` is an empty tree.
fn parse_kv(path: &str, answer: &Answer) -> Result<Vec<(String, String)>, ConsulError> {
    if answer.status == http::StatusCode::NOT_FOUND {
        return Ok(Vec::new());
    }
    let entries: Vec<KvEntry> =
        serde_json::from_slice(&answer.body).map_err(|source| ConsulError::Json {
            path: path.to_owned(),
            source,
        })?;
    entries
        .into_iter()
        .map(|entry| {
            let value = match &entry.value {
                None => String::new(),
                Some(v) => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(v)
                        .map_err(|source| ConsulError::Base64 {
                            key: entry.key.clone(),
                            source,
                        })?;
                    String::from_utf8_lossy(&bytes).into_owned()
                }
            };
            Ok((entry.key, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_rules_follow_consul_docs() {
        assert_eq!(next_index(0, 12), 12);
        assert_eq!(next_index(12, 12), 12);
        assert_eq!(next_index(12, 15), 15);
        assert_eq!(next_index(12, 3), 0, "backwards resets");
        assert_eq!(next_index(0, 0), 1, "zero never used as a blocking index");
    }

    #[test]
    fn kv_answer_decodes_base64_and_null_values() {
        let body = br#"[{"LockIndex":0,"Key":"traefik/","Flags":0,"Value":null,"CreateIndex":5,"ModifyIndex":5},
            {"LockIndex":0,"Key":"traefik/http/routers/r/rule","Flags":0,"Value":"UGF0aChgL2FgKQ==","CreateIndex":6,"ModifyIndex":9}]"#;
        let answer = Answer {
            status: http::StatusCode::OK,
            index: 9,
            body: Bytes::from_static(body),
        };
        let keys = parse_kv("/v1/kv/traefik", &answer).unwrap();
        assert_eq!(
            keys[1],
            ("traefik/http/routers/r/rule".into(), "Path(`/a`)".into())
        );
        let bad = Answer {
            body: Bytes::from_static(br#"[{"Key":"traefik/x","Value":"%%%"}]"#),
            ..answer
        };
        let err = parse_kv("/v1/kv/traefik", &bad).unwrap_err();
        assert!(err.to_string().contains("traefik/x"), "{err}");
    }
}
