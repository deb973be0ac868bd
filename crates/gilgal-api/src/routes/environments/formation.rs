//! Process formation and sizes of an environment (`gilgal scale`).

use super::*;

/// Routes of this resource.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_formation, change_formation))
}

fn sizes_to_wire(sizes: &BTreeMap<String, ProcessSizeRecord>) -> BTreeMap<String, ProcessSize> {
    sizes
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                ProcessSize {
                    memory_mb: v.memory_mb,
                    cpu_millicores: v.cpu_millicores,
                },
            )
        })
        .collect()
}

/// The process formation: instances running per type, and sizes set with `gilgal scale`.
#[utoipa::path(get, path = "/api/environments/{id}/formation", tag = "formation",
    params(("id" = String, Path, description = "Environment id")),
    responses(
        (status = 200, description = "Formation", body = Formation),
        (status = 404, description = "No such environment", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn get_formation(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Formation>, ApiError> {
    let environment = owned_environment(&state, &caller, &id).await?;
    let counts = state
        .metrics()
        .running_counts(&environment)
        .await
        .map_err(deploy_error)?;
    Ok(Json(Formation {
        counts,
        sizes: sizes_to_wire(&environment.sizes),
        deployment: None,
    }))
}

/// Scale process types (`web=3 worker=1`) and resize them, with zero downtime.
#[utoipa::path(put, path = "/api/environments/{id}/formation", tag = "formation",
    params(("id" = String, Path, description = "Environment id")),
    request_body = FormationUpdate,
    responses(
        (status = 200, description = "Scaled", body = Formation),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 422, description = "Invalid counts or sizes", body = ErrorBody),
        (status = 404, description = "No such environment", body = ErrorBody),
        (status = 409, description = "The live release has no such process type, or a new instance never passed its health check (it got no traffic and the formation is unchanged)", body = ErrorBody),
        (status = 429, description = "Deploy quota reached (or this credential's request budget); see Retry-After", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn change_formation(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    body: JsonBody<FormationUpdate>,
) -> Result<Json<Formation>, ApiError> {
    let environment = owned_environment(&state, &caller, &id).await?;
    let body = body.parse()?;
    for (name, count) in &body.counts {
        if *count > 100 {
            return Err(ApiError::invalid(format!(
                "{name}={count}: at most 100 instances per process type"
            )));
        }
    }
    let mut sizes = BTreeMap::new();
    for (name, size) in &body.sizes {
        if size
            .memory_mb
            .is_some_and(|mb| !(16..=1 << 20).contains(&mb))
        {
            return Err(ApiError::invalid(format!(
                "{name}: memory must be between 16 MB and 1 TB"
            )));
        }
        if size
            .cpu_millicores
            .is_some_and(|m| !(10..=256_000).contains(&m))
        {
            return Err(ApiError::invalid(format!(
                "{name}: CPU must be between 10 and 256000 millicores"
            )));
        }
        sizes.insert(
            name.clone(),
            ProcessSizeRecord {
                memory_mb: size.memory_mb,
                cpu_millicores: size.cpu_millicores,
            },
        );
    }
    let deployment = state
        .changes()
        .scale(&environment, &body.counts, &sizes)
        .await
        .map_err(deploy_error)?;
    let updated = state.store().environment_by_id(environment.id).await?;
    let counts = state
        .metrics()
        .running_counts(&updated)
        .await
        .map_err(deploy_error)?;
    Ok(Json(Formation {
        counts,
        sizes: sizes_to_wire(&updated.sizes),
        deployment,
    }))
}
