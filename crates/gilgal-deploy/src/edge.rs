//! The edge's desired state — every route and every TLS certificate — as one value with one
//! writer. Rollouts change routes and the certificate use-cases change certificates, both
//! through [`Edge::update`], which applies only the difference to the proxy; start-up is the
//! difference from the empty state. Nothing else writes to the proxy's tables.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use gilgal_proxy::{CertificatePem, ProxyError, ProxyHandle, RouteDiff, RouteSpec};

use crate::{DeployError, Platform};

/// What the edge should serve: routes by id and certificates by domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EdgeState {
    /// Every route, by its id (one per environment, see `identity::route_id`).
    pub routes: BTreeMap<String, RouteSpec>,
    /// Every certificate the TLS listener serves, by domain (`*.example.com` included).
    pub certificates: BTreeMap<String, CertificatePem>,
}

impl EdgeState {
    /// The route changes that turn `self` into `next`.
    fn route_diff(&self, next: &EdgeState) -> RouteDiff {
        RouteDiff {
            upsert: next
                .routes
                .iter()
                .filter(|(id, route)| self.routes.get(*id) != Some(*route))
                .map(|(_, route)| route.clone())
                .collect(),
            remove: self
                .routes
                .keys()
                .filter(|id| !next.routes.contains_key(*id))
                .cloned()
                .collect(),
        }
    }
}

/// The single writer of the proxy's routes and certificates. Cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct Edge {
    proxy: ProxyHandle,
    state: Arc<Mutex<EdgeState>>,
}

impl Edge {
    /// An edge over `proxy`, whose tables start empty.
    pub fn new(proxy: ProxyHandle) -> Self {
        Self {
            proxy,
            state: Arc::new(Mutex::new(EdgeState::default())),
        }
    }

    fn state(&self) -> MutexGuard<'_, EdgeState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Changes the desired state and applies the difference to the proxy, certificates
    /// first (they are all parsed before any is swapped in). If the proxy refuses any part,
    /// neither the proxy nor the desired state changes.
    pub fn update(&self, change: impl FnOnce(&mut EdgeState)) -> Result<(), ProxyError> {
        let mut current = self.state();
        let mut next = current.clone();
        change(&mut next);
        let routes = current.route_diff(&next);
        let certificates_changed = current.certificates != next.certificates;
        if certificates_changed {
            self.proxy
                .set_certificates(next.certificates.values().cloned().collect())?;
        }
        if !routes.upsert.is_empty() || !routes.remove.is_empty() {
            if let Err(e) = self.proxy.apply(routes) {
                if certificates_changed {
                    // Parsed and served a moment ago, so they load again.
                    let _ = self
                        .proxy
                        .set_certificates(current.certificates.values().cloned().collect());
                }
                return Err(e);
            }
        }
        *current = next;
        Ok(())
    }

    /// The route with this id, as the edge serves it now.
    pub fn route(&self, id: &str) -> Option<RouteSpec> {
        self.state().routes.get(id).cloned()
    }
}

/// Why a certificate was not stored.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// The chain and key do not load (unparseable, or the key is not the leaf's).
    #[error("certificate or key rejected: {0}")]
    Rejected(ProxyError),
    /// The store failed.
    #[error(transparent)]
    Deploy(#[from] DeployError),
}

impl Platform {
    /// The single writer of the edge's routes and certificates.
    pub fn edge(&self) -> &Edge {
        &self.edge
    }

    /// Serves every stored certificate (at start-up: the difference from an empty edge).
    pub async fn restore_certificates(&self) -> Result<(), DeployError> {
        let stored = self.store.certificates().await?;
        self.edge
            .update(|state| {
                state.certificates = stored
                    .into_iter()
                    .map(|c| {
                        let pem = CertificatePem {
                            domain: c.domain,
                            cert_chain_pem: c.cert_chain_pem,
                            key_pem: c.key_pem,
                        };
                        (pem.domain.clone(), pem)
                    })
                    .collect();
            })
            .map_err(|e| DeployError::Runtime(format!("cannot serve the stored certificates: {e}")))
    }

    /// Stores a certificate and serves it, replacing the domain's previous one. The proxy
    /// must accept it first, so a bad key never reaches the store. (Name and expiry checks
    /// are the caller's.)
    pub async fn put_certificate(
        &self,
        certificate: CertificatePem,
        not_after_ms: i64,
    ) -> Result<(), CertificateError> {
        gilgal_proxy::check_certificate(&certificate).map_err(CertificateError::Rejected)?;
        self.store
            .put_certificate(
                &certificate.domain,
                &certificate.cert_chain_pem,
                &certificate.key_pem,
                not_after_ms,
            )
            .await
            .map_err(DeployError::from)?;
        self.edge
            .update(|state| {
                state
                    .certificates
                    .insert(certificate.domain.clone(), certificate);
            })
            .map_err(CertificateError::Rejected)
    }

    /// Stops serving a domain's certificate and deletes it.
    pub async fn delete_certificate(&self, domain: &str) -> Result<(), DeployError> {
        self.store.delete_certificate(domain).await?;
        self.edge
            .update(|state| {
                state.certificates.remove(domain);
            })
            .map_err(|e| DeployError::Runtime(e.to_string()))
    }
}
