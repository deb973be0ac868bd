//! TLS termination: an SNI certificate resolver whose certificate map is swapped atomically,
//! so the API (and later ACME) can install certificates without restarting listeners.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::error::ProxyError;
use crate::spec::CertificatePem;

/// Certificates by lowercase domain (`*.example.com` entries serve one label of subdomains).
#[derive(Default)]
pub(crate) struct SniResolver {
    certs: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let certs = self.certs.load();
        let mut domains: Vec<_> = certs.keys().collect();
        domains.sort();
        f.debug_struct("SniResolver")
            .field("domains", &domains)
            .finish()
    }
}

impl SniResolver {
    /// Parse every certificate first, then swap them all in at once (all or nothing).
    pub(crate) fn replace(&self, pems: &[CertificatePem]) -> Result<(), ProxyError> {
        let mut map = HashMap::with_capacity(pems.len());
        for pem in pems {
            let domain = pem.domain.trim().trim_end_matches('.').to_ascii_lowercase();
            map.insert(domain.clone(), Arc::new(parse_certified_key(&domain, pem)?));
        }
        self.certs.store(Arc::new(map));
        Ok(())
    }

    /// Domains with an installed certificate.
    pub(crate) fn domains(&self) -> Vec<String> {
        let mut d: Vec<_> = self.certs.load().keys().cloned().collect();
        d.sort();
        d
    }

    fn find(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.load();
        let name = name.to_ascii_lowercase();
        if let Some(c) = certs.get(&name) {
            return Some(c.clone());
        }
        let (_, parent) = name.split_once('.')?;
        certs.get(&format!("*.{parent}")).cloned()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match hello.server_name() {
            Some(name) => self.find(name),
            // Without SNI there is nothing to choose by; serve the only certificate if unique.
            None => {
                let certs = self.certs.load();
                (certs.len() == 1)
                    .then(|| certs.values().next().cloned())
                    .flatten()
            }
        }
    }
}

/// Parses a certificate chain and key as the TLS listener would, without serving them: lets
/// a caller refuse a bad upload before storing it.
pub fn check_certificate(pem: &CertificatePem) -> Result<(), ProxyError> {
    let domain = pem.domain.trim().trim_end_matches('.').to_ascii_lowercase();
    parse_certified_key(&domain, pem).map(|_| ())
}

fn parse_certified_key(domain: &str, pem: &CertificatePem) -> Result<CertifiedKey, ProxyError> {
    let invalid = |reason: String| ProxyError::InvalidCertificate {
        domain: domain.to_string(),
        reason,
    };
    let chain = rustls_pemfile::certs(&mut pem.cert_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("certificate PEM: {e}")))?;
    if chain.is_empty() {
        return Err(invalid("no certificate in PEM".into()));
    }
    let key = rustls_pemfile::private_key(&mut pem.key_pem.as_bytes())
        .map_err(|e| invalid(format!("key PEM: {e}")))?
        .ok_or_else(|| invalid("no private key in PEM".into()))?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| invalid(format!("unsupported key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified
        .keys_match()
        .map_err(|e| invalid(format!("key does not match certificate: {e}")))?;
    Ok(certified)
}

/// rustls server configuration using the ring provider, TLS 1.2/1.3 and ALPN h2 + http/1.1.
///
/// Cipher suites in the server's order, AES-128-GCM first: with AES instructions (every x86-64
/// server and ARMv8 core) it is the cheapest per byte, and AES-256-GCM costs 40 % more rounds
/// for no practical gain at these key lifetimes. ChaCha20-Poly1305 stays available.
pub(crate) fn server_config(
    resolver: Arc<SniResolver>,
) -> Result<Arc<rustls::ServerConfig>, ProxyError> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|suite| {
        use rustls::CipherSuite as S;
        match suite.suite() {
            S::TLS13_AES_128_GCM_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
            S::TLS13_AES_256_GCM_SHA384
            | S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 1,
            _ => 2,
        }
    });
    let provider = Arc::new(provider);
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}
