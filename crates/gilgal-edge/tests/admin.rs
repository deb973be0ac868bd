//! The edge process's contract with the control plane, over its real admin socket and real
//! listeners: connections wait until the edge is opened, route changes apply or are refused
//! whole, metrics and the access log reach the control plane, a removed backend drains, a
//! second edge cannot take the socket, and a shutdown stops accepting and removes the socket.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use gilgal_edge::{EdgeError, EdgeLink, EdgeListeners, EdgePaths};
use gilgal_proxy::{Backend, DrainOutcome, ProxySettings, RouteDiff, RouteSpec};
use tokio_util::sync::CancellationToken;

const HOST: &str = "app.localhost";

/// A backend answering every request with its name.
async fn backend(name: &'static str) -> SocketAddr {
    let app = axum::Router::new().fallback(move || async move { name });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn route(backend_addr: SocketAddr) -> RouteSpec {
    RouteSpec::upstream(
        "p/e",
        vec![HOST.to_owned()],
        vec![Backend::new("instance-1", backend_addr)],
    )
}

async fn get(proxy: SocketAddr) -> Result<(u16, String), reqwest::Error> {
    let response = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()?
        .get(format!("http://{proxy}/"))
        .header("host", HOST)
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

struct Running {
    paths: EdgePaths,
    proxy: SocketAddr,
    stop: CancellationToken,
    edge: tokio::task::JoinHandle<Result<(), EdgeError>>,
    _dir: tempfile::TempDir,
}

async fn start_edge() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let paths = EdgePaths::new(dir.path().join("edge"));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let edge = {
        let (paths, stop) = (paths.clone(), stop.clone());
        tokio::spawn(async move {
            let listeners = EdgeListeners {
                proxy: listener,
                tls: None,
            };
            gilgal_edge::run_edge(&paths, listeners, ProxySettings::default(), stop).await
        })
    };
    for _ in 0..200 {
        if paths.client().status().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Running {
        paths,
        proxy,
        stop,
        edge,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_drives_the_edge_over_its_admin_socket() {
    let edge = start_edge().await;
    let client = edge.paths.client();
    let link = EdgeLink::Process(client.clone());
    let status = client.status().await.expect("the edge answers");
    assert_eq!(status.protocol, gilgal_edge::EDGE_PROTOCOL);
    assert_eq!(status.proxy_addr, edge.proxy);
    assert_eq!(status.pid, std::process::id());
    assert_eq!(status.binary, gilgal_edge::binary_identity());
    assert_ne!(status.binary, "unknown");

    // Only root may reach the admin API.
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(edge.paths.dir()), 0o700);
    assert_eq!(mode(&edge.paths.admin_socket()), 0o600);

    // Until opened, a connection waits in the queue: neither refused nor answered.
    let app = backend("one").await;
    link.apply(RouteDiff {
        upsert: vec![route(app)],
        remove: vec![],
    })
    .await
    .unwrap();
    let early = tokio::spawn(get(edge.proxy));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!early.is_finished(), "answered before the edge was opened");
    client.open().await.unwrap();
    let (code, body) = early.await.unwrap().expect("served once opened");
    assert_eq!((code, body.as_str()), (200, "one"));

    // The access log streams to the control plane.
    let (sink, mut entries) = tokio::sync::mpsc::channel(16);
    link.set_access_log(sink);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(get(edge.proxy).await.unwrap().0, 200);
    let entry = tokio::time::timeout(Duration::from_secs(5), entries.recv())
        .await
        .expect("an access log entry arrives")
        .expect("the stream is open");
    assert_eq!((entry.route.as_str(), entry.status), ("p/e", 200));

    // A refused change changes nothing: a second route claiming the same host.
    let mut clash = route(app);
    clash.id = "p/other".to_owned();
    match link
        .apply(RouteDiff {
            upsert: vec![clash],
            remove: vec![],
        })
        .await
    {
        Err(EdgeError::Refused(reason)) => assert!(reason.contains(HOST), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let routes = link.routes().await.unwrap();
    assert_eq!(routes, vec![route(app)]);
    assert_eq!(get(edge.proxy).await.unwrap(), (200, "one".to_owned()));

    // Metrics count what was served.
    let metrics = link.metrics().await.unwrap();
    assert_eq!(metrics.route("p/e").map(|m| m.status_classes[1]), Some(3));

    // A removed backend drains.
    link.apply(RouteDiff {
        upsert: vec![],
        remove: vec!["p/e".to_owned()],
    })
    .await
    .unwrap();
    assert_eq!(
        link.wait_drained("instance-1", Duration::from_secs(5))
            .await
            .unwrap(),
        DrainOutcome::Drained
    );
    assert_eq!(get(edge.proxy).await.unwrap().0, 404);

    // A second edge cannot take the socket of one that answers.
    let second = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = gilgal_edge::run_edge(
        &edge.paths,
        EdgeListeners {
            proxy: second,
            tls: None,
        },
        ProxySettings::default(),
        CancellationToken::new(),
    )
    .await;
    assert!(
        matches!(&refused, Err(EdgeError::Start(reason)) if reason.contains("already answers")),
        "{refused:?}"
    );
    assert!(
        client.status().await.is_ok(),
        "the first edge still answers"
    );

    // Shutdown: the edge stops accepting, removes its socket and pid file, and returns.
    client.shutdown().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), edge.edge)
        .await
        .expect("the edge stops")
        .unwrap()
        .unwrap();
    assert!(!edge.paths.admin_socket().exists());
    assert!(!edge.paths.pid_file().exists());
    assert!(get(edge.proxy).await.is_err(), "nothing accepts any more");
    drop(edge.stop);
}
