//! The ACME side of one order: an HTTP client for instant-acme built on the workspace's
//! hyper-rustls (ring, no platform verifier), the account (restored from storage or created),
//! and the order flow — challenges handed to a callback that publishes them to the proxies, then
//! finalize with our own key and CSR.

use std::{future::Future, path::PathBuf, pin::Pin, sync::Arc, time::Duration};

use bytes::Bytes;
use http::Request;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use instant_acme::{
    Account, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType, HttpClient,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, pem::PemObject};
use thiserror::Error;

/// Where Debian keeps the system's trusted CAs.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Bound on every request to the ACME server.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an order failed; the message is what `status` shows as the last error.
#[derive(Debug, Error)]
pub enum OrderError {
    #[error("ACME server {directory}: {message}")]
    Acme { directory: String, message: String },
    /// The CA no longer knows our account (e.g. a test CA restarted); a new one is made next time.
    #[error(
        "ACME server {directory}: the account is unknown ({message}); a new account will be created"
    )]
    AccountGone { directory: String, message: String },
    #[error("{0}")]
    Local(String),
}

/// An error with its sources, `a: b: c`.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// TLS trust for `caServer`: `caCertificates` plus (optionally) the system bundle.
pub fn client_config(
    ca_certificates: &[PathBuf],
    system: bool,
    option: &str,
) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    let mut files: Vec<(PathBuf, String)> = ca_certificates
        .iter()
        .map(|p| (p.clone(), format!("{option}.caCertificates")))
        .collect();
    if system {
        files.push((PathBuf::from(SYSTEM_BUNDLE), "the system CA bundle".into()));
    }
    for (path, what) in files {
        let bytes = std::fs::read(&path)
            .map_err(|e| format!("{what}: cannot read {}: {e}", path.display()))?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&bytes) {
            let cert = cert.map_err(|e| format!("{what}: {}: {e}", path.display()))?;
            // A bundle may hold certificates rustls cannot use; skip those, as Go does.
            if roots.add(cert).is_ok() {
                added += 1;
            }
        }
        if added == 0 {
            return Err(format!("{what}: {}: no usable certificate", path.display()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // ALPN stays empty: the hyper-rustls connector sets it from the enabled HTTP versions.
    ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("{option}: {e}"))
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

/// instant-acme's transport.
struct AcmeHttp(Client<HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>);

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let fut = self.0.request(req);
        Box::pin(async move {
            match tokio::time::timeout(HTTP_TIMEOUT, fut).await {
                Ok(Ok(rsp)) => Ok(BytesResponse::from(rsp)),
                Ok(Err(e)) => Err(instant_acme::Error::Other(chain(&e).into())),
                Err(_) => Err(instant_acme::Error::Str(
                    "no answer from the ACME server within 30s",
                )),
            }
        })
    }
}

fn http_client(tls: &ClientConfig) -> Box<dyn HttpClient> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.clone())
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Box::new(AcmeHttp(
        Client::builder(TokioExecutor::new()).build(connector),
    ))
}

fn acme_error(directory: &str, e: &instant_acme::Error) -> OrderError {
    if let instant_acme::Error::Api(problem) = e
        && problem
            .r#type
            .as_deref()
            .is_some_and(|t| t.ends_with(":accountDoesNotExist") || t.ends_with(":unauthorized"))
    {
        return OrderError::AccountGone {
            directory: directory.to_owned(),
            message: chain(e),
        };
    }
    OrderError::Acme {
        directory: directory.to_owned(),
        message: chain(e),
    }
}

/// Restores the stored account, or creates one. Returns the account and, when new, the
/// credentials to store.
pub async fn account(
    tls: &ClientConfig,
    directory: &str,
    email: Option<&str>,
    stored: Option<serde_json::Value>,
) -> Result<(Account, Option<serde_json::Value>), OrderError> {
    if let Some(value) = stored {
        match serde_json::from_value::<instant_acme::AccountCredentials>(value) {
            Ok(credentials) => {
                let account = Account::builder_with_http(http_client(tls))
                    .from_credentials(credentials)
                    .await
                    .map_err(|e| acme_error(directory, &e))?;
                return Ok((account, None));
            }
            Err(e) => {
                tracing::warn!(%directory, error = %e, "stored ACME account does not decode; creating a new one")
            }
        }
    }
    let contact = email.map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, credentials) = Account::builder_with_http(http_client(tls))
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            directory.to_owned(),
            None,
        )
        .await
        .map_err(|e| acme_error(directory, &e))?;
    let value = serde_json::to_value(&credentials)
        .map_err(|e| OrderError::Local(format!("cannot encode the ACME account: {e}")))?;
    tracing::info!(%directory, "ACME account created");
    Ok((account, Some(value)))
}

/// A challenge to publish before the CA is told to validate it.
#[derive(Clone, Debug)]
pub enum Challenge {
    Http {
        domain: String,
        token: String,
        key_authorization: String,
    },
    TlsAlpn {
        domain: String,
        /// SHA-256 of the key authorization (the acmeIdentifier extension's value).
        digest: Vec<u8>,
    },
}

/// Which challenge a resolver answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChallengeKind {
    Http01,
    TlsAlpn01,
}

/// The outcome of an order: the chain and the key (PEM).
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

/// Makes a challenge reachable; returns once the proxies serve it.
pub trait Publish {
    fn publish(&mut self, challenge: Challenge) -> impl Future<Output = ()> + Send + '_;
}

/// Runs one order for `domains`. Every challenge goes through `publish` before the CA is asked
/// to validate it; the caller withdraws them afterwards.
pub async fn order(
    account: &Account,
    directory: &str,
    domains: &[String],
    kind: ChallengeKind,
    key_alg: &'static rcgen::SignatureAlgorithm,
    publish: &mut impl Publish,
) -> Result<Issued, OrderError> {
    let err = |e: instant_acme::Error| acme_error(directory, &e);
    let identifiers: Vec<Identifier> = domains.iter().cloned().map(Identifier::Dns).collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(err)?;
    let challenge_type = match kind {
        ChallengeKind::Http01 => ChallengeType::Http01,
        ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
    };
    {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(err)?;
            match authz.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => {
                    return Err(OrderError::Acme {
                        directory: directory.to_owned(),
                        message: format!("authorization for {} is {other:?}", authz.identifier()),
                    });
                }
            }
            let domain = authz.identifier().to_string();
            let mut challenge =
                authz
                    .challenge(challenge_type.clone())
                    .ok_or_else(|| OrderError::Acme {
                        directory: directory.to_owned(),
                        message: format!(
                            "the CA offers no {challenge_type:?} challenge for {domain}"
                        ),
                    })?;
            let key_authorization = challenge.key_authorization();
            let published = match kind {
                ChallengeKind::Http01 => Challenge::Http {
                    domain: domain.clone(),
                    token: challenge.token.clone(),
                    key_authorization: key_authorization.as_str().to_owned(),
                },
                ChallengeKind::TlsAlpn01 => Challenge::TlsAlpn {
                    domain: domain.clone(),
                    digest: key_authorization.digest().as_ref().to_vec(),
                },
            };
            publish.publish(published).await;
            challenge.set_ready().await.map_err(err)?;
        }
    }
    let retries = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .timeout(Duration::from_secs(90));
    let status = order.poll_ready(&retries).await.map_err(err)?;
    if status != OrderStatus::Ready {
        let detail = order
            .state()
            .error
            .as_ref()
            .map(|p| format!(": {p}"))
            .unwrap_or_default();
        return Err(OrderError::Acme {
            directory: directory.to_owned(),
            message: format!(
                "the order for {} became {status:?}{detail} (the CA could not validate the challenge: can it reach the proxies for these names?)",
                domains.join(", ")
            ),
        });
    }
    let key = rcgen::KeyPair::generate_for(key_alg)
        .map_err(|e| OrderError::Local(format!("cannot generate a key: {e}")))?;
    let mut params = rcgen::CertificateParams::new(domains.to_vec())
        .map_err(|e| OrderError::Local(format!("cannot build the CSR: {e}")))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| OrderError::Local(format!("cannot build the CSR: {e}")))?;
    order.finalize_csr(csr.der()).await.map_err(err)?;
    let chain_pem = order.poll_certificate(&retries).await.map_err(err)?;
    Ok(Issued {
        chain_pem,
        key_pem: key.serialize_pem(),
    })
}

/// The self-signed certificate answering a TLS-ALPN-01 challenge (RFC 8737): `(cert, key)` PEM.
pub fn tls_alpn_certificate(domain: &str, digest: &[u8]) -> Result<(String, String), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params =
        rcgen::CertificateParams::new(vec![domain.to_owned()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    Ok((cert.pem(), key.serialize_pem()))
}
