//! The audit trail: every mutating call (POST, PUT, PATCH, DELETE) that reaches a route is
//! recorded after it completes — who (set by the `AuthUser` extractor, or by login/register on
//! success), from which address and credential, which route, the outcome, and facts a handler
//! adds (config var *names*, never values). Reads are not audited, nor calls to the webhook
//! receiver whose signature did not check out (no credential, no row).

use std::cell::RefCell;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use uuid::Uuid;

use crate::AppState;

/// Who made the call, as far as the request revealed.
#[derive(Debug, Clone, Default)]
struct AuditContext {
    actor_id: Option<Uuid>,
    actor_email: Option<String>,
    credential: Option<String>,
    details: serde_json::Map<String, serde_json::Value>,
    /// Set by routes without a user credential (the webhook receiver): the row is written
    /// only if the request then proved itself (`credential` set), so anonymous noise costs
    /// no write.
    needs_credential: bool,
}

tokio::task_local! {
    static CONTEXT: RefCell<AuditContext>;
}

/// Records the authenticated caller of the current request (no-op outside an audited one).
pub(crate) fn set_actor(id: Uuid, email: &str, credential: String) {
    let _ = CONTEXT.try_with(|context| {
        let mut context = context.borrow_mut();
        context.actor_id = Some(id);
        context.actor_email = Some(email.to_owned());
        context.credential = Some(credential);
    });
}

/// Makes the current request's audit row depend on it proving who sent it: routes that take
/// no user credential call this first and [`authenticated_by`] once a signature checks out.
pub(crate) fn only_if_authenticated() {
    let _ = CONTEXT.try_with(|context| context.borrow_mut().needs_credential = true);
}

/// Records the non-user credential that authenticated the current request (e.g.
/// `webhook:<id>` for a verified signature).
pub(crate) fn authenticated_by(credential: String) {
    let _ = CONTEXT.try_with(|context| context.borrow_mut().credential = Some(credential));
}

/// Adds a fact to the current request's audit row (never a secret value).
pub(crate) fn note(key: &str, value: serde_json::Value) {
    let _ = CONTEXT.try_with(|context| {
        context.borrow_mut().details.insert(key.to_owned(), value);
    });
}

/// Route middleware: runs the handler with an audit context, then appends the row for
/// mutating methods. A failure to write the row is logged, never turned into a failed call
/// that already happened.
pub(crate) async fn record(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let mutating = matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    if !mutating {
        return next.run(request).await;
    }
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| request.uri().path().to_owned());
    let action = format!("{} {route}", request.method());
    let path = request.uri().path().to_owned();
    let ip = crate::extract::ClientAddr::of(&state, request.extensions(), request.headers())
        .0
        .map(|ip| ip.to_string());
    let (context, response) = CONTEXT
        .scope(RefCell::new(AuditContext::default()), async {
            let response = next.run(request).await;
            let context = CONTEXT.with(|c| c.borrow().clone());
            (context, response)
        })
        .await;
    if context.needs_credential && context.credential.is_none() {
        return response;
    }
    let row = gilgal_store::AuditRecord {
        id: Uuid::new_v4(),
        at: time::OffsetDateTime::now_utc(),
        actor_id: context.actor_id,
        actor_email: context.actor_email,
        credential: context.credential,
        ip,
        action,
        path,
        status: response.status().as_u16(),
        request_id: crate::request_id::current(),
        details: serde_json::Value::Object(context.details).to_string(),
    };
    if let Err(e) = state.store().append_audit(&row).await {
        tracing::error!(error = %e, "could not append to the audit log");
    }
    response
}
