//! Live follow streams (`?follow=true` on environment, deployment and run logs): each user may
//! hold a few open at once, and every stream re-checks every few seconds that its caller may
//! still read what it follows, so logging out, revoking the API token or leaving the team ends
//! it instead of letting it poll forever.

use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use uuid::Uuid;

use crate::extract::{AuthUser, Credential};
use crate::limits::SlotClaim;
use crate::{ApiError, AppState};

/// Follow streams one user may hold open at once; more are refused with 429.
pub(crate) const MAX_STREAMS_PER_USER: u32 = 8;
/// How often an open stream re-checks its caller's credential and role.
pub(crate) const RECHECK_EVERY: Duration = Duration::from_secs(2);

/// One line of NDJSON output (or an I/O error that ends the response).
type Chunk = Result<String, std::io::Error>;

/// Takes one of the caller's follow slots: 429 beyond [`MAX_STREAMS_PER_USER`].
fn take_slot(state: &AppState, user: Uuid) -> Result<SlotClaim, ApiError> {
    state
        .follow_streams()
        .claim(user, MAX_STREAMS_PER_USER)
        .ok_or_else(|| {
            ApiError::too_many(
                "too_many_streams",
                format!("you already follow {MAX_STREAMS_PER_USER} logs at once; close one first"),
                RECHECK_EVERY,
            )
        })
}

/// What a stream re-checks: the credential it was opened with still stands and its user
/// still has a role on the project.
#[derive(Clone)]
struct Access {
    state: AppState,
    user: Uuid,
    credential: Credential,
    project: Uuid,
}

/// A re-check in progress, kept across items so a busy stream cannot starve it.
type Recheck = std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>;

impl Access {
    async fn still_allowed(self) -> bool {
        let store = self.state.store();
        let credential = match self.credential {
            Credential::Session(session) => store.session_is_active(session, self.user).await,
            Credential::ApiToken(token) => store.api_token_is_active(token, self.user).await,
        };
        // Only a definite answer ends the stream: a store that is briefly busy (SQLite under
        // load) must not cut a client's log off as if its access had been revoked.
        match credential {
            Ok(false) => return false,
            Ok(true) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot re-check a log follower's session; checking again later");
                return true;
            }
        }
        match store.project_role(self.user, self.project).await {
            Ok(role) => role.is_some(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot re-check a log follower's role; checking again later");
                true
            }
        }
    }
}

/// `stream` as the response of a request on `project`'s resources: unchanged when not
/// following; when following, counted against the caller's cap (429 beyond it) and ended
/// within [`RECHECK_EVERY`] once the caller's session or token ends or they lose their role.
pub(crate) fn guard(
    state: &AppState,
    caller: &AuthUser,
    project: Uuid,
    follow: bool,
    stream: impl futures_util::Stream<Item = Chunk> + Send + 'static,
) -> Result<BoxStream<'static, Chunk>, ApiError> {
    if !follow {
        return Ok(stream.boxed());
    }
    let slot = take_slot(state, caller.user.id)?;
    let access = Access {
        state: state.clone(),
        user: caller.user.id,
        credential: caller.credential,
        project,
    };
    let mut recheck =
        tokio::time::interval_at(tokio::time::Instant::now() + RECHECK_EVERY, RECHECK_EVERY);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let inner = stream.boxed();
    let pending: Option<Recheck> = None;
    Ok(futures_util::stream::unfold(
        (inner, recheck, access, slot, pending),
        |(mut inner, mut recheck, access, slot, mut pending)| async move {
            loop {
                // The inner stream is polled all along, also while a re-check runs: it may be
                // holding the store's only (SQLite) connection in the middle of a query, and a
                // re-check awaited without it would wait for that connection until the pool
                // gave up (30 s), stalling every other use of the store meanwhile.
                tokio::select! {
                    item = inner.next() => {
                        return item.map(|item| (item, (inner, recheck, access, slot, pending)));
                    }
                    allowed = async {
                        match pending.as_mut() {
                            Some(check) => check.await,
                            None => std::future::pending().await,
                        }
                    } => {
                        pending = None;
                        if !allowed {
                            return None;
                        }
                    }
                    _ = recheck.tick(), if pending.is_none() => {
                        pending = Some(Box::pin(access.clone().still_allowed()));
                    }
                }
            }
        },
    )
    .boxed())
}
