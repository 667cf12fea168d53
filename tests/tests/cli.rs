//! Contract: `switchyard-controller status --controller URL [--json]` and `switchyard-proxy status
//! --admin ADDR [--json]` print a table or JSON with the documented fields, and fail with a
//! non-zero exit and one line naming the target when it is unreachable.

use serde_json::Value;
use switchyard_tests::harness::{DEADLINE, Fleet, free_port, run_cli};

fn app_yaml(backend: &str) -> String {
    format!(
        "http:\n  routers:\n    app:\n      rule: Host(`app.test`)\n      service: app\n    bad:\n      rule: Host(`bad.test`)\n      service: ghost\n  services:\n    app:\n      loadBalancer:\n        servers:\n          - url: {backend}\n"
    )
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

/// Panics unless `value` has every key in `keys`.
fn has_keys(value: &Value, keys: &[&str], what: &str) {
    for key in keys {
        assert!(value.get(key).is_some(), "{what} lacks `{key}`: {value:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_status_prints_a_table_and_json() {
    let fleet = Fleet::new("cli-controller");
    let a = fleet.echo("a").await;
    fleet.write_dynamic("app.yml", &app_yaml(&a.url()));
    let _controller = fleet.controller();
    let _p1 = fleet.proxy("p1");
    let _p2 = fleet.proxy("p2");
    let version = fleet.converged(&["p1", "p2"], DEADLINE).await;

    let out = run_cli(
        "switchyard-controller",
        &["status", "--controller", &fleet.url, "--json"],
    )
    .await;
    assert!(out.success, "{out:?}");
    let v = json(&out.stdout);
    has_keys(
        &v,
        &[
            "version",
            "generation",
            "created_at_unix_ms",
            "diagnostics",
            "providers",
            "proxies",
        ],
        "status --json",
    );
    assert_eq!(v["version"], version.as_str());
    assert!(v["generation"].as_u64().is_some_and(|g| g >= 1), "{v:#}");
    assert!(
        v["created_at_unix_ms"].as_i64().is_some_and(|t| t > 0),
        "{v:#}"
    );

    let diagnostics = v["diagnostics"].as_array().unwrap();
    let bad = diagnostics
        .iter()
        .find(|d| d["object"] == "router/bad@file")
        .unwrap_or_else(|| panic!("no diagnostic for router/bad@file: {v:#}"));
    has_keys(
        bad,
        &["provider", "object", "message", "severity"],
        "a diagnostic",
    );
    assert_eq!(bad["provider"], "file");
    assert_eq!(bad["severity"], "error");
    assert!(
        bad["message"].as_str().is_some_and(|m| m.contains("ghost")),
        "{bad:#}"
    );

    let file = v["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "file")
        .unwrap_or_else(|| panic!("no file provider: {v:#}"));
    has_keys(file, &["name", "healthy", "error"], "a provider");
    assert_eq!(file["healthy"], true);
    assert_eq!(file["error"], "");

    let proxies = v["proxies"].as_array().unwrap();
    assert_eq!(proxies.len(), 2, "{v:#}");
    for node in ["p1", "p2"] {
        let p = proxies
            .iter()
            .find(|p| p["node_id"] == node)
            .unwrap_or_else(|| panic!("{node} missing: {v:#}"));
        has_keys(
            p,
            &[
                "node_id",
                "peer",
                "connected",
                "acked_version",
                "last_nack_version",
                "last_nack_error",
                "snapshots_sent",
            ],
            "a proxy",
        );
        assert_eq!(p["connected"], true, "{p:#}");
        assert_eq!(p["acked_version"], version.as_str(), "{p:#}");
        assert_eq!(p["last_nack_version"], "", "{p:#}");
        assert_eq!(p["last_nack_error"], "", "{p:#}");
        assert_eq!(p["snapshots_sent"], 1, "{p:#}");
        assert!(
            p["peer"].as_str().is_some_and(|s| s.contains("127.0.0.1")),
            "{p:#}"
        );
    }

    let out = run_cli(
        "switchyard-controller",
        &["status", "--controller", &fleet.url],
    )
    .await;
    assert!(out.success, "{out:?}");
    let table = &out.stdout;
    assert!(
        table.contains(&version),
        "the table shows the version:\n{table}"
    );
    for node in ["p1", "p2"] {
        let row = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(node))
            .unwrap_or_else(|| panic!("no row for {node}:\n{table}"));
        assert!(
            row.contains(&version),
            "{node}'s row shows its acked version:\n{table}"
        );
    }
    assert!(
        table.contains("router/bad@file"),
        "the table lists diagnostics:\n{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_status_prints_a_table_and_json() {
    let fleet = Fleet::new("cli-proxy");
    let a = fleet.echo("a").await;
    fleet.write_dynamic("app.yml", &app_yaml(&a.url()));
    let controller = fleet.controller();
    let p = fleet.proxy("p1");
    let version = fleet.converged(&["p1"], DEADLINE).await;
    let admin = p.admin.to_string();

    let out = run_cli("switchyard-proxy", &["status", "--admin", &admin, "--json"]).await;
    assert!(out.success, "{out:?}");
    let s = json(&out.stdout);
    has_keys(
        &s,
        &[
            "node_id",
            "version",
            "generation",
            "source",
            "controller_connected",
            "controller",
            "last_error",
            "state_error",
            "routers",
            "listening",
        ],
        "proxy status --json",
    );
    assert_eq!(s["node_id"], "p1");
    assert_eq!(s["version"], version.as_str());
    assert!(s["generation"].as_u64().is_some_and(|g| g >= 1), "{s:#}");
    assert_eq!(s["source"], "controller");
    assert_eq!(s["controller_connected"], true);
    assert_eq!(s["controller"], fleet.url.as_str());
    assert_eq!(s["last_error"], "");
    assert_eq!(s["state_error"], "");
    assert_eq!(s["routers"], 1, "the bad router is left out: {s:#}");
    let web = p.web.to_string();
    assert!(
        s["listening"].as_array().is_some_and(|l| l
            .iter()
            .any(|x| x.as_str().is_some_and(|x| x.contains(&web)))),
        "listening shows {web}: {s:#}"
    );

    let out = run_cli("switchyard-proxy", &["status", "--admin", &admin]).await;
    assert!(out.success, "{out:?}");
    assert!(
        out.stdout.contains(&version) && out.stdout.contains("p1"),
        "{}",
        out.stdout
    );

    // After the controller is gone the proxy says so; the source stays `controller`.
    drop(controller);
    let s = fleet
        .eventually(
            "the proxy notices the controller is gone",
            DEADLINE,
            || async {
                let out =
                    run_cli("switchyard-proxy", &["status", "--admin", &admin, "--json"]).await;
                let s = json(&out.stdout);
                if s["controller_connected"] == false {
                    Ok(s)
                } else {
                    Err(format!("{s}"))
                }
            },
        )
        .await;
    assert_eq!(s["version"], version.as_str());
    assert_eq!(s["source"], "controller");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_commands_fail_in_one_line_when_the_target_is_unreachable() {
    let dead = free_port().to_string();
    let url = format!("http://{dead}");
    for (bin, args) in [
        (
            "switchyard-controller",
            vec!["status", "--controller", url.as_str()],
        ),
        (
            "switchyard-controller",
            vec!["status", "--controller", url.as_str(), "--json"],
        ),
        ("switchyard-proxy", vec!["status", "--admin", dead.as_str()]),
        (
            "switchyard-proxy",
            vec!["status", "--admin", dead.as_str(), "--json"],
        ),
    ] {
        let out = run_cli(bin, &args).await;
        let command = format!("{bin} {}", args.join(" "));
        assert!(!out.success, "`{command}` must fail: {out:?}");
        assert!(out.code.is_some_and(|c| c != 0), "`{command}`: {out:?}");
        let err = out.stderr.trim();
        assert_eq!(err.lines().count(), 1, "`{command}`: one line:\n{err}");
        assert!(
            err.contains(&dead),
            "`{command}` names the target {dead}: {err}"
        );
        assert!(
            out.stdout.trim().is_empty(),
            "`{command}`: nothing on stdout: {out:?}"
        );
    }
}
