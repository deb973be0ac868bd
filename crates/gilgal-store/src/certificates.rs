//! TLS certificates per hostname, for the edge proxy's SNI resolver.

use sqlx::Row;

use crate::{from_millis, now_millis, Store, StoreError};

/// A stored certificate with its private key.
#[derive(Clone)]
pub struct CertificateRecord {
    /// The hostname it serves (lowercase).
    pub domain: String,
    /// PEM certificate chain, leaf first.
    pub cert_chain_pem: String,
    /// PEM private key.
    pub key_pem: String,
    /// When the leaf expires.
    pub not_after: time::OffsetDateTime,
    /// `upload` now; `acme` once automatic issuance fills the store.
    pub source: String,
    /// When it was last replaced.
    pub updated_at: time::OffsetDateTime,
}

impl std::fmt::Debug for CertificateRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateRecord")
            .field("domain", &self.domain)
            .field("not_after", &self.not_after)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Inserts or replaces the certificate of `domain`.
    pub async fn put_certificate(
        &self,
        domain: &str,
        cert_chain_pem: &str,
        key_pem: &str,
        not_after_ms: i64,
    ) -> Result<(), StoreError> {
        let now = now_millis();
        sqlx::query(
            "INSERT INTO certificates (domain, cert_chain_pem, key_pem, not_after, source, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 'upload', $5, $5) ON CONFLICT (domain) DO UPDATE SET \
             cert_chain_pem = excluded.cert_chain_pem, key_pem = excluded.key_pem, \
             not_after = excluded.not_after, source = excluded.source, updated_at = excluded.updated_at",
        )
        .bind(domain)
        .bind(cert_chain_pem)
        .bind(key_pem)
        .bind(not_after_ms)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every stored certificate (the proxy loads them all into its resolver).
    pub async fn certificates(&self) -> Result<Vec<CertificateRecord>, StoreError> {
        sqlx::query(
            "SELECT domain, cert_chain_pem, key_pem, not_after, source, updated_at FROM certificates ORDER BY domain",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(CertificateRecord {
                domain: row.try_get("domain")?,
                cert_chain_pem: row.try_get("cert_chain_pem")?,
                key_pem: row.try_get("key_pem")?,
                not_after: from_millis(row.try_get("not_after")?),
                source: row.try_get("source")?,
                updated_at: from_millis(row.try_get("updated_at")?),
            })
        })
        .collect()
    }

    /// Deletes the certificate of `domain`.
    pub async fn delete_certificate(&self, domain: &str) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM certificates WHERE domain = $1")
            .bind(domain)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            Err(StoreError::NotFound)
        } else {
            Ok(())
        }
    }
}
