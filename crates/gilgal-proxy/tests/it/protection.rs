//! Limits, timeouts, retries, error pages and request smuggling.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gilgal_proxy::{Backend, ProxySettings, RateLimit, RouteLimits, RouteSpec};
use std::convert::Infallible;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

fn limited_route(backends: Vec<Backend>, limits: RouteLimits) -> RouteSpec {
    let mut spec = RouteSpec::upstream("r", vec!["app.localhost".into()], backends);
    spec.limits = limits;
    spec
}

#[tokio::test]
async fn enforces_header_and_body_limits_per_route() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start().await;
    let limits = RouteLimits {
        max_body_bytes: Some(1024),
        max_header_bytes: 2048,
        max_header_count: 20,
        ..RouteLimits::default()
    };
    proxy
        .handle
        .replace(vec![limited_route(vec![up.backend()], limits)])
        .unwrap();
    let c = client();
    let base = || Request::post(proxy.url("/body")).header("host", "app.localhost");

    let ok = send(
        &c,
        base()
            .body(Full::new(Bytes::from(vec![1u8; 1024])))
            .unwrap(),
    )
    .await;
    assert_eq!((ok.status, ok.body.as_str()), (200, "1024 bytes"));

    let too_big = send(
        &c,
        base()
            .body(Full::new(Bytes::from(vec![1u8; 1025])))
            .unwrap(),
    )
    .await;
    assert_eq!(too_big.status, 413);
    assert!(too_big
        .body
        .contains(too_big.header("x-request-id").unwrap()));

    // A chunked body with no declared length is cut while streaming.
    let stream_client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<BoxBody<Bytes, Infallible>>();
    let chunks: Vec<Result<Frame<Bytes>, Infallible>> = (0..8)
        .map(|_| Ok(Frame::data(Bytes::from(vec![2u8; 512]))))
        .collect();
    let req = Request::post(proxy.url("/body"))
        .header("host", "app.localhost")
        .body(StreamBody::new(futures_util::stream::iter(chunks)).boxed())
        .unwrap();
    let resp = stream_client.request(req).await.unwrap();
    assert_eq!(resp.status(), 413);

    let mut many = Request::get(proxy.url("/")).header("host", "app.localhost");
    for i in 0..25 {
        many = many.header(format!("x-h{i}"), "v");
    }
    assert_eq!(
        send(&c, many.body(Full::new(Bytes::new())).unwrap())
            .await
            .status,
        431
    );

    let big = Request::get(proxy.url("/"))
        .header("host", "app.localhost")
        .header("x-big", "v".repeat(3000))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&c, big).await.status, 431);
    assert_eq!(get(&c, &proxy, "app.localhost", "/").await.status, 200);
}

#[tokio::test]
async fn closes_slow_header_senders_and_idle_connections() {
    let up = Upstream::start("up").await;
    let settings = ProxySettings {
        header_read_timeout: Duration::from_millis(400),
        idle_timeout: Duration::from_millis(600),
        ..ProxySettings::default()
    };
    let proxy = Proxy::with_settings(settings).await;
    proxy
        .handle
        .replace(vec![limited_route(
            vec![up.backend()],
            RouteLimits::default(),
        )])
        .unwrap();

    // Slowloris: a header line every 150 ms never completes the head.
    let mut slow = TcpStream::connect(proxy.addr).await.unwrap();
    let started = Instant::now();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: app.localhost\r\n")
        .await
        .unwrap();
    let mut closed = false;
    for i in 0..40 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        if slow
            .write_all(format!("X-Drip-{i}: 1\r\n").as_bytes())
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), slow.read(&mut buf)).await
        {
            if n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408") {
                closed = true;
                break;
            }
        }
    }
    let took = started.elapsed();
    assert!(closed, "slow client was never cut");
    assert!(took < Duration::from_secs(3), "cut after {took:?}");
    assert_eq!(up.requests.load(Ordering::SeqCst), 0);

    // Idle keep-alive: after one request, silence closes the connection.
    let mut idle = TcpStream::connect(proxy.addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: app.localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    let eof = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf)).await;
    assert!(
        matches!(eof, Ok(Ok(0)) | Ok(Err(_))),
        "idle connection stayed open"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn streams_sse_past_the_idle_and_response_timeouts() {
    let up = Upstream::start("up").await;
    let settings = ProxySettings {
        idle_timeout: Duration::from_millis(300),
        header_read_timeout: Duration::from_millis(300),
        ..ProxySettings::default()
    };
    let proxy = Proxy::with_settings(settings).await;
    let limits = RouteLimits {
        response_timeout: Duration::from_millis(500),
        ..RouteLimits::default()
    };
    proxy
        .handle
        .replace(vec![limited_route(vec![up.backend()], limits)])
        .unwrap();
    let c = client();
    let started = Instant::now();
    let a = get(&c, &proxy, "app.localhost", "/sse?events=8&every_ms=200").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("text/event-stream"));
    assert_eq!(a.body.matches("data: event").count(), 8, "{}", a.body);
    assert!(started.elapsed() >= Duration::from_millis(1500));
}

#[tokio::test]
async fn times_out_slow_backends_with_a_504_page() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start().await;
    let limits = RouteLimits {
        response_timeout: Duration::from_millis(300),
        ..RouteLimits::default()
    };
    proxy
        .handle
        .replace(vec![limited_route(vec![up.backend()], limits)])
        .unwrap();
    let c = client();
    let started = Instant::now();
    let a = get(&c, &proxy, "app.localhost", "/slow?ms=3000").await;
    assert_eq!(a.status, 504);
    assert!(started.elapsed() < Duration::from_secs(2));
    let id = a.header("x-request-id").unwrap();
    assert!(a.body.contains(id), "{}", a.body);
    // A timed-out request is not retried (it may have had effects).
    assert_eq!(up.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn response_timeouts_hold_for_every_request_on_a_kept_alive_connection() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start().await;
    let limits = RouteLimits {
        response_timeout: Duration::from_millis(300),
        ..RouteLimits::default()
    };
    proxy
        .handle
        .replace(vec![limited_route(vec![up.backend()], limits)])
        .unwrap();
    let c = client();
    // Fast, slow, fast, slow on one client connection: each slow answer times out on its own
    // deadline, whether the previous one was met or expired.
    for (path, status) in [
        ("/", 200),
        ("/slow?ms=3000", 504),
        ("/", 200),
        ("/slow?ms=3000", 504),
        ("/", 200),
    ] {
        let started = Instant::now();
        let a = get(&c, &proxy, "app.localhost", path).await;
        assert_eq!(a.status, status, "{path}");
        assert!(started.elapsed() < Duration::from_secs(2), "{path}");
    }
}

#[tokio::test]
async fn retries_only_when_safe_and_reports_502_and_503() {
    let up = Upstream::start("alive").await;
    // A port that refuses connections: bind, note the address, close.
    let dead_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    // No passive ejection, so about half the requests try the dead backend first.
    let proxy = Proxy::with_settings(ProxySettings {
        backend_ejection: Duration::ZERO,
        ..ProxySettings::default()
    })
    .await;
    let c = client();
    proxy
        .handle
        .replace(vec![limited_route(
            vec![Backend::new("dead", dead_addr), up.backend()],
            RouteLimits::default(),
        )])
        .unwrap();
    for _ in 0..50 {
        let a = get(&c, &proxy, "app.localhost", "/").await;
        assert_eq!(
            (a.status, a.body.as_str()),
            (200, "alive"),
            "connect failures are retried"
        );
    }
    // A POST with a body is retried too when the connection failed: nothing was sent.
    for _ in 0..30 {
        let req = Request::post(proxy.url("/body"))
            .header("host", "app.localhost")
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap();
        let a = send(&c, req).await;
        assert_eq!((a.status, a.body.as_str()), (200, "7 bytes"));
    }
    // Every request reached the live backend exactly once (no duplicate delivery).
    assert_eq!(up.requests.load(Ordering::SeqCst), 80);

    proxy
        .handle
        .replace(vec![limited_route(
            vec![Backend::new("dead", dead_addr)],
            RouteLimits::default(),
        )])
        .unwrap();
    let a = get(&c, &proxy, "app.localhost", "/").await;
    assert_eq!(a.status, 502);
    assert!(a.body.contains(a.header("x-request-id").unwrap()));

    proxy
        .handle
        .replace(vec![limited_route(vec![], RouteLimits::default())])
        .unwrap();
    let a = get(&c, &proxy, "app.localhost", "/").await;
    assert_eq!(a.status, 503);
    assert!(a.body.contains(a.header("x-request-id").unwrap()));
}

#[tokio::test]
async fn rejects_request_smuggling_attempts() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start().await;
    proxy
        .handle
        .replace(vec![limited_route(
            vec![up.backend()],
            RouteLimits::default(),
        )])
        .unwrap();
    let attacks: [&[u8]; 6] = [
        // CL.TE
        b"POST / HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
        // TE.CL (order swapped)
        b"POST / HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n",
        // Two different Content-Length values
        b"POST / HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 3\r\nContent-Length: 11\r\n\r\nabcGET / HTTP/1.1\r\n\r\n",
        // Two identical Content-Length headers
        b"POST / HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        // Obfuscated Transfer-Encoding
        b"POST / HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        // Chunked not last
        b"POST / HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    ];
    for attack in attacks {
        let reply = raw_exchange(proxy.addr, attack).await;
        assert!(
            reply.starts_with("HTTP/1.1 400"),
            "attack not rejected:\n{}\n---\n{reply}",
            String::from_utf8_lossy(attack)
        );
        assert_eq!(
            reply.matches("HTTP/1.1").count(),
            1,
            "a smuggled second request was answered: {reply}"
        );
    }
    assert_eq!(
        up.requests.load(Ordering::SeqCst),
        0,
        "no attack reached the backend"
    );

    // Hidden behind what the scanner once misread: a trailer section that hyper ends only at
    // CRLF CRLF (a bare LF there is field content), and tunnel requests after which the
    // scanner stops reading (so the connection must close unless the protocol switches).
    let hidden: [&[u8]; 3] = [
        b"POST /a HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\n\
          GET /x HTTP/1.1\r\nContent-Length: 68\r\n\r\n\
          POST /b HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: app.localhost\r\nUpgrade: foo\r\n\r\n\
          POST /b HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"CONNECT app.localhost:443 HTTP/1.1\r\nHost: app.localhost\r\n\r\n\
          POST /b HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ];
    for attack in hidden {
        let before = up.requests.load(Ordering::SeqCst);
        let reply = raw_exchange(proxy.addr, attack).await;
        assert_eq!(
            reply.matches("HTTP/1.1 ").count(),
            1,
            "the request after the first one was answered:\n{}\n---\n{reply}",
            String::from_utf8_lossy(attack)
        );
        assert!(
            up.requests.load(Ordering::SeqCst) <= before + 1,
            "the hidden request reached the backend: {reply}"
        );
    }

    // A well-formed chunked request still works.
    let reply = raw_exchange(
        proxy.addr,
        b"POST /body HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("3 bytes"), "{reply}");
}

#[tokio::test]
async fn rate_limits_refuse_exactly_what_is_over_each_clients_budget() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start().await;
    let per_minute = |path_prefix: Option<&str>, burst| RateLimit {
        path_prefix: path_prefix.map(str::to_owned),
        requests: 1,
        period: Duration::from_secs(60),
        burst,
    };
    let limits = RouteLimits {
        rate_limits: vec![per_minute(None, 5), per_minute(Some("/login"), 2)],
        ..RouteLimits::default()
    };
    proxy
        .handle
        .replace(vec![limited_route(vec![up.backend()], limits)])
        .unwrap();
    let c = client();
    let mut answered = std::collections::BTreeMap::<(&str, u16), u32>::new();
    for (path, count) in [("/", 20), ("/login/form", 10)] {
        for _ in 0..count {
            let a = get(&c, &proxy, "app.localhost", path).await;
            if a.status == 429 {
                let retry: u64 = a.header("retry-after").unwrap().parse().unwrap();
                assert!((1..=60).contains(&retry), "Retry-After {retry}");
            }
            *answered.entry((path, a.status)).or_default() += 1;
        }
    }
    // The longest matching prefix's budget applies, each one exact.
    assert_eq!(answered[&("/", 200)], 5);
    assert_eq!(answered[&("/", 429)], 15);
    assert_eq!(answered[&("/login/form", 200)], 2);
    assert_eq!(answered[&("/login/form", 429)], 8);
    let metrics = proxy.handle.metrics();
    let route = metrics.route("r").unwrap();
    assert_eq!(route.rate_limited, 23);
    assert_eq!(route.status_classes[3], 23);
    assert!(metrics
        .render_prometheus()
        .contains("gilgal_proxy_rate_limited_total{route=\"r\"} 23\n"));
    // A new table (a deploy) keeps the buckets: no free refill.
    let limits = RouteLimits {
        rate_limits: vec![per_minute(None, 5), per_minute(Some("/login"), 2)],
        ..RouteLimits::default()
    };
    let up2 = Upstream::start("up2").await;
    proxy
        .handle
        .replace(vec![limited_route(vec![up2.backend()], limits)])
        .unwrap();
    assert_eq!(get(&c, &proxy, "app.localhost", "/").await.status, 429);
}
