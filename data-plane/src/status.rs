//! `switchyard-proxy status --admin ADDR [--json]`.

use anyhow::Context;
use serde_json::json;
use switchyard_shared::pb::{self, proxy_admin_client::ProxyAdminClient};

/// Queries a proxy's admin endpoint and renders the answer.
pub async fn run(admin: &str, as_json: bool) -> anyhow::Result<String> {
    let url = if admin.contains("://") {
        admin.to_owned()
    } else {
        format!("http://{admin}")
    };
    let mut client = ProxyAdminClient::connect(url.clone())
        .await
        .with_context(|| format!("cannot reach the proxy admin endpoint at {url}"))?;
    let s = client
        .get_status(pb::GetStatusRequest {})
        .await
        .with_context(|| format!("GetStatus failed on {url}"))?
        .into_inner();
    let source = match pb::SnapshotSource::try_from(s.source) {
        Ok(pb::SnapshotSource::Disk) => "disk",
        Ok(pb::SnapshotSource::Controller) => "controller",
        _ => "none",
    };
    if as_json {
        let value = json!({
            "node_id": s.node_id, "version": s.version, "generation": s.generation,
            "source": source, "applied_at_unix_ms": s.applied_at_unix_ms,
            "controller_connected": s.controller_connected, "controller": s.controller,
            "last_error": s.last_error, "state_error": s.state_error, "routers": s.routers, "listening": s.listening,
            "snapshots_received": s.snapshots_received, "nacks_sent": s.nacks_sent,
            "deltas_received": s.deltas_received, "resyncs_requested": s.resyncs_requested,
        });
        return Ok(serde_json::to_string_pretty(&value).unwrap_or_default() + "\n");
    }
    let version = if s.version.is_empty() {
        "(none)"
    } else {
        &s.version
    };
    let mut out = String::new();
    let rows = [
        ("node", s.node_id.clone()),
        (
            "version",
            format!("{version} (generation {})", s.generation),
        ),
        ("source", source.to_owned()),
        (
            "controller",
            format!(
                "{} ({})",
                s.controller,
                if s.controller_connected {
                    "connected"
                } else {
                    "disconnected"
                }
            ),
        ),
        ("routers", s.routers.to_string()),
        ("listening", s.listening.join(", ")),
        (
            "snapshots",
            format!(
                "{} received ({} as deltas, {} asked for whole), {} rejected",
                s.snapshots_received, s.deltas_received, s.resyncs_requested, s.nacks_sent
            ),
        ),
        (
            "last error",
            if s.last_error.is_empty() {
                "-".to_owned()
            } else {
                s.last_error.clone()
            },
        ),
        (
            "state files",
            if s.state_error.is_empty() {
                "ok".to_owned()
            } else {
                s.state_error.clone()
            },
        ),
    ];
    for (k, v) in rows {
        out.push_str(&format!("{k:<11} {v}\n"));
    }
    Ok(out)
}
