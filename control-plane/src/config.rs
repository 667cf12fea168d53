//! The controller's static configuration: Traefik's static names where they exist
//! (`entryPoints`, `providers.*`) plus our `controller.*` section. Loaded once at start; a change
//! needs a restart, as in Traefik.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use thiserror::Error;

/// Default gRPC listen address of the controller.
pub const DEFAULT_GRPC_ADDRESS: &str = "127.0.0.1:7070";

/// Default debounce when `providers.providersThrottleDuration` is not set (DESIGN: 10–20 ms).
pub const DEFAULT_THROTTLE: Duration = Duration::from_millis(15);

/// The whole static configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticConfig {
    /// `entryPoints.<name>.address`
    #[serde(default, alias = "entrypoints")]
    pub entry_points: BTreeMap<String, EntryPointConfig>,
    #[serde(default)]
    pub providers: ProvidersConfig,
    #[serde(default)]
    pub controller: ControllerConfig,
    /// Traefik sections the controller accepts but does not act on yet (`api`, `log`, …).
    #[serde(default)]
    pub api: Option<serde_yaml::Value>,
    #[serde(default)]
    pub log: Option<serde_yaml::Value>,
    #[serde(default, alias = "accesslog")]
    pub access_log: Option<serde_yaml::Value>,
    #[serde(default)]
    pub metrics: Option<serde_yaml::Value>,
    #[serde(default)]
    pub global: Option<serde_yaml::Value>,
}

/// `entryPoints.<name>`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryPointConfig {
    /// `[host]:port` (Traefik also allows a `/tcp` suffix, which we strip).
    pub address: String,
    /// Other entry-point options (`http`, `transport`, …) not implemented yet.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_yaml::Value>,
}

/// `providers`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProvidersConfig {
    /// Debounce between a provider change and a compile (Traefik: `2s`; ours: 15 ms when unset).
    #[serde(default, alias = "providersthrottleduration", with = "duration_opt")]
    pub providers_throttle_duration: Option<Duration>,
    #[serde(default)]
    pub file: Option<FileProviderConfig>,
}

/// `providers.file`
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileProviderConfig {
    #[serde(default)]
    pub directory: Option<PathBuf>,
    #[serde(default)]
    pub filename: Option<PathBuf>,
    /// Traefik default: `true`.
    #[serde(default = "yes")]
    pub watch: bool,
    /// Accepted for compatibility; templates are not rendered (see docs/compatibility.md).
    #[serde(default, alias = "debugloggeneratedtemplate")]
    pub debug_log_generated_template: bool,
}

fn yes() -> bool {
    true
}

/// `controller` (ours).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControllerConfig {
    #[serde(default)]
    pub grpc: GrpcConfig,
}

/// `controller.grpc`
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcConfig {
    pub address: String,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            address: DEFAULT_GRPC_ADDRESS.to_owned(),
        }
    }
}

/// A static configuration that cannot be used. Names the file and the reason.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl StaticConfig {
    /// Reads and validates a YAML (`.yml`, `.yaml`) or TOML (`.toml`) file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Self::parse(path, &text)?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(config)
    }

    /// Parses text as YAML or TOML according to the file extension.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let is_toml = path.extension().is_some_and(|e| e == "toml");
        let parsed = if is_toml {
            toml::from_str(text).map_err(|e| e.to_string())
        } else if text.trim().is_empty() {
            Ok(StaticConfig::default())
        } else {
            serde_yaml::from_str(text).map_err(|e| e.to_string())
        };
        parsed.map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message: message.trim().to_owned(),
        })
    }

    fn validate(&self) -> Result<(), String> {
        for (name, ep) in &self.entry_points {
            if name.contains('@') {
                return Err(format!("entryPoints.{name}: `@` is not allowed in a name"));
            }
            parse_entry_point_address(&ep.address)
                .map_err(|e| format!("entryPoints.{name}.address: {e}"))?;
        }
        self.grpc_address()?;
        if let Some(file) = &self.providers.file {
            match (&file.directory, &file.filename) {
                (Some(_), Some(_)) => {
                    return Err(
                        "providers.file: set either `directory` or `filename`, not both".into(),
                    );
                }
                (None, None) => {
                    return Err("providers.file: `directory` or `filename` is required".into());
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// `controller.grpc.address` as a socket address.
    pub fn grpc_address(&self) -> Result<SocketAddr, String> {
        self.controller.grpc.address.parse().map_err(|e| {
            format!(
                "controller.grpc.address `{}`: {e}",
                self.controller.grpc.address
            )
        })
    }

    /// Debounce to use between provider changes and compiles.
    pub fn throttle(&self) -> Duration {
        self.providers
            .providers_throttle_duration
            .unwrap_or(DEFAULT_THROTTLE)
    }
}

/// Validates `[host]:port[/tcp]` and returns it without the protocol suffix.
pub fn parse_entry_point_address(address: &str) -> Result<String, String> {
    let address = address.trim();
    let bare = match address.rsplit_once('/') {
        Some((a, "tcp")) => a,
        Some((_, proto)) => {
            return Err(format!(
                "`{address}`: protocol `{proto}` is not supported (only tcp)"
            ));
        }
        None => address,
    };
    let (_, port) = bare
        .rsplit_once(':')
        .ok_or_else(|| format!("`{address}` has no port (expected [host]:port)"))?;
    port.parse::<u16>()
        .map_err(|_| format!("`{address}`: `{port}` is not a valid port"))?;
    Ok(bare.to_owned())
}

/// Parses Traefik durations: `10s`, `1m30s`, `250ms`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
        return Err(format!("`{text}` is not a valid duration"));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("`{text}`: missing unit"))?;
        let (number, tail) = rest.split_at(digits);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("`{text}` is not a valid duration"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("`{text}`: unknown unit `{unit}`")),
        };
        total += Duration::from_secs_f64(value * scale);
        rest = next;
    }
    Ok(total)
}

mod duration_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Seconds(u64),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<Raw>::deserialize(d)? {
            None => Ok(None),
            Some(Raw::Seconds(s)) => Ok(Some(Duration::from_secs(s))),
            Some(Raw::Text(t)) => super::parse_duration(&t)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_static_config_uses_traefik_names() {
        let text = "entryPoints:\n  web:\n    address: ':8000'\nproviders:\n  providersThrottleDuration: 2s\n  file:\n    directory: /tmp/dyn\ncontroller:\n  grpc:\n    address: 127.0.0.1:7171\n";
        let c = StaticConfig::parse(Path::new("s.yml"), text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.entry_points["web"].address, ":8000");
        assert_eq!(c.throttle(), Duration::from_secs(2));
        let file = c.providers.file.unwrap();
        assert!(file.watch);
        assert_eq!(c.controller.grpc.address, "127.0.0.1:7171");
    }

    #[test]
    fn toml_static_config() {
        let text = "[entryPoints.web]\naddress = \":8000\"\n[providers.file]\nfilename = \"/tmp/x.toml\"\nwatch = false\n";
        let c = StaticConfig::parse(Path::new("s.toml"), text).unwrap();
        c.validate().unwrap();
        assert!(!c.providers.file.as_ref().unwrap().watch);
        assert_eq!(c.grpc_address().unwrap().to_string(), DEFAULT_GRPC_ADDRESS);
    }

    #[test]
    fn bad_entry_point_names_the_key() {
        let text = "entryPoints:\n  web:\n    address: 'nope'\n";
        let c = StaticConfig::parse(Path::new("s.yml"), text).unwrap();
        let err = c.validate().unwrap_err();
        assert!(err.contains("entryPoints.web.address"), "{err}");
    }

    #[test]
    fn unknown_key_is_an_error_with_location() {
        let text = "providers:\n  fiel:\n    directory: x\n";
        let err = StaticConfig::parse(Path::new("s.yml"), text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("s.yml") && err.contains("fiel"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10ms").unwrap(), Duration::from_millis(10));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("2x").is_err());
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn entry_point_address_forms() {
        assert_eq!(parse_entry_point_address(":80").unwrap(), ":80");
        assert_eq!(parse_entry_point_address(":80/tcp").unwrap(), ":80");
        assert_eq!(
            parse_entry_point_address("[::1]:8443").unwrap(),
            "[::1]:8443"
        );
        assert!(parse_entry_point_address(":80/udp").is_err());
        assert!(parse_entry_point_address("host").is_err());
    }
}
