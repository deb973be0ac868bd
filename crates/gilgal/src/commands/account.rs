//! `register`, `login`, `logout`, `whoami`.

use anyhow::Context;
use gilgal_client::Client;
use gilgal_types::{CreateApiTokenRequest, Email, LoginRequest, RegisterRequest, TokenPair};

use super::{prompt_line, read_password, Session};
use crate::cli::CredentialArgs;
use crate::credentials::{self, Credentials};

fn email_of(args: &CredentialArgs) -> anyhow::Result<Email> {
    let raw = match &args.email {
        Some(email) => email.clone(),
        None => prompt_line("Email: ", "--email")?,
    };
    raw.parse::<Email>().map_err(|e| anyhow::anyhow!("{e}"))
}

/// `gilgal register`: creates the account, then stores a CLI token like `login` does.
pub async fn register(session: &Session, args: CredentialArgs) -> anyhow::Result<()> {
    let email = email_of(&args)?;
    let password = read_password(args.password_stdin, "Choose a password (10+ characters): ")?;
    let client = session.anonymous()?;
    let pair = client
        .register_and_login(&RegisterRequest { email, password })
        .await
        .map_err(|e| match e.code() {
            // Registration does not say whether the email was taken; the login after it does.
            Some("invalid_credentials") => anyhow::anyhow!(
                "registered, but logging in failed: this email may already have an account \
                 with another password; use `gilgal login`"
            ),
            _ => e.into(),
        })?;
    if pair.user.is_admin {
        eprintln!("You are the first user: this account is the instance administrator.");
    }
    keep_cli_token(session, &client, pair).await
}

/// `gilgal login`: exchanges the password for a session, mints a personal API token for this
/// CLI, stores it (0600) and ends the password session, so only a revocable token is kept.
pub async fn login(session: &Session, args: CredentialArgs) -> anyhow::Result<()> {
    let email = email_of(&args)?;
    let password = read_password(args.password_stdin, "Password: ")?;
    let client = session.anonymous()?;
    let pair = client.login(&LoginRequest { email, password }).await?;
    keep_cli_token(session, &client, pair).await
}

async fn keep_cli_token(session: &Session, client: &Client, pair: TokenPair) -> anyhow::Result<()> {
    let with_session = client.clone().with_token(pair.access_token.clone());
    let host = hostname();
    let created = with_session
        .create_token(&CreateApiTokenRequest {
            name: format!("gilgal CLI on {host}"),
            expires_in_days: Some(90),
            ..Default::default()
        })
        .await?;
    // The short-lived session has done its job.
    if let Err(e) = with_session.logout().await {
        tracing::debug!(error = %e, "could not end the login session");
    }
    // Replace (and revoke) an earlier CLI token for this server.
    if let Some(old) = &session.stored {
        let old_client = client.clone().with_token(old.token.clone());
        let _ = old_client.logout().await;
    }
    let path = credentials::save(&Credentials {
        server: session.server.clone(),
        email: pair.user.email.to_string(),
        token: created.token,
        token_id: created.info.id,
    })?;
    println!("Logged in to {} as {}", session.server, pair.user.email);
    eprintln!("Token stored in {}", path.display());
    Ok(())
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown host".to_owned();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// `gilgal logout`: revokes the stored token on the server and deletes it locally.
pub async fn logout(session: &Session) -> anyhow::Result<()> {
    let Some(stored) = &session.stored else {
        println!("Not logged in to {}", session.server);
        return Ok(());
    };
    let client = session.anonymous()?.with_token(stored.token.clone());
    let revoked = client.logout().await;
    credentials::remove()
        .context("the token was revoked but the local copy could not be deleted")?;
    if let Err(e) = credentials::remember_server(&session.server) {
        eprintln!("warning: {e:#}; the next login needs --server");
    }
    match revoked {
        Ok(()) => println!("Logged out of {}", session.server),
        Err(e) => {
            eprintln!("warning: could not revoke the token on the server ({e}); the local copy is deleted");
            println!("Logged out locally");
        }
    }
    Ok(())
}

/// `gilgal whoami`.
pub async fn whoami(session: &Session, json: bool) -> anyhow::Result<()> {
    let user = session.authenticated()?.me().await?;
    if json {
        return crate::output::json(&user);
    }
    println!(
        "{}{}",
        user.email,
        if user.is_admin { " (admin)" } else { "" }
    );
    Ok(())
}
