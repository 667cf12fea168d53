//! The demo configuration in `deploy/examples/` stays valid: the controller loads its static file
//! (gRPC moved to a free port, the watched directory made absolute) and compiles every router of
//! `deploy/examples/dynamic/` without a diagnostic. Keeps `deploy/run-demo.sh` from rotting.

use std::path::PathBuf;

use switchyard_tests::harness::{DEADLINE, Fleet, grpc};

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root above tests/")
        .join("deploy/examples")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_configuration_compiles_without_diagnostics() {
    let fleet = Fleet::new("examples");
    let text = std::fs::read_to_string(examples().join("static.yml")).unwrap();
    for needle in ["127.0.0.1:7070", "directory: deploy/examples/dynamic"] {
        assert!(
            text.contains(needle),
            "static.yml no longer has `{needle}`:\n{text}"
        );
    }
    let text = text
        .replace("127.0.0.1:7070", &fleet.grpc.to_string())
        .replace(
            "directory: deploy/examples/dynamic",
            &format!("directory: '{}'", examples().join("dynamic").display()),
        );
    let _controller = fleet.controller_from(&text);

    let version = fleet
        .eventually("the controller compiles the demo", DEADLINE, || async {
            let v = fleet.version().await?;
            if v.version.is_empty() {
                Err(format!("no version yet: {v:?}"))
            } else {
                Ok(v)
            }
        })
        .await;
    assert!(
        version.diagnostics.is_empty(),
        "the demo configuration has diagnostics: {:#?}",
        version.diagnostics
    );
    let file = grpc::find_provider(&version, "file").unwrap();
    assert!(file.healthy && file.error.is_empty(), "{file:?}");

    let snapshot = grpc::controller_snapshot(&fleet.url)
        .await
        .unwrap()
        .snapshot
        .unwrap();
    let mut routers: Vec<&str> = snapshot.routers.iter().map(|r| r.name.as_str()).collect();
    routers.sort_unstable();
    assert_eq!(
        routers,
        [
            "api@file",
            "blue@file",
            "green-anywhere@file",
            "green@file",
            "old-site@file"
        ],
        "the routers run-demo.sh advertises"
    );
}
