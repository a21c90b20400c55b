//! Certificates without a human: an ACME (RFC 8555) account keeps a
//! certificate for `[tls.acme] domains`, proving control of each name with
//! HTTP-01 answers on the plain listener, stores it in the cache directory
//! for the next start, and renews it `renew_before` its expiry.
//!
//! The client is `instant-acme`. Every issuance attempt is bounded by
//! [`ATTEMPT_TIMEOUT`]; a failed one is retried after a growing delay
//! ([`retry_delay`]) while the certificate in force keeps serving.

pub mod cache;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::Acme;
use crate::tls::{CertError, LoadedCert, Terminator};

/// Where the CA fetches HTTP-01 answers (RFC 8555 §8.3).
pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// The longest one issuance attempt may take, from account to certificate.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(300);

/// How long the CA may take to validate the names, and to issue.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(250))
    .backoff(1.5)
    .timeout(Duration::from_secs(120));

/// Why a certificate could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The ACME server refused, failed or could not be reached.
    #[error("ACME: {0}")]
    Protocol(#[from] instant_acme::Error),
    /// The order did not become ready or valid.
    #[error("the order for {domains:?} is {status}: {detail}")]
    Order {
        /// The names ordered.
        domains: Vec<String>,
        /// The order's status.
        status: String,
        /// What the CA said.
        detail: String,
    },
    /// A name offered no HTTP-01 challenge.
    #[error("the CA offers no HTTP-01 challenge for {0}")]
    NoHttp01(String),
    /// The cache directory cannot be written.
    #[error("{path}: {source}")]
    Cache {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The issued certificate does not load.
    #[error("the issued certificate cannot be used: {0}")]
    Certificate(CertError),
    /// The attempt took longer than [`ATTEMPT_TIMEOUT`].
    #[error("no certificate within {0:?}")]
    Timeout(Duration),
}

/// What `/api/v1/status` shows of ACME.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AcmeStatus {
    /// The names the certificate is kept for.
    pub domains: Vec<String>,
    /// `pending` (no certificate yet), `valid` or `failing` (the last
    /// attempt failed; a certificate may still be serving).
    pub state: &'static str,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When the next renewal or retry is due (RFC 3339, UTC).
    pub next_attempt: Option<String>,
}

/// What the ACME task shares with the request path and the admin API: the
/// HTTP-01 answers being offered, and its status.
#[derive(Debug)]
pub struct AcmeHandle {
    /// Key authorizations by token; read by requests without a lock.
    answers: ArcSwap<HashMap<String, String>>,
    status: ArcSwap<AcmeStatus>,
}

impl AcmeHandle {
    /// A handle for a certificate for `domains`, none obtained yet.
    pub fn new(domains: Vec<String>) -> AcmeHandle {
        AcmeHandle {
            answers: ArcSwap::default(),
            status: ArcSwap::from_pointee(AcmeStatus {
                domains,
                state: "pending",
                last_error: None,
                next_attempt: None,
            }),
        }
    }

    /// The answer to an HTTP-01 request for `path`, while the CA may ask.
    pub fn answer(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(CHALLENGE_PREFIX)?;
        self.answers.load().get(token).cloned()
    }

    /// The status in force.
    pub fn status(&self) -> AcmeStatus {
        self.status.load().as_ref().clone()
    }

    fn offer(&self, token: &str, key_authorization: &str) {
        self.answers.rcu(|answers| {
            let mut answers = HashMap::clone(answers);
            answers.insert(token.to_owned(), key_authorization.to_owned());
            answers
        });
    }

    fn withdraw_all(&self) {
        self.answers.store(Arc::default());
    }

    fn set_status(&self, state: &'static str, last_error: Option<String>, next: SystemTime) {
        let domains = self.status.load().domains.clone();
        self.status.store(Arc::new(AcmeStatus {
            domains,
            state,
            last_error,
            next_attempt: Some(
                humantime_serde::re::humantime::format_rfc3339_seconds(next).to_string(),
            ),
        }));
    }
}

/// The delay before retrying after `failures` failed attempts in a row:
/// one minute, doubling, at most an hour — slow enough for the CA's limits
/// on failed validations.
pub fn retry_delay(failures: u32) -> Duration {
    let minutes = 1u64 << failures.saturating_sub(1).min(6);
    Duration::from_secs(60 * minutes.min(60))
}

/// Keeps a certificate for `acme.domains` in `terminator` until `stop`:
/// the stored one at once if it is usable, a new one when none is or when
/// its renewal is due.
pub async fn run(
    acme: Acme,
    terminator: Arc<Terminator>,
    handle: Arc<AcmeHandle>,
    stop: CancellationToken,
) {
    if let Err(e) = cache::prepare(&acme.cache) {
        tracing::error!(error = %e, "the ACME cache directory cannot be created; certificates will not survive a restart");
    }
    if let Some(stored) = cache::certificate(&acme.cache) {
        if acme.domains.iter().all(|d| stored.names.contains(d))
            && stored.not_after > SystemTime::now()
        {
            terminator.install_acme(stored);
        }
    }
    let mut failures = 0u32;
    loop {
        let now = SystemTime::now();
        let due = terminator.acme_cert().map_or(SystemTime::UNIX_EPOCH, |c| {
            cache::renewal_due(&c, &acme.domains, acme.renew_before)
        });
        if due > now {
            // Only a certificate in force and not due gets here: valid.
            handle.set_status("valid", None, due);
            // Wake at least daily, so that a changed clock is noticed.
            let wait = due
                .duration_since(now)
                .unwrap_or_default()
                .min(Duration::from_secs(24 * 3600));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => continue,
            }
        }
        tracing::info!(domains = ?acme.domains, directory = %acme.directory, "ordering an ACME certificate");
        let attempt = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(ATTEMPT_TIMEOUT, issue(&acme, &handle)) => {
                r.unwrap_or(Err(AcmeError::Timeout(ATTEMPT_TIMEOUT)))
            }
        };
        handle.withdraw_all();
        match attempt {
            Ok(cert) => {
                failures = 0;
                let due = cache::renewal_due(&cert, &acme.domains, acme.renew_before);
                terminator.install_acme(cert);
                if due <= SystemTime::now() {
                    // A clock ahead of the CA's, or a certificate without a
                    // configured name: never order back to back.
                    let delay = retry_delay(1);
                    tracing::warn!(retry_in = ?delay, "the new ACME certificate is already due for renewal (check the clock and the domains)");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
            Err(e) => {
                failures += 1;
                let delay = retry_delay(failures);
                tracing::error!(error = %e, retry_in = ?delay, failures, "no ACME certificate; the one in force (if any) keeps serving");
                handle.set_status("failing", Some(e.to_string()), SystemTime::now() + delay);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// One issuance: account, order, HTTP-01 for each name, certificate.
async fn issue(acme: &Acme, handle: &AcmeHandle) -> Result<LoadedCert, AcmeError> {
    let account = account(acme).await?;
    let identifiers: Vec<Identifier> = acme
        .domains
        .iter()
        .map(|d| Identifier::Dns(d.clone()))
        .collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz?;
        if matches!(authz.status, AuthorizationStatus::Valid) {
            continue;
        }
        let name = authz.identifier().to_string();
        let mut challenge = authz
            .challenge(ChallengeType::Http01)
            .ok_or(AcmeError::NoHttp01(name))?;
        handle.offer(&challenge.token, challenge.key_authorization().as_str());
        challenge.set_ready().await?;
    }
    let status = order.poll_ready(&POLL).await?;
    if status != OrderStatus::Ready {
        return Err(order_error(acme, &mut order, status));
    }
    let key_pem = order.finalize().await?;
    let chain_pem = order.poll_certificate(&POLL).await?;
    let cert = cache::save_certificate(&acme.cache, &chain_pem, &key_pem)?;
    tracing::info!(names = ?cert.names, not_after = %humantime_serde::re::humantime::format_rfc3339_seconds(cert.not_after), "ACME certificate issued");
    Ok(cert)
}

fn order_error(acme: &Acme, order: &mut instant_acme::Order, status: OrderStatus) -> AcmeError {
    let state = order.state();
    let mut detail = state
        .error
        .as_ref()
        .map(|p| p.to_string())
        .unwrap_or_default();
    for authz in &state.authorizations {
        if let Some(problem) = authz
            .state
            .as_ref()
            .and_then(|a| a.challenges.iter().find_map(|c| c.error.as_ref()))
        {
            detail.push_str(&format!("; {problem}"));
        }
    }
    AcmeError::Order {
        domains: acme.domains.clone(),
        status: format!("{status:?}").to_ascii_lowercase(),
        detail,
    }
}

/// The stored account, or a new one (stored for the next time).
async fn account(acme: &Acme) -> Result<Account, AcmeError> {
    // instant-acme's HTTPS client takes rustls' process-wide provider; make
    // it the one Meridian terminates with (a no-op when one is set).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let builder = || match &acme.ca_file {
        Some(path) => Account::builder_with_root(path),
        None => Account::builder(),
    };
    if let Some(credentials) = cache::account(&acme.cache, &acme.directory) {
        return Ok(builder()?.from_credentials(credentials).await?);
    }
    let contact = acme.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder()?
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            acme.directory.clone(),
            None,
        )
        .await?;
    cache::save_account(&acme.cache, &credentials);
    tracing::info!(directory = %acme.directory, account = account.id(), "ACME account created");
    Ok(account)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_slow_down_to_an_hour() {
        let delays: Vec<u64> = (1..=9).map(|f| retry_delay(f).as_secs() / 60).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(retry_delay(u32::MAX), Duration::from_secs(3600));
    }

    #[test]
    fn answers_only_offered_tokens_under_the_challenge_path() {
        let handle = AcmeHandle::new(vec!["a.example".into()]);
        assert_eq!(handle.answer("/.well-known/acme-challenge/tok"), None);
        handle.offer("tok", "tok.thumb");
        assert_eq!(
            handle.answer("/.well-known/acme-challenge/tok").as_deref(),
            Some("tok.thumb")
        );
        assert_eq!(handle.answer("/tok"), None);
        assert_eq!(handle.answer("/.well-known/acme-challenge/other"), None);
        handle.withdraw_all();
        assert_eq!(handle.answer("/.well-known/acme-challenge/tok"), None);
    }

    #[test]
    fn status_reports_failures_and_the_next_attempt() {
        let handle = AcmeHandle::new(vec!["a.example".into()]);
        assert_eq!(handle.status().state, "pending");
        handle.set_status("failing", Some("refused".into()), SystemTime::UNIX_EPOCH);
        let s = handle.status();
        assert_eq!(s.state, "failing");
        assert_eq!(s.last_error.as_deref(), Some("refused"));
        assert_eq!(s.next_attempt.as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(s.domains, ["a.example"]);
    }
}
