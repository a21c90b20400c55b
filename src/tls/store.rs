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
    /// The ACME certificate, if there is one, then the files' certificates
    /// in configuration order.
    pub certs: Vec<LoadedCert>,
    /// Whether `certs[0]` is the ACME certificate.
    acme: bool,
    /// The index of the certificate for unknown and missing names.
    default: usize,
    exact: HashMap<String, usize>,
    wildcard: HashMap<String, usize>,
}

impl CertSet {
    /// Indexes `certs` by their names; earlier certificates win a name
    /// that several carry, and the first is the default.
    pub fn new(certs: Vec<LoadedCert>) -> CertSet {
        CertSet::with_acme(certs, None)
    }

    /// The files' certificates and the ACME one, which wins the names it
    /// was issued for; the first file certificate stays the default, or the
    /// ACME one when there are no files. With neither, handshakes fail.
    pub fn with_acme(files: Vec<LoadedCert>, acme: Option<LoadedCert>) -> CertSet {
        let has_acme = acme.is_some();
        let default = usize::from(has_acme && !files.is_empty());
        let certs: Vec<LoadedCert> = acme.into_iter().chain(files).collect();
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
            acme: has_acme,
            default,
            exact,
            wildcard,
        }
    }

    /// The certificates read from configured files.
    pub fn files(&self) -> &[LoadedCert] {
        &self.certs[usize::from(self.acme)..]
    }

    /// The certificate obtained by ACME.
    pub fn acme(&self) -> Option<&LoadedCert> {
        self.certs.first().filter(|_| self.acme)
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
            .unwrap_or(self.default);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(dir: &std::path::Path, stem: &str, names: &[&str]) -> LoadedCert {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        let (c, k) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&c, pem).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        super::super::certs::load(&c, &k).unwrap()
    }

    fn picked(set: &CertSet, name: Option<&str>) -> Option<String> {
        set.pick(name).map(|c| {
            c.cert_file
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
    }

    #[test]
    fn exact_names_then_wildcards_then_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let set = CertSet::new(vec![
            cert(dir.path(), "a", &["a.example"]),
            cert(dir.path(), "w", &["*.b.example"]),
            cert(dir.path(), "x", &["x.b.example"]),
        ]);
        assert_eq!(picked(&set, Some("A.Example.")).as_deref(), Some("a"));
        assert_eq!(picked(&set, Some("y.b.example")).as_deref(), Some("w"));
        assert_eq!(picked(&set, Some("x.b.example")).as_deref(), Some("x"));
        assert_eq!(picked(&set, Some("z.y.b.example")).as_deref(), Some("a"));
        assert_eq!(picked(&set, None).as_deref(), Some("a"));
    }

    #[test]
    fn the_acme_certificate_wins_its_names_and_the_files_keep_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let files = vec![
            cert(dir.path(), "a", &["a.example", "shared.example"]),
            cert(dir.path(), "b", &["b.example"]),
        ];
        let acme = cert(dir.path(), "acme", &["shared.example", "new.example"]);
        let set = CertSet::with_acme(files, Some(acme.clone()));
        assert_eq!(
            picked(&set, Some("shared.example")).as_deref(),
            Some("acme")
        );
        assert_eq!(picked(&set, Some("new.example")).as_deref(), Some("acme"));
        assert_eq!(picked(&set, Some("b.example")).as_deref(), Some("b"));
        assert_eq!(picked(&set, Some("other.example")).as_deref(), Some("a"));
        assert_eq!(set.files().len(), 2);
        assert_eq!(set.acme().unwrap().cert_file, acme.cert_file);

        let alone = CertSet::with_acme(Vec::new(), Some(acme));
        assert_eq!(picked(&alone, None).as_deref(), Some("acme"));
        assert!(alone.files().is_empty());
    }

    #[test]
    fn with_no_certificate_nothing_is_picked() {
        let set = CertSet::with_acme(Vec::new(), None);
        assert!(set.pick(Some("a.example")).is_none());
        assert!(set.pick(None).is_none());
        assert!(set.acme().is_none());
    }
}
