//! Connecting to a Docker Engine API endpoint (shared by the Docker and Swarm providers):
//! `unix:///path`, `tcp://host:port` / `http://host:port`, and `tcp://` or `https://` with TLS
//! client certificates. The API version is negotiated: we ask the daemon which version it speaks
//! (with an old version every engine accepts) and use the lower of that and the newest version
//! our client knows, so Debian's Docker 20.10 (API 1.41) works as well as current engines.

use std::{path::PathBuf, time::Duration};

use bollard::{API_DEFAULT_VERSION, ClientVersion, Docker};
use thiserror::Error;

use crate::config::ClientTlsConfig;

/// The oldest API version we speak; every supported engine accepts it for `/version`.
const PROBE_VERSION: ClientVersion = ClientVersion {
    major_version: 1,
    minor_version: 24,
};

/// Per-request timeout (response head) when `httpClientTimeout` is not set. Streams (events)
/// are not cut by it.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The daemon could not be reached or answered with an error.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot connect to the Docker daemon at {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("Docker daemon at {endpoint}: {what}: {source}")]
    Api {
        endpoint: String,
        what: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("Docker daemon at {endpoint}: cannot understand API version `{version}`")]
    Version { endpoint: String, version: String },
    #[error("Docker daemon at {endpoint}: the event stream ended")]
    EventsEnded { endpoint: String },
}

/// How to reach the daemon, validated at start-up.
#[derive(Clone, Debug)]
pub struct Endpoint {
    url: String,
    transport: Transport,
    timeout: Duration,
}

#[derive(Clone, Debug)]
enum Transport {
    Unix(String),
    Http(String),
    Tls {
        address: String,
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
    },
}

impl Endpoint {
    /// Checks `endpoint` and `tls`; `option` (`providers.docker`) prefixes error messages.
    pub fn parse(
        endpoint: &str,
        tls: Option<&ClientTlsConfig>,
        timeout: Option<Duration>,
        option: &str,
    ) -> Result<Self, String> {
        let endpoint = endpoint.trim();
        let (scheme, rest) = endpoint.split_once("://").ok_or_else(|| {
            format!(
                "{option}.endpoint `{endpoint}`: expected unix:///path/to/docker.sock or \
                 tcp://host:port"
            )
        })?;
        let transport = match (scheme, tls) {
            ("unix", None) if rest.starts_with('/') => Transport::Unix(rest.to_owned()),
            ("unix", Some(_)) => {
                return Err(format!(
                    "{option}.tls: TLS is for tcp:// endpoints, not unix sockets"
                ));
            }
            ("tcp" | "http", None) if !rest.is_empty() => Transport::Http(rest.to_owned()),
            ("tcp" | "https", Some(tls)) if !rest.is_empty() => {
                if tls.insecure_skip_verify {
                    return Err(format!(
                        "{option}.tls.insecureSkipVerify is not supported (see \
                         docs/compatibility.md); give the daemon's CA in `ca`"
                    ));
                }
                let file = |value: &Option<PathBuf>, name: &str| {
                    value.clone().ok_or_else(|| {
                        format!("{option}.tls.{name} is required (ca, cert and key go together)")
                    })
                };
                Transport::Tls {
                    address: rest.to_owned(),
                    ca: file(&tls.ca, "ca")?,
                    cert: file(&tls.cert, "cert")?,
                    key: file(&tls.key, "key")?,
                }
            }
            ("ssh", _) => {
                return Err(format!(
                    "{option}.endpoint `{endpoint}`: ssh:// is not supported (see \
                     docs/compatibility.md)"
                ));
            }
            _ => {
                return Err(format!(
                    "{option}.endpoint `{endpoint}`: expected unix:///path/to/docker.sock, \
                     tcp://host:port or http://host:port (https:// needs tls)"
                ));
            }
        };
        Ok(Self {
            url: endpoint.to_owned(),
            transport,
            timeout: timeout.filter(|t| !t.is_zero()).unwrap_or(DEFAULT_TIMEOUT),
        })
    }

    /// The endpoint as configured (for messages).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Connects and negotiates the API version.
    pub async fn connect(&self) -> Result<Docker, ClientError> {
        let probe = self.client(&PROBE_VERSION)?;
        let version = probe.version().await.map_err(|source| ClientError::Api {
            endpoint: self.url.clone(),
            what: "GET /version".into(),
            source,
        })?;
        let server = version.api_version.unwrap_or_default();
        let parsed = parse_version(&server).ok_or_else(|| ClientError::Version {
            endpoint: self.url.clone(),
            version: server.clone(),
        })?;
        let ours = (
            API_DEFAULT_VERSION.major_version,
            API_DEFAULT_VERSION.minor_version,
        );
        let (major_version, minor_version) = parsed.min(ours);
        tracing::debug!(endpoint = %self.url, server = %server, "Docker API version negotiated");
        self.client(&ClientVersion {
            major_version,
            minor_version,
        })
    }

    fn client(&self, version: &ClientVersion) -> Result<Docker, ClientError> {
        let timeout = self.timeout.as_secs().max(1);
        let connected = match &self.transport {
            Transport::Unix(path) => Docker::connect_with_unix(path, timeout, version),
            Transport::Http(address) => Docker::connect_with_http(address, timeout, version),
            Transport::Tls {
                address,
                ca,
                cert,
                key,
            } => Docker::connect_with_ssl(address, key, cert, ca, timeout, version),
        };
        connected.map_err(|source| ClientError::Connect {
            endpoint: self.url.clone(),
            source,
        })
    }
}

/// `"1.41"` → `(1, 41)`.
fn parse_version(text: &str) -> Option<(usize, usize)> {
    let (major, minor) = text.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_forms() {
        let unix = Endpoint::parse("unix:///var/run/docker.sock", None, None, "p").unwrap();
        assert!(matches!(unix.transport, Transport::Unix(ref p) if p == "/var/run/docker.sock"));
        let tcp = Endpoint::parse("tcp://127.0.0.1:2375", None, None, "p").unwrap();
        assert!(matches!(tcp.transport, Transport::Http(ref a) if a == "127.0.0.1:2375"));
        for bad in [
            "/var/run/docker.sock",
            "unix://relative",
            "ftp://x",
            "tcp://",
        ] {
            let err = Endpoint::parse(bad, None, None, "providers.docker").unwrap_err();
            assert!(err.starts_with("providers.docker.endpoint"), "{err}");
        }
        let err = Endpoint::parse("ssh://me@host", None, None, "providers.docker").unwrap_err();
        assert!(err.contains("ssh:// is not supported"), "{err}");
    }

    #[test]
    fn tls_needs_all_three_files() {
        let tls = ClientTlsConfig {
            ca: Some("/ca.pem".into()),
            cert: Some("/cert.pem".into()),
            key: None,
            insecure_skip_verify: false,
        };
        let err =
            Endpoint::parse("tcp://h:2376", Some(&tls), None, "providers.docker").unwrap_err();
        assert!(
            err.contains("providers.docker.tls.key is required"),
            "{err}"
        );
        let tls = ClientTlsConfig {
            key: Some("/key.pem".into()),
            ..tls
        };
        let ok = Endpoint::parse("tcp://h:2376", Some(&tls), None, "p").unwrap();
        assert!(matches!(ok.transport, Transport::Tls { .. }));
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("1.41"), Some((1, 41)));
        assert_eq!(parse_version("x"), None);
        assert!((1, 41) < (1, 53));
    }
}
