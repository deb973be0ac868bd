//! TLS termination with SNI, HTTP→HTTPS redirects, and static-site routes.

use std::sync::Arc;

use bytes::Bytes;
use gilgal_proxy::{CertificatePem, ProxyHandle, ProxySettings, RouteSpec, RouteTarget};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::support::*;

fn self_signed(domain: &str) -> (CertificatePem, rustls::pki_types::CertificateDer<'static>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec![domain.to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    (
        CertificatePem {
            domain: domain.to_string(),
            cert_chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        },
        cert.der().clone(),
    )
}

fn connector(roots: &[rustls::pki_types::CertificateDer<'static>], alpn: &[&[u8]]) -> TlsConnector {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn terminates_tls_by_sni_over_http1_and_http2() {
    let up = Upstream::start("up").await;
    let handle = ProxyHandle::default();
    let (a_pem, a_der) = self_signed("a.test");
    let (b_pem, b_der) = self_signed("b.test");
    let (wild_pem, wild_der) = self_signed("*.apps.test");
    handle
        .set_certificates(vec![a_pem, b_pem, wild_pem])
        .unwrap();
    assert_eq!(
        handle.certificate_domains(),
        vec!["*.apps.test", "a.test", "b.test"]
    );
    let mut route = RouteSpec::upstream(
        "r",
        vec!["a.test".into(), "b.test".into(), "shop.apps.test".into()],
        vec![up.backend()],
    );
    route.hsts = Some("max-age=300; includeSubDomains".into());
    handle.replace(vec![route]).unwrap();
    let proxy = Proxy::serving(handle.clone(), true).await;
    let roots = [a_der.clone(), b_der.clone(), wild_der.clone()];

    for (name, expected_cert) in [
        ("a.test", &a_der),
        ("b.test", &b_der),
        ("shop.apps.test", &wild_der),
    ] {
        let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let tls = connector(&roots, &[b"http/1.1"])
            .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
            .await
            .unwrap();
        let (_, session) = tls.get_ref();
        assert_eq!(
            session.peer_certificates().unwrap()[0],
            *expected_cert,
            "SNI {name}"
        );
        assert_eq!(
            session.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get("/echo-headers")
            .header("host", name)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["strict-transport-security"],
            "max-age=300; includeSubDomains",
            "HSTS on every HTTPS answer"
        );
        let body = String::from_utf8(
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap();
        assert!(body.contains("x-forwarded-proto: https\n"), "{body}");
    }

    // HTTP/2 negotiated by ALPN.
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let tls = connector(&roots, &[b"h2"])
        .connect(ServerName::try_from("a.test").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = sender
        .send_request(
            Request::get("https://a.test/")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);

    // Unknown SNI: the handshake fails rather than serving a wrong certificate.
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let result = connector(&roots, &[b"http/1.1"])
        .connect(ServerName::try_from("other.test").unwrap(), tcp)
        .await;
    assert!(result.is_err());

    // Certificates are validated before anything is swapped in.
    let bad = CertificatePem {
        domain: "c.test".into(),
        cert_chain_pem: "junk".into(),
        key_pem: "junk".into(),
    };
    assert!(handle.set_certificates(vec![bad]).is_err());
    assert_eq!(handle.certificate_domains().len(), 3);
}

#[tokio::test]
async fn redirects_plain_http_to_https_per_route() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::with_settings(ProxySettings {
        https_port: 8443,
        ..ProxySettings::default()
    })
    .await;
    let mut secure = RouteSpec::upstream(
        "secure",
        vec!["secure.localhost".into()],
        vec![up.backend()],
    );
    secure.redirect_https = true;
    secure.hsts = Some("max-age=300".into());
    let plain = RouteSpec::upstream("plain", vec!["plain.localhost".into()], vec![up.backend()]);
    proxy.handle.replace(vec![secure, plain]).unwrap();
    let c = client();
    let a = get(&c, &proxy, "secure.localhost", "/cart?item=3").await;
    assert_eq!(a.status, 308);
    assert_eq!(
        a.header("location"),
        Some("https://secure.localhost:8443/cart?item=3")
    );
    assert_eq!(
        a.header("strict-transport-security"),
        None,
        "HSTS is only sent over HTTPS"
    );
    assert_eq!(get(&c, &proxy, "plain.localhost", "/").await.status, 200);
}

#[tokio::test]
async fn serves_static_sites_safely() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    std::fs::create_dir_all(site.join("assets")).unwrap();
    std::fs::write(site.join("index.html"), "<h1>home</h1>").unwrap();
    std::fs::write(site.join("assets/app.js"), "console.log(1)").unwrap();
    std::fs::write(site.join("assets/style.css"), "body{}").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "top secret").unwrap();

    let proxy = Proxy::start().await;
    let mut spa = RouteSpec::upstream("spa", vec!["spa.localhost".into()], vec![]);
    spa.target = RouteTarget::Static {
        root: site.clone(),
        fallback: Some("index.html".into()),
    };
    let mut docs = RouteSpec::upstream("docs", vec!["app.localhost".into()], vec![]);
    docs.path_prefix = Some("/docs".into());
    docs.target = RouteTarget::Static {
        root: site.clone(),
        fallback: None,
    };
    proxy.handle.replace(vec![spa, docs]).unwrap();
    let c = client();

    let home = get(&c, &proxy, "app.localhost", "/docs/").await;
    assert_eq!((home.status, home.body.as_str()), (200, "<h1>home</h1>"));
    assert!(home
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let js = get(&c, &proxy, "app.localhost", "/docs/assets/app.js").await;
    assert_eq!(js.status, 200);
    assert!(
        js.header("content-type").unwrap().contains("javascript"),
        "{:?}",
        js.headers
    );
    let css = get(&c, &proxy, "app.localhost", "/docs/assets/style.css").await;
    assert!(css.header("content-type").unwrap().starts_with("text/css"));
    let missing = get(&c, &proxy, "app.localhost", "/docs/nope.txt").await;
    assert_eq!(missing.status, 404);
    assert!(missing
        .body
        .contains(missing.header("x-request-id").unwrap()));
    // Outside the prefix: no route (the host has only the /docs route).
    assert_eq!(get(&c, &proxy, "app.localhost", "/other").await.status, 404);

    for attack in [
        "/docs/../secret.txt",
        "/docs/..%2fsecret.txt",
        "/docs/%2e%2e/secret.txt",
        "/docs/assets/../../secret.txt",
        "/docs//etc/passwd",
    ] {
        let a = raw_exchange(
            proxy.addr,
            format!("GET {attack} HTTP/1.1\r\nHost: app.localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert!(!a.contains("top secret"), "traversal {attack} leaked: {a}");
        assert!(!a.contains("root:"), "traversal {attack} leaked: {a}");
    }

    // SPA fallback serves index.html for unknown paths.
    let deep = get(&c, &proxy, "spa.localhost", "/some/client/route").await;
    assert_eq!((deep.status, deep.body.as_str()), (200, "<h1>home</h1>"));

    let post = Request::post(proxy.url("/docs/"))
        .header("host", "app.localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&c, post).await.status, 405);
}

/// Regression (hardening #4): the proxy runs as root, so a symlink in a static site that
/// leads out of the site's directory must never be followed, even one that was harmless when
/// the build checked it and was changed afterwards.
#[tokio::test]
async fn static_sites_never_follow_symlinks_out_of_their_directory() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    std::fs::create_dir_all(site.join("docs")).unwrap();
    std::fs::write(site.join("index.html"), "<h1>home</h1>").unwrap();
    std::fs::write(site.join("docs/index.html"), "<h1>docs</h1>").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "top secret").unwrap();
    // Links that stay inside are served.
    std::os::unix::fs::symlink("index.html", site.join("alias.html")).unwrap();
    std::os::unix::fs::symlink("docs", site.join("manual")).unwrap();

    let proxy = Proxy::start().await;
    let mut route = RouteSpec::upstream("site", vec!["site.localhost".into()], vec![]);
    route.target = RouteTarget::Static {
        root: site.clone(),
        fallback: None,
    };
    let mut spa = RouteSpec::upstream("spa", vec!["spa.localhost".into()], vec![]);
    spa.target = RouteTarget::Static {
        root: site.clone(),
        fallback: Some("alias.html".into()),
    };
    proxy.handle.replace(vec![route, spa]).unwrap();
    let c = client();
    let alias = get(&c, &proxy, "site.localhost", "/alias.html").await;
    assert_eq!((alias.status, alias.body.as_str()), (200, "<h1>home</h1>"));
    let manual = get(&c, &proxy, "site.localhost", "/manual/").await;
    assert_eq!(
        (manual.status, manual.body.as_str()),
        (200, "<h1>docs</h1>")
    );
    assert_eq!(
        get(&c, &proxy, "spa.localhost", "/deep/link").await.status,
        200
    );

    // Afterwards the links are replaced (atomically, as `ln -sfn` would) by ones leading out.
    let repoint = |target: &std::path::Path, link: &str| {
        let temp = site.join(format!(".{link}.new"));
        std::os::unix::fs::symlink(target, &temp).unwrap();
        std::fs::rename(&temp, site.join(link)).unwrap();
    };
    repoint(&dir.path().join("secret.txt"), "alias.html");
    repoint(std::path::Path::new("/etc"), "manual");
    std::os::unix::fs::symlink("/etc", site.join("host-etc")).unwrap();
    std::os::unix::fs::symlink("../secret.txt", site.join("docs/up.txt")).unwrap();
    for path in [
        "/alias.html",
        "/manual/passwd",
        "/manual/",
        "/host-etc/passwd",
        "/host-etc/",
        "/docs/up.txt",
        "/docs/%75p.txt",
    ] {
        let answer = get(&c, &proxy, "site.localhost", path).await;
        assert_eq!(answer.status, 404, "{path}: {}", answer.body);
        assert!(
            !answer.body.contains("top secret"),
            "{path}: {}",
            answer.body
        );
        assert!(!answer.body.contains("root:"), "{path}: {}", answer.body);
    }
    // A fallback that now leads out is not served either.
    let deep = get(&c, &proxy, "spa.localhost", "/deep/link").await;
    assert_eq!(deep.status, 404, "{}", deep.body);
    assert!(!deep.body.contains("top secret"));

    // Nor is a site whose directory itself was swapped for a link.
    let moved = dir.path().join("site-moved");
    std::fs::rename(&site, &moved).unwrap();
    std::os::unix::fs::symlink("/etc", &site).unwrap();
    let swapped = get(&c, &proxy, "site.localhost", "/passwd").await;
    assert_eq!(swapped.status, 404, "{}", swapped.body);
    assert!(!swapped.body.contains("root:"));
}
