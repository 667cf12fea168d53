//! `switchyard-controller status`: the controller's version, diagnostics, providers and every
//! proxy's convergence, as a table or JSON.

use std::fmt::Write as _;

use anyhow::Context;
use serde_json::json;
use switchyard_shared::pb::{self, control_plane_client::ControlPlaneClient};

/// Client TLS material for an `https://` controller.
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    pub ca: Option<std::path::PathBuf>,
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
}

/// Queries the controller at `url` and renders the answer.
pub async fn run(url: &str, as_json: bool) -> anyhow::Result<String> {
    run_with_tls(url, as_json, &TlsFiles::default()).await
}

/// As [`run`], with a CA and client certificate for a controller using mutual TLS.
pub async fn run_with_tls(url: &str, as_json: bool, tls: &TlsFiles) -> anyhow::Result<String> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("invalid controller URL {url}"))?;
    if url.starts_with("https://") {
        let read = |path: &std::path::Path, flag: &str| {
            std::fs::read(path).with_context(|| format!("{flag}: cannot read {}", path.display()))
        };
        let mut config = tonic::transport::ClientTlsConfig::new();
        if let Some(ca) = &tls.ca {
            config = config.ca_certificate(tonic::transport::Certificate::from_pem(read(
                ca, "--tls-ca",
            )?));
        }
        match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => {
                config = config.identity(tonic::transport::Identity::from_pem(
                    read(cert, "--tls-cert")?,
                    read(key, "--tls-key")?,
                ));
            }
            (None, None) => {}
            _ => anyhow::bail!("--tls-cert and --tls-key go together"),
        }
        endpoint = endpoint
            .tls_config(config)
            .with_context(|| format!("TLS settings for {url}"))?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the controller at {url}"))?;
    let mut client = ControlPlaneClient::new(channel);
    let version = client
        .get_version(pb::GetVersionRequest {})
        .await
        .with_context(|| format!("GetVersion failed on {url}"))?
        .into_inner();
    let proxies = client
        .list_proxies(pb::ListProxiesRequest {})
        .await
        .with_context(|| format!("ListProxies failed on {url}"))?
        .into_inner();
    Ok(if as_json {
        render_json(&version, &proxies)
    } else {
        render_table(&version, &proxies)
    })
}

fn render_json(v: &pb::GetVersionResponse, p: &pb::ListProxiesResponse) -> String {
    let value = json!({
        "version": v.version,
        "generation": v.generation,
        "created_at_unix_ms": v.created_at_unix_ms,
        "diagnostics": v.diagnostics.iter().map(|d| json!({
            "provider": d.provider, "object": d.object, "message": d.message, "severity": d.severity,
        })).collect::<Vec<_>>(),
        "providers": v.providers.iter().map(|s| json!({
            "name": s.name, "healthy": s.healthy, "error": s.error, "updated_at_unix_ms": s.updated_at_unix_ms,
        })).collect::<Vec<_>>(),
        "acme": v.acme.iter().map(|a| json!({
            "resolver": a.resolver, "domains": a.domains, "state": a.state,
            "not_after_unix": a.not_after_unix, "last_error": a.last_error,
            "last_attempt_unix_ms": a.last_attempt_unix_ms, "next_attempt_unix_ms": a.next_attempt_unix_ms,
        })).collect::<Vec<_>>(),
        "proxies": p.proxies.iter().map(|x| json!({
            "node_id": x.node_id, "peer": x.peer, "connected": x.connected,
            "connected_since_unix_ms": x.connected_since_unix_ms, "last_seen_unix_ms": x.last_seen_unix_ms,
            "acked_version": x.acked_version, "acked_at_unix_ms": x.acked_at_unix_ms,
            "in_sync": x.acked_version == v.version,
            "last_nack_version": x.last_nack_version, "last_nack_error": x.last_nack_error,
            "last_nack_at_unix_ms": x.last_nack_at_unix_ms,
            "build_info": x.build_info, "snapshots_sent": x.snapshots_sent,
        })).collect::<Vec<_>>(),
    });
    serde_json::to_string_pretty(&value).unwrap_or_default()
}

fn render_table(v: &pb::GetVersionResponse, p: &pb::ListProxiesResponse) -> String {
    let mut out = String::new();
    let version = if v.version.is_empty() {
        "(none yet)"
    } else {
        &v.version
    };
    let _ = writeln!(
        out,
        "controller version {version} (generation {})",
        v.generation
    );
    for s in &v.providers {
        let state = if s.healthy { "healthy" } else { "UNHEALTHY" };
        let _ = writeln!(out, "provider {:<14} {state} {}", s.name, s.error);
    }
    let errors = v
        .diagnostics
        .iter()
        .filter(|d| d.severity == "error")
        .count();
    if !v.diagnostics.is_empty() {
        let _ = writeln!(
            out,
            "diagnostics: {errors} error(s), {} warning(s)",
            v.diagnostics.len() - errors
        );
        for d in &v.diagnostics {
            let _ = writeln!(out, "  {:<7} {}: {}", d.severity, d.object, d.message);
        }
    }
    for a in &v.acme {
        let until = if a.not_after_unix > 0 {
            format!("valid until {} (unix)", a.not_after_unix)
        } else {
            "no certificate yet".to_owned()
        };
        let error = if a.last_error.is_empty() {
            String::new()
        } else {
            format!(" — last error: {}", a.last_error)
        };
        let _ = writeln!(
            out,
            "acme {:<10} {:<9} {} {until}{error}",
            a.resolver,
            a.state,
            a.domains.join(",")
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<20} {:<22} {:<9} {:<17} {:<7} LAST NACK",
        "NODE", "PEER", "CONNECTED", "ACKED", "SYNCED"
    );
    for x in &p.proxies {
        let nack = if x.last_nack_version.is_empty() {
            "-".to_owned()
        } else {
            format!("{}: {}", x.last_nack_version, x.last_nack_error)
        };
        let acked = if x.acked_version.is_empty() {
            "-"
        } else {
            &x.acked_version
        };
        let _ = writeln!(
            out,
            "{:<20} {:<22} {:<9} {:<17} {:<7} {nack}",
            x.node_id,
            x.peer,
            if x.connected { "yes" } else { "no" },
            acked,
            if x.acked_version == v.version {
                "yes"
            } else {
                "no"
            },
        );
    }
    out
}
