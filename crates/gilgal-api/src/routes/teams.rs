//! Teams, as the spec names them: create, list, members, invitations bound to an email
//! (single-use, expiring), role changes and removal; and moving projects between owners.
//!
//! Roles, weakest first: viewer (read), developer (deploy, config, scale, run, cron, domains),
//! admin (projects and environments, members), owner (owners, transfers). A personal project's
//! owner has the owner role on it; a team's project is governed by team roles only.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use gilgal_auth::opaque::{self, INVITATION_PREFIX};
use gilgal_store::{AcceptOutcome, StoreError};
use gilgal_types::{
    AcceptInvitationRequest, ChangeRoleRequest, CreateTeamRequest, DnsLabel, ErrorBody, Invitation,
    InviteRequest, Role, Team, TeamMember, TransferRequest,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::millis_from_now;
use crate::extract::{parse_path_id, ApiJson, AuthUser, JsonBody};
use crate::{ApiError, AppState};

/// How long an invitation can be accepted.
const INVITATION_TTL: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_teams, create_team))
        .routes(routes!(list_members, invite_member))
        .routes(routes!(change_role, remove_member))
        .routes(routes!(accept_invitation))
        .routes(routes!(transfer_project))
}

/// The caller's role on a project, or a 404 when they cannot see it; a 403 when below `needed`.
pub(crate) async fn require_role(
    state: &AppState,
    caller: &AuthUser,
    project: Uuid,
    needed: Role,
) -> Result<Role, ApiError> {
    let role = state
        .store()
        .project_role(caller.user.id, project)
        .await?
        .ok_or_else(|| ApiError::not_found("project"))?;
    if role < needed {
        return Err(ApiError::forbidden(
            "role_too_low",
            format!(
                "your role on this project is {}; this needs {} or above",
                role.as_str(),
                needed.as_str()
            ),
        ));
    }
    Ok(role)
}

/// The role a request needs on a project by its method: developer to change, viewer to read.
pub(crate) async fn require_for_method(
    state: &AppState,
    caller: &AuthUser,
    project: Uuid,
) -> Result<Role, ApiError> {
    let needed = if caller.mutating {
        Role::Developer
    } else {
        Role::Viewer
    };
    require_role(state, caller, project, needed).await
}

async fn team_role(state: &AppState, caller: &AuthUser, team: Uuid) -> Result<Role, ApiError> {
    if caller.is_restricted() {
        return Err(ApiError::not_found("team"));
    }
    state
        .store()
        .team_role(caller.user.id, team)
        .await?
        .ok_or_else(|| ApiError::not_found("team"))
}

fn at_least(role: Role, needed: Role) -> Result<(), ApiError> {
    if role < needed {
        return Err(ApiError::forbidden(
            "role_too_low",
            format!(
                "your role on this team is {}; this needs {} or above",
                role.as_str(),
                needed.as_str()
            ),
        ));
    }
    Ok(())
}

/// The caller's teams.
#[utoipa::path(get, path = "/api/teams", tag = "teams",
    responses((status = 200, description = "Teams with your role", body = Vec<Team>)),
    security(("bearer" = [])))]
async fn list_teams(
    State(state): State<AppState>,
    caller: AuthUser,
) -> Result<Json<Vec<Team>>, ApiError> {
    let teams = state.store().teams_of(caller.user.id).await?;
    Ok(Json(
        teams
            .into_iter()
            .map(|t| Team {
                id: t.id,
                name: t.name,
                role: t.role,
            })
            .collect(),
    ))
}

/// Create a team; you become its owner.
#[utoipa::path(post, path = "/api/teams", tag = "teams", request_body = CreateTeamRequest,
    responses(
        (status = 201, description = "Created", body = Team),
        (status = 409, description = "Name taken", body = ErrorBody),
        (status = 422, description = "Invalid name", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn create_team(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiJson(body): ApiJson<CreateTeamRequest>,
) -> Result<(StatusCode, Json<Team>), ApiError> {
    let name = DnsLabel::parse_as(&body.name, "team name")
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let team = state
        .store()
        .create_team(caller.user.id, name.as_str())
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => ApiError::new(
                StatusCode::CONFLICT,
                "name_taken",
                "a team with this name exists",
            ),
            other => other.into(),
        })?;
    Ok((
        StatusCode::CREATED,
        Json(Team {
            id: team.id,
            name: team.name,
            role: team.role,
        }),
    ))
}

/// A team's members (any member may look).
#[utoipa::path(get, path = "/api/teams/{id}/members", tag = "teams",
    params(("id" = String, Path, description = "Team id")),
    responses(
        (status = 200, description = "Members", body = Vec<TeamMember>),
        (status = 404, description = "No such team for you", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn list_members(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Vec<TeamMember>>, ApiError> {
    let team = parse_path_id(&id, "team")?;
    team_role(&state, &caller, team).await?;
    let members = state.store().team_members(team).await?;
    Ok(Json(
        members
            .into_iter()
            .map(|m| TeamMember {
                user_id: m.user_id,
                email: m.email,
                role: m.role,
            })
            .collect(),
    ))
}

/// Invite someone by email (admins; only owners invite owners). The secret in the answer is
/// shown once: pass it to the invitee, who accepts it logged in with that email within 7 days.
#[utoipa::path(post, path = "/api/teams/{id}/members", tag = "teams",
    params(("id" = String, Path, description = "Team id")),
    request_body = InviteRequest,
    responses(
        (status = 201, description = "Invitation (secret shown once)", body = Invitation),
        (status = 403, description = "Your role is too low", body = ErrorBody),
        (status = 404, description = "No such team for you", body = ErrorBody),
        (status = 422, description = "Invalid email", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn invite_member(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    body: JsonBody<InviteRequest>,
) -> Result<(StatusCode, Json<Invitation>), ApiError> {
    let team = parse_path_id(&id, "team")?;
    let role = team_role(&state, &caller, team).await?;
    at_least(role, Role::Admin)?;
    let body = body.parse()?;
    if body.role == Role::Owner {
        at_least(role, Role::Owner)?;
    }
    let email: gilgal_types::Email = body
        .email
        .parse()
        .map_err(|e: gilgal_types::NameError| ApiError::invalid(e.to_string()))?;
    let minted = opaque::mint(INVITATION_PREFIX);
    let expires = millis_from_now(INVITATION_TTL);
    let invitation = state
        .store()
        .create_invitation(
            team,
            email.as_str(),
            body.role,
            &minted.digest,
            caller.user.id,
            expires,
        )
        .await?;
    crate::audit::note("invited", serde_json::json!(email.as_str()));
    Ok((
        StatusCode::CREATED,
        Json(Invitation {
            id: invitation,
            team_id: team,
            email: email.as_str().to_owned(),
            role: body.role,
            token: minted.secret,
            expires_at: time::OffsetDateTime::from_unix_timestamp_nanos(
                i128::from(expires) * 1_000_000,
            )
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
        }),
    ))
}

/// Accept an invitation sent to your email; you join the team with its role.
#[utoipa::path(post, path = "/api/invitations/accept", tag = "teams", request_body = AcceptInvitationRequest,
    responses(
        (status = 200, description = "Joined", body = Team),
        (status = 404, description = "Unknown, used, expired, or for another email", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn accept_invitation(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiJson(body): ApiJson<AcceptInvitationRequest>,
) -> Result<Json<Team>, ApiError> {
    if caller.is_restricted() {
        return Err(ApiError::not_found("invitation"));
    }
    let outcome = state
        .store()
        .accept_invitation(
            &opaque::digest(&body.token),
            caller.user.id,
            caller.user.email.as_str(),
        )
        .await?;
    let AcceptOutcome::Joined(team) = outcome else {
        return Err(ApiError::not_found("invitation"));
    };
    let teams = state.store().teams_of(caller.user.id).await?;
    let joined = teams
        .into_iter()
        .find(|t| t.id == team)
        .ok_or_else(|| ApiError::not_found("team"))?;
    Ok(Json(Team {
        id: joined.id,
        name: joined.name,
        role: joined.role,
    }))
}

async fn owners_left(state: &AppState, team: Uuid, without: Uuid) -> Result<usize, ApiError> {
    Ok(state
        .store()
        .team_members(team)
        .await?
        .iter()
        .filter(|m| m.role == Role::Owner && m.user_id != without)
        .count())
}

/// Change a member's role (admins; only owners grant or take the owner role; a team keeps at
/// least one owner).
#[utoipa::path(put, path = "/api/teams/{id}/members/{user_id}", tag = "teams",
    params(("id" = String, Path, description = "Team id"), ("user_id" = String, Path, description = "Member")),
    request_body = ChangeRoleRequest,
    responses(
        (status = 204, description = "Changed"),
        (status = 403, description = "Your role is too low", body = ErrorBody),
        (status = 404, description = "No such team or member", body = ErrorBody),
        (status = 409, description = "It would leave no owner", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn change_role(
    State(state): State<AppState>,
    caller: AuthUser,
    Path((id, user)): Path<(String, String)>,
    body: JsonBody<ChangeRoleRequest>,
) -> Result<StatusCode, ApiError> {
    let team = parse_path_id(&id, "team")?;
    let member = parse_path_id(&user, "member")?;
    let role = team_role(&state, &caller, team).await?;
    at_least(role, Role::Admin)?;
    let body = body.parse()?;
    let current = state
        .store()
        .team_role(member, team)
        .await?
        .ok_or_else(|| ApiError::not_found("member"))?;
    if current == Role::Owner || body.role == Role::Owner {
        at_least(role, Role::Owner)?;
    }
    if current == Role::Owner
        && body.role != Role::Owner
        && owners_left(&state, team, member).await? == 0
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "last_owner",
            "a team keeps at least one owner",
        ));
    }
    state
        .store()
        .set_member_role(team, member, body.role)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Remove a member (admins, or anyone leaving; only owners remove owners; a team keeps at
/// least one owner).
#[utoipa::path(delete, path = "/api/teams/{id}/members/{user_id}", tag = "teams",
    params(("id" = String, Path, description = "Team id"), ("user_id" = String, Path, description = "Member")),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, description = "Your role is too low", body = ErrorBody),
        (status = 404, description = "No such team or member", body = ErrorBody),
        (status = 409, description = "It would leave no owner", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn remove_member(
    State(state): State<AppState>,
    caller: AuthUser,
    Path((id, user)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let team = parse_path_id(&id, "team")?;
    let member = parse_path_id(&user, "member")?;
    let role = team_role(&state, &caller, team).await?;
    if member != caller.user.id {
        at_least(role, Role::Admin)?;
    }
    let current = state
        .store()
        .team_role(member, team)
        .await?
        .ok_or_else(|| ApiError::not_found("member"))?;
    if current == Role::Owner {
        if member != caller.user.id {
            at_least(role, Role::Owner)?;
        }
        if owners_left(&state, team, member).await? == 0 {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "last_owner",
                "a team keeps at least one owner",
            ));
        }
    }
    state.store().remove_member(team, member).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Move a project to a team you administer, or back to yourself (`team_id: null`). Needs the
/// owner role on the project: its personal owner, or an owner of the team it is in (moving a
/// team's project elsewhere needs that team's owner, whoever created the project); and the
/// admin role on the team it moves to. Not with a project-bound API token.
#[utoipa::path(post, path = "/api/projects/{id}/transfer", tag = "teams",
    params(("id" = String, Path, description = "Project id")),
    request_body = TransferRequest,
    responses(
        (status = 204, description = "Transferred"),
        (status = 403, description = "Your role is too low here or there", body = ErrorBody),
        (status = 404, description = "No such project or team for you", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn transfer_project(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    body: JsonBody<TransferRequest>,
) -> Result<StatusCode, ApiError> {
    let project = parse_path_id(&id, "project")?;
    caller.check_scope(project, None, "project")?;
    require_role(&state, &caller, project, Role::Owner).await?;
    let body = body.parse()?;
    if let Some(team) = body.team_id {
        let role = team_role(&state, &caller, team).await?;
        at_least(role, Role::Admin)?;
    }
    state
        .store()
        .transfer_project(project, body.team_id, caller.user.id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
