//! Config vars and secrets of an environment: read masked, change (sealing secrets) as a
//! new release.

use super::*;

/// Routes of this resource.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_config, change_config))
}

fn mask(records: Vec<ConfigVarRecord>) -> Vec<ConfigVar> {
    records
        .into_iter()
        .map(|r| ConfigVar {
            value: (!r.secret).then_some(r.value),
            name: r.name,
            secret: r.secret,
        })
        .collect()
}

/// The environment's config vars; secret values are never returned.
#[utoipa::path(get, path = "/api/environments/{id}/config", tag = "config",
    params(("id" = String, Path, description = "Environment id")),
    responses(
        (status = 200, description = "Config vars by name", body = Vec<ConfigVar>),
        (status = 404, description = "No such environment", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn get_config(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Vec<ConfigVar>>, ApiError> {
    let environment = owned_environment(&state, &caller, &id).await?;
    let records = state.store().config_vars(environment.id).await?;
    Ok(Json(mask(records)))
}

/// Set, set as secret, or unset config vars. When something is live, the change becomes a new
/// release rolled out with zero downtime (no build).
#[utoipa::path(patch, path = "/api/environments/{id}/config", tag = "config",
    params(("id" = String, Path, description = "Environment id")),
    request_body = ConfigUpdate,
    responses(
        (status = 200, description = "Changed; `deployment` rolls it out", body = ConfigChanged),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 422, description = "Invalid name or value", body = ErrorBody),
        (status = 404, description = "No such environment", body = ErrorBody),
        (status = 429, description = "Deploy quota reached (or this credential's request budget); see Retry-After", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn change_config(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    body: JsonBody<ConfigUpdate>,
) -> Result<Json<ConfigChanged>, ApiError> {
    let environment = owned_environment(&state, &caller, &id).await?;
    let body = body.parse()?;
    let edits: Vec<ConfigEdit> = body
        .set
        .iter()
        .map(|(n, v)| (n, v, false))
        .chain(body.set_secret.iter().map(|(n, v)| (n, v, true)))
        .map(|(name, value, secret)| ConfigEdit::Set {
            name: name.clone(),
            value: value.clone(),
            secret,
        })
        .chain(body.unset.iter().cloned().map(ConfigEdit::Unset))
        .collect();
    // Names only: values (secret or not) never enter the audit log.
    crate::audit::note(
        "set",
        serde_json::json!(body.set.keys().collect::<Vec<_>>()),
    );
    crate::audit::note(
        "set_secret",
        serde_json::json!(body.set_secret.keys().collect::<Vec<_>>()),
    );
    crate::audit::note("unset", serde_json::json!(body.unset));
    let deployment = state
        .changes()
        .change_config(&environment, &edits)
        .await
        .map_err(deploy_error)?;
    let records = state.store().config_vars(environment.id).await?;
    Ok(Json(ConfigChanged {
        vars: mask(records),
        deployment,
    }))
}
