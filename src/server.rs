//! Wiring: binds the listeners, starts the health probers and the state
//! owner, serves connections under the configured limits, and shuts down
//! gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::acme::AcmeHandle;
use crate::config::Config;
use crate::connections::{accept_loop, Endpoint, Stops};
use crate::discovery::Discovery;
use crate::generation::Generation;
use crate::proxy::Proxy;
use crate::reload::Reloader;
use crate::state::{self, control, Control, Shared};
use crate::status_page::TemplateError;
use crate::tls::Terminator;

/// Why Meridian could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Its address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The status page template does not compile or render.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The GeoIP database cannot be opened or is corrupt.
    #[error(transparent)]
    GeoDatabase(#[from] crate::geo::DbError),
    /// A TLS certificate or key cannot be used.
    #[error("TLS certificate: {0}")]
    Certificate(#[from] crate::tls::CertError),
    /// The state file cannot be read, or a corrupt one cannot be moved aside.
    #[error("admin.state_file: {0}")]
    StateFile(#[from] crate::state::control::StateFileError),
}

/// A started Meridian: its bound addresses, its state, and the means to stop it.
#[derive(Debug)]
pub struct Running {
    /// Address of the public HTTP listener.
    pub http_addr: SocketAddr,
    /// Address of the public HTTPS listener, if any.
    pub https_addr: Option<SocketAddr>,
    /// Address of the admin listener, if any.
    pub admin_addr: Option<SocketAddr>,
    /// The shared state, for inspection.
    pub shared: Arc<Shared>,
    /// Re-reads the configuration file.
    pub reloader: Arc<Reloader>,
    stop: CancellationToken,
    hard_stop: CancellationToken,
    accept: Vec<tokio::task::JoinHandle<()>>,
    connections: TaskTracker,
    background: TaskTracker,
    grace: Duration,
}

/// Starts Meridian with `config`: binds every listener before returning, so
/// that the addresses in [`Running`] accept connections at once.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let file = Arc::new(config);
    let metrics = Arc::new(crate::metrics::Metrics::default());
    // Backend names are looked up before the first generation, so that
    // their addresses are checked from the start; a name whose lookup
    // fails has no backend until an answer comes.
    let mut dns = Discovery::new(file.dns.clone(), Arc::clone(&metrics));
    dns.track(&file);
    dns.resolve_unanswered().await;
    let config = Arc::new(dns.expand(&file));
    let generation = Arc::new(Generation::new(Arc::clone(&config), 0, &metrics)?);
    let total: usize = config.regions.iter().map(|r| r.backends.len()).sum();
    // Each prober has at most one report in flight; ejection requests that
    // find the channel full are dropped and asked again by the next run.
    // DNS may add backends later: room for a thousand more.
    let (signals, signals_rx) = mpsc::channel(total * 2 + 2048);
    let control = restore_control(&config).await?;
    let shared = Arc::new(Shared::new(
        Arc::clone(&generation),
        control,
        signals.clone(),
        metrics,
    ));
    if let Some(path) = &config.geo.database {
        // Every record is read: not on the runtime's threads.
        let file = path.clone();
        let db = tokio::task::spawn_blocking(move || crate::geo::GeoDb::open(&file))
            .await
            .map_err(|e| crate::geo::DbError {
                file: path.display().to_string(),
                reason: e.to_string(),
            })??;
        shared.geodb_slot().store(Arc::new(db));
    }
    {
        let db = shared.geodb();
        tracing::info!(database = %db.name(), database_type = db.database_type(), "GeoIP database in use");
    }
    let stop = CancellationToken::new();
    let background = TaskTracker::new();
    let connections = TaskTracker::new();

    let (http, http_addr) = bind("public http", config.listen.http).await?;
    let terminator = match &config.tls {
        Some(tls) => {
            let terminator = Terminator::new(tls.certificates.clone())?;
            Some(Arc::new(match &tls.acme {
                Some(acme) => terminator.with_acme(Arc::new(AcmeHandle::new(acme.domains.clone()))),
                None => terminator,
            }))
        }
        None => None,
    };
    let https = match config.listen.https {
        Some(addr) => Some(bind("public https", addr).await?),
        None => None,
    };
    let https_addr = https.as_ref().map(|(_, a)| *a);
    let admin = match &config.admin {
        Some(a) => Some((
            TcpListener::bind(a.listen)
                .await
                .map_err(|source| StartError::Bind {
                    what: "admin",
                    addr: a.listen,
                    source,
                })?,
            a.token.clone(),
            a.state_file.clone(),
        )),
        None => None,
    };
    let admin_addr = admin.as_ref().and_then(|(l, _, _)| l.local_addr().ok());

    if let Some(alerts) = &config.alerts {
        let queue = Arc::new(crate::alerts::AlertQueue::new(alerts.queue));
        shared.send_alerts_to(Arc::clone(&queue));
        background.spawn(crate::alerts::run(
            queue,
            alerts.clone(),
            Arc::clone(shared.metrics()),
            stop.clone(),
        ));
    }
    background.spawn(state::run_owner(
        Arc::clone(&shared),
        signals_rx,
        stop.clone(),
    ));
    let reloader = Arc::new(Reloader::new(
        Arc::clone(&shared),
        signals.clone(),
        stop.clone(),
        background.clone(),
        terminator.clone(),
        (file, dns),
    ));
    reloader.start_probes(&generation);
    background.spawn(Arc::clone(&reloader).follow_dns());
    if let Some(path) = &config.geo.database {
        background.spawn(crate::geo::watch(
            path.clone(),
            config.geo.reload_interval,
            shared.geodb_slot(),
            stop.clone(),
        ));
    }

    if let (Some(t), Some(tls)) = (&terminator, &config.tls) {
        background.spawn(crate::tls::watch(
            Arc::clone(t),
            tls.reload_interval,
            stop.clone(),
        ));
        if let (Some(acme), Some(handle)) = (&tls.acme, t.acme()) {
            background.spawn(crate::acme::run(
                acme.clone(),
                Arc::clone(t),
                Arc::clone(handle),
                stop.clone(),
            ));
        }
    }

    let hard_stop = CancellationToken::new();
    // Upgraded connections count as connections for shutdown: they get the
    // same grace period, then are closed.
    let proxy = Proxy::new(Arc::clone(&shared), https_addr.map(|a| a.port()))
        .with_tunnels(connections.clone(), hard_stop.clone())
        .with_acme(terminator.as_ref().and_then(|t| t.acme().cloned()));
    let stops = Stops {
        graceful: stop.clone(),
        hard: hard_stop.clone(),
    };
    // One budget of connections for both public listeners.
    let slots = Arc::new(Semaphore::new(config.limits.max_connections));
    let limits = Arc::new(config.limits.clone());
    let mut accept = vec![tokio::spawn(accept_loop(
        http,
        Endpoint {
            tls: None,
            proxy_protocol: config.listen.proxy_protocol,
            h2c: config.listen.h2c,
        },
        proxy.clone(),
        Arc::clone(&limits),
        Arc::clone(&slots),
        stops.clone(),
        connections.clone(),
    ))];
    if let (Some((listener, _)), Some(t)) = (https, &terminator) {
        accept.push(tokio::spawn(accept_loop(
            listener,
            Endpoint {
                tls: Some(Arc::clone(t)),
                proxy_protocol: config.listen.proxy_protocol,
                h2c: false,
            },
            proxy,
            limits,
            slots,
            stops,
            connections.clone(),
        )));
    }
    if let Some((listener, token, state_file)) = admin {
        if token.is_none() {
            tracing::warn!(admin = ?admin_addr, "the admin API has no token: anyone who can reach this host's loopback can drain regions; set admin.token_env or admin.token_file");
        }
        let router = crate::admin::router(
            Arc::clone(&shared),
            token,
            state_file,
            Some(Arc::clone(&reloader)),
            terminator.clone(),
        );
        let stop = stop.clone();
        background.spawn(async move {
            let serve =
                axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "admin listener failed");
            }
        });
    }
    tracing::info!(http = %http_addr, https = ?https_addr, admin = ?admin_addr, regions = config.regions.len(), "meridian is serving");
    Ok(Running {
        http_addr,
        https_addr,
        admin_addr,
        shared,
        reloader,
        stop,
        hard_stop,
        accept,
        connections,
        background,
        grace: config.limits.shutdown_grace,
    })
}

/// Connections the kernel may hold for a public listener before it accepts them.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds listener `what` on `addr`, returning it and its bound address.
async fn bind(
    what: &'static str,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), StartError> {
    let error = |source| StartError::Bind { what, addr, source };
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(error)?;
    // As std's and tokio's own bind do, so that a restart can bind at once.
    socket.set_reuseaddr(true).map_err(error)?;
    socket.bind(addr).map_err(error)?;
    // A burst of new clients waits in the kernel while the accept loop
    // catches up; a backlog that overflows drops their SYNs, and each then
    // waits a second for its retransmission. The kernel caps it at
    // net.core.somaxconn.
    let listener = socket.listen(LISTEN_BACKLOG).map_err(error)?;
    let bound = listener.local_addr().map_err(error)?;
    Ok((listener, bound))
}

/// Drains and the incident saved by the last run, if `admin.state_file` is
/// set. A corrupt file is moved aside and logged, and Meridian starts
/// without drains; a file that cannot be read at all stops the start, since
/// serving a drained region by mistake is worse than not starting.
async fn restore_control(config: &Config) -> Result<Control, StartError> {
    let Some(path) = config.admin.as_ref().and_then(|a| a.state_file.clone()) else {
        return Ok(Control::default());
    };
    let file = path.clone();
    let loaded = tokio::task::spawn_blocking(move || control::load(&file))
        .await
        .map_err(|e| control::StateFileError::Io {
            file: path.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })??;
    if let Some((aside, why)) = &loaded.set_aside {
        tracing::error!(error = %why, moved_to = %aside.display(), "the state file is corrupt: it was moved aside and Meridian starts with no drains and no incident");
    }
    let c = &loaded.control;
    if !c.drained_regions.is_empty() || !c.drained_backends.is_empty() || c.incident.is_some() {
        tracing::info!(
            file = %path.display(),
            drained_regions = ?c.drained_regions,
            drained_backends = c.drained_backends.len(),
            incident = c.incident.is_some(),
            "drains and incident restored"
        );
    }
    Ok(loaded.control)
}

impl Running {
    /// Stops accepting, lets requests in flight finish within the grace
    /// period, closes whatever is still open after it, then stops everything
    /// else.
    pub async fn shutdown(self) {
        self.stop.cancel();
        // Once the accept loop has returned no connection can start, so the
        // wait below cannot miss one.
        for accept in self.accept {
            let _ = accept.await;
        }
        self.connections.close();
        if tokio::time::timeout(self.grace, self.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?self.grace, open = self.connections.len(), "grace period over; closing the remaining connections");
            self.hard_stop.cancel();
            self.connections.wait().await;
        }
        self.background.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.background.wait()).await;
    }

    /// Runs until SIGTERM or SIGINT, then shuts down gracefully; SIGHUP
    /// reloads the configuration file.
    pub async fn run_until_signal(self) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
                _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    // Not awaited here, so that a signal to stop is heard at once.
                    let reloader = Arc::clone(&self.reloader);
                    tokio::spawn(async move {
                        if let Err(e) = reloader.reload().await {
                            tracing::error!("reload refused, the configuration in force is unchanged: {e}");
                        }
                    });
                }
            }
        }
        tokio::select! {
            () = self.shutdown() => {}
            _ = term.recv() => tracing::warn!("second signal: exiting without waiting"),
            _ = int.recv() => tracing::warn!("second signal: exiting without waiting"),
        }
        Ok(())
    }
}
