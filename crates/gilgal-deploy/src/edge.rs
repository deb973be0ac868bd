//! The edge's desired state — every route and every TLS certificate — as one value with one
//! writer. Rollouts change routes and the certificate use-cases change certificates, both
//! through [`Edge::update`], which applies only the difference to the edge; start-up is the
//! difference from the empty state, or from what an adopted edge process serves. Nothing
//! else writes to the edge's tables.

use std::collections::BTreeMap;
use std::sync::Arc;

use gilgal_edge::{EdgeError, EdgeLink};
use gilgal_proxy::{CertificatePem, ProxyError, RouteDiff, RouteSpec};

use crate::{DeployError, Platform};

/// What the edge should serve: routes by id and certificates by domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EdgeState {
    /// Every route, by its id (one per environment, see `identity::route_id`).
    pub routes: BTreeMap<String, RouteSpec>,
    /// Every certificate the TLS listener serves, by domain (`*.example.com` included).
    /// Shared, so the many route changes do not copy every certificate's PEM text.
    pub certificates: Arc<BTreeMap<String, CertificatePem>>,
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

/// The single writer of the edge's routes and certificates. Cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct Edge {
    link: EdgeLink,
    /// What the edge serves; held across each change's call to the edge, so changes reach
    /// it one at a time and in order.
    state: Arc<tokio::sync::Mutex<EdgeState>>,
    /// Held across a certificate change's store write and reload, so concurrent changes
    /// reach the edge in the order the store took them.
    certificate_changes: Arc<tokio::sync::Mutex<()>>,
}

impl Edge {
    /// An edge over `link` that serves nothing yet.
    pub fn new(link: EdgeLink) -> Self {
        Self {
            link,
            state: Arc::new(tokio::sync::Mutex::new(EdgeState::default())),
            certificate_changes: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// The link to the edge (metrics, drains, access log).
    pub fn link(&self) -> &EdgeLink {
        &self.link
    }

    /// Takes over an edge that already serves (an edge process that outlived a restart of
    /// the server): its routes become the starting state, so recovery changes only what
    /// differs and what runs keeps its traffic throughout.
    pub async fn adopt(&self) -> Result<usize, EdgeError> {
        let routes = self.link.routes().await?;
        let mut state = self.state.lock().await;
        state.routes = routes.into_iter().map(|r| (r.id.clone(), r)).collect();
        Ok(state.routes.len())
    }

    /// Changes the desired state and applies the difference to the edge, certificates
    /// first (they are all parsed before any is swapped in). If the edge refuses any part,
    /// neither the edge nor the desired state changes.
    pub async fn update(&self, change: impl FnOnce(&mut EdgeState)) -> Result<(), EdgeError> {
        let mut current = self.state.lock().await;
        let mut next = current.clone();
        change(&mut next);
        let routes = current.route_diff(&next);
        let certificates_changed = !Arc::ptr_eq(&current.certificates, &next.certificates)
            && current.certificates != next.certificates;
        if certificates_changed {
            self.link
                .set_certificates(next.certificates.values().cloned().collect())
                .await?;
        }
        if !routes.upsert.is_empty() || !routes.remove.is_empty() {
            if let Err(e) = self.link.apply(routes).await {
                if certificates_changed {
                    // Parsed and served a moment ago, so they load again.
                    let _ = self
                        .link
                        .set_certificates(current.certificates.values().cloned().collect())
                        .await;
                }
                return Err(e);
            }
        }
        *current = next;
        Ok(())
    }

    /// Makes an edge that lost its state (a restarted edge process) serve the whole desired
    /// state again: every certificate, every route, and none it holds beside them.
    pub async fn resync(&self) -> Result<(), EdgeError> {
        let state = self.state.lock().await;
        self.link
            .set_certificates(state.certificates.values().cloned().collect())
            .await?;
        let served = self.link.routes().await?;
        let diff = RouteDiff {
            upsert: state.routes.values().cloned().collect(),
            remove: served
                .into_iter()
                .map(|r| r.id)
                .filter(|id| !state.routes.contains_key(id))
                .collect(),
        };
        self.link.apply(diff).await
    }

    /// The route with this id, as the edge serves it now.
    pub async fn route(&self, id: &str) -> Option<RouteSpec> {
        self.state.lock().await.routes.get(id).cloned()
    }

    /// The ids of every route the edge serves.
    pub async fn route_ids(&self) -> Vec<String> {
        self.state.lock().await.routes.keys().cloned().collect()
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
    /// Serves every stored certificate (at start-up: the difference from an empty edge).
    pub async fn restore_certificates(&self) -> Result<(), DeployError> {
        let _in_order = self.edge.certificate_changes.lock().await;
        self.serve_stored_certificates().await
    }

    /// Makes the edge serve exactly the store's certificates: the store is the truth, so
    /// the edge never keeps one the store lost or misses one it holds. The caller holds
    /// `certificate_changes`.
    async fn serve_stored_certificates(&self) -> Result<(), DeployError> {
        let stored: BTreeMap<String, CertificatePem> = self
            .store
            .certificates()
            .await?
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
        self.edge
            .update(|state| state.certificates = Arc::new(stored))
            .await
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
        let _in_order = self.edge.certificate_changes.lock().await;
        self.store
            .put_certificate(
                &certificate.domain,
                &certificate.cert_chain_pem,
                &certificate.key_pem,
                not_after_ms,
            )
            .await
            .map_err(DeployError::from)?;
        Ok(self.serve_stored_certificates().await?)
    }

    /// Stops serving a domain's certificate and deletes it.
    pub async fn delete_certificate(&self, domain: &str) -> Result<(), DeployError> {
        let _in_order = self.edge.certificate_changes.lock().await;
        self.store.delete_certificate(domain).await?;
        self.serve_stored_certificates().await
    }
}
