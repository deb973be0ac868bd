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

fn check_var_name(name: &str) -> Result<(), ApiError> {
    let valid = !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid {
        return Err(ApiError::invalid(format!(
            "config var name {name:?} is invalid: use letters, digits and _, not starting with a digit"
        )));
    }
    if name == "PORT" || name.starts_with("GILGAL_") {
        return Err(ApiError::invalid(format!(
            "{name} is set by Gilgal for every instance and cannot be configured"
        )));
    }
    Ok(())
}

/// Set, set as secret, or unset config vars. When something is live, the change becomes a new
/// release rolled out with zero downtime (no build).
#[utoipa::path(patch, path = "/api/environments/{id}/config", tag = "config",
    params(("id" = String, Path, description = "Environment id")),
    request_body = ConfigUpdate,
    responses(
        (status = 200, description = "Changed; `deployment` rolls it out", body = ConfigChanged),
        (status = 400, description = "Invalid name or value", body = ErrorBody),
        (status = 404, description = "No such environment", body = ErrorBody),
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
    let mut changes = Vec::new();
    for (name, value, secret) in body
        .set
        .iter()
        .map(|(n, v)| (n, v, false))
        .chain(body.set_secret.iter().map(|(n, v)| (n, v, true)))
    {
        check_var_name(name)?;
        // Characters, as the OpenAPI document's maxLength counts them.
        if value.chars().count() > MAX_CONFIG_VALUE_BYTES {
            return Err(ApiError::invalid(format!(
                "the value of {name} is longer than {} KiB",
                MAX_CONFIG_VALUE_BYTES / 1024
            )));
        }
        if value.contains('\0') {
            return Err(ApiError::invalid(format!(
                "the value of {name} contains a NUL byte"
            )));
        }
        let stored = if secret {
            state
                .deployer()
                .vault()
                .seal(environment.id, name, value)
                .await
                .map_err(|e| ApiError::internal(&e))?
        } else {
            value.clone()
        };
        changes.push(ConfigChange::Set(ConfigVarRecord {
            name: name.clone(),
            value: stored,
            secret,
        }));
    }
    for name in &body.unset {
        check_var_name(name)?;
        changes.push(ConfigChange::Unset(name.clone()));
    }
    if changes.is_empty() {
        return Err(ApiError::invalid("nothing to change"));
    }
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
    let current = state.store().config_vars(environment.id).await?;
    let mut names: std::collections::BTreeSet<&str> =
        current.iter().map(|r| r.name.as_str()).collect();
    for change in &changes {
        match change {
            ConfigChange::Set(var) => names.insert(var.name.as_str()),
            ConfigChange::Unset(name) => names.remove(name.as_str()),
        };
    }
    if names.len() > MAX_CONFIG_VARS {
        return Err(ApiError::invalid(format!(
            "an environment can have at most {MAX_CONFIG_VARS} config vars"
        )));
    }
    let mut what: Vec<String> = body
        .set
        .keys()
        .chain(body.set_secret.keys())
        .map(|n| format!("Set {n}"))
        .collect();
    what.extend(body.unset.iter().map(|n| format!("Unset {n}")));
    let deployment = state
        .deployer()
        .change_config(environment.id, &changes, what.join(", "))
        .await
        .map_err(deploy_error)?;
    let records = state.store().config_vars(environment.id).await?;
    Ok(Json(ConfigChanged {
        vars: mask(records),
        deployment,
    }))
}
