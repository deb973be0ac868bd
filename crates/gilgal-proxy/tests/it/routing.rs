//! Routing rules, forwarding headers, load balancing, keep-alive, HTTP/2, splits and metrics.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use gilgal_core::hostnames::default_hostname as app_hostname;
use gilgal_proxy::{Backend, ProxyError, ProxySettings, RouteSpec, RouteTarget, WeightedSplit};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::support::*;

fn route(id: &str, hosts: &[&str], prefix: Option<&str>, backends: Vec<Backend>) -> RouteSpec {
    let mut spec = RouteSpec::upstream(id, hosts.iter().map(|h| h.to_string()).collect(), backends);
    spec.path_prefix = prefix.map(str::to_string);
    spec
}

#[test]
fn hostnames_follow_the_project_env_convention() {
    assert_eq!(
        app_hostname("shop", "production", "localhost"),
        "shop.localhost"
    );
    assert_eq!(
        app_hostname("shop", "staging", "apps.example.com"),
        "shop-staging.apps.example.com"
    );
    assert_eq!(
        app_hostname("Shop", "PR-7", "localhost"),
        "shop-pr-7.localhost"
    );
}

#[tokio::test]
async fn routes_by_host_custom_domain_and_longest_prefix() {
    let prod = Upstream::start("prod").await;
    let staging = Upstream::start("staging").await;
    let v2 = Upstream::start("v2").await;
    let v2beta = Upstream::start("v2beta").await;
    let proxy = Proxy::start().await;
    proxy
        .handle
        .replace(vec![
            route(
                "shop/production",
                &["shop.localhost", "www.shop.example"],
                None,
                vec![prod.backend()],
            ),
            route(
                "shop/staging",
                &["shop-staging.localhost"],
                None,
                vec![staging.backend()],
            ),
            route(
                "shop/production/v2",
                &["shop.localhost"],
                Some("/v2"),
                vec![v2.backend()],
            ),
            route(
                "shop/production/v2beta",
                &["shop.localhost"],
                Some("/v2/beta/"),
                vec![v2beta.backend()],
            ),
        ])
        .unwrap();
    let c = client();
    let cases = [
        ("shop.localhost", "/", "prod"),
        ("shop.localhost", "/cart?x=1", "prod"),
        ("SHOP.LocalHost:8080", "/", "prod"),
        ("www.shop.example", "/", "prod"),
        ("shop-staging.localhost", "/", "staging"),
        ("shop.localhost", "/v2", "v2"),
        ("shop.localhost", "/v2/", "v2"),
        ("shop.localhost", "/v2/orders", "v2"),
        ("shop.localhost", "/v2x", "prod"),
        ("shop.localhost", "/v2/beta", "v2beta"),
        ("shop.localhost", "/v2/beta/x", "v2beta"),
        ("shop.localhost", "/v2/betamax", "v2"),
    ];
    for (host, path, expected) in cases {
        let a = get(&c, &proxy, host, path).await;
        assert_eq!(a.status, 200, "{host}{path}");
        assert_eq!(a.body, expected, "{host}{path}");
        let table = proxy.handle.table();
        assert!(table.route_id_for(host, path).is_some());
    }
    // The full path (with query) reaches the backend unchanged.
    let a = get(&c, &proxy, "shop.localhost", "/echo-headers?q=1").await;
    assert!(a.body.starts_with("uri=/echo-headers?q=1\n"), "{}", a.body);

    let unknown = get(&c, &proxy, "nope.localhost", "/").await;
    assert_eq!(unknown.status, 404);
    let id = unknown.header("x-request-id").unwrap().to_string();
    assert!(unknown.body.contains(&id), "404 page names the request id");
}

/// A proxy with `settings` routing `app.localhost` to one upstream (kept alive with it).
async fn proxy_to_one_upstream(settings: ProxySettings) -> (Upstream, Proxy) {
    let up = Upstream::start("up").await;
    let proxy = Proxy::with_settings(settings).await;
    proxy
        .handle
        .replace(vec![route(
            "r",
            &["app.localhost"],
            None,
            vec![up.backend()],
        )])
        .unwrap();
    (up, proxy)
}

/// The header lines the upstream saw of a `GET /echo-headers` sent with `headers`.
async fn echoed_headers(c: &TestClient, proxy: &Proxy, headers: &[(&str, &str)]) -> String {
    let mut req = Request::get(proxy.url("/echo-headers"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    send(c, req.body(Full::new(Bytes::new())).unwrap())
        .await
        .body
}

/// Header lines as a map (the last of repeated names wins).
fn fields(echoed: &str) -> HashMap<&str, &str> {
    echoed.lines().filter_map(|l| l.split_once(": ")).collect()
}

#[tokio::test]
async fn adds_forwarding_headers_and_strips_hop_by_hop() {
    let (_up, proxy) = proxy_to_one_upstream(ProxySettings::default()).await;
    let c = client();
    let body = echoed_headers(
        &c,
        &proxy,
        &[
            ("host", "app.localhost:1234"),
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("x-end-to-end", "kept"),
            // Spoofed forwarding claims from a client that is no trusted proxy.
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "6.6.6.7"),
            ("x-real-ip", "6.6.6.8"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-port", "443"),
            ("forwarded", "for=6.6.6.9;proto=https"),
        ],
    )
    .await;
    let seen = fields(&body);
    assert_eq!(seen.get("x-forwarded-for"), Some(&"127.0.0.1"));
    assert_eq!(seen.get("x-real-ip"), Some(&"127.0.0.1"));
    assert_eq!(seen.get("x-forwarded-proto"), Some(&"http"));
    assert_eq!(seen.get("x-forwarded-host"), Some(&"app.localhost:1234"));
    for name in [
        "x-forwarded-for",
        "x-real-ip",
        "x-forwarded-proto",
        "x-forwarded-host",
    ] {
        let lines = body
            .lines()
            .filter(|l| l.starts_with(&format!("{name}: ")))
            .count();
        assert_eq!(lines, 1, "one {name} field reaches the backend: {body}");
    }
    for spoof in ["6.6.6.", "evil.example", "forwarded:", "x-forwarded-port"] {
        assert!(
            !body.contains(spoof),
            "{spoof} must not reach the backend: {body}"
        );
    }
    assert_eq!(seen.get("host"), Some(&"app.localhost:1234"));
    assert_eq!(seen.get("x-end-to-end"), Some(&"kept"));
    for hop in [
        "x-secret-hop",
        "keep-alive",
        "proxy-authorization",
        "connection",
    ] {
        assert!(
            !seen.contains_key(hop),
            "{hop} must not reach the backend: {body}"
        );
    }
    let id = seen.get("x-request-id").unwrap();
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));

    // A valid incoming id is kept; a hostile one is replaced.
    for (incoming, kept) in [("abc-123.def", true), ("bad id\"<script>", false)] {
        let body = echoed_headers(
            &c,
            &proxy,
            &[("host", "app.localhost"), ("x-request-id", incoming)],
        )
        .await;
        assert_eq!(
            body.contains(&format!("x-request-id: {incoming}\n")),
            kept,
            "{body}"
        );
    }
}

#[tokio::test]
async fn believes_forwarding_headers_only_from_trusted_proxies() {
    let trusted = ["127.0.0.0/8", "10.0.0.0/8"];
    let (_up, proxy) = proxy_to_one_upstream(ProxySettings {
        trusted_proxies: trusted.iter().map(|n| n.parse().unwrap()).collect(),
        ..ProxySettings::default()
    })
    .await;
    let (sink, mut access) = tokio::sync::mpsc::channel(16);
    proxy.handle.set_access_log(sink);
    let c = client();
    // A load balancer (trusted, 10.0.0.5) in front of Gilgal; the client put a made-up
    // address at the front of the list, which the walk from the right never reaches.
    let body = echoed_headers(
        &c,
        &proxy,
        &[
            ("host", "app.localhost"),
            ("x-forwarded-for", "6.6.6.6, 203.0.113.9"),
            ("x-forwarded-for", "10.0.0.5"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "app.example.com"),
            ("x-forwarded-port", "443"),
            ("forwarded", "for=203.0.113.9;proto=https"),
        ],
    )
    .await;
    let seen = fields(&body);
    assert_eq!(
        seen.get("x-forwarded-for"),
        Some(&"6.6.6.6, 203.0.113.9, 10.0.0.5, 127.0.0.1"),
        "{body}"
    );
    assert_eq!(seen.get("x-real-ip"), Some(&"203.0.113.9"));
    assert_eq!(seen.get("x-forwarded-proto"), Some(&"https"));
    assert_eq!(seen.get("x-forwarded-host"), Some(&"app.example.com"));
    assert_eq!(seen.get("x-forwarded-port"), Some(&"443"));
    assert_eq!(seen.get("forwarded"), Some(&"for=203.0.113.9;proto=https"));
    let entry = access.recv().await.unwrap();
    assert_eq!(
        entry.client, "203.0.113.9",
        "the access log names the real client"
    );

    // A trusted peer's own X-Real-IP stays; without a list the peer itself is the client.
    let body = echoed_headers(
        &c,
        &proxy,
        &[("host", "app.localhost"), ("x-real-ip", "198.51.100.4")],
    )
    .await;
    let seen = fields(&body);
    assert_eq!(seen.get("x-real-ip"), Some(&"198.51.100.4"));
    assert_eq!(seen.get("x-forwarded-for"), Some(&"127.0.0.1"));
    assert_eq!(seen.get("x-forwarded-proto"), Some(&"http"));
    assert_eq!(access.recv().await.unwrap().client, "127.0.0.1");
}

#[tokio::test]
async fn balances_across_instances_and_prefers_the_less_busy_one() {
    let ups = [
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    ];
    let proxy = Proxy::start().await;
    proxy
        .handle
        .replace(vec![route(
            "r",
            &["app.localhost"],
            None,
            ups.iter().map(Upstream::backend).collect(),
        )])
        .unwrap();
    let c = client();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..300 {
        *counts
            .entry(get(&c, &proxy, "app.localhost", "/").await.body)
            .or_default() += 1;
    }
    for u in &ups {
        let n = counts.get(&u.name).copied().unwrap_or(0);
        assert!(n > 50, "instance {} got {n} of 300: {counts:?}", u.name);
    }

    // Least-loaded choice: with two instances p2c always compares both, so concurrent long
    // requests split exactly evenly.
    proxy
        .handle
        .replace(vec![route(
            "r",
            &["app.localhost"],
            None,
            ups[..2].iter().map(Upstream::backend).collect(),
        )])
        .unwrap();
    let mut slow = Vec::new();
    for _ in 0..6 {
        let c = c.clone();
        let url = proxy.url("/slow?ms=1500");
        slow.push(tokio::spawn(async move {
            let req = Request::get(url)
                .header("host", "app.localhost")
                .body(Full::new(Bytes::new()))
                .unwrap();
            send(&c, req).await.status
        }));
    }
    let handle = proxy.handle.clone();
    assert!(
        eventually(std::time::Duration::from_secs(2), || handle.in_flight("a")
            + handle.in_flight("b")
            == 6)
        .await
    );
    assert_eq!(
        (proxy.handle.in_flight("a"), proxy.handle.in_flight("b")),
        (3, 3)
    );
    for s in slow {
        assert_eq!(s.await.unwrap(), 200);
    }
}

#[tokio::test]
async fn reuses_upstream_connections() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start().await;
    proxy
        .handle
        .replace(vec![route(
            "r",
            &["app.localhost"],
            None,
            vec![up.backend()],
        )])
        .unwrap();
    let c = client();
    let total = 2000;
    for _ in 0..total {
        assert_eq!(get(&c, &proxy, "app.localhost", "/").await.status, 200);
    }
    let conns = up.connections.load(Ordering::SeqCst);
    let reuse = 1.0 - conns as f64 / total as f64;
    println!(
        "upstream connections: {conns} for {total} requests (reuse {:.4})",
        reuse
    );
    assert!(reuse >= 0.999, "connection reuse {reuse} below 99.9 %");
}

#[tokio::test]
async fn serves_http2_clients_over_cleartext() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start().await;
    proxy
        .handle
        .replace(vec![route(
            "r",
            &["app.localhost"],
            None,
            vec![up.backend()],
        )])
        .unwrap();
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let req = Request::get(format!("http://app.localhost/echo-headers?i={i}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let fut = sender.send_request(req);
        tasks.push(tokio::spawn(async move {
            let resp = fut.await.unwrap();
            assert_eq!(resp.version(), http::Version::HTTP_2);
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200);
        assert!(
            body.starts_with(&format!("uri=/echo-headers?i={i}\n")),
            "{body}"
        );
        assert!(body.contains("host: app.localhost\n"), "{body}");
    }
}

#[tokio::test]
async fn weighted_split_holds_its_ratio_and_sticks_by_cookie() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let proxy = Proxy::start().await;
    let mut spec = route(
        "r",
        &["app.localhost"],
        None,
        vec![stable.backend_in("v1"), canary.backend_in("v2")],
    );
    if let RouteTarget::Upstream { split, .. } = &mut spec.target {
        *split = Some(WeightedSplit {
            primary_group: "v1".into(),
            canary_group: "v2".into(),
            canary_basis_points: 1_000,
            sticky_cookie: None,
        });
    }
    proxy.handle.replace(vec![spec.clone()]).unwrap();
    let c = client();
    let total = 10_000;
    let mut to_canary = 0;
    let mut batch = Vec::new();
    for i in 0..total {
        let c = c.clone();
        let url = proxy.url("/");
        batch.push(tokio::spawn(async move {
            let req = Request::get(url)
                .header("host", "app.localhost")
                .body(Full::new(Bytes::new()))
                .unwrap();
            send(&c, req).await.body
        }));
        if batch.len() == 32 || i == total - 1 {
            for t in batch.drain(..) {
                if t.await.unwrap() == "canary" {
                    to_canary += 1;
                }
            }
        }
    }
    let share = to_canary as f64 / total as f64;
    println!("canary share over {total} requests: {share:.4} (target 0.10)");
    assert!((share - 0.10).abs() <= 0.03, "canary share {share}");
    // Each answer is counted once for the route and once for the release that gave it.
    let metrics = proxy.handle.metrics();
    let requests_of = |release| metrics.release("r", release).map(|m| m.requests());
    assert_eq!(requests_of("v2"), Some(to_canary));
    assert_eq!(requests_of("v1"), Some(total - to_canary));
    assert_eq!(metrics.route("r").map(|m| m.requests()), Some(total));
    let exposition = metrics.render_prometheus();
    assert!(
        exposition.contains(&format!(
            "gilgal_proxy_release_requests_total{{route=\"r\",release=\"v2\",class=\"2xx\"}} {to_canary}\n"
        )),
        "{exposition}"
    );

    // Sticky: a new client gets a cookie naming its group and then always lands there.
    if let RouteTarget::Upstream { split: Some(s), .. } = &mut spec.target {
        s.sticky_cookie = Some("gilgal_release".into());
        s.canary_basis_points = 5_000;
    }
    proxy.handle.replace(vec![spec]).unwrap();
    for _ in 0..10 {
        let first = get(&c, &proxy, "app.localhost", "/").await;
        let cookie = first.header("set-cookie").unwrap().to_string();
        let pair = cookie.split(';').next().unwrap().to_string();
        let expected = if pair.ends_with("=v2") {
            "canary"
        } else {
            "stable"
        };
        assert_eq!(first.body, expected);
        for _ in 0..20 {
            let req = Request::get(proxy.url("/"))
                .header("host", "app.localhost")
                .header("cookie", format!("theme=dark; {pair}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let a = send(&c, req).await;
            assert_eq!(a.body, expected);
            assert!(a.header("set-cookie").is_none());
        }
    }
}

#[tokio::test]
async fn counts_metrics_per_route() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start().await;
    proxy
        .handle
        .replace(vec![route(
            "shop/production",
            &["app.localhost"],
            None,
            vec![up.backend()],
        )])
        .unwrap();
    let c = client();
    for _ in 0..10 {
        get(&c, &proxy, "app.localhost", "/").await;
    }
    let req = Request::post(proxy.url("/body"))
        .header("host", "app.localhost")
        .body(Full::new(Bytes::from(vec![b'x'; 1000])))
        .unwrap();
    assert_eq!(send(&c, req).await.body, "1000 bytes");
    get(&c, &proxy, "unknown.localhost", "/").await;
    let m = proxy.handle.metrics();
    let r = m.route("shop/production").unwrap();
    assert_eq!(r.status_classes[1], 11);
    assert_eq!(r.requests(), 11);
    assert_eq!(r.latency_buckets.iter().sum::<u64>(), 11);
    assert_eq!(r.bytes_in, 1000);
    assert_eq!(r.bytes_out, 10 * 2 + "1000 bytes".len() as u64);
    assert_eq!(r.open_connections, 0);
    assert_eq!(
        m.route(gilgal_proxy::UNROUTED).unwrap().status_classes[3],
        1
    );
    assert!(m.open_client_connections >= 1);
    let text = m.render_prometheus();
    assert!(
        text.contains("gilgal_proxy_requests_total{route=\"shop/production\",class=\"2xx\"} 11"),
        "{text}"
    );
    assert!(
        text.contains("gilgal_proxy_request_duration_seconds_count{route=\"shop/production\"} 11")
    );
    assert!(text.contains("gilgal_proxy_bytes_in_total{route=\"shop/production\"} 1000"));
}

#[test]
fn rejects_ambiguous_or_malformed_tables() {
    let handle = gilgal_proxy::ProxyHandle::default();
    let addr: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let a = route("a", &["x.localhost"], None, vec![Backend::new("i1", addr)]);
    let b = route(
        "b",
        &["X.localhost"],
        Some("/"),
        vec![Backend::new("i2", addr)],
    );
    assert!(matches!(
        handle.replace(vec![a.clone(), b]),
        Err(ProxyError::DuplicateRoute { .. })
    ));
    let bad_prefix = route("c", &["y.localhost"], Some("v2"), vec![]);
    assert!(matches!(
        handle.replace(vec![bad_prefix]),
        Err(ProxyError::InvalidRoute { .. })
    ));
    let other: std::net::SocketAddr = "127.0.0.1:10".parse().unwrap();
    let conflicting = route("d", &["z.localhost"], None, vec![Backend::new("i1", other)]);
    assert!(matches!(
        handle.replace(vec![a.clone(), conflicting]),
        Err(ProxyError::ConflictingBackend { .. })
    ));
    // A failed replace leaves the previous table in place.
    handle.replace(vec![a]).unwrap();
    assert!(handle.replace(vec![route("e", &[], None, vec![])]).is_err());
    assert_eq!(handle.table().route_id_for("x.localhost", "/"), Some("a"));

    // Diffs are validated the same way and leave the table untouched when rejected.
    let clash = route("f", &["X.LOCALHOST"], None, vec![Backend::new("i3", addr)]);
    let diff =
        |upsert: Vec<RouteSpec>, remove: Vec<String>| gilgal_proxy::RouteDiff { upsert, remove };
    assert!(matches!(
        handle.apply(diff(vec![clash.clone()], vec![])),
        Err(ProxyError::DuplicateRoute { .. })
    ));
    let moved = route("g", &["g.localhost"], None, vec![Backend::new("i1", other)]);
    assert!(matches!(
        handle.apply(diff(vec![moved.clone()], vec![])),
        Err(ProxyError::ConflictingBackend { .. })
    ));
    assert_eq!(handle.table().route_id_for("x.localhost", "/"), Some("a"));
    assert_eq!(handle.table().len(), 1);
    // Replacing the route that owned the host (and the instance address) in the same diff is fine.
    handle
        .apply(diff(vec![clash, moved], vec!["a".into()]))
        .unwrap();
    assert_eq!(handle.table().route_id_for("x.localhost", "/"), Some("f"));
    assert_eq!(handle.table().route_id_for("g.localhost", "/"), Some("g"));
    assert_eq!(handle.table().len(), 2);
    assert_eq!(
        handle
            .routes()
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>(),
        ["f", "g"]
    );
}

#[tokio::test]
async fn lookup_cost_is_flat_from_one_to_ten_thousand_hosts() {
    let addr: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut times = Vec::new();
    for n in [1usize, 10_000] {
        let handle = gilgal_proxy::ProxyHandle::default();
        let specs: Vec<_> = (0..n)
            .map(|i| {
                route(
                    &format!("p{i}"),
                    &[&app_hostname(&format!("p{i}"), "production", "localhost")],
                    None,
                    vec![Backend::new(format!("b{i}"), addr)],
                )
            })
            .collect();
        let t = std::time::Instant::now();
        handle.replace(specs).unwrap();
        let build = t.elapsed();
        let table = handle.table();
        let host = format!("p{}.localhost", n - 1);
        let t = std::time::Instant::now();
        let rounds = 200_000;
        for _ in 0..rounds {
            assert!(table
                .route_id_for(std::hint::black_box(&host), "/x")
                .is_some());
        }
        let per = t.elapsed() / rounds;
        // A deploy changes one route: the diff is applied and visible well within 100 ms.
        let t = std::time::Instant::now();
        handle
            .apply(gilgal_proxy::RouteDiff {
                upsert: vec![route(
                    "p0",
                    &["p0.localhost", "new.example"],
                    None,
                    vec![Backend::new("b0-new", addr)],
                )],
                remove: vec![],
            })
            .unwrap();
        let diff = t.elapsed();
        assert_eq!(handle.table().route_id_for("new.example", "/"), Some("p0"));
        println!("{n} hosts: table build {build:?}, one-route diff {diff:?}, lookup {per:?}");
        times.push(per);
        assert!(build < std::time::Duration::from_millis(2_000));
        assert!(
            diff < std::time::Duration::from_millis(100),
            "diff took {diff:?}"
        );
    }
    assert!(
        times[1] < times[0] * 4 + std::time::Duration::from_nanos(200),
        "lookup not flat: {times:?}"
    );
}

#[tokio::test]
async fn a_release_without_a_split_gets_its_answers_and_the_edges_errors_for_it() {
    let live = Upstream::start("live").await;
    let proxy = Proxy::start().await;
    let spec = route("r", &["app.localhost"], None, vec![live.backend_in("v3")]);
    proxy.handle.replace(vec![spec]).unwrap();
    let c = client();
    for _ in 0..5 {
        assert_eq!(get(&c, &proxy, "app.localhost", "/").await.status, 200);
    }
    // The next release's only instance accepts nothing: the edge's 502s are that release's.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let spec = route(
        "r",
        &["app.localhost"],
        None,
        vec![Backend::in_group("dead", dead, "v4")],
    );
    proxy.handle.replace(vec![spec]).unwrap();
    for _ in 0..3 {
        assert_eq!(get(&c, &proxy, "app.localhost", "/").await.status, 502);
    }
    let metrics = proxy.handle.metrics();
    let v3 = metrics.release("r", "v3").expect("v3 counted");
    assert_eq!((v3.requests(), v3.status_classes[1]), (5, 5));
    let v4 = metrics.release("r", "v4").expect("v4 counted");
    assert_eq!((v4.requests(), v4.status_classes[4]), (3, 3));
    assert_eq!(metrics.route("r").map(|m| m.requests()), Some(8));
}
