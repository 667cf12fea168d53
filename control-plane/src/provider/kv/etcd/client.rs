//! A small etcd v3 client for keeping state in etcd (the ACME storage): get, prefix reads, put
//! (one key, or several in one transaction: the benchmark's writes), delete, leases with a
//! keep-alive, and the two transactions a lock needs (create a key with a lease unless it exists;
//! write only while a lock key still carries our lease). It reuses the provider's connection code
//! (endpoints in turn, TLS through `client_tls`, authentication).
//!
//! The keep-alive lifecycle: [`EtcdClient::keep_alive`] spawns a task that renews the lease every
//! third of its TTL over a `LeaseKeepAlive` stream (re-opened after errors). The lease counts as
//! lost — and stays lost — when etcd says it expired, or when no renewal has been confirmed for
//! long enough that etcd may have expired it ([`lease_lost`]). Dropping the handle stops the task
//! (the lease then expires by itself unless revoked).

use std::time::Duration;

use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tonic::transport::Channel;

use super::{
    EtcdError, authenticate, authorized, connect,
    pb::{
        Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest,
        PutRequest, RangeRequest, RequestOp, TxnRequest,
        compare::{CompareResult, CompareTarget, TargetUnion},
        kv_client::KvClient,
        lease_client::LeaseClient,
        request_op::Request as Op,
    },
    prefix_end, timed, with_scheme,
};
use crate::config::ClientTlsConfig;

/// Where to reach etcd and how; `option` names the configuration block in errors.
#[derive(Clone, Debug)]
pub struct EtcdTarget {
    pub endpoints: Vec<String>,
    pub tls: Option<ClientTlsConfig>,
    pub credentials: Option<(String, String)>,
    pub option: String,
}

impl EtcdTarget {
    /// Endpoints get `https://` when `tls` is set, else `http://`, unless they carry a scheme.
    pub fn new(
        endpoints: &[String],
        tls: Option<ClientTlsConfig>,
        credentials: Option<(String, String)>,
        option: String,
    ) -> Self {
        let scheme = if tls.is_some() { "https" } else { "http" };
        Self {
            endpoints: endpoints.iter().map(|e| with_scheme(e, scheme)).collect(),
            tls,
            credentials,
            option,
        }
    }

    /// Start-up check of the endpoints (each must be a URL once its scheme is added).
    pub fn check(&self) -> Result<(), String> {
        if self.endpoints.is_empty() {
            return Err(format!(
                "{}.endpoints: at least one endpoint is required",
                self.option
            ));
        }
        for e in &self.endpoints {
            e.parse::<http::Uri>().map_err(|err| {
                format!("{}.endpoints: `{e}` is not a valid URL: {err}", self.option)
            })?;
        }
        Ok(())
    }
}

/// A connected, authenticated client. Cheap to clone (one HTTP/2 channel).
#[derive(Clone, Debug)]
pub struct EtcdClient {
    channel: Channel,
    token: Option<String>,
}

impl EtcdClient {
    /// Connects to the first endpoint that answers and authenticates when credentials are set.
    pub async fn connect(target: &EtcdTarget) -> Result<Self, EtcdError> {
        let tls_option = format!("{}.tls", target.option);
        let channel = connect(
            &target.endpoints,
            fastrand::usize(..target.endpoints.len().max(1)),
            target.tls.as_ref(),
            &tls_option,
        )
        .await?;
        let token = match &target.credentials {
            Some((user, password)) => Some(authenticate(channel.clone(), user, password).await?),
            None => None,
        };
        Ok(Self { channel, token })
    }

    fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel.clone())
    }

    /// The value of `key`, if it exists.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, EtcdError> {
        let request = authorized(
            RangeRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            },
            self.token.as_deref(),
        )?;
        let response = timed("range", self.kv().range(request)).await?.into_inner();
        Ok(response.kvs.into_iter().next().map(|kv| kv.value))
    }

    /// Every key starting with `prefix`, with its value, in key order.
    pub async fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, EtcdError> {
        let key = prefix.as_bytes().to_vec();
        let request = authorized(
            RangeRequest {
                range_end: prefix_end(&key),
                key,
                ..Default::default()
            },
            self.token.as_deref(),
        )?;
        let response = timed("range", self.kv().range(request)).await?.into_inner();
        Ok(response
            .kvs
            .into_iter()
            .map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), kv.value))
            .collect())
    }

    pub async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), EtcdError> {
        let request = authorized(put(key, value, 0), self.token.as_deref())?;
        timed("put", self.kv().put(request)).await?;
        Ok(())
    }

    /// Puts every `(key, value)` in one transaction: etcd applies them as one revision, so a
    /// watcher sees them together (etcd allows `--max-txn-ops`, 128 by default, per transaction).
    pub async fn put_all(&self, pairs: Vec<(String, Vec<u8>)>) -> Result<(), EtcdError> {
        let txn = TxnRequest {
            compare: Vec::new(),
            success: pairs
                .into_iter()
                .map(|(key, value)| RequestOp {
                    request: Some(Op::RequestPut(put(&key, value, 0))),
                })
                .collect(),
            failure: Vec::new(),
        };
        self.txn(txn).await.map(drop)
    }

    pub async fn delete(&self, key: &str) -> Result<(), EtcdError> {
        let request = authorized(
            DeleteRangeRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            },
            self.token.as_deref(),
        )?;
        timed("delete", self.kv().delete_range(request)).await?;
        Ok(())
    }

    /// Grants a lease; returns its id and the TTL etcd granted (it may round up).
    pub async fn grant(&self, ttl: Duration) -> Result<(i64, Duration), EtcdError> {
        let request = authorized(
            LeaseGrantRequest {
                ttl: ttl.as_secs().max(1) as i64,
                id: 0,
            },
            self.token.as_deref(),
        )?;
        let mut lease = LeaseClient::new(self.channel.clone());
        let response = timed("lease grant", lease.lease_grant(request))
            .await?
            .into_inner();
        if !response.error.is_empty() {
            return Err(EtcdError::Call {
                call: "lease grant",
                source: tonic::Status::unknown(response.error),
            });
        }
        Ok((response.id, Duration::from_secs(response.ttl.max(1) as u64)))
    }

    /// Revokes a lease; every key attached to it is deleted.
    pub async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        let request = authorized(LeaseRevokeRequest { id: lease }, self.token.as_deref())?;
        let mut client = LeaseClient::new(self.channel.clone());
        timed("lease revoke", client.lease_revoke(request)).await?;
        Ok(())
    }

    /// Creates `key` = `value` attached to `lease` unless `key` exists (one transaction).
    /// `true` when created.
    pub async fn create_with_lease(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: i64,
    ) -> Result<bool, EtcdError> {
        let txn = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Create as i32,
                key: key.as_bytes().to_vec(),
                target_union: Some(TargetUnion::CreateRevision(0)),
                range_end: Vec::new(),
            }],
            success: vec![RequestOp {
                request: Some(Op::RequestPut(put(key, value, lease))),
            }],
            failure: Vec::new(),
        };
        self.txn(txn).await
    }

    /// Writes `key` = `value` only while `guard` exists and carries `lease` (one transaction):
    /// a writer whose lock expired cannot overwrite the next holder's data. `true` when written.
    pub async fn put_while_leased(
        &self,
        guard: &str,
        lease: i64,
        key: &str,
        value: Vec<u8>,
    ) -> Result<bool, EtcdError> {
        let txn = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Lease as i32,
                key: guard.as_bytes().to_vec(),
                target_union: Some(TargetUnion::Lease(lease)),
                range_end: Vec::new(),
            }],
            success: vec![RequestOp {
                request: Some(Op::RequestPut(put(key, value, 0))),
            }],
            failure: Vec::new(),
        };
        self.txn(txn).await
    }

    async fn txn(&self, txn: TxnRequest) -> Result<bool, EtcdError> {
        let request = authorized(txn, self.token.as_deref())?;
        let response = timed("txn", self.kv().txn(request)).await?.into_inner();
        Ok(response.succeeded)
    }

    /// Keeps `lease` (granted with `ttl`) alive until the handle is dropped.
    pub fn keep_alive(&self, lease: i64, ttl: Duration) -> KeepAlive {
        let (lost_tx, lost) = watch::channel(false);
        let task = tokio::spawn(keep_alive(self.clone(), lease, ttl, lost_tx));
        KeepAlive { lost, task }
    }
}

fn put(key: &str, value: Vec<u8>, lease: i64) -> PutRequest {
    PutRequest {
        key: key.as_bytes().to_vec(),
        value,
        lease,
        ..Default::default()
    }
}

/// A running keep-alive; dropping it stops renewing.
#[derive(Debug)]
pub struct KeepAlive {
    lost: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl KeepAlive {
    /// Turns `true` (once, for good) when the lease is, or may be, gone.
    pub fn lost(&self) -> watch::Receiver<bool> {
        self.lost.clone()
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Is a lease whose last confirmed renewal was *sent* at `renewed` (etcd restarted the TTL no
/// earlier than that) possibly expired at `now`? A sixth of the TTL is kept as a margin for
/// clock rates and the time the caller needs to stop.
pub fn lease_lost(renewed: Instant, ttl: Duration, now: Instant) -> bool {
    now + ttl / 6 >= renewed + ttl
}

/// How a keep-alive stream ended.
enum StreamEnd {
    /// etcd answered with TTL 0: the lease is gone.
    Expired,
    /// The stream or the connection failed; try again while the lease may still live.
    Failed(String),
}

async fn keep_alive(client: EtcdClient, lease: i64, ttl: Duration, lost: watch::Sender<bool>) {
    // The lease was granted (its TTL started) just before: count from now minus nothing.
    let mut renewed = Instant::now();
    let every = (ttl / 3).max(Duration::from_millis(200));
    loop {
        let end = keep_alive_stream(&client, lease, ttl, every, &mut renewed).await;
        match end {
            StreamEnd::Expired => {
                tracing::warn!(lease, "etcd lease expired");
                let _ = lost.send(true);
                return;
            }
            StreamEnd::Failed(e) => {
                if lease_lost(renewed, ttl, Instant::now()) {
                    tracing::warn!(lease, error = %e, "etcd lease could not be renewed in time");
                    let _ = lost.send(true);
                    return;
                }
                tracing::debug!(lease, error = %e, "etcd lease keep-alive failed; retrying");
                tokio::time::sleep(every.min(Duration::from_millis(500))).await;
            }
        }
    }
}

/// One `LeaseKeepAlive` stream: a renewal every `every`, each answer awaited no longer than
/// `every` and never past the point where the lease may have expired.
async fn keep_alive_stream(
    client: &EtcdClient,
    lease: i64,
    ttl: Duration,
    every: Duration,
    renewed: &mut Instant,
) -> StreamEnd {
    let (requests, rx) = mpsc::channel(1);
    // The first renewal is queued before the call: etcd sends the stream's headers with its
    // first answer, so the call would not return before a request is sent.
    let mut sent = Instant::now();
    let _ = requests.try_send(LeaseKeepAliveRequest { id: lease });
    let request = match authorized(ReceiverStream::new(rx), client.token.as_deref()) {
        Ok(r) => r,
        Err(e) => return StreamEnd::Failed(e.to_string()),
    };
    let mut lease_client = LeaseClient::new(client.channel.clone());
    let opened = tokio::time::timeout(every, lease_client.lease_keep_alive(request)).await;
    let mut stream = match opened {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) => return StreamEnd::Failed(status.message().to_owned()),
        Err(_) => return StreamEnd::Failed("opening the keep-alive stream timed out".into()),
    };
    loop {
        match tokio::time::timeout(every, stream.next()).await {
            Ok(Some(Ok(response))) if response.ttl <= 0 => return StreamEnd::Expired,
            Ok(Some(Ok(_))) => *renewed = sent,
            Ok(Some(Err(status))) => return StreamEnd::Failed(status.message().to_owned()),
            Ok(None) => return StreamEnd::Failed("etcd closed the keep-alive stream".into()),
            Err(_) => return StreamEnd::Failed("no keep-alive answer in time".into()),
        }
        if lease_lost(*renewed, ttl, Instant::now()) {
            return StreamEnd::Failed("renewals are too late".into());
        }
        tokio::time::sleep(every).await;
        sent = Instant::now();
        if requests
            .send(LeaseKeepAliveRequest { id: lease })
            .await
            .is_err()
        {
            return StreamEnd::Failed("the keep-alive stream closed".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_lost_before_etcd_could_expire_it() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(12);
        assert!(!lease_lost(t0, ttl, t0));
        assert!(!lease_lost(t0, ttl, t0 + Duration::from_secs(9)));
        // Lost with a sixth of the TTL to spare, not only once it has passed.
        assert!(lease_lost(t0, ttl, t0 + Duration::from_secs(10)));
        assert!(lease_lost(t0, ttl, t0 + Duration::from_secs(13)));
    }

    #[test]
    fn targets_get_a_scheme_and_are_checked() {
        let plain = EtcdTarget::new(&["127.0.0.1:2379".into()], None, None, "x".into());
        assert_eq!(plain.endpoints, vec!["http://127.0.0.1:2379"]);
        assert!(plain.check().is_ok());
        let tls = EtcdTarget::new(
            &["e:2379".into()],
            Some(ClientTlsConfig::default()),
            None,
            "x".into(),
        );
        assert_eq!(tls.endpoints, vec!["https://e:2379"]);
        let none = EtcdTarget::new(&[], None, None, "opt".into());
        assert!(none.check().unwrap_err().starts_with("opt.endpoints"));
        let bad = EtcdTarget::new(&["http://a b".into()], None, None, "opt".into());
        assert!(bad.check().unwrap_err().contains("not a valid URL"));
    }
}
