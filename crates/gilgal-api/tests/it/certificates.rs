//! `/api/admin/certificates`: upload, validation, listing, deletion, and the proxy reload.

use gilgal_testkit::{backend_tests, Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::{assert_error, raw};

backend_tests!(certificates_are_validated_stored_and_loaded);

fn self_signed(names: &[&str]) -> (String, String) {
    let cert = rcgen::generate_simple_self_signed(
        names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
    )
    .unwrap();
    (cert.cert.pem(), cert.key_pair.serialize_pem())
}

async fn certificates_are_validated_stored_and_loaded(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, admin) = server.user("admin@example.com").await;
    let (_, dev) = server.user("dev@example.com").await;
    let (cert, key) = self_signed(&["shop.example.com"]);
    let body = json!({"cert_chain_pem": cert, "key_pem": key});

    let not_admin = raw(
        &server,
        Method::PUT,
        "/api/admin/certificates/shop.example.com",
        Some(&dev.access_token),
        Some(body.clone()),
    )
    .await;
    assert_error(&not_admin, StatusCode::FORBIDDEN, "admin_only");

    let stored = raw(
        &server,
        Method::PUT,
        "/api/admin/certificates/shop.example.com",
        Some(&admin.access_token),
        Some(body.clone()),
    )
    .await;
    assert_eq!(stored.0, StatusCode::OK, "{}", stored.2);
    assert_eq!(stored.2["domain"], "shop.example.com");
    assert!(
        !stored.2.to_string().contains("PRIVATE KEY"),
        "keys are never returned"
    );
    assert_eq!(
        server.proxy.certificate_domains(),
        vec!["shop.example.com".to_owned()]
    );

    // Wrong hostname, mismatched key, garbage, bad hostname: refused, nothing changes.
    let wrong_name = raw(
        &server,
        Method::PUT,
        "/api/admin/certificates/other.example.com",
        Some(&admin.access_token),
        Some(body.clone()),
    )
    .await;
    assert_error(
        &wrong_name,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    );
    let (_, other_key) = self_signed(&["shop.example.com"]);
    let mismatched = raw(
        &server,
        Method::PUT,
        "/api/admin/certificates/shop.example.com",
        Some(&admin.access_token),
        Some(json!({"cert_chain_pem": body["cert_chain_pem"], "key_pem": other_key})),
    )
    .await;
    assert_error(
        &mismatched,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    );
    let garbage = raw(
        &server,
        Method::PUT,
        "/api/admin/certificates/shop.example.com",
        Some(&admin.access_token),
        Some(json!({"cert_chain_pem": "not a pem", "key_pem": "nope"})),
    )
    .await;
    assert_error(
        &garbage,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    );
    let bad_host = raw(
        &server,
        Method::PUT,
        "/api/admin/certificates/..%2Fetc",
        Some(&admin.access_token),
        Some(body.clone()),
    )
    .await;
    assert_error(
        &bad_host,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    );
    let listed = raw(
        &server,
        Method::GET,
        "/api/admin/certificates",
        Some(&admin.access_token),
        None,
    )
    .await;
    assert_eq!(listed.2.as_array().unwrap().len(), 1);
    assert_eq!(listed.2[0]["source"], "upload");

    // A wildcard covers one label.
    let (wild_cert, wild_key) = self_signed(&["*.apps.example.com"]);
    let wildcard = raw(
        &server,
        Method::PUT,
        "/api/admin/certificates/*.apps.example.com",
        Some(&admin.access_token),
        Some(json!({"cert_chain_pem": wild_cert, "key_pem": wild_key})),
    )
    .await;
    assert_eq!(wildcard.0, StatusCode::OK, "{}", wildcard.2);
    assert_eq!(server.proxy.certificate_domains().len(), 2);

    let deleted = raw(
        &server,
        Method::DELETE,
        "/api/admin/certificates/shop.example.com",
        Some(&admin.access_token),
        None,
    )
    .await;
    assert_eq!(deleted.0, StatusCode::NO_CONTENT);
    assert_eq!(
        server.proxy.certificate_domains(),
        vec!["*.apps.example.com".to_owned()]
    );
    let again = raw(
        &server,
        Method::DELETE,
        "/api/admin/certificates/shop.example.com",
        Some(&admin.access_token),
        None,
    )
    .await;
    assert_error(&again, StatusCode::NOT_FOUND, "not_found");
}
