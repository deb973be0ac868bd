//! Custom domains of an environment.

use super::*;

/// Routes of this resource.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_domains, add_domain))
        .routes(routes!(remove_domain))
}

/// The environment's custom domains (besides its default hostname).
#[utoipa::path(get, path = "/api/environments/{id}/domains", tag = "domains",
    params(("id" = String, Path, description = "Environment id")),
    responses(
        (status = 200, description = "Custom domains", body = Vec<Domain>),
        (status = 404, description = "No such environment", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn list_domains(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Vec<Domain>>, ApiError> {
    let environment = owned_environment(&state, &caller, &id).await?;
    let domains = state.store().domains(environment.id).await?;
    Ok(Json(
        domains
            .into_iter()
            .map(|hostname| Domain {
                hostname,
                environment_id: environment.id,
            })
            .collect(),
    ))
}

/// A custom domain, validated: a real hostname, not under the platform's base domain (those
/// belong to other apps), not already attached anywhere.
fn custom_domain(state: &AppState, raw: &str) -> Result<String, ApiError> {
    let hostname: gilgal_types::Hostname = raw
        .trim()
        .trim_end_matches('.')
        .to_ascii_lowercase()
        .parse()
        .map_err(|e: gilgal_types::NameError| ApiError::invalid(e.to_string()))?;
    let hostname = hostname.as_str().to_owned();
    let base = state.platform().base_domain().to_ascii_lowercase();
    if hostname == base || hostname.ends_with(&format!(".{base}")) {
        return Err(ApiError::invalid(format!(
            "{hostname} is under the platform's base domain {base}, where apps get their default hostnames; use a domain you own"
        )));
    }
    if !hostname.contains('.') {
        return Err(ApiError::invalid(format!(
            "{hostname} is not a fully qualified domain name"
        )));
    }
    Ok(hostname)
}

/// Serve the environment at a domain you point at this machine (DNS A/CNAME); routed at once.
#[utoipa::path(post, path = "/api/environments/{id}/domains", tag = "domains",
    params(("id" = String, Path, description = "Environment id")),
    request_body = DomainRequest,
    responses(
        (status = 201, description = "Attached and routed", body = Domain),
        (status = 404, description = "No such environment", body = ErrorBody),
        (status = 409, description = "Attached to an environment already", body = ErrorBody),
        (status = 422, description = "Not a usable hostname", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn add_domain(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    body: JsonBody<DomainRequest>,
) -> Result<(StatusCode, Json<Domain>), ApiError> {
    let environment = owned_environment(&state, &caller, &id).await?;
    let body = body.parse()?;
    let hostname = custom_domain(&state, &body.hostname)?;
    state
        .store()
        .add_domain(environment.id, &hostname)
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => ApiError::new(
                StatusCode::CONFLICT,
                "domain_taken",
                format!("{hostname} is already attached to an environment"),
            ),
            other => other.into(),
        })?;
    state
        .changes()
        .refresh_route(&environment)
        .await
        .map_err(deploy_error)?;
    Ok((
        StatusCode::CREATED,
        Json(Domain {
            hostname,
            environment_id: environment.id,
        }),
    ))
}

/// Stop serving the environment at a custom domain.
#[utoipa::path(delete, path = "/api/environments/{id}/domains/{hostname}", tag = "domains",
    params(("id" = String, Path, description = "Environment id"), ("hostname" = String, Path, description = "The domain", pattern = "^(\\*\\.)?(([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\\.)+[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?|[Ll][Oo][Cc][Aa][Ll][Hh][Oo][Ss][Tt])\\.*$", max_length = 253)),
    responses(
        (status = 204, description = "Detached"),
        (status = 404, description = "No such environment or domain", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn remove_domain(
    State(state): State<AppState>,
    caller: AuthUser,
    Path((id, hostname)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let environment = owned_environment(&state, &caller, &id).await?;
    state
        .store()
        .remove_domain(environment.id, &hostname.to_ascii_lowercase())
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::not_found("domain"),
            other => other.into(),
        })?;
    state
        .changes()
        .refresh_route(&environment)
        .await
        .map_err(deploy_error)?;
    Ok(StatusCode::NO_CONTENT)
}
