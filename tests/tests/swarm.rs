//! The Swarm provider against a REAL Docker engine in Swarm mode: a private `dockerd` (Swarm
//! mode excludes live restore, and a swarm must not be shared), `docker swarm init` advertising
//! 127.0.0.1, an attachable overlay network, and services routed by their task addresses and by
//! their virtual IP. Discovery only (the overlay is not reachable from loopback): the compiled
//! snapshot is read over gRPC. The node leaves the swarm at the end, even when the test fails.

// Test helpers: a failed setup step should panic loudly.

use crate::support::providers as support;

use support::{Controller, DEADLINE, eventually, free_port};
use switchyard_shared::pb;
use switchyard_tests::docker::{Dockerd, TEST_LABEL};

/// Leaves the swarm on drop (before the daemon itself is stopped).
struct Swarm<'a> {
    docker: &'a Dockerd,
}

impl Drop for Swarm<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["--host", self.docker.host(), "swarm", "leave", "--force"])
            .stdin(std::process::Stdio::null())
            .output();
    }
}

async fn servers(controller: &Controller, service: &str) -> Result<Vec<String>, String> {
    let snapshot = controller
        .snapshot()
        .await?
        .snapshot
        .ok_or_else(|| "no snapshot yet".to_owned())?;
    let found = snapshot
        .services
        .iter()
        .find(|s| s.name == service)
        .ok_or_else(|| {
            format!(
                "no service {service}; have {:?}",
                snapshot
                    .services
                    .iter()
                    .map(|s| &s.name)
                    .collect::<Vec<_>>()
            )
        })?;
    let mut urls: Vec<String> = match &found.kind {
        Some(pb::service::Kind::LoadBalancer(lb)) => {
            lb.servers.iter().map(|s| s.url.clone()).collect()
        }
        _ => Vec::new(),
    };
    urls.sort();
    Ok(urls)
}

/// The addresses of a service's running tasks on `network`, as `http://ip:port`, sorted.
async fn task_urls(docker: &Dockerd, service: &str, network: &str, port: u16) -> Vec<String> {
    let ids = docker
        .must(&[
            "service",
            "ps",
            "--quiet",
            "--filter",
            "desired-state=running",
            service,
        ])
        .await;
    let mut urls = Vec::new();
    for id in ids.split_whitespace() {
        let format = format!(
            "{{{{range .NetworksAttachments}}}}{{{{if eq .Network.Spec.Name \"{network}\"}}}}\
             {{{{index .Addresses 0}}}}{{{{end}}}}{{{{end}}}}"
        );
        let address = docker.must(&["inspect", "--format", &format, id]).await;
        let ip = address.split('/').next().unwrap_or_default();
        assert!(!ip.is_empty(), "task {id} has no address on {network}");
        urls.push(format!("http://{ip}:{port}"));
    }
    urls.sort();
    urls
}

#[tokio::test(flavor = "multi_thread")]
async fn swarm_services_route_by_task_addresses_and_by_virtual_ip() {
    let docker = Dockerd::private(false).await;
    let image = docker.image().await;
    let listen = free_port().await;
    docker
        .must(&[
            "swarm",
            "init",
            "--advertise-addr",
            "127.0.0.1",
            "--listen-addr",
            &listen.to_string(),
        ])
        .await;
    let _swarm = Swarm { docker: &docker };
    let network = docker.name("overlay");
    docker
        .must(&[
            "network",
            "create",
            "--driver",
            "overlay",
            "--attachable",
            &network,
        ])
        .await;
    let controller = Controller::start(&format!(
        "swarm:\n  endpoint: {}\n  refreshSeconds: 1s\n  network: {network}\n  constraints: '{}'\n",
        docker.host(),
        docker.constraint()
    ))
    .await;

    let test_label = format!("{TEST_LABEL}={}", docker.id());
    let create = |name: String, labels: Vec<String>, replicas: &'static str| {
        let network = network.clone();
        let test_label = test_label.clone();
        let docker = &docker;
        async move {
            let mut args: Vec<String> = [
                "service",
                "create",
                "--detach",
                "--name",
                &name,
                "--network",
                &network,
                "--replicas",
                replicas,
                "--label",
                &test_label,
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            for label in labels {
                args.push("--label".into());
                args.push(label);
            }
            args.extend([
                image.to_owned(),
                "/bin/busybox".into(),
                "sleep".into(),
                "3600".into(),
            ]);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            docker.must(&args).await;
        }
    };

    // Task addresses: one server per running task, on the chosen overlay network.
    let web = docker.name("web");
    create(
        web.clone(),
        vec![
            "traefik.http.routers.web.rule=Host(`web.swarm.test`)".into(),
            "traefik.http.services.web.loadbalancer.server.port=8080".into(),
        ],
        "2",
    )
    .await;
    let expected = eventually("two running tasks", DEADLINE, || async {
        let urls = task_urls(&docker, &web, &network, 8080).await;
        if urls.len() == 2 {
            Ok(urls)
        } else {
            Err(format!("{urls:?}"))
        }
    })
    .await;
    eventually("web@swarm has the task addresses", DEADLINE, || async {
        let got = servers(&controller, "web@swarm").await?;
        if got == expected {
            Ok(())
        } else {
            Err(format!("{got:?} != {expected:?}"))
        }
    })
    .await;
    let snapshot = controller.snapshot().await.unwrap().snapshot.unwrap();
    let router = snapshot
        .routers
        .iter()
        .find(|r| r.name == "web@swarm")
        .unwrap();
    assert_eq!(router.rule_text, "Host(`web.swarm.test`)");
    assert_eq!(router.service, "web@swarm");

    // Scaling is followed by the next poll.
    docker
        .must(&["service", "scale", "--detach", &format!("{web}=3")])
        .await;
    let expected = eventually("three running tasks", DEADLINE, || async {
        let urls = task_urls(&docker, &web, &network, 8080).await;
        if urls.len() == 3 {
            Ok(urls)
        } else {
            Err(format!("{urls:?}"))
        }
    })
    .await;
    eventually("web@swarm follows the scale-up", DEADLINE, || async {
        let got = servers(&controller, "web@swarm").await?;
        if got == expected {
            Ok(())
        } else {
            Err(format!("{got:?} != {expected:?}"))
        }
    })
    .await;

    // VIP: `traefik.swarm.lbswarm=true` → one server, the service's virtual IP.
    let vip_service = docker.name("vip");
    create(
        vip_service.clone(),
        vec![
            "traefik.swarm.lbswarm=true".into(),
            "traefik.http.routers.vip.rule=Host(`vip.swarm.test`)".into(),
            "traefik.http.services.vip.loadbalancer.server.port=80".into(),
        ],
        "2",
    )
    .await;
    let vip = docker
        .must(&[
            "service",
            "inspect",
            "--format",
            "{{range .Endpoint.VirtualIPs}}{{.Addr}} {{end}}",
            &vip_service,
        ])
        .await;
    let vip = vip.split('/').next().unwrap().trim().to_owned();
    assert!(!vip.is_empty(), "the service has a virtual IP");
    eventually("vip@swarm is the virtual IP", DEADLINE, || async {
        let got = servers(&controller, "vip@swarm").await?;
        if got == [format!("http://{vip}:80")] {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;

    // No port label: that service is left out and named; the others stay.
    let portless = docker.name("portless");
    create(portless.clone(), vec![], "1").await;
    let diagnostic = eventually(
        "a diagnostic naming the portless service",
        DEADLINE,
        || async {
            let version = controller.version().await?;
            version
                .diagnostics
                .iter()
                .find(|d| d.provider == "swarm" && d.message.contains(&portless))
                .cloned()
                .ok_or_else(|| format!("{:?}", version.diagnostics))
        },
    )
    .await;
    assert!(
        diagnostic.message.contains("loadbalancer.server.port"),
        "{diagnostic:?}"
    );
    assert_eq!(servers(&controller, "web@swarm").await.unwrap().len(), 3);

    // Removing a service removes its routes.
    docker.must(&["service", "rm", &web]).await;
    eventually("web@swarm is gone", DEADLINE, || async {
        match servers(&controller, "web@swarm").await {
            Err(e) if e.starts_with("no service") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let status = controller.provider("swarm").await.unwrap();
    assert!(status.healthy, "{status:?}");
    docker
        .must(&["service", "rm", &vip_service, &portless])
        .await;
}
