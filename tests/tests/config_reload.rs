//! Guarantee: an edit in the watched directory reaches every proxy; bad input costs only itself
//! (a file that does not parse keeps the provider's last good configuration, a bad router is left
//! out and reported next to good ones that keep serving); and what the proxies then serve behaves
//! like Traefik: 404/502/503, X-Forwarded-*, the middlewares, weighted splits. Real processes:
//! `switchyard-controller`, two or one `switchyard-proxy`, `switchyard-echo` backends.

use http::Method;
use switchyard_tests::harness::{
    DEADLINE, Fleet, free_port, grpc,
    http::{self as client, Pool, Reply},
};

/// A router `name` for `rule` on service `service`, as a YAML snippet under `http.routers`.
fn router(name: &str, rule: &str, service: &str, middlewares: &[&str]) -> String {
    let mut text = format!("    {name}:\n      rule: {rule}\n      service: {service}\n");
    if !middlewares.is_empty() {
        text.push_str(&format!(
            "      middlewares: [{}]\n",
            middlewares.join(", ")
        ));
    }
    text
}

/// A load-balancer service `name` over `urls`, as a YAML snippet under `http.services`.
fn service(name: &str, urls: &[&str]) -> String {
    let mut text = format!("    {name}:\n      loadBalancer:\n        servers:\n");
    for url in urls {
        text.push_str(&format!("          - url: {url}\n"));
    }
    text
}

/// The file with one router, `app.test` → service `app` on `url`.
fn app_routed_to(url: &str) -> String {
    dynamic(
        &[router("app", "Host(`app.test`)", "app", &[])],
        &[service("app", &[url])],
    )
}

fn dynamic(routers: &[String], services: &[String]) -> String {
    format!(
        "http:\n  routers:\n{}  services:\n{}",
        routers.concat(),
        services.concat()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_in_the_watched_directory_reaches_both_proxies() {
    let fleet = Fleet::new("reload-edit");
    let a = fleet.echo("a").await;
    let b = fleet.echo("b").await;
    fleet.write_dynamic("app.yml", &app_routed_to(&a.url()));
    let _controller = fleet.controller();
    let p1 = fleet.proxy("p1");
    let p2 = fleet.proxy("p2");
    let v1 = fleet.converged(&["p1", "p2"], DEADLINE).await;
    fleet
        .eventually("both proxies serve app.test from a", DEADLINE, || async {
            p1.serves("app.test", "a").await?;
            p2.serves("app.test", "a").await
        })
        .await;

    // The route moves to b, and a second file adds a route referring to a service of the first
    // (references without `@` resolve within the provider, across its files).
    fleet.write_dynamic(
        "app.yml",
        &dynamic(
            &[router("app", "Host(`app.test`)", "app", &[])],
            &[service("app", &[&b.url()]), service("old", &[&a.url()])],
        ),
    );
    fleet.write_dynamic(
        "extra.yml",
        "http:\n  routers:\n    extra:\n      rule: Host(`extra.test`)\n      service: old\n",
    );
    fleet
        .eventually("both proxies serve the edit", DEADLINE, || async {
            for p in [&p1, &p2] {
                p.serves("app.test", "b").await?;
                p.serves("extra.test", "a").await?;
            }
            Ok(())
        })
        .await;
    let v2 = fleet.converged(&["p1", "p2"], DEADLINE).await;
    assert_ne!(v1, v2, "new content must be a new version");
    for p in [&p1, &p2] {
        let status = p.status().await.unwrap();
        assert_eq!(status.version, v2, "{status:?}");
        assert_eq!(status.routers, 2, "{status:?}");
    }

    // Removing a file removes its objects.
    fleet.remove_dynamic("extra.yml");
    fleet
        .eventually("extra.test is gone from both proxies", DEADLINE, || async {
            for p in [&p1, &p2] {
                let reply = p.get("extra.test", "/").await?;
                if reply.status != 404 {
                    return Err(format!("{}: {reply}", p.node));
                }
                p.serves("app.test", "b").await?;
            }
            Ok(())
        })
        .await;
}

/// True when `error` names line `line` in one of the usual spellings (`file:6:18`, `line 6`).
fn names_line(error: &str, file: &str, line: u32) -> bool {
    error.contains(&format!("{file}:{line}")) || error.contains(&format!("line {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_does_not_parse_is_reported_and_the_last_good_routes_keep_serving() {
    let fleet = Fleet::new("reload-parse");
    let a = fleet.echo("a").await;
    fleet.write_dynamic("app.yml", &app_routed_to(&a.url()));
    let good_extra =
        "http:\n  routers:\n    extra:\n      rule: Host(`extra.test`)\n      service: app\n";
    fleet.write_dynamic("extra.yml", good_extra);
    let _controller = fleet.controller();
    let p = fleet.proxy("p");
    let v1 = fleet.converged(&["p"], DEADLINE).await;
    fleet
        .eventually("both routes serve", DEADLINE, || async {
            p.serves("app.test", "a").await?;
            p.serves("extra.test", "a").await
        })
        .await;

    // Line 6 is not YAML (a second `:` in a plain value).
    let broken = "http:\n  routers:\n    extra:\n      rule: Host(`extra.test`)\n      service: app\n      priority: 1: 2\n";
    fleet.write_dynamic("extra.yml", broken);
    let file = fleet
        .eventually("the parse error is reported", DEADLINE, || async {
            let version = fleet.version().await?;
            match grpc::find_provider(&version, "file") {
                Some(p) if !p.error.is_empty() => Ok(p.clone()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    assert!(
        file.error.contains("extra.yml") && names_line(&file.error, "extra.yml", 6),
        "the error must name the file and line 6: {file:?}"
    );
    assert!(!file.healthy, "{file:?}");
    // The whole update is rejected: the provider's last good configuration stays in service.
    assert_eq!(fleet.version().await.unwrap().version, v1);
    p.serves("app.test", "a").await.unwrap();
    p.serves("extra.test", "a").await.unwrap();

    // Fixed: healthy again, and the fixed content serves.
    fleet.write_dynamic(
        "extra.yml",
        "http:\n  routers:\n    extra:\n      rule: Host(`fixed.test`)\n      service: app\n",
    );
    fleet
        .eventually("the fix is served", DEADLINE, || async {
            p.serves("fixed.test", "a").await?;
            let reply = p.get("extra.test", "/").await?;
            if reply.status == 404 {
                Ok(())
            } else {
                Err(format!("extra.test still served: {reply}"))
            }
        })
        .await;
    let version = fleet.version().await.unwrap();
    let file = grpc::find_provider(&version, "file").unwrap();
    assert!(file.healthy && file.error.is_empty(), "{file:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_router_is_left_out_and_reported_and_the_good_ones_serve() {
    let fleet = Fleet::new("reload-bad");
    let a = fleet.echo("a").await;
    fleet.write_dynamic(
        "app.yml",
        &dynamic(
            &[
                router("good", "Host(`good.test`)", "app", &[]),
                router("bad-rule", "Host(`bad-rule.test`) &&", "app", &[]),
                router("no-service", "Host(`no-service.test`)", "ghost", &[]),
                router(
                    "no-middleware",
                    "Host(`no-middleware.test`)",
                    "app",
                    &["phantom"],
                ),
            ],
            &[service("app", &[&a.url()])],
        ),
    );
    let _controller = fleet.controller();
    let p = fleet.proxy("p");
    fleet.converged(&["p"], DEADLINE).await;
    fleet
        .eventually("the good router serves", DEADLINE, || {
            p.serves("good.test", "a")
        })
        .await;

    let version = fleet.version().await.unwrap();
    let find = |object: &str| {
        version
            .diagnostics
            .iter()
            .find(|d| d.object == object)
            .unwrap_or_else(|| panic!("no diagnostic for {object}: {:?}", version.diagnostics))
    };
    for object in [
        "router/bad-rule@file",
        "router/no-service@file",
        "router/no-middleware@file",
    ] {
        let d = find(object);
        assert_eq!(d.provider, "file", "{d:?}");
        assert_eq!(d.severity, "error", "{d:?}");
        assert!(!d.message.is_empty(), "{d:?}");
    }
    assert!(
        find("router/bad-rule@file").message.contains("rule"),
        "the reason must concern the rule: {:?}",
        find("router/bad-rule@file")
    );
    assert!(
        find("router/no-service@file").message.contains("ghost"),
        "{:?}",
        find("router/no-service@file")
    );
    assert!(
        find("router/no-middleware@file")
            .message
            .contains("phantom"),
        "{:?}",
        find("router/no-middleware@file")
    );
    assert!(
        !version
            .diagnostics
            .iter()
            .any(|d| d.object.contains("good")),
        "the good router has no diagnostic: {:?}",
        version.diagnostics
    );
    for host in ["bad-rule.test", "no-service.test", "no-middleware.test"] {
        let reply = p.get(host, "/").await.unwrap();
        assert_eq!(reply.status, 404, "{host} must not be routed: {reply}");
    }
    let status = p.status().await.unwrap();
    assert_eq!(status.routers, 1, "only the good router: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_map_to_404_502_503_and_forwarded_headers_reach_the_backend() {
    let fleet = Fleet::new("reload-errors");
    let a = fleet.echo("a").await;
    let closed = free_port();
    fleet.write_dynamic(
        "app.yml",
        &format!(
            "{}    empty:\n      loadBalancer:\n        servers: []\n    nohost:\n      loadBalancer:\n        passHostHeader: false\n        servers:\n          - url: {a}\n",
            dynamic(
                &[
                    router("fwd", "Host(`fwd.test`)", "app", &[]),
                    router("nohost", "Host(`nohost.test`)", "nohost", &[]),
                    router("refused", "Host(`refused.test`)", "refused", &[]),
                    router("empty", "Host(`empty.test`)", "empty", &[]),
                ],
                &[
                    service("app", &[&a.url()]),
                    service("refused", &[&format!("http://{closed}")]),
                ],
            ),
            a = a.url()
        ),
    );
    let _controller = fleet.controller();
    let p = fleet.proxy("p");
    fleet.converged(&["p"], DEADLINE).await;
    fleet
        .eventually("fwd.test serves", DEADLINE, || p.serves("fwd.test", "a"))
        .await;

    let status_of = |host: &'static str| {
        let p = &p;
        async move { p.get(host, "/").await.unwrap() }
    };
    let reply = status_of("nowhere.test").await;
    assert_eq!(reply.status, 404, "no router matches: {reply}");
    let reply = status_of("refused.test").await;
    assert_eq!(reply.status, 502, "the backend refuses: {reply}");
    let reply = status_of("empty.test").await;
    assert_eq!(reply.status, 503, "a service without servers: {reply}");
    // A status the backend chose passes through unchanged.
    let reply = p.get("fwd.test", "/__status/418").await.unwrap();
    assert_eq!(reply.status, 418, "{reply}");
    assert_eq!(reply.backend(), Some("a"));

    let seen = p.get("fwd.test", "/who?x=1").await.unwrap().echo().unwrap();
    assert_eq!(seen.path, "/who");
    assert_eq!(seen.query.as_deref(), Some("x=1"));
    assert_eq!(
        seen.host.as_deref(),
        Some("fwd.test"),
        "passHostHeader defaults to true: {seen:?}"
    );
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("127.0.0.1"),
        "{seen:?}"
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"), "{seen:?}");
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some("fwd.test"),
        "{seen:?}"
    );

    // An untrusted client's X-Forwarded-For is not believed (Traefik's default).
    let seen = switchyard_tests::harness::http::send(
        p.web,
        Method::GET,
        "fwd.test",
        "/",
        &[("X-Forwarded-For", "203.0.113.9")],
    )
    .await
    .unwrap()
    .echo()
    .unwrap();
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("127.0.0.1"),
        "{seen:?}"
    );

    let seen = p.get("nohost.test", "/").await.unwrap().echo().unwrap();
    assert_eq!(
        seen.host.as_deref(),
        Some(a.addr.to_string().as_str()),
        "passHostHeader: false sends the server's host: {seen:?}"
    );
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some("nohost.test"),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn middlewares_work_end_to_end() {
    let fleet = Fleet::new("reload-mw");
    let a = fleet.echo("a").await;
    let routers = [
        router(
            "strip",
            "Host(`mw.test`) && PathPrefix(`/strip`)",
            "app",
            &["strip"],
        ),
        router(
            "add",
            "Host(`mw.test`) && PathPrefix(`/add`)",
            "app",
            &["add"],
        ),
        router(
            "hdr",
            "Host(`mw.test`) && PathPrefix(`/hdr`)",
            "app",
            &["hdr"],
        ),
        router(
            "redirect",
            "Host(`mw.test`) && PathPrefix(`/redirect`)",
            "app",
            &["to-https"],
        ),
        router(
            "temporary",
            "Host(`mw.test`) && PathPrefix(`/temporary`)",
            "app",
            &["to-https-temporary"],
        ),
        router(
            "chained",
            "Host(`mw.test`) && PathPrefix(`/chain`)",
            "app",
            &["both"],
        ),
    ];
    let middlewares = "  middlewares:
    strip:
      stripPrefix:
        prefixes: [/strip]
    strip-chain:
      stripPrefix:
        prefixes: [/chain]
    add:
      addPrefix:
        prefix: /v1
    hdr:
      headers:
        customRequestHeaders:
          X-Injected: injected
          X-Remove: ''
        customResponseHeaders:
          X-Added: added
    to-https:
      redirectScheme:
        scheme: https
        port: '8443'
        permanent: true
    to-https-temporary:
      redirectScheme:
        scheme: https
    both:
      chain:
        middlewares: [strip-chain, add, hdr]
";
    fleet.write_dynamic(
        "app.yml",
        &format!(
            "{}{middlewares}",
            dynamic(&routers, &[service("app", &[&a.url()])])
        ),
    );
    let _controller = fleet.controller();
    let p = fleet.proxy("p");
    fleet.converged(&["p"], DEADLINE).await;
    fleet
        .eventually("the routes serve", DEADLINE, || async {
            p.get("mw.test", "/strip").await?.expect_backend("a")
        })
        .await;

    let echo = |reply: Reply| {
        assert_eq!(reply.status, 200, "{reply}");
        reply.echo().unwrap()
    };

    let seen = echo(p.get("mw.test", "/strip/users?x=1").await.unwrap());
    assert_eq!(seen.path, "/users", "stripPrefix: {seen:?}");
    assert_eq!(seen.query.as_deref(), Some("x=1"));
    assert_eq!(
        seen.header("x-forwarded-prefix"),
        Some("/strip"),
        "{seen:?}"
    );

    let seen = echo(p.get("mw.test", "/add/x").await.unwrap());
    assert_eq!(seen.path, "/v1/add/x", "addPrefix: {seen:?}");

    let reply = switchyard_tests::harness::http::send(
        p.web,
        Method::GET,
        "mw.test",
        "/hdr",
        &[("X-Remove", "secret")],
    )
    .await
    .unwrap();
    assert_eq!(reply.header("x-added"), Some("added"), "{reply}");
    let seen = echo(reply);
    assert_eq!(seen.header("x-injected"), Some("injected"), "{seen:?}");
    assert_eq!(
        seen.header("x-remove"),
        None,
        "an empty customRequestHeaders value removes the header: {seen:?}"
    );

    let reply = p.get("mw.test", "/redirect/p?q=1").await.unwrap();
    assert_eq!(reply.status, 301, "permanent redirectScheme: {reply}");
    assert_eq!(
        reply.header("location"),
        Some("https://mw.test:8443/redirect/p?q=1"),
        "{reply}"
    );
    assert_eq!(
        reply.backend(),
        None,
        "a redirect never reaches the backend"
    );
    let reply = p.get("mw.test", "/temporary").await.unwrap();
    assert_eq!(reply.status, 302, "temporary redirectScheme: {reply}");
    assert_eq!(
        reply.header("location"),
        Some("https://mw.test/temporary"),
        "{reply}"
    );

    // chain: strip, then add, then headers — in that order.
    let reply = p.get("mw.test", "/chain/x").await.unwrap();
    assert_eq!(reply.header("x-added"), Some("added"), "{reply}");
    let seen = echo(reply);
    assert_eq!(seen.path, "/v1/x", "chain [strip, add]: {seen:?}");
    assert_eq!(seen.header("x-injected"), Some("injected"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_split_traffic() {
    let fleet = Fleet::new("reload-weights");
    let a = fleet.echo("a").await;
    let b = fleet.echo("b").await;
    fleet.write_dynamic(
        "app.yml",
        &format!(
            "{}    split:
      weighted:
        services:
          - name: svc-a
            weight: 3
          - name: svc-b
            weight: 1
    servers:
      loadBalancer:
        servers:
          - url: {a}
            weight: 1
          - url: {b}
            weight: 3
",
            dynamic(
                &[
                    router("split", "Host(`split.test`)", "split", &[]),
                    router("servers", "Host(`servers.test`)", "servers", &[]),
                ],
                &[service("svc-a", &[&a.url()]), service("svc-b", &[&b.url()])],
            ),
            a = a.url(),
            b = b.url(),
        ),
    );
    let _controller = fleet.controller();
    let p = fleet.proxy("p");
    fleet.converged(&["p"], DEADLINE).await;
    fleet
        .eventually("split.test serves", DEADLINE, || async {
            match p.get("split.test", "/").await?.status {
                200 => Ok(()),
                other => Err(format!("status {other}")),
            }
        })
        .await;

    const REQUESTS: usize = 200;
    let pool = Pool::new();
    for (host, heavy, light) in [("split.test", "a", "b"), ("servers.test", "b", "a")] {
        let (mut heavy_n, mut light_n) = (0usize, 0usize);
        for i in 0..REQUESTS {
            let reply = pool.get(p.web, host, "/").await.unwrap();
            assert_eq!(reply.status, 200, "request {i} to {host}: {reply}");
            match reply.backend() {
                Some(x) if x == heavy => heavy_n += 1,
                Some(x) if x == light => light_n += 1,
                other => panic!("unexpected backend {other:?}: {reply}"),
            }
        }
        // 3:1 of 200 is 150:50; weighted round robin is exact over a full cycle, so these bounds
        // only absorb a different starting point or a randomised balancer.
        assert!(
            (125..=175).contains(&heavy_n) && heavy_n + light_n == REQUESTS,
            "{host}: weight 3 got {heavy_n}, weight 1 got {light_n} of {REQUESTS}"
        );
    }
}

/// A server whose URL is `h2c://` is spoken to in HTTP/2 with prior knowledge, whatever the
/// client spoke: the request reaches it as HTTP/2, with its path, its host and the proxy's
/// forwarding headers (which go into the request's map on that path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_server_is_sent_requests_in_http2() {
    let fleet = Fleet::new("reload-h2c-upstream");
    let a = fleet.echo("a").await;
    fleet.write_dynamic("app.yml", &app_routed_to(&a.h2c_url()));
    let _controller = fleet.controller();
    let p = fleet.proxy("p");
    fleet.converged(&["p"], DEADLINE).await;
    fleet
        .eventually(
            "an HTTP/1.1 request reaches a in HTTP/2",
            DEADLINE,
            || async {
                let reply = client::get(p.web, "app.test", "/over/h2c?x=1").await?;
                reply.expect_backend("a")?;
                let echoed = reply.echo()?;
                let seen = (
                    echoed.version.as_deref(),
                    echoed.path.as_str(),
                    echoed.query.as_deref(),
                    echoed.host.as_deref(),
                );
                if seen != (Some("HTTP/2.0"), "/over/h2c", Some("x=1"), Some("app.test")) {
                    return Err(format!("backend saw {seen:?}"));
                }
                let forwarded_host = echoed.headers.get("x-forwarded-host");
                if forwarded_host != Some(&vec!["app.test".to_owned()]) {
                    return Err(format!("x-forwarded-host {forwarded_host:?}"));
                }
                Ok(())
            },
        )
        .await;
}

/// A plain entry point speaks HTTP/1.1 and, to a client that opens with the HTTP/2 preface, h2c
/// (as Traefik's entry points do), on the same port; the request reaches the backend either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_entry_point_serves_http1_and_h2c_on_one_port() {
    let fleet = Fleet::new("reload-h2c");
    let a = fleet.echo("a").await;
    fleet.write_dynamic("app.yml", &app_routed_to(&a.url()));
    let _controller = fleet.controller();
    let p = fleet.proxy("p");
    fleet.converged(&["p"], DEADLINE).await;
    fleet
        .eventually("HTTP/1.1 and h2c reach a", DEADLINE, || async {
            p.serves("app.test", "a").await?;
            let reply = client::get_h2c(p.web, "app.test", "/h2").await?;
            reply.expect_backend("a")?;
            let echoed = reply.echo()?;
            if echoed.path != "/h2" {
                return Err(format!("backend saw {}", echoed.path));
            }
            Ok(())
        })
        .await;
}
