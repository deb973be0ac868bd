//! `/api/auth/*`.

use std::time::Duration;

use gilgal_api::ApiConfig;
use gilgal_testkit::{backend_tests, Backend, TestServer, TEST_PASSWORD};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::{assert_error, finish, raw};

backend_tests!(
    register_first_user_is_admin,
    register_reveals_nothing_about_existing_accounts,
    concurrent_wrong_passwords_are_counted_before_hashing,
    password_hashing_is_bounded,
    login_limits_key_on_the_client_behind_a_trusted_proxy,
    register_rejects_bad_input,
    registration_can_be_closed,
    login_success_and_failures,
    me_requires_valid_access_token,
    refresh_rotates_and_reuse_revokes_family,
    refresh_token_expiry,
    logout_ends_session,
    request_ids_round_trip,
);

async fn register_first_user_is_admin(backend: Backend) {
    let server = TestServer::start(backend).await;
    let register = |email: &'static str, password: &'static str| {
        raw(
            &server,
            Method::POST,
            "/api/auth/register",
            None,
            Some(json!({"email": email, "password": password})),
        )
    };
    let first = register("Ada@Example.com", TEST_PASSWORD).await;
    assert_eq!(first.0, StatusCode::ACCEPTED, "{}", first.2);
    assert!(first.2.get("access_token").is_none(), "{}", first.2);
    let ada = server
        .client()
        .login(&gilgal_types::LoginRequest {
            email: "ada@example.com".parse().unwrap(),
            password: TEST_PASSWORD.to_owned(),
        })
        .await
        .unwrap();
    assert_eq!(ada.user.email.as_str(), "ada@example.com");
    assert!(ada.user.is_admin);
    assert_eq!(ada.token_type, "Bearer");
    assert!(ada.refresh_token.starts_with("gilgal_rt_"));

    let (_, bob) = server.user("bob@example.com").await;
    assert!(!bob.user.is_admin);
    assert_eq!(server.state.store().user_count().await.unwrap(), 2);
    // The stored hash is argon2id at OWASP's minimum or above.
    let creds = server
        .state
        .store()
        .user_credentials(&"ada@example.com".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(
        creds
            .password_hash
            .starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{}",
        creds.password_hash
    );
}

async fn register_reveals_nothing_about_existing_accounts(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.user("ada@example.com").await;
    let register = |email: &'static str| {
        raw(
            &server,
            Method::POST,
            "/api/auth/register",
            None,
            Some(json!({"email": email, "password": "another password 123"})),
        )
    };
    let taken = register("ADA@example.com").await;
    let new = register("carol@example.com").await;
    assert_eq!(taken.0, new.0, "{} / {}", taken.2, new.2);
    assert_eq!(taken.2, new.2);
    assert_eq!(taken.0, StatusCode::ACCEPTED);
    // The existing account is untouched: its password still works, the new one does not.
    let client = server.client();
    let login = |password: &str| gilgal_types::LoginRequest {
        email: "ada@example.com".parse().unwrap(),
        password: password.to_owned(),
    };
    assert!(client.login(&login(TEST_PASSWORD)).await.is_ok());
    assert_eq!(
        client
            .login(&login("another password 123"))
            .await
            .unwrap_err()
            .code(),
        Some("invalid_credentials")
    );
    assert_eq!(server.state.store().user_count().await.unwrap(), 2);
}

async fn register_rejects_bad_input(backend: Backend) {
    let server = TestServer::start(backend).await;
    let short = raw(
        &server,
        Method::POST,
        "/api/auth/register",
        None,
        Some(json!({"email": "a@example.com", "password": "short"})),
    )
    .await;
    assert_error(&short, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    let bad_email = raw(
        &server,
        Method::POST,
        "/api/auth/register",
        None,
        Some(json!({"email": "not-an-email", "password": TEST_PASSWORD})),
    )
    .await;
    assert_error(
        &bad_email,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    );
    let unknown_field = raw(
        &server,
        Method::POST,
        "/api/auth/register",
        None,
        Some(json!({"email": "a@example.com", "password": TEST_PASSWORD, "is_admin": true})),
    )
    .await;
    assert_error(
        &unknown_field,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    );

    let malformed = finish(
        server
            .http()
            .post(format!("{}/api/auth/register", server.url))
            .header("content-type", "application/json")
            .body("{\"email\": "),
    )
    .await;
    assert_error(&malformed, StatusCode::BAD_REQUEST, "malformed_json");
    let not_json = finish(
        server
            .http()
            .post(format!("{}/api/auth/register", server.url))
            .header("content-type", "text/plain")
            .body("hello"),
    )
    .await;
    assert_error(
        &not_json,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    let huge = format!(
        "{{\"email\":\"a@example.com\",\"password\":\"{}\"}}",
        "x".repeat(2 * 1024 * 1024)
    );
    let oversized = finish(
        server
            .http()
            .post(format!("{}/api/auth/register", server.url))
            .header("content-type", "application/json")
            .body(huge),
    )
    .await;
    assert_error(
        &oversized,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    // Nothing was created by any of these.
    assert_eq!(server.state.store().user_count().await.unwrap(), 0);
}

async fn registration_can_be_closed(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (admin, _) = server.user("admin@example.com").await;
    let (bob, bob_pair) = server.user("bob@example.com").await;
    let forbidden = raw(
        &server,
        Method::PUT,
        "/api/admin/settings",
        Some(&bob_pair.access_token),
        Some(json!({"registration_open": false})),
    )
    .await;
    assert_error(&forbidden, StatusCode::FORBIDDEN, "admin_only");
    drop(bob);
    admin
        .put_settings(&gilgal_types::InstanceSettings {
            registration_open: false,
        })
        .await
        .unwrap();
    let closed = raw(
        &server,
        Method::POST,
        "/api/auth/register",
        None,
        Some(json!({"email": "carol@example.com", "password": TEST_PASSWORD})),
    )
    .await;
    assert_error(&closed, StatusCode::FORBIDDEN, "registration_closed");
    admin
        .put_settings(&gilgal_types::InstanceSettings {
            registration_open: true,
        })
        .await
        .unwrap();
    server.user("carol@example.com").await;
}

async fn login_success_and_failures(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.user("ada@example.com").await;
    let ok = raw(
        &server,
        Method::POST,
        "/api/auth/login",
        None,
        Some(json!({"email": "ada@example.com", "password": TEST_PASSWORD})),
    )
    .await;
    assert_eq!(ok.0, StatusCode::OK, "{}", ok.2);
    let access = ok.2["access_token"].as_str().unwrap();
    let me = raw(&server, Method::GET, "/api/auth/me", Some(access), None).await;
    assert_eq!(me.2["email"], "ada@example.com");

    let wrong = raw(
        &server,
        Method::POST,
        "/api/auth/login",
        None,
        Some(json!({"email": "ada@example.com", "password": "wrong password!"})),
    )
    .await;
    assert_error(&wrong, StatusCode::UNAUTHORIZED, "invalid_credentials");
    let unknown = raw(
        &server,
        Method::POST,
        "/api/auth/login",
        None,
        Some(json!({"email": "nobody@example.com", "password": TEST_PASSWORD})),
    )
    .await;
    assert_error(&unknown, StatusCode::UNAUTHORIZED, "invalid_credentials");
    assert_eq!(
        wrong.2["error"]["message"], unknown.2["error"]["message"],
        "no account enumeration"
    );
    let malformed = finish(
        server
            .http()
            .post(format!("{}/api/auth/login", server.url))
            .header("content-type", "application/json")
            .body("{\"email\": \"a@example.com\","),
    )
    .await;
    assert_error(&malformed, StatusCode::BAD_REQUEST, "malformed_json");
}

async fn me_requires_valid_access_token(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, pair) = server.user("ada@example.com").await;
    assert_error(
        &raw(&server, Method::GET, "/api/auth/me", None, None).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    assert_error(
        &raw(&server, Method::GET, "/api/auth/me", Some("garbage"), None).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );
    let basic = finish(
        server
            .http()
            .get(format!("{}/api/auth/me", server.url))
            .header("authorization", "Basic YTpi"),
    )
    .await;
    assert_error(&basic, StatusCode::UNAUTHORIZED, "unauthenticated");

    // An expired token signed with the real key is refused as expired.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = server.state.codec().verify(&pair.access_token).unwrap();
    let expired = server
        .state
        .codec()
        .issue(claims.sub, claims.sid, now - 3600, 60)
        .unwrap();
    assert_error(
        &raw(&server, Method::GET, "/api/auth/me", Some(&expired), None).await,
        StatusCode::UNAUTHORIZED,
        "token_expired",
    );
    // A token signed with another key is refused.
    let foreign =
        gilgal_auth::access::AccessTokenCodec::new(&gilgal_auth::keys::SigningKey::generate())
            .issue(claims.sub, claims.sid, now, 600)
            .unwrap();
    assert_error(
        &raw(&server, Method::GET, "/api/auth/me", Some(&foreign), None).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );
}

async fn refresh_rotates_and_reuse_revokes_family(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, first) = server.user("ada@example.com").await;
    let client = server.client();
    let second = client.refresh(&first.refresh_token).await.unwrap();
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_eq!(
        client
            .clone()
            .with_token(second.access_token.clone())
            .me()
            .await
            .unwrap()
            .email
            .as_str(),
        "ada@example.com"
    );

    // Reusing the spent token is treated as theft: 401, and the whole family is revoked.
    let reuse = raw(
        &server,
        Method::POST,
        "/api/auth/refresh",
        None,
        Some(json!({"refresh_token": first.refresh_token})),
    )
    .await;
    assert_error(&reuse, StatusCode::UNAUTHORIZED, "refresh_token_reused");
    let successor = raw(
        &server,
        Method::POST,
        "/api/auth/refresh",
        None,
        Some(json!({"refresh_token": second.refresh_token})),
    )
    .await;
    assert_error(&successor, StatusCode::UNAUTHORIZED, "session_revoked");
    assert_error(
        &raw(
            &server,
            Method::GET,
            "/api/auth/me",
            Some(&second.access_token),
            None,
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "session_revoked",
    );

    // A fresh login is a new, unaffected session.
    let again = client
        .login(&gilgal_types::LoginRequest {
            email: "ada@example.com".parse().unwrap(),
            password: TEST_PASSWORD.to_owned(),
        })
        .await
        .unwrap();
    client.refresh(&again.refresh_token).await.unwrap();

    let unknown = raw(
        &server,
        Method::POST,
        "/api/auth/refresh",
        None,
        Some(json!({"refresh_token": "gilgal_rt_nope"})),
    )
    .await;
    assert_error(&unknown, StatusCode::UNAUTHORIZED, "invalid_refresh_token");
    let missing = raw(
        &server,
        Method::POST,
        "/api/auth/refresh",
        None,
        Some(json!({})),
    )
    .await;
    assert_error(
        &missing,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    );
}

async fn refresh_token_expiry(backend: Backend) {
    let config = ApiConfig {
        refresh_token_ttl: Duration::ZERO,
        ..ApiConfig::default()
    };
    let server = TestServer::start_with(backend, config).await;
    let (_, pair) = server.user("ada@example.com").await;
    let expired = raw(
        &server,
        Method::POST,
        "/api/auth/refresh",
        None,
        Some(json!({"refresh_token": pair.refresh_token})),
    )
    .await;
    assert_error(&expired, StatusCode::UNAUTHORIZED, "refresh_token_expired");
}

async fn logout_ends_session(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (client, pair) = server.user("ada@example.com").await;
    client.logout().await.unwrap();
    assert_error(
        &raw(
            &server,
            Method::GET,
            "/api/auth/me",
            Some(&pair.access_token),
            None,
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "session_revoked",
    );
    let refresh = raw(
        &server,
        Method::POST,
        "/api/auth/refresh",
        None,
        Some(json!({"refresh_token": pair.refresh_token})),
    )
    .await;
    assert_error(&refresh, StatusCode::UNAUTHORIZED, "session_revoked");
    assert_error(
        &raw(&server, Method::POST, "/api/auth/logout", None, None).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
}

async fn request_ids_round_trip(backend: Backend) {
    let server = TestServer::start(backend).await;
    let given = finish(
        server
            .http()
            .get(format!("{}/api/auth/me", server.url))
            .header("x-request-id", "trace-abc.123"),
    )
    .await;
    assert_eq!(given.1, "trace-abc.123");
    assert_error(&given, StatusCode::UNAUTHORIZED, "unauthenticated");
    // An id that could forge log lines is replaced by a fresh one.
    let forged = finish(
        server
            .http()
            .get(format!("{}/health", server.url))
            .header("x-request-id", "a b\"c"),
    )
    .await;
    assert_ne!(forged.1, "a b\"c");
    assert_eq!(forged.1.len(), 36);
}

async fn login_as(
    server: &TestServer,
    email: &str,
    password: &str,
    forwarded_for: Option<&str>,
) -> (StatusCode, String, serde_json::Value) {
    let mut request = server
        .http()
        .post(format!("{}/api/auth/login", server.url))
        .json(&json!({"email": email, "password": password}));
    if let Some(address) = forwarded_for {
        request = request.header("x-forwarded-for", address);
    }
    finish(request).await
}

async fn concurrent_wrong_passwords_are_counted_before_hashing(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.user("ada@example.com").await;
    let attempts = (0..40).map(|_| login_as(&server, "ada@example.com", "wrong password!", None));
    let answers = futures_util::future::join_all(attempts).await;
    let checked = answers
        .iter()
        .filter(|a| a.0 == StatusCode::UNAUTHORIZED)
        .count();
    let refused = answers
        .iter()
        .filter(|a| a.0 == StatusCode::TOO_MANY_REQUESTS)
        .count();
    // Five free attempts and the sixth, which earns the first wait (1 s); nothing more is
    // hashed. (A burst slower than that second lets a seventh through, which earns 2 s.)
    assert!((6..=7).contains(&checked), "{checked} checked: {answers:?}");
    assert_eq!(checked + refused, 40, "{answers:?}");
}

async fn password_hashing_is_bounded(backend: Backend) {
    let server = TestServer::start_with(
        backend,
        ApiConfig {
            password_hashes_at_once: 1,
            password_hash_wait: Duration::from_millis(1),
            ..ApiConfig::default()
        },
    )
    .await;
    // Different accounts, so no per-account wait applies; all arrive at once.
    let server = &server;
    let attempts = (0..12).map(|i| async move {
        let email = format!("nobody{i}@example.com");
        login_as(server, &email, "whatever password", None).await
    });
    let answers = futures_util::future::join_all(attempts).await;
    let busy: Vec<_> = answers
        .iter()
        .filter(|a| a.0 == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert!(!busy.is_empty(), "every hash ran at once: {answers:?}");
    for answer in &busy {
        assert_error(answer, StatusCode::SERVICE_UNAVAILABLE, "server_busy");
    }
    assert!(
        answers
            .iter()
            .all(|a| a.0 == StatusCode::SERVICE_UNAVAILABLE || a.0 == StatusCode::UNAUTHORIZED),
        "{answers:?}"
    );
    // Turned-away attempts were not failures: the same address is not slowed by them.
    let answer = login_as(server, "someone@example.com", "whatever password", None).await;
    assert_error(&answer, StatusCode::UNAUTHORIZED, "invalid_credentials");
}

async fn login_limits_key_on_the_client_behind_a_trusted_proxy(backend: Backend) {
    let server = TestServer::start_with(
        backend,
        ApiConfig {
            trusted_proxies: vec!["127.0.0.1/32".parse().unwrap()],
            ..ApiConfig::default()
        },
    )
    .await;
    let mallory = Some("198.51.100.7, 203.0.113.9");
    for i in 0..21 {
        let answer = login_as(
            &server,
            &format!("nobody{i}@example.com"),
            "whatever password",
            mallory,
        )
        .await;
        assert_error(&answer, StatusCode::UNAUTHORIZED, "invalid_credentials");
    }
    let answer = login_as(&server, "someone@example.com", "whatever password", mallory).await;
    assert_error(&answer, StatusCode::TOO_MANY_REQUESTS, "too_many_attempts");
    // Another client behind the same proxy is not slowed by Mallory's failures; the address
    // that counts is the right-most one the proxy added, not what the client claimed.
    let answer = login_as(
        &server,
        "someone@example.com",
        "whatever password",
        Some("198.51.100.7, 203.0.113.10"),
    )
    .await;
    assert_error(&answer, StatusCode::UNAUTHORIZED, "invalid_credentials");
}
