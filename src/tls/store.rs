//! The certificates in force, chosen per handshake by SNI, and replaced
//! whole when the files change: handshakes read a snapshot, never a lock.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::certs::LoadedCert;

/// Certificates by name, and the default one.
#[derive(Debug)]
pub struct CertSet {
    /// In configuration order; the first is the default.
    pub certs: Vec<LoadedCert>,
    exact: HashMap<String, usize>,
    wildcard: HashMap<String, usize>,
}

impl CertSet {
    /// Indexes `certs` by their names; earlier certificates win a name
    /// that several carry.
    pub fn new(certs: Vec<LoadedCert>) -> CertSet {
        let (mut exact, mut wildcard) = (HashMap::new(), HashMap::new());
        for (i, cert) in certs.iter().enumerate() {
            for name in &cert.names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_owned()).or_insert(i),
                    None => exact.entry(name.clone()).or_insert(i),
                };
            }
        }
        CertSet {
            certs,
            exact,
            wildcard,
        }
    }

    /// The certificate for `server_name`: an exact name, then a wildcard
    /// one level up, then the default.
    pub fn pick(&self, server_name: Option<&str>) -> Option<&LoadedCert> {
        let index = server_name
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
            .and_then(|name| {
                self.exact.get(&name).copied().or_else(|| {
                    name.split_once('.')
                        .and_then(|(_, parent)| self.wildcard.get(parent).copied())
                })
            })
            .unwrap_or(0);
        self.certs.get(index)
    }
}

/// The rustls resolver over a replaceable [`CertSet`].
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<CertSet>,
}

impl CertStore {
    /// A store serving `set`.
    pub fn new(set: CertSet) -> CertStore {
        CertStore {
            current: ArcSwap::from_pointee(set),
        }
    }

    /// Serves `set` from the next handshake on; open connections keep theirs.
    pub fn replace(&self, set: CertSet) {
        self.current.store(Arc::new(set));
    }

    /// The set in force.
    pub fn current(&self) -> Arc<CertSet> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .load()
            .pick(hello.server_name())
            .map(|c| Arc::clone(&c.certified))
    }
}
