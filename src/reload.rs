//! Reloading the configuration without a restart (`SIGHUP`, `POST
//! /api/v1/reload`): the file is re-read and validated, a new generation
//! is built and handed to the state owner, which keeps the health, drains
//! and events of every region and backend the new file keeps, and the
//! health probers are restarted for the new backend list. A file that does
//! not validate changes nothing.
//!
//! Backend names found by DNS take the same path: when their addresses
//! change, the file as last read is expanded again with them and put in
//! force as a new generation.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigError};
use crate::discovery::{Discovery, NameStatus};
use crate::generation::Generation;
use crate::health::{probe_loop, HttpProbe, ProbeTarget};
use crate::state::{Shared, Signal};
use crate::status_page::TemplateError;
use crate::tls::Terminator;

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// Meridian was started from configuration text, not a file.
    #[error(
        "this Meridian was not started from a configuration file, so there is nothing to re-read"
    )]
    NoFile,
    /// The file cannot be read or does not validate.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The status page template does not compile or render.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// Meridian is shutting down.
    #[error("Meridian is shutting down")]
    Stopping,
}

/// What a successful reload did.
#[derive(Debug, Clone, Serialize)]
pub struct Reloaded {
    /// Always `true`: the new configuration is in force.
    pub reloaded: bool,
    /// The new generation's number (1 after the first reload).
    pub generation: u64,
    /// Changed settings that are read only at start-up and keep their old
    /// values until a restart.
    pub restart_needed: Vec<&'static str>,
    /// Settings that are valid but probably not what was meant.
    pub warnings: Vec<String>,
}

/// Re-reads the configuration on demand, one reload at a time.
#[derive(Debug)]
pub struct Reloader {
    shared: Arc<Shared>,
    signals: mpsc::Sender<Signal>,
    stop: CancellationToken,
    tasks: TaskTracker,
    /// The HTTPS listener's certificates, re-read by each reload.
    tls: Option<Arc<Terminator>>,
    /// The running probers' stop token, replaced by each reload.
    probes: std::sync::Mutex<CancellationToken>,
    /// What generations are built from; locked by one reload or DNS
    /// change at a time.
    sources: tokio::sync::Mutex<Sources>,
    /// The names found by DNS, as of the last lookup, for the status API.
    dns_status: arc_swap::ArcSwap<Vec<NameStatus>>,
    /// Wakes the DNS follower when a reload changes the names.
    names_changed: tokio::sync::Notify,
}

/// What a generation is built from: the configuration file as written, and
/// the addresses of its backend names.
#[derive(Debug)]
struct Sources {
    file: Arc<Config>,
    dns: Discovery,
    /// Bumped by each reload, so that lookups made meanwhile from the
    /// previous sources are not put in force over it.
    version: u64,
}

impl Reloader {
    /// A reloader over `shared`; probers report to `signals`, run in
    /// `tasks`, and stop with `stop`; `tls` holds the HTTPS certificates.
    /// `file` is the configuration as written, whose names `dns` follows.
    pub fn new(
        shared: Arc<Shared>,
        signals: mpsc::Sender<Signal>,
        stop: CancellationToken,
        tasks: TaskTracker,
        tls: Option<Arc<Terminator>>,
        (file, dns): (Arc<Config>, Discovery),
    ) -> Reloader {
        Reloader {
            shared,
            tls,
            signals,
            probes: std::sync::Mutex::new(stop.child_token()),
            stop,
            tasks,
            dns_status: arc_swap::ArcSwap::from_pointee(dns.status()),
            sources: tokio::sync::Mutex::new(Sources {
                file,
                dns,
                version: 0,
            }),
            names_changed: tokio::sync::Notify::new(),
        }
    }

    /// The backend names found by DNS and their addresses.
    pub fn dns_status(&self) -> Vec<NameStatus> {
        self.dns_status
            .load()
            .iter()
            .map(|n| n.clone().now())
            .collect()
    }

    /// Looks up backend names as their records expire, and puts a changed
    /// set of addresses in force, until Meridian stops.
    pub async fn follow_dns(self: Arc<Self>) {
        loop {
            let due = self.sources.lock().await.dns.next_due();
            let wait = async {
                match due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = self.names_changed.notified() => continue,
                _ = wait => {}
            }
            // Looked up without the lock, so that a silent DNS server holds
            // up no reload, and abandoned when Meridian stops.
            let (mut dns, version) = {
                let sources = self.sources.lock().await;
                (sources.dns.clone(), sources.version)
            };
            let changed = tokio::select! {
                _ = self.stop.cancelled() => return,
                changed = dns.resolve_due() => changed,
            };
            let mut sources = self.sources.lock().await;
            if sources.version != version {
                // A reload came in between; what is still due is asked again.
                continue;
            }
            sources.dns = dns;
            self.dns_status.store(Arc::new(sources.dns.status()));
            if !changed {
                continue;
            }
            let config = Arc::new(sources.dns.expand(&sources.file));
            match self.publish(config).await {
                Ok(g) => tracing::info!(
                    generation = g.number,
                    "backends found by DNS changed: new configuration generation in force"
                ),
                Err(ReloadError::Stopping) => return,
                Err(e) => {
                    tracing::error!(error = %e, "the backends found by DNS could not be put in force")
                }
            }
        }
    }

    /// Builds the next generation from `config` and puts it in force with
    /// its probers.
    async fn publish(&self, config: Arc<Config>) -> Result<Arc<Generation>, ReloadError> {
        let number = self.shared.load().generation.number + 1;
        let generation = Arc::new(Generation::new(config, number, self.shared.metrics())?);
        if !self.shared.reload(Arc::clone(&generation)).await {
            return Err(ReloadError::Stopping);
        }
        self.start_probes(&generation);
        Ok(generation)
    }

    /// Starts one prober per backend of `generation`, stopping those of
    /// the previous one.
    pub fn start_probes(&self, generation: &Generation) {
        let token = self.stop.child_token();
        let old = std::mem::replace(
            &mut *self.probes.lock().unwrap_or_else(|e| e.into_inner()),
            token.clone(),
        );
        old.cancel();
        let config = &generation.config;
        let probe = HttpProbe::new(config.proxy.connect_timeout);
        for (ri, region) in config.regions.iter().enumerate() {
            for (bi, backend) in region.backends.iter().enumerate() {
                self.tasks.spawn(probe_loop(
                    probe.clone(),
                    ProbeTarget {
                        generation: generation.number,
                        region: ri,
                        backend: bi,
                    },
                    backend.clone(),
                    region.health.clone(),
                    self.signals.clone(),
                    token.clone(),
                    Arc::clone(self.shared.metrics()),
                ));
            }
        }
    }

    /// Re-reads the configuration file and puts it in force. The work runs
    /// in a task of its own, so that a caller that goes away (an admin
    /// client that timed out) cannot leave a new configuration published
    /// without its probers.
    pub async fn reload(self: &Arc<Self>) -> Result<Reloaded, ReloadError> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let result = this.reload_now().await;
            // Counted here, not by the caller, who may have gone away.
            this.shared.metrics().reload(result.is_ok());
            result
        })
        .await
        .unwrap_or(Err(ReloadError::Stopping))
    }

    async fn reload_now(&self) -> Result<Reloaded, ReloadError> {
        let mut sources = self.sources.lock().await;
        let current = self.shared.load();
        let path = current.config.path.clone().ok_or(ReloadError::NoFile)?;
        let config = tokio::task::spawn_blocking(move || Config::load(&path))
            .await
            .map_err(|_| ReloadError::Stopping)??;
        let restart_needed = read_at_start(&current.config, &config);
        let mut warnings = config.warnings();
        if let (Some(terminator), Some(tls)) = (&self.tls, &config.tls) {
            // The new file validated, so its certificates loaded a moment
            // ago; they are read again here to swap them in.
            let (t, files) = (Arc::clone(terminator), tls.certificates.clone());
            let result = tokio::task::spawn_blocking(move || t.reload(Some(files)))
                .await
                .map_err(|_| ReloadError::Stopping)?;
            if let Err(e) = result {
                warnings.push(format!(
                    "the new TLS certificates were refused ({e}); the ones in force keep serving"
                ));
            }
        }
        // Names new to this file are looked up before it is put in force;
        // the lookups are kept only if it is.
        let mut dns = sources.dns.clone();
        dns.track(&config);
        dns.resolve_unanswered().await;
        let generation = self.publish(Arc::new(dns.expand(&config))).await?;
        let number = generation.number;
        self.dns_status.store(Arc::new(dns.status()));
        self.shared.metrics().dns_keep(dns.names());
        *sources = Sources {
            file: Arc::new(config),
            dns,
            version: sources.version + 1,
        };
        self.names_changed.notify_one();
        tracing::info!(
            file = %generation.config.source,
            generation = number,
            regions = generation.config.regions.len(),
            "configuration reloaded"
        );
        if !restart_needed.is_empty() {
            tracing::warn!(settings = ?restart_needed, "changed settings that only a restart applies");
        }
        for warning in &warnings {
            tracing::warn!("{warning}");
        }
        Ok(Reloaded {
            reloaded: true,
            generation: number,
            restart_needed,
            warnings,
        })
    }
}

/// The settings that differ between `old` and `new` but are only read at
/// start-up: listeners, ACME, connection limits, the admin API, the GeoIP file.
pub fn read_at_start(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    if old.listen.http != new.listen.http {
        keys.push("listen.http");
    }
    if old.listen.https != new.listen.https || old.tls.is_some() != new.tls.is_some() {
        keys.push("listen.https");
    }
    let acme = |c: &Config| c.tls.as_ref().and_then(|t| t.acme.clone());
    if acme(old) != acme(new) {
        keys.push("tls.acme");
    }
    if old.alerts != new.alerts {
        keys.push("alerts");
    }
    if old.listen.h2c != new.listen.h2c {
        keys.push("listen.h2c");
    }
    if old.listen.proxy_protocol != new.listen.proxy_protocol {
        keys.push("listen.proxy_protocol");
    }
    if old.limits != new.limits {
        keys.push("limits");
    }
    if old.admin != new.admin {
        keys.push("admin");
    }
    if old.geo.database != new.geo.database || old.geo.reload_interval != new.geo.reload_interval {
        keys.push("geo.database");
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_read_at_start_are_named_when_they_change() {
        let base = "[[region]]\nname = \"us\"\nbackends = [\"http://10.0.0.1:80\"]\n";
        let old = Config::parse("t.toml", base).unwrap();
        assert!(read_at_start(&old, &old).is_empty());
        let changed = |extra: &str| {
            let new = Config::parse("t.toml", &format!("{extra}\n{base}")).unwrap();
            read_at_start(&old, &new)
        };
        assert_eq!(changed("[listen]\nhttp = \"127.0.0.1:9\""), ["listen.http"]);
        assert_eq!(changed("[limits]\nmax_connections = 7"), ["limits"]);
        assert_eq!(changed("[admin]"), ["admin"]);
        // Regions, health checks and the status page apply at once.
        let new = Config::parse(
            "t.toml",
            &base
                .replace("10.0.0.1:80", "10.0.0.2:80")
                .replace("us", "eu"),
        )
        .unwrap();
        assert!(read_at_start(&old, &new).is_empty());
    }
}
