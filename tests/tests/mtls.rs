//! Mutual TLS between the controller and its proxies, with real handshakes: a proxy joins with a
//! one-time token (verifying the controller by the CA fingerprint in it), converges, and renews
//! its short-lived certificate over the channel; a client without a certificate, with a
//! certificate from another CA, with a used token, or whose node id its certificate does not
//! name, is refused with a clear error; plaintext is refused off loopback unless allowed.

use crate::support::providers as support;

use std::{net::SocketAddr, path::Path, time::Duration};

use support::{DEADLINE, TempDir, backend, eventually, free_port, http_get};
use switchyard_controller::{app::App, ca::Ca, config::StaticConfig};
use switchyard_proxy::join::{ChannelFlags, ChannelSecurity};
use switchyard_shared::pb::{self, control_plane_client::ControlPlaneClient};
use tokio::sync::oneshot;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

struct Running {
    url: String,
    ca: Ca,
    _stop: oneshot::Sender<()>,
}

async fn start_controller(dir: &Path, backend: SocketAddr) -> Running {
    let dynamic = dir.join("dynamic");
    std::fs::create_dir_all(&dynamic).unwrap();
    std::fs::write(
        dynamic.join("routes.yml"),
        format!(
            "http:\n  routers:\n    m:\n      rule: Host(`m.test`)\n      service: s\n  services:\n    s:\n      loadBalancer:\n        servers:\n          - url: http://{backend}\n"
        ),
    )
    .unwrap();
    let text = format!(
        "entryPoints:\n  web:\n    address: ':80'\nproviders:\n  providersThrottleDuration: 10ms\n  file:\n    directory: {}\ncontroller:\n  grpc:\n    address: 127.0.0.1:0\n  ca:\n    dir: {}\n    proxyCertValidity: 15s\n",
        dynamic.display(),
        dir.join("ca").display()
    );
    let config = StaticConfig::parse(Path::new("static.yml"), &text).unwrap();
    let ca = Ca::open(config.controller.ca.as_ref().unwrap()).unwrap();
    let app = App::build(config).await.expect("controller builds");
    let addr = app.grpc_address().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(app.run(async move {
        let _ = rx.await;
    }));
    Running {
        url: format!("https://127.0.0.1:{}", addr.port()),
        ca,
        _stop: tx,
    }
}

async fn client(
    url: &str,
    ca_pem: &str,
    identity: Option<(String, String)>,
) -> Result<ControlPlaneClient<Channel>, String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Endpoint::from_shared(url.to_owned())
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(ControlPlaneClient::new(channel))
}

/// A status with its sources (tonic's message alone is often just "transport error").
fn describe(status: &tonic::Status) -> String {
    let mut text = format!("{:?} {}", status.code(), status.message());
    let mut source = std::error::Error::source(status);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joined_proxy_converges_renews_and_strangers_are_refused() {
    let dir = TempDir::new("mtls");
    let app = backend("mtls-app").await;
    let controller = start_controller(dir.path(), app).await;
    let ca_pem = controller.ca.ca_pem().to_owned();
    let token = controller
        .ca
        .create_token(Duration::from_secs(3600), None)
        .unwrap();

    // A proxy joins with the token and converges.
    let state = TempDir::new("mtls-proxy");
    let web = free_port().await;
    let security = ChannelSecurity::from_flags(
        &ChannelFlags {
            join_token: Some(token.clone()),
            ..Default::default()
        },
        std::slice::from_ref(&controller.url),
        state.path(),
    )
    .unwrap();
    let proxy = switchyard_proxy::app::App::build_secure(
        switchyard_proxy::app::ProxyConfig {
            controllers: vec![controller.url.clone()],
            node_id: "p1".into(),
            state_dir: state.path().to_owned(),
            admin: "127.0.0.1:0".parse().unwrap(),
            entry_point_overrides: [("web".to_owned(), web)].into_iter().collect(),
        },
        security,
    )
    .await
    .unwrap();
    let (stop_proxy, stopped) = oneshot::channel::<()>();
    tokio::spawn(proxy.run(async move {
        let _ = stopped.await;
    }));
    let body = eventually("the joined proxy serves the route", DEADLINE, || async {
        match http_get(web, "m.test", "/").await? {
            (200, body) => Ok(body),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(body, "mtls-app");

    let identity = state.path().join("identity");
    let cert_pem = std::fs::read_to_string(identity.join("proxy.crt")).unwrap();
    let key_pem = std::fs::read_to_string(identity.join("proxy.key")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(identity.join("proxy.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }

    // The operator RPCs work with a certificate from the CA; the fleet shows p1 in sync.
    let mut operator = client(
        &controller.url,
        &ca_pem,
        Some((cert_pem.clone(), key_pem.clone())),
    )
    .await
    .unwrap();
    let fleet = operator
        .list_proxies(pb::ListProxiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let p1 = fleet.proxies.iter().find(|p| p.node_id == "p1").unwrap();
    assert!(
        p1.connected && p1.acked_version == fleet.current_version,
        "{p1:?}"
    );

    // No client certificate: the TLS handshake succeeds (Join must work) but every other RPC is
    // refused with a reason.
    let mut anonymous = client(&controller.url, &ca_pem, None).await.unwrap();
    let refused = anonymous
        .get_version(pb::GetVersionRequest {})
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::Unauthenticated,
        "{}",
        describe(&refused)
    );
    assert!(
        refused.message().contains("client certificate"),
        "{}",
        describe(&refused)
    );

    // A used token is refused.
    let reused = anonymous
        .join(pb::JoinRequest {
            token: token.clone(),
            node_id: "p9".into(),
            csr_der: vec![1, 2, 3],
        })
        .await
        .unwrap_err();
    assert_eq!(
        reused.code(),
        tonic::Code::PermissionDenied,
        "{}",
        describe(&reused)
    );
    assert!(
        reused.message().contains("join token"),
        "{}",
        describe(&reused)
    );

    // A certificate from another CA is refused, with the reason.
    let other_key = rcgen::KeyPair::generate().unwrap();
    let mut other_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    other_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other_issuer = rcgen::Issuer::new(other_params, other_key);
    let stranger_key = rcgen::KeyPair::generate().unwrap();
    let stranger = rcgen::CertificateParams::new(vec!["p1".to_owned()])
        .unwrap()
        .signed_by(&stranger_key, &other_issuer)
        .unwrap();
    let outcome = match client(
        &controller.url,
        &ca_pem,
        Some((stranger.pem(), stranger_key.serialize_pem())),
    )
    .await
    {
        Err(e) => Err(e),
        Ok(mut c) => c
            .get_version(pb::GetVersionRequest {})
            .await
            .map(|_| ())
            .map_err(|s| describe(&s)),
    };
    let error = outcome.expect_err("a certificate from another CA must be refused");
    assert!(
        error.starts_with("Unauthenticated") && error.contains("not trusted"),
        "{error}"
    );

    // A certificate for p1 does not authorize node p2.
    let hello = pb::SubscribeRequest {
        kind: Some(pb::subscribe_request::Kind::Hello(pb::Hello {
            node_id: "p2".into(),
            protocol: pb::PROTOCOL,
            ..Default::default()
        })),
    };
    let denied = operator
        .subscribe(tonic::codegen::tokio_stream::iter(vec![hello]))
        .await
        .unwrap_err();
    assert_eq!(
        denied.code(),
        tonic::Code::PermissionDenied,
        "{}",
        describe(&denied)
    );
    assert!(denied.message().contains("p2"), "{}", describe(&denied));

    // The short-lived certificate (15 s) is renewed over the channel; the proxy stays in sync.
    eventually(
        "a renewed proxy certificate",
        Duration::from_secs(45),
        || {
            let (identity, cert_pem) = (identity.clone(), cert_pem.clone());
            async move {
                let now = std::fs::read_to_string(identity.join("proxy.crt"))
                    .map_err(|e| e.to_string())?;
                if now != cert_pem {
                    Ok(())
                } else {
                    Err("not renewed yet".into())
                }
            }
        },
    )
    .await;
    let (status, _) = http_get(web, "m.test", "/").await.unwrap();
    assert_eq!(status, 200);
    drop(stop_proxy);
}

#[tokio::test]
async fn plaintext_only_on_loopback_unless_allowed() {
    let text = "controller:\n  grpc:\n    address: 0.0.0.0:0\n";
    let config = StaticConfig::parse(Path::new("static.yml"), text).unwrap();
    let err = App::build(config).await.err().expect("refused").to_string();
    assert!(
        err.contains("insecure") && err.contains("not a loopback"),
        "{err}"
    );
    let allowed = "controller:\n  grpc:\n    address: 0.0.0.0:0\n    insecure: true\n";
    let config = StaticConfig::parse(Path::new("static.yml"), allowed).unwrap();
    assert!(App::build(config).await.is_ok());
    // The proxy side: a plaintext non-loopback controller needs --insecure.
    let state = TempDir::new("mtls-flags");
    let err = ChannelSecurity::from_flags(
        &ChannelFlags::default(),
        &["http://192.0.2.1:7070".to_owned()],
        state.path(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("--insecure"), "{err}");
}
