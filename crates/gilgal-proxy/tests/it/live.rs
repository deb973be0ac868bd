//! Live reconfiguration: swaps under load, drains, WebSockets across swaps.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use gilgal_proxy::{Backend, DrainOutcome, RouteDiff, RouteSpec};
use http_body_util::Full;
use hyper::Request;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::*;

fn app_route(backends: Vec<Backend>) -> RouteSpec {
    RouteSpec::upstream("app", vec!["app.localhost".into()], backends)
}

#[tokio::test]
async fn swaps_routes_under_continuous_load_without_failures() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start().await;
    proxy
        .handle
        .replace(vec![app_route(vec![blue.backend()])])
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..6 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let url = proxy.url("/slow?ms=5");
        let c = client();
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let req = Request::get(url.as_str())
                    .header("host", "app.localhost")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                match c.request(req).await {
                    Ok(r) if r.status() == 200 => {
                        use http_body_util::BodyExt;
                        match r.into_body().collect().await {
                            Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    // Swap back and forth (whole-table replace and diffs alternately), measuring how soon the
    // new table is in effect.
    let c = client();
    let mut worst_visible = Duration::ZERO;
    for i in 0..40 {
        let (next, name) = if i % 2 == 0 {
            (&green, "green")
        } else {
            (&blue, "blue")
        };
        let started = Instant::now();
        if i % 4 < 2 {
            proxy
                .handle
                .replace(vec![app_route(vec![next.backend()])])
                .unwrap();
        } else {
            proxy
                .handle
                .apply(RouteDiff {
                    upsert: vec![app_route(vec![next.backend()])],
                    remove: vec![],
                })
                .unwrap();
        }
        let swap_took = started.elapsed();
        assert!(
            swap_took < Duration::from_millis(100),
            "swap took {swap_took:?}"
        );
        // The swap is one atomic store: the very next request already sees the new table.
        assert_eq!(get(&c, &proxy, "app.localhost", "/").await.body, name);
        worst_visible = worst_visible.max(swap_took);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!(
        "{ok} requests during 40 swaps, {failed} failed, swap visible within {worst_visible:?}"
    );
    assert!(ok > 200);
    assert_eq!(failed, 0);
}

#[tokio::test]
async fn removed_instances_drain_then_report_drained() {
    let old = Upstream::start("old").await;
    let new = Upstream::start("new").await;
    let proxy = Proxy::start().await;
    proxy
        .handle
        .replace(vec![app_route(vec![old.backend()])])
        .unwrap();
    let c = client();
    let in_flight = {
        let c = c.clone();
        let url = proxy.url("/slow?ms=600");
        tokio::spawn(async move {
            let req = Request::get(url)
                .header("host", "app.localhost")
                .body(Full::new(Bytes::new()))
                .unwrap();
            send(&c, req).await
        })
    };
    let h = proxy.handle.clone();
    assert!(eventually(Duration::from_secs(2), || h.in_flight("old") == 1).await);
    assert_eq!(
        proxy
            .handle
            .wait_drained("old", Duration::from_millis(10))
            .await,
        DrainOutcome::StillRouted
    );
    proxy
        .handle
        .replace(vec![app_route(vec![new.backend()])])
        .unwrap();
    // New requests go to the new instance while the old one finishes its request.
    for _ in 0..5 {
        assert_eq!(get(&c, &proxy, "app.localhost", "/").await.body, "new");
    }
    let started = Instant::now();
    let outcome = proxy
        .handle
        .wait_drained("old", Duration::from_secs(5))
        .await;
    assert_eq!(outcome, DrainOutcome::Drained);
    assert!(started.elapsed() < Duration::from_secs(2));
    let answer = in_flight.await.unwrap();
    assert_eq!((answer.status, answer.body.as_str()), (200, "old"));
    assert_eq!(old.requests.load(Ordering::SeqCst), 1);
    assert_eq!(
        proxy
            .handle
            .wait_drained("never-seen", Duration::from_millis(10))
            .await,
        DrainOutcome::Drained
    );
}

#[tokio::test]
async fn drain_deadline_answers_504_instead_of_resetting() {
    let old = Upstream::start("old").await;
    let new = Upstream::start("new").await;
    let proxy = Proxy::start().await;
    proxy
        .handle
        .replace(vec![app_route(vec![old.backend()])])
        .unwrap();
    let c = client();
    let stuck = {
        let c = c.clone();
        let url = proxy.url("/slow?ms=10000");
        tokio::spawn(async move {
            let req = Request::get(url)
                .header("host", "app.localhost")
                .body(Full::new(Bytes::new()))
                .unwrap();
            send(&c, req).await
        })
    };
    let h = proxy.handle.clone();
    assert!(eventually(Duration::from_secs(2), || h.in_flight("old") == 1).await);
    proxy
        .handle
        .replace(vec![app_route(vec![new.backend()])])
        .unwrap();
    let started = Instant::now();
    let outcome = proxy
        .handle
        .wait_drained("old", Duration::from_millis(300))
        .await;
    assert_eq!(outcome, DrainOutcome::DeadlineExceeded { cut: 1 });
    assert!(started.elapsed() < Duration::from_secs(3));
    let answer = stuck.await.unwrap();
    assert_eq!(answer.status, 504);
    assert!(answer.body.contains(answer.header("x-request-id").unwrap()));
    assert_eq!(proxy.handle.in_flight("old"), 0);
}

#[tokio::test]
async fn websockets_upgrade_and_survive_route_swaps() {
    let ws_a = start_ws_echo("a").await;
    let ws_b = start_ws_echo("b").await;
    let proxy = Proxy::start().await;
    proxy
        .handle
        .replace(vec![app_route(vec![Backend::new("ws-a", ws_a)])])
        .unwrap();

    let connect = || async {
        let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let mut req = "ws://app.localhost/socket".into_client_request().unwrap();
        req.headers_mut()
            .insert("host", "app.localhost".parse().unwrap());
        let (ws, resp) = tokio_tungstenite::client_async(req, stream).await.unwrap();
        assert_eq!(resp.status(), 101);
        ws
    };
    let mut ws = connect().await;
    ws.send("hello".into()).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().to_text().unwrap(),
        "a:hello"
    );
    assert_eq!(
        proxy
            .handle
            .metrics()
            .route("app")
            .unwrap()
            .open_connections,
        1
    );

    // Swap the route to another instance: the open socket keeps talking to "a"...
    proxy
        .handle
        .replace(vec![app_route(vec![Backend::new("ws-b", ws_b)])])
        .unwrap();
    for i in 0..20 {
        ws.send(format!("m{i}").into()).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap().to_text().unwrap(),
            format!("a:m{i}")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...while new sockets go to "b".
    let mut ws2 = connect().await;
    ws2.send("hi".into()).await.unwrap();
    assert_eq!(
        ws2.next().await.unwrap().unwrap().to_text().unwrap(),
        "b:hi"
    );

    // The old instance counts as in flight until the socket closes, then drains.
    assert_eq!(proxy.handle.in_flight("ws-a"), 1);
    ws.close(None).await.unwrap();
    drop(ws);
    assert_eq!(
        proxy
            .handle
            .wait_drained("ws-a", Duration::from_secs(5))
            .await,
        DrainOutcome::Drained
    );

    // A drain deadline closes a tunnel whose client never answers the 1001 Close frame.
    proxy
        .handle
        .replace(vec![app_route(vec![Backend::new("ws-a", ws_a)])])
        .unwrap();
    let mut ws3 = connect().await;
    ws3.send("x".into()).await.unwrap();
    assert_eq!(ws3.next().await.unwrap().unwrap().to_text().unwrap(), "a:x");
    proxy
        .handle
        .replace(vec![app_route(vec![Backend::new("ws-b", ws_b)])])
        .unwrap();
    let outcome = proxy
        .handle
        .wait_drained("ws-a", Duration::from_millis(200))
        .await;
    assert_eq!(outcome, DrainOutcome::DeadlineExceeded { cut: 1 });
    let end = tokio::time::timeout(Duration::from_secs(3), ws3.next())
        .await
        .unwrap();
    assert!(
        !matches!(end, Some(Ok(m)) if m.is_text()),
        "tunnel still open after the drain deadline"
    );
    drop(ws2);
}
