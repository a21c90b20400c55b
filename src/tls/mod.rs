//! TLS termination on `listen.https` with rustls: certificates chosen by
//! SNI, TLS 1.2 and 1.3 only, ALPN `h2` and `http/1.1`, and certificates
//! re-read without a restart — on change, on `SIGHUP` and on reload — with
//! a bad replacement refused while the old one keeps serving.

pub mod certs;
mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use certs::{CertError, CertStatus, LoadedCert};
pub use store::{CertSet, CertStore};

use crate::acme::AcmeHandle;
use crate::config::CertFiles;

/// Protocols offered by ALPN, most preferred first.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Reads every certificate of `files`; any failure refuses the whole set.
pub fn load_set(files: &[CertFiles]) -> Result<CertSet, CertError> {
    load_all(files).map(CertSet::new)
}

fn load_all(files: &[CertFiles]) -> Result<Vec<LoadedCert>, CertError> {
    files.iter().map(|f| certs::load(&f.cert, &f.key)).collect()
}

/// The TLS side of the HTTPS listener: the acceptor and the certificates it serves.
pub struct Terminator {
    store: Arc<CertStore>,
    acceptor: TlsAcceptor,
    files: ArcSwap<Vec<CertFiles>>,
    /// When the files were last seen, to notice a change.
    seen: std::sync::Mutex<Vec<Option<FileStamp>>>,
    /// Held while a new set is built from the one in force, so that a file
    /// reload and a new ACME certificate cannot undo each other.
    replacing: std::sync::Mutex<()>,
    /// The ACME side, when `[tls.acme]` keeps a certificate.
    acme: Option<Arc<AcmeHandle>>,
}

impl std::fmt::Debug for Terminator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminator")
            .field("files", &self.files.load())
            .finish()
    }
}

/// What identifies a version of a file without reading it.
type FileStamp = (SystemTime, u64);

fn stamp(path: &std::path::Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn stamps(files: &[CertFiles]) -> Vec<Option<FileStamp>> {
    files
        .iter()
        .flat_map(|f| [stamp(&f.cert), stamp(&f.key)])
        .collect()
}

impl Terminator {
    /// Loads `files` and builds the rustls server configuration.
    pub fn new(files: Vec<CertFiles>) -> Result<Terminator, CertError> {
        let set = load_set(&files)?;
        warn_expiring(&set);
        let store = Arc::new(CertStore::new(set));
        let mut config = rustls::ServerConfig::builder_with_provider(certs::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| CertError::File {
                file: String::new(),
                reason: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&store) as Arc<dyn rustls::server::ResolvesServerCert>);
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Terminator {
            store,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            seen: std::sync::Mutex::new(stamps(&files)),
            files: ArcSwap::from_pointee(files),
            replacing: std::sync::Mutex::new(()),
            acme: None,
        })
    }

    /// The same, with certificates also obtained by ACME through `handle`.
    pub fn with_acme(mut self, handle: Arc<AcmeHandle>) -> Terminator {
        self.acme = Some(handle);
        self
    }

    /// The ACME side, if any.
    pub fn acme(&self) -> Option<&Arc<AcmeHandle>> {
        self.acme.as_ref()
    }

    /// The acceptor for new connections.
    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// The certificates in force and when they expire, for `/metrics`.
    pub fn expiries(&self) -> Vec<crate::metrics::CertExpiry> {
        self.store
            .current()
            .certs
            .iter()
            .map(|c| crate::metrics::CertExpiry {
                file: c.cert_file.display().to_string(),
                names: c.names.join(","),
                not_after: c
                    .not_after
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64),
            })
            .collect()
    }

    /// The certificates in force, as `/api/v1/status` shows them.
    pub fn status(&self) -> Vec<CertStatus> {
        let now = SystemTime::now();
        self.store
            .current()
            .certs
            .iter()
            .map(|c| c.status(now))
            .collect()
    }

    /// Re-reads the certificate files (`files`, when the configuration
    /// named new ones). A set that does not load is refused and the one in
    /// force keeps serving.
    pub fn reload(&self, files: Option<Vec<CertFiles>>) -> Result<(), CertError> {
        // The files in force are read under the lock, so that a poll cannot
        // put back the files a configuration reload just replaced.
        let _replacing = self.replacing.lock().unwrap_or_else(|e| e.into_inner());
        let files = files.unwrap_or_else(|| self.files.load().as_ref().clone());
        let seen = stamps(&files);
        match load_all(&files) {
            Ok(certs) => {
                let acme = self.store.current().acme().cloned();
                let set = CertSet::with_acme(certs, acme);
                warn_expiring(&set);
                tracing::info!(certificates = set.certs.len(), "TLS certificates loaded");
                self.store.replace(set);
                self.files.store(Arc::new(files));
                *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = seen;
                Ok(())
            }
            Err(e) => {
                // Remember the broken version, so that it is reported once,
                // not on every poll.
                *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = seen;
                tracing::error!(error = %e, "new TLS certificate refused; the one in force keeps serving");
                Err(e)
            }
        }
    }

    /// Serves `cert`, obtained by ACME, for its names from the next
    /// handshake on, in place of the previous one.
    pub fn install_acme(&self, cert: LoadedCert) {
        let _replacing = self.replacing.lock().unwrap_or_else(|e| e.into_inner());
        let files = self.store.current().files().to_vec();
        tracing::info!(names = ?cert.names, file = %cert.cert_file.display(), "ACME certificate in force");
        self.store.replace(CertSet::with_acme(files, Some(cert)));
    }

    /// The ACME certificate in force, if any.
    pub fn acme_cert(&self) -> Option<LoadedCert> {
        self.store.current().acme().cloned()
    }

    /// Whether any certificate or key file changed since it was last read.
    fn changed(&self) -> bool {
        let now = stamps(&self.files.load());
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) != now
    }
}

/// Polls the certificate files every `interval` and reloads them when they
/// change; warns once a day about certificates that expire soon.
pub async fn watch(terminator: Arc<Terminator>, interval: Duration, stop: CancellationToken) {
    let mut last_warning = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        if terminator.changed() {
            let t = Arc::clone(&terminator);
            let _ = tokio::task::spawn_blocking(move || t.reload(None)).await;
        }
        if last_warning.elapsed() >= Duration::from_secs(24 * 3600) {
            last_warning = tokio::time::Instant::now();
            warn_expiring(&terminator.store.current());
        }
    }
}

fn warn_expiring(set: &CertSet) {
    let now = SystemTime::now();
    for cert in &set.certs {
        let status = cert.status(now);
        if status.expires_soon {
            tracing::warn!(file = %status.file, names = ?status.names, not_after = %status.not_after, days_left = status.days_left, "TLS certificate expires soon");
        }
    }
}

impl CertFiles {
    /// Files at `cert` and `key`.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> CertFiles {
        CertFiles {
            cert: cert.into(),
            key: key.into(),
        }
    }
}
