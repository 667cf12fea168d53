//! The controller started in-process (`App`), exercised over real gRPC on a loopback port.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{path::Path, time::Duration};

use switchyard_controller::{app::App, config::StaticConfig};
use switchyard_shared::pb::{self, control_plane_client::ControlPlaneClient};
use tokio_stream::StreamExt;
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

async fn start(dir: &Path) -> (String, tokio::sync::oneshot::Sender<()>) {
    std::fs::create_dir_all(dir.join("dyn")).unwrap();
    std::fs::write(
        dir.join("dyn/a.yml"),
        "http:\n  routers:\n    r:\n      rule: Host(`a.example`)\n      service: s\n  services:\n    s:\n      loadBalancer:\n        servers: [{url: 'http://127.0.0.1:9'}]\n",
    )
    .unwrap();
    let text = format!(
        "entryPoints:\n  web:\n    address: ':8080'\nproviders:\n  file:\n    directory: {}\ncontroller:\n  grpc:\n    address: 127.0.0.1:0\n",
        dir.join("dyn").display()
    );
    let config = StaticConfig::parse(Path::new("static.yml"), &text).unwrap();
    let app = App::build(config).await.unwrap();
    let addr = app.grpc_address().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run(async move {
        let _ = rx.await;
    }));
    (format!("http://{addr}"), tx)
}

fn temp(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("sy-ctl-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[tokio::test]
async fn reflection_lists_the_control_plane_service() {
    let dir = temp("refl");
    let (url, _stop) = start(&dir).await;
    let channel = tonic::transport::Channel::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response: {response:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"switchyard.v1.ControlPlane"), "{names:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn subscribe_sends_snapshot_then_up_to_date_for_holders() {
    let dir = temp("sub");
    let (url, _stop) = start(&dir).await;
    let mut client = ControlPlaneClient::connect(url.clone()).await.unwrap();
    // Wait for the first compile.
    let mut version = String::new();
    for _ in 0..200 {
        version = client
            .get_version(pb::GetVersionRequest {})
            .await
            .unwrap()
            .into_inner()
            .version;
        if !version.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(version.len(), 16);

    let hello = |held: &str| pb::SubscribeRequest {
        kind: Some(pb::subscribe_request::Kind::Hello(pb::Hello {
            node_id: "n1".into(),
            held_version: held.into(),
            build_info: "test".into(),
            labels: vec![],
            protocol: pb::PROTOCOL,
            accepts_deltas: false,
        })),
    };
    // A fresh proxy gets the snapshot.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello("")).await.unwrap();
    let mut stream = client
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    match stream.next().await.unwrap().unwrap().kind {
        Some(pb::subscribe_response::Kind::Chunk(c)) => {
            assert_eq!(
                (c.version.as_str(), c.index, c.count),
                (version.as_str(), 0, 1)
            );
        }
        other => panic!("expected the snapshot as one chunk, got {other:?}"),
    }
    tx.send(pb::SubscribeRequest {
        kind: Some(pb::subscribe_request::Kind::Ack(pb::Ack {
            version: version.clone(),
        })),
    })
    .await
    .unwrap();
    drop(tx);
    drop(stream);

    // A proxy that already holds it is told so, and is not sent the snapshot again.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello(&version)).await.unwrap();
    let mut stream = client
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    match stream.next().await.unwrap().unwrap().kind {
        Some(pb::subscribe_response::Kind::UpToDate(u)) => assert_eq!(u.version, version),
        other => panic!("expected UpToDate, got {other:?}"),
    }
    let proxies = client
        .list_proxies(pb::ListProxiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let n1 = proxies.proxies.iter().find(|p| p.node_id == "n1").unwrap();
    assert_eq!(n1.acked_version, version);
    assert_eq!(n1.snapshots_sent, 1);
    assert!(n1.connected);

    // A proxy speaking another protocol revision is refused with a reason.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::SubscribeRequest {
        kind: Some(pb::subscribe_request::Kind::Hello(pb::Hello {
            node_id: "old".into(),
            protocol: 0,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let refused = client
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(refused.message().contains("protocol"), "{refused:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Waits for the next message that is not `UpToDate`, for at most 20 s.
async fn next_snapshot(
    stream: &mut tonic::Streaming<pb::SubscribeResponse>,
) -> pb::subscribe_response::Kind {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("a snapshot within 20 s")
            .expect("stream open")
            .expect("no stream error");
        match message.kind {
            Some(pb::subscribe_response::Kind::UpToDate(_)) | None => continue,
            Some(kind) => return kind,
        }
    }
}

#[tokio::test]
async fn proxies_that_accept_deltas_get_changes_as_deltas_and_resync_whole() {
    use switchyard_shared::{chunk, delta};
    let dir = temp("delta");
    let (url, _stop) = start(&dir).await;
    let mut client = ControlPlaneClient::connect(url.clone()).await.unwrap();
    let subscribe = |node: &str, accepts_deltas: bool| pb::SubscribeRequest {
        kind: Some(pb::subscribe_request::Kind::Hello(pb::Hello {
            node_id: node.into(),
            protocol: pb::PROTOCOL,
            accepts_deltas,
            ..Default::default()
        })),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(subscribe("d1", true)).await.unwrap();
    let mut stream = client
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let (old_tx, old_rx) = tokio::sync::mpsc::channel(4);
    old_tx.send(subscribe("old", false)).await.unwrap();
    let mut old_stream = client
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(old_rx))
        .await
        .unwrap()
        .into_inner();
    let whole = |kind| match kind {
        pb::subscribe_response::Kind::Chunk(c) => {
            assert_eq!((c.index, c.count), (0, 1));
            chunk::check(&c.version, &c.data).expect("a valid snapshot");
            (c.version, c.data.to_vec())
        }
        other => panic!("expected a whole snapshot, got {other:?}"),
    };
    // The first snapshot goes whole to both.
    let (v1, base) = whole(next_snapshot(&mut stream).await);
    assert_eq!(whole(next_snapshot(&mut old_stream).await).0, v1);
    let ack = |version: &str| pb::SubscribeRequest {
        kind: Some(pb::subscribe_request::Kind::Ack(pb::Ack {
            version: version.into(),
        })),
    };
    tx.send(ack(&v1)).await.unwrap();
    old_tx.send(ack(&v1)).await.unwrap();

    // A change: a delta against v1 for the proxy that accepts them, small, rebuilding v2 exactly.
    std::fs::write(
        dir.join("dyn/b.yml"),
        "http:\n  routers:\n    b:\n      rule: Host(`b.example`)\n      service: s@file\n",
    )
    .unwrap();
    let d = match next_snapshot(&mut stream).await {
        pb::subscribe_response::Kind::Delta(d) => d,
        other => panic!("expected a delta, got {other:?}"),
    };
    assert_eq!(d.base_version, v1);
    let rebuilt = delta::rebuild(&d, &base).expect("fits its base");
    let checked = chunk::check(&d.version, &rebuilt.bytes).expect("hashes to its version");
    assert!(checked.generation > 1);
    chunk::check_quick(&d.version, d.content_xxh3.expect("sent"), &rebuilt.bytes)
        .expect("matches its quick check");
    let current = client
        .get_version(pb::GetVersionRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.version, current.version);
    // …and the same snapshot whole for the proxy that does not.
    let (v2, _) = whole(next_snapshot(&mut old_stream).await);
    assert_eq!(v2, d.version);

    // A proxy that cannot apply the delta asks again and is sent the snapshot whole.
    tx.send(pb::SubscribeRequest {
        kind: Some(pb::subscribe_request::Kind::Resync(pb::Resync {
            version: d.version.clone(),
            held_version: v1.clone(),
            reason: "state file unreadable".into(),
        })),
    })
    .await
    .unwrap();
    let (again, _) = whole(next_snapshot(&mut stream).await);
    assert_eq!(again, d.version);
    let _ = std::fs::remove_dir_all(&dir);
}
