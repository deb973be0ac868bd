//! `/api/admin/certificates`: TLS certificates the edge proxy terminates with, per hostname.
//!
//! Uploaded PEMs are checked before they are stored: the chain must parse, cover the hostname,
//! not be expired, and match the key (the proxy's own loader is the judge). After every change
//! the proxy's SNI resolver is reloaded from the store, so the store stays the source of truth
//! and automatic issuance (ACME) can fill the same table later.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use gilgal_deploy::{CertificateError, DeployError};
use gilgal_proxy::CertificatePem;
use gilgal_types::{CertificateInfo, ErrorBody, Hostname, PutCertificateRequest};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use x509_parser::extensions::GeneralName;

use super::admin::require_admin;
use crate::extract::{AdminUser, ApiJson, AuthUser};
use crate::{ApiError, AppState};

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_certificates))
        .routes(routes!(put_certificate, delete_certificate))
}

fn parse_domain(raw: &str) -> Result<Hostname, ApiError> {
    raw.parse::<Hostname>()
        .map_err(|e| ApiError::invalid(e.to_string()))
}

fn info(record: gilgal_store::CertificateRecord) -> Result<CertificateInfo, ApiError> {
    Ok(CertificateInfo {
        domain: parse_domain(&record.domain)?,
        not_after: record.not_after,
        source: record.source,
        updated_at: record.updated_at,
    })
}

/// Whether a certificate name (possibly `*.x`) covers `domain`.
fn covers(name: &str, domain: &str) -> bool {
    let name = name.to_ascii_lowercase();
    if name == domain {
        return true;
    }
    match (name.strip_prefix("*."), domain.split_once('.')) {
        (Some(suffix), Some((_, rest))) => suffix == rest,
        _ => false,
    }
}

/// Reads the leaf certificate: its DNS names and expiry (Unix ms).
fn inspect_leaf(chain_pem: &str) -> Result<(Vec<String>, i64), ApiError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(chain_pem.as_bytes())
        .map_err(|_| ApiError::invalid("cert_chain_pem holds no PEM certificate"))?;
    let cert = pem.parse_x509().map_err(|_| {
        ApiError::invalid("the first certificate in cert_chain_pem is not valid X.509")
    })?;
    let mut names: Vec<String> = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push((*dns).to_owned());
            }
        }
    }
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok().map(str::to_owned)),
        );
    }
    let not_after = cert.validity().not_after.timestamp().saturating_mul(1000);
    Ok((names, not_after))
}

/// Stored certificates (never their keys).
#[utoipa::path(get, path = "/api/admin/certificates", tag = "admin",
    responses(
        (status = 200, description = "Certificates by domain", body = Vec<CertificateInfo>),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn list_certificates(
    State(state): State<AppState>,
    caller: AuthUser,
) -> Result<Json<Vec<CertificateInfo>>, ApiError> {
    require_admin(&caller)?;
    let records = state.store().certificates().await?;
    Ok(Json(
        records.into_iter().map(info).collect::<Result<_, _>>()?,
    ))
}

/// Upload (or replace) the certificate and key the proxy serves for a hostname.
#[utoipa::path(put, path = "/api/admin/certificates/{domain}", tag = "admin", request_body = PutCertificateRequest,
    params(("domain" = String, Path, description = "Hostname, e.g. api.example.com or *.example.com", pattern = "^(\\*\\.)?(([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\\.)+[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?|[Ll][Oo][Cc][Aa][Ll][Hh][Oo][Ss][Tt])\\.*$", max_length = 253)),
    responses(
        (status = 200, description = "Stored and served", body = CertificateInfo),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody),
        (status = 422, description = "Unparseable, expired, wrong name, or key does not match", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn put_certificate(
    State(state): State<AppState>,
    // Refused before the body is judged.
    AdminUser(_caller): AdminUser,
    Path(domain): Path<String>,
    ApiJson(request): ApiJson<PutCertificateRequest>,
) -> Result<Json<CertificateInfo>, ApiError> {
    let domain = parse_domain(&domain)?;
    let (names, not_after_ms) = inspect_leaf(&request.cert_chain_pem)?;
    if !names.iter().any(|name| covers(name, domain.as_str())) {
        return Err(ApiError::invalid(format!(
            "the certificate does not cover {domain} (it names: {})",
            if names.is_empty() {
                "nothing".to_owned()
            } else {
                names.join(", ")
            }
        )));
    }
    if not_after_ms <= (time::OffsetDateTime::now_utc().unix_timestamp() * 1000) {
        return Err(ApiError::invalid("the certificate has expired"));
    }
    // The proxy's loader decides whether chain and key belong together, before storing.
    let certificate = CertificatePem {
        domain: domain.to_string(),
        cert_chain_pem: request.cert_chain_pem,
        key_pem: request.key_pem,
    };
    state
        .platform()
        .put_certificate(certificate, not_after_ms)
        .await
        .map_err(|e| match e {
            CertificateError::Rejected(_) => ApiError::invalid(e.to_string()),
            CertificateError::Deploy(e) => ApiError::internal(&e),
        })?;
    tracing::info!(%domain, "certificate stored");
    let stored = state
        .store()
        .certificates()
        .await?
        .into_iter()
        .find(|c| c.domain == domain.as_str())
        .ok_or_else(|| ApiError::not_found("certificate"))?;
    Ok(Json(info(stored)?))
}

/// Stop serving a hostname's certificate.
#[utoipa::path(delete, path = "/api/admin/certificates/{domain}", tag = "admin",
    params(("domain" = String, Path, description = "Hostname", pattern = "^(\\*\\.)?(([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\\.)+[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?|[Ll][Oo][Cc][Aa][Ll][Hh][Oo][Ss][Tt])\\.*$", max_length = 253)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody),
        (status = 404, description = "No certificate for this hostname", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn delete_certificate(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(domain): Path<String>,
) -> Result<StatusCode, ApiError> {
    require_admin(&caller)?;
    let domain = parse_domain(&domain)?;
    state
        .platform()
        .delete_certificate(domain.as_str())
        .await
        .map_err(|e| match e {
            DeployError::Store(gilgal_store::StoreError::NotFound) => {
                ApiError::not_found("certificate")
            }
            other => ApiError::internal(&other),
        })?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::covers;

    #[test]
    fn wildcards_cover_exactly_one_label() {
        assert!(covers("api.example.com", "api.example.com"));
        assert!(covers("*.example.com", "api.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(!covers("*.example.com", "a.b.example.com"));
        assert!(!covers("other.com", "api.example.com"));
    }
}
