//! TLS to `https://` backends: the certificates a backend's chain must lead
//! to (the system's roots, or a region's `ca_file` alone) and the rustls
//! client settings made from them. Live traffic and health checks take their
//! settings from here, so that both verify a backend the same way.
//!
//! The settings are made while the configuration is checked, so they are
//! made once per configuration generation: the system's roots are read at
//! most once per load or reload, and a `ca_file` that cannot be used is a
//! configuration error rather than a failure of every request.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

/// Why a `ca_file` or the rustls settings could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BackendTlsError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}; expected a PEM file of one or more CA certificates")]
    Read {
        /// The file, as configured.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid PEM.
    #[error("{path} is not a valid PEM file: {detail}; expected one or more CA certificates")]
    Pem {
        /// The file, as configured.
        path: PathBuf,
        /// What the PEM reader said.
        detail: String,
    },
    /// The file holds no `CERTIFICATE` block.
    #[error("{path} contains no certificate; expected one or more \"-----BEGIN CERTIFICATE-----\" blocks")]
    Empty {
        /// The file, as configured.
        path: PathBuf,
    },
    /// A certificate block does not hold a certificate usable as a root.
    #[error("certificate {index} of {path} cannot be used as a CA: {source}")]
    Certificate {
        /// The file, as configured.
        path: PathBuf,
        /// 1-based position of the certificate in the file.
        index: usize,
        /// What rustls said.
        source: rustls::Error,
    },
    /// rustls refused the protocol versions (a build without TLS 1.2).
    #[error("cannot make TLS client settings: {0}")]
    Settings(rustls::Error),
}

/// Where the certificates that backends are verified against come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// The system's root certificates, of which `certificates` could be read.
    System {
        /// How many were loaded; 0 means every https backend without
        /// `ca_file` fails verification.
        certificates: usize,
    },
    /// Only the certificates of the region's `ca_file`.
    CaFile {
        /// The file, as configured.
        path: PathBuf,
        /// How many certificates it holds.
        certificates: usize,
    },
}

impl std::fmt::Display for Roots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Roots::System { certificates } => {
                write!(f, "the system's root certificates ({certificates})")
            }
            Roots::CaFile { path, certificates } => write!(
                f,
                "ca_file {} ({certificates} certificate{})",
                path.display(),
                if *certificates == 1 { "" } else { "s" }
            ),
        }
    }
}

/// The rustls client settings for the https backends of one trust choice,
/// shared by every backend that makes the same choice.
pub struct TlsSettings {
    /// Where the roots came from.
    pub roots: Roots,
    /// For live traffic: resumes sessions, so that a new pooled connection
    /// to a backend seen before costs less.
    pub traffic: Arc<ClientConfig>,
    /// For health checks: never resumes, so that each check makes the full
    /// handshake and certificate check that a new client would.
    pub checks: Arc<ClientConfig>,
}

impl std::fmt::Debug for TlsSettings {
    // The root store would fill a screen; where it came from says enough.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("roots", &self.roots)
            .finish_non_exhaustive()
    }
}

impl TlsSettings {
    /// Settings that trust only the certificates in `path` (PEM).
    pub fn from_ca_file(path: &Path) -> Result<TlsSettings, BackendTlsError> {
        let pem = std::fs::read(path).map_err(|source| BackendTlsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|e| BackendTlsError::Pem {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(BackendTlsError::Empty {
                path: path.to_path_buf(),
            });
        }
        let mut store = RootCertStore::empty();
        for (i, cert) in certs.into_iter().enumerate() {
            store
                .add(cert)
                .map_err(|source| BackendTlsError::Certificate {
                    path: path.to_path_buf(),
                    index: i + 1,
                    source,
                })?;
        }
        let roots = Roots::CaFile {
            path: path.to_path_buf(),
            certificates: store.len(),
        };
        TlsSettings::new(roots, store)
    }

    /// Settings that trust the system's root certificates. Certificates
    /// that cannot be read or parsed are skipped; when none is left,
    /// [`Roots::System`] says so and the configuration warns about it.
    pub fn system() -> Result<TlsSettings, BackendTlsError> {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::debug!(%error, "a system root certificate could not be read");
        }
        let mut store = RootCertStore::empty();
        let (added, _ignored) = store.add_parsable_certificates(found.certs);
        TlsSettings::new(
            Roots::System {
                certificates: added,
            },
            store,
        )
    }

    fn new(roots: Roots, store: RootCertStore) -> Result<TlsSettings, BackendTlsError> {
        let store = Arc::new(store);
        let make = |resume: bool| -> Result<Arc<ClientConfig>, BackendTlsError> {
            // The provider is named rather than taken from the process
            // default, which rustls cannot choose when a dependency enables
            // a second one.
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let mut config = ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(BackendTlsError::Settings)?
                .with_root_certificates(Arc::clone(&store))
                .with_no_client_auth();
            // Backends speak HTTP/1.1; offering h2 would let one answer in a
            // protocol the pooled client is not set up for.
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            if !resume {
                config.resumption = rustls::client::Resumption::disabled();
            }
            Ok(Arc::new(config))
        };
        Ok(TlsSettings {
            roots,
            traffic: make(true)?,
            checks: make(false)?,
        })
    }
}

/// How one https backend is reached: its name for SNI and verification,
/// and the settings of its region.
#[derive(Debug, Clone)]
pub struct BackendTls {
    /// The backend URL's host: sent as SNI (unless an IP address, which
    /// TLS does not send) and checked against the certificate, an IP
    /// address against an IP address SAN.
    pub server_name: ServerName<'static>,
    /// The rustls client settings.
    pub settings: Arc<TlsSettings>,
}

impl PartialEq for BackendTls {
    fn eq(&self, other: &Self) -> bool {
        self.server_name == other.server_name && self.settings.roots == other.settings.roots
    }
}

impl Eq for BackendTls {}

/// The TLS server name of a backend URL's host (`[::1]` loses its brackets).
pub(crate) fn server_name(host: &url::Host<&str>) -> Result<ServerName<'static>, String> {
    match host {
        url::Host::Ipv4(ip) => Ok(ServerName::IpAddress(std::net::IpAddr::V4(*ip).into())),
        url::Host::Ipv6(ip) => Ok(ServerName::IpAddress(std::net::IpAddr::V6(*ip).into())),
        url::Host::Domain(name) => ServerName::try_from(name.to_string())
            .map_err(|e| format!("\"{name}\" cannot be used as a TLS server name: {e}")),
    }
}
