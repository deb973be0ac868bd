//! API integration tests: every endpoint's success and failures, through real HTTP, on SQLite
//! and on PostgreSQL (see `gilgal_testkit::backend_tests!`).

mod addons;
mod alerts;
mod auth;
mod certificates;
mod docs;
mod environments;
mod hardening;
mod matrix;
mod projects;
mod quotas;
mod teams;
mod tenancy;
mod tokens;
mod webhooks;

use gilgal_testkit::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Sends a raw request and returns status, request-id header and JSON body (Null if none).
pub async fn raw(
    server: &TestServer,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, String, Value) {
    let mut request = server
        .http()
        .request(method, format!("{}{}", server.url, path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    finish(request).await
}

/// Sends a prepared request and splits the answer.
pub async fn finish(request: reqwest::RequestBuilder) -> (StatusCode, String, Value) {
    let response = request.send().await.expect("request sent");
    let status = response.status();
    let request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response.text().await.expect("body");
    let json = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, request_id, json)
}

/// Asserts the one error shape, the status, the code, and that the body quotes the request id.
pub fn assert_error(answer: &(StatusCode, String, Value), status: StatusCode, code: &str) {
    let (got_status, request_id, body) = answer;
    assert_eq!(*got_status, status, "body: {body}");
    assert_eq!(body["error"]["code"], code, "body: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "message missing: {body}"
    );
    assert_eq!(
        body["error"]["request_id"],
        request_id.as_str(),
        "body: {body}"
    );
    assert!(!request_id.is_empty());
    assert_eq!(
        body.as_object().map(|o| o.len()),
        Some(1),
        "only `error` at top level: {body}"
    );
}
