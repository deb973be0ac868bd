//! `/api/tokens`: personal API tokens.

use gilgal_testkit::{backend_tests, Backend, TestServer};
use gilgal_types::CreateApiTokenRequest;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::{assert_error, raw};

backend_tests!(api_token_lifecycle, api_token_validation_and_isolation);

async fn api_token_lifecycle(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (client, _) = server.user("ada@example.com").await;
    let created = client
        .create_token(&CreateApiTokenRequest {
            name: "ci".to_owned(),
            expires_in_days: Some(30),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(created.token.starts_with("gilgal_pat_"));
    assert!(created.token.starts_with(&created.info.prefix));
    assert!(created.info.expires_at.is_some());

    // Shown once: listing never includes the secret.
    let (status, _, listed) = raw(
        &server,
        Method::GET,
        "/api/tokens",
        Some(&created.token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert!(!listed.to_string().contains(&created.token));
    assert_eq!(listed[0]["name"], "ci");
    // Stored hashed: the secret is nowhere in the store's answer either.
    let owner = server
        .state
        .store()
        .authenticate_api_token(&gilgal_auth::opaque::digest(&created.token))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(owner.token_id, created.info.id);

    let as_token = server.client().with_token(created.token.clone());
    assert_eq!(
        as_token.me().await.unwrap().email.as_str(),
        "ada@example.com"
    );
    let listed_again = client.list_tokens().await.unwrap();
    assert!(listed_again[0].last_used_at.is_some(), "use is recorded");

    client.revoke_token(created.info.id).await.unwrap();
    assert_error(
        &raw(
            &server,
            Method::GET,
            "/api/auth/me",
            Some(&created.token),
            None,
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );
    assert!(client.list_tokens().await.unwrap().is_empty());

    // Logging out with an API token revokes that token.
    let second = client
        .create_token(&CreateApiTokenRequest {
            name: "cli".to_owned(),
            expires_in_days: None,
            ..Default::default()
        })
        .await
        .unwrap();
    server
        .client()
        .with_token(second.token.clone())
        .logout()
        .await
        .unwrap();
    assert_error(
        &raw(
            &server,
            Method::GET,
            "/api/auth/me",
            Some(&second.token),
            None,
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );
}

async fn api_token_validation_and_isolation(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, ada) = server.user("ada@example.com").await;
    let (bob_client, bob) = server.user("bob@example.com").await;
    for body in [
        json!({"name": ""}),
        json!({"name": "x".repeat(101)}),
        json!({"name": "a\nb"}),
        json!({"name": "ok", "expires_in_days": 0}),
        json!({"name": "ok", "expires_in_days": 99999}),
    ] {
        let answer = raw(
            &server,
            Method::POST,
            "/api/tokens",
            Some(&ada.access_token),
            Some(body),
        )
        .await;
        assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    }
    let bobs = bob_client
        .create_token(&CreateApiTokenRequest {
            name: "bob".to_owned(),
            expires_in_days: None,
            ..Default::default()
        })
        .await
        .unwrap();
    // Ada cannot see or revoke Bob's token: 404, exactly like a token that doesn't exist.
    let theirs = raw(
        &server,
        Method::DELETE,
        &format!("/api/tokens/{}", bobs.info.id),
        Some(&ada.access_token),
        None,
    )
    .await;
    assert_error(&theirs, StatusCode::NOT_FOUND, "not_found");
    let nonexistent = raw(
        &server,
        Method::DELETE,
        &format!("/api/tokens/{}", uuid::Uuid::new_v4()),
        Some(&ada.access_token),
        None,
    )
    .await;
    assert_eq!(
        theirs.2["error"]["message"],
        nonexistent.2["error"]["message"]
    );
    let malformed_id = raw(
        &server,
        Method::DELETE,
        "/api/tokens/not-a-uuid",
        Some(&ada.access_token),
        None,
    )
    .await;
    assert_error(&malformed_id, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(
        server
            .client()
            .with_token(bobs.token)
            .me()
            .await
            .unwrap()
            .email
            .as_str(),
        "bob@example.com"
    );
    drop(bob);
}
