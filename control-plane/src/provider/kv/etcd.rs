//! The etcd provider (`providers.etcd`, provider name `etcd`): Traefik's KV layout stored in etcd
//! (v3 API over gRPC), decoded by `provider/kv.rs` (object by object: `kv/incremental.rs`).
//!
//! Lifecycle: connect (endpoints tried in turn) → authenticate when `username` is set → read every
//! key under `<rootKey>/` at one revision → watch the prefix from that revision + 1, applying
//! events to an in-memory copy of the tree and emitting the decoded configuration after each
//! batch. A dropped watch (etcd restarted, network cut) resumes from the last revision seen, so
//! nothing is missed and nothing is re-read; a resume point that etcd has compacted away
//! triggers a full re-read. While etcd is unreachable the last good configuration stays, the
//! status is reported through [`ProviderSink::error`] and connection attempts back off with full
//! jitter. A key that cannot be decoded rejects the whole update (Traefik semantics) with the key
//! in the error; the next good state is sent as soon as it exists.
//!
//! Only this module (and its [`client`], the small KV/lease client the ACME storage uses) names
//! the generated etcd types (built from `proto/etcd` by `build.rs`).

pub mod client;

use std::{collections::BTreeMap, time::Duration};

use switchyard_shared::backoff::Backoff;
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tonic::{Request, metadata::MetadataValue, transport::Channel};

use super::{IncrementalDecoder, Reporter};
use crate::{
    config::{ClientTlsConfig, EtcdProviderConfig},
    provider::{Provider, ProviderSink, ProviderTask, client_tls},
};
use hyper_util::client::legacy::connect::HttpConnector;

#[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
mod pb {
    tonic::include_proto!("etcdserverpb");
}

use pb::{
    AuthenticateRequest, RangeRequest, WatchCreateRequest, WatchRequest, auth_client::AuthClient,
    event::EventType, kv_client::KvClient, watch_client::WatchClient, watch_request::RequestUnion,
};

/// The provider name (`name@etcd`).
pub const NAME: &str = "etcd";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Why a session with etcd ended.
#[derive(Debug, Error)]
pub enum EtcdError {
    #[error("etcd endpoint `{endpoint}` is not a valid URL: {source}")]
    Endpoint {
        endpoint: String,
        #[source]
        source: http::uri::InvalidUri,
    },
    #[error("no etcd endpoint is configured")]
    NoEndpoints,
    #[error("{0}")]
    Tls(String),
    #[error("cannot connect to etcd at {endpoints}: {source}")]
    Connect {
        endpoints: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("etcd authentication as `{user}` failed: {}", .source.message())]
    Auth {
        user: String,
        #[source]
        source: tonic::Status,
    },
    #[error("etcd {call} failed: {}", .source.message())]
    Call {
        call: &'static str,
        #[source]
        source: tonic::Status,
    },
    #[error("etcd {call} timed out after {}s", REQUEST_TIMEOUT.as_secs())]
    Timeout { call: &'static str },
    #[error("etcd closed the watch stream")]
    WatchClosed,
    #[error("etcd cancelled the watch: {0}")]
    WatchCanceled(String),
    #[error("etcd rejected the auth token: {0}")]
    Token(String),
}

/// The etcd provider.
#[derive(Clone, Debug)]
pub struct EtcdProvider {
    endpoints: Vec<String>,
    root_key: String,
    credentials: Option<(String, String)>,
    /// `providers.etcd.tls`; with it, endpoints default to `https://`.
    tls: Option<ClientTlsConfig>,
}

impl EtcdProvider {
    pub fn new(config: &EtcdProviderConfig) -> Self {
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        Self {
            endpoints: config
                .endpoints
                .iter()
                .map(|e| with_scheme(e, scheme))
                .collect(),
            root_key: config.root_key.trim_matches('/').to_owned(),
            credentials: config
                .username
                .clone()
                .map(|u| (u, config.password.clone().unwrap_or_default())),
            tls: config.tls.clone(),
        }
    }
}

impl Provider for EtcdProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(self: Box<Self>, sink: ProviderSink, shutdown: watch::Receiver<bool>) -> ProviderTask {
        Box::pin(run(*self, sink, shutdown))
    }
}

fn with_scheme(endpoint: &str, scheme: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("{scheme}://{endpoint}")
    }
}

/// What survives between sessions: the mirrored tree and the revision it reflects.
#[derive(Debug)]
struct Mirror {
    /// `None`: nothing trustworthy, the next session reads everything.
    revision: Option<i64>,
    keys: BTreeMap<String, String>,
    /// What the keys decoded to, object by object, for the next change.
    decoder: IncrementalDecoder,
    reporter: Reporter,
}

async fn run(provider: EtcdProvider, sink: ProviderSink, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_MAX);
    let mut mirror = Mirror {
        revision: None,
        keys: BTreeMap::new(),
        decoder: IncrementalDecoder::default(),
        reporter: Reporter::default(),
    };
    let mut first_endpoint = 0usize;
    loop {
        let result = tokio::select! {
            _ = shutdown.changed() => return,
            result = session(&provider, &sink, &mut mirror, &mut backoff, first_endpoint) => result,
        };
        match result {
            // A compaction asks for an immediate full re-read.
            Ok(()) => continue,
            Err(e) => {
                tracing::warn!(provider = NAME, error = %e, "etcd session ended");
                if !mirror.reporter.error(&sink, e.to_string()).await {
                    return;
                }
                first_endpoint = first_endpoint.wrapping_add(1);
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// One connection's life. `Ok` means "reconnect now" (compaction); errors back off.
async fn session(
    provider: &EtcdProvider,
    sink: &ProviderSink,
    mirror: &mut Mirror,
    backoff: &mut Backoff,
    first_endpoint: usize,
) -> Result<(), EtcdError> {
    let channel = connect(
        &provider.endpoints,
        first_endpoint,
        provider.tls.as_ref(),
        "providers.etcd.tls",
    )
    .await?;
    let token = match &provider.credentials {
        Some((user, password)) => Some(authenticate(channel.clone(), user, password).await?),
        None => None,
    };
    let prefix = format!("{}/", provider.root_key).into_bytes();
    let range_end = prefix_end(&prefix);
    let mut kv = KvClient::new(channel.clone());
    let mut watcher = WatchClient::new(channel);

    if mirror.revision.is_none() {
        let request = authorized(
            RangeRequest {
                key: prefix.clone(),
                range_end: range_end.clone(),
                ..Default::default()
            },
            token.as_deref(),
        )?;
        let response = timed("range", kv.range(request)).await?.into_inner();
        mirror.keys = response
            .kvs
            .into_iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    String::from_utf8_lossy(&kv.value).into_owned(),
                )
            })
            .collect();
        mirror.revision = Some(response.header.map_or(0, |h| h.revision));
        tracing::info!(provider = NAME, keys = mirror.keys.len(), revision = ?mirror.revision, "etcd tree read");
        emit(provider, sink, mirror).await;
    }

    let start = mirror.revision.unwrap_or(0) + 1;
    let (requests, rx) = mpsc::channel(2);
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: prefix,
            range_end,
            start_revision: start,
            progress_notify: true,
            ..Default::default()
        })),
    };
    // The channel has room: this cannot fail while `rx` is alive.
    let _ = requests.try_send(create);
    let request = authorized(ReceiverStream::new(rx), token.as_deref())?;
    let mut stream = timed("watch", watcher.watch(request)).await?.into_inner();
    loop {
        let message = stream.next().await;
        let response = match message {
            None => return Err(EtcdError::WatchClosed),
            Some(Err(status)) => {
                return Err(EtcdError::Call {
                    call: "watch",
                    source: status,
                });
            }
            Some(Ok(response)) => response,
        };
        if response.compact_revision != 0 {
            tracing::warn!(
                provider = NAME,
                resume_from = start,
                compacted = response.compact_revision,
                "etcd compacted the revision to resume from; re-reading the whole tree"
            );
            mirror.revision = None;
            return Ok(());
        }
        if response.canceled {
            return Err(EtcdError::WatchCanceled(response.cancel_reason));
        }
        if response.created {
            tracing::info!(
                provider = NAME,
                from_revision = start,
                "etcd watch established"
            );
            backoff.reset();
            // Reconnected after an outage with nothing new: say we are healthy again.
            if mirror.reporter.errored() {
                emit(provider, sink, mirror).await;
            }
            continue;
        }
        if response.events.is_empty() {
            // Progress notification: everything up to this revision has been delivered.
            if let Some(header) = response.header {
                mirror.revision = Some(mirror.revision.unwrap_or(0).max(header.revision));
            }
            continue;
        }
        for event in response.events {
            let Some(kv) = event.kv else { continue };
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            mirror.revision = Some(mirror.revision.unwrap_or(0).max(kv.mod_revision));
            if event.r#type == EventType::Delete as i32 {
                mirror.keys.remove(&key);
            } else {
                mirror
                    .keys
                    .insert(key, String::from_utf8_lossy(&kv.value).into_owned());
            }
        }
        emit(provider, sink, mirror).await;
    }
}

/// Decodes the mirrored tree and tells the aggregator (an error keeps the last good config).
async fn emit(provider: &EtcdProvider, sink: &ProviderSink, mirror: &mut Mirror) {
    let decoded = mirror.decoder.decode(
        NAME,
        &provider.root_key,
        mirror.keys.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    );
    mirror
        .reporter
        .report(sink, decoded.map_err(|e| e.to_string()))
        .await;
}

/// A channel to the first endpoint that answers, starting at `first`; `option` names the TLS
/// option in errors.
async fn connect(
    endpoints: &[String],
    first: usize,
    tls: Option<&ClientTlsConfig>,
    option: &str,
) -> Result<Channel, EtcdError> {
    let needs_tls = tls.is_some() || endpoints.iter().any(|e| e.starts_with("https://"));
    let tls_config = if needs_tls {
        let default = ClientTlsConfig::default();
        Some(client_tls::client_config(tls.unwrap_or(&default), option).map_err(EtcdError::Tls)?)
    } else {
        None
    };
    let mut last_error = None;
    for i in 0..endpoints.len() {
        let endpoint = &endpoints[(first + i) % endpoints.len()];
        let uri = match &tls_config {
            Some(_) => client_tls::plain_scheme_for_grpc(endpoint),
            None => endpoint.clone(),
        };
        let target = Channel::from_shared(uri)
            .map_err(|source| EtcdError::Endpoint {
                endpoint: endpoint.clone(),
                source,
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        let connected = match &tls_config {
            Some(config) => {
                let mut base = HttpConnector::new();
                base.set_connect_timeout(Some(CONNECT_TIMEOUT));
                base.set_nodelay(true);
                target
                    // gRPC over TLS negotiates HTTP/2 through ALPN.
                    .connect_with_connector(client_tls::TlsForGrpc(client_tls::connector(
                        config.clone(),
                        base,
                        client_tls::Alpn::Http2,
                    )))
                    .await
            }
            None => target.connect().await,
        };
        match connected {
            Ok(channel) => return Ok(channel),
            Err(e) => last_error = Some(e),
        }
    }
    match last_error {
        Some(source) => Err(EtcdError::Connect {
            endpoints: endpoints.join(", "),
            source,
        }),
        None => Err(EtcdError::NoEndpoints),
    }
}

async fn authenticate(channel: Channel, user: &str, password: &str) -> Result<String, EtcdError> {
    let mut auth = AuthClient::new(channel);
    let response = timed(
        "authenticate",
        auth.authenticate(AuthenticateRequest {
            name: user.to_owned(),
            password: password.to_owned(),
        }),
    )
    .await
    .map_err(|e| match e {
        EtcdError::Call { source, .. } => EtcdError::Auth {
            user: user.to_owned(),
            source,
        },
        other => other,
    })?;
    Ok(response.into_inner().token)
}

fn authorized<T>(message: T, token: Option<&str>) -> Result<Request<T>, EtcdError> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        let value = MetadataValue::try_from(token).map_err(|e| EtcdError::Token(e.to_string()))?;
        request.metadata_mut().insert("token", value);
    }
    Ok(request)
}

async fn timed<T>(
    call: &'static str,
    future: impl Future<Output = Result<T, tonic::Status>>,
) -> Result<T, EtcdError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(EtcdError::Call { call, source }),
        Err(_) => Err(EtcdError::Timeout { call }),
    }
}

/// The smallest key after every key starting with `prefix` (etcd's prefix `range_end`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff: "to the end of the key space".
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"traefik/"), b"traefik0".to_vec());
        assert_eq!(prefix_end(&[b'a', 0xff]), b"b".to_vec());
        assert_eq!(prefix_end(&[0xff]), vec![0]);
    }

    #[test]
    fn endpoints_get_a_scheme() {
        assert_eq!(
            with_scheme("127.0.0.1:2379", "http"),
            "http://127.0.0.1:2379"
        );
        assert_eq!(
            with_scheme("127.0.0.1:2379", "https"),
            "https://127.0.0.1:2379"
        );
        assert_eq!(with_scheme("https://e:2379", "http"), "https://e:2379");
    }
}
