//! An upgraded connection (a WebSocket) once both sides agreed to switch:
//! bytes copied both ways through fixed buffers, never whole messages,
//! until either side closes, nothing moves for `proxy.upgrade_idle_timeout`,
//! the region or backend carrying it stays drained for `proxy.drain_grace`,
//! or Meridian stops for good.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::http1::ClientStream;
use crate::state::{OpenUpgrade, Shared};

/// Longest wait for both sides to hand over their connections after the
/// `101`: the client's comes once the answer is written to it.
const HANDOVER_WAIT: Duration = Duration::from_secs(10);

/// Size of each direction's copy buffer: what one tunnel holds in memory.
const COPY_BUFFER: usize = 16 * 1024;

/// Why a tunnel ended.
#[derive(Debug, thiserror::Error)]
pub(super) enum TunnelEnd {
    /// Both sides closed their halves, or one side broke.
    #[error("closed by a peer: {0}")]
    Closed(String),
    /// Nothing moved either way for this long.
    #[error("idle for {0:?}")]
    Idle(Duration),
    /// The region or backend stayed drained for the grace period.
    #[error("drained, after a grace of {0:?}")]
    Drained(Duration),
    /// Meridian's shutdown grace period is over.
    #[error("Meridian is stopping")]
    Shutdown,
    /// A side never handed over its connection.
    #[error("upgrade failed: {0}")]
    Handover(String),
}

/// Where a tunnel goes, for drain checks and logs.
#[derive(Debug, Clone)]
pub(super) struct Route {
    /// Region name.
    pub(super) region: String,
    /// Backend `host:port`.
    pub(super) backend: String,
}

/// The client's side of a tunnel, once the answer is written.
pub(super) enum ClientSide {
    /// From hyper: an RFC 8441 stream on an HTTP/2 connection, or an
    /// HTTP/1.1 connection on a listener that also takes h2c.
    Hyper(OnUpgrade),
    /// From the connection itself: an HTTP/1.1 connection served in turns,
    /// handed over once hyper's turn wrote the `101` (see [`crate::http1`]).
    HandedOver(crate::http1::Receiver),
}

impl ClientSide {
    /// The client's byte stream, once it has switched.
    async fn stream(self) -> Result<Box<dyn ClientStream>, String> {
        match self {
            ClientSide::Hyper(upgrade) => match upgrade.await {
                Ok(upgraded) => Ok(Box::new(TokioIo::new(upgraded))),
                Err(e) => Err(e.to_string()),
            },
            ClientSide::HandedOver(receiver) => receiver
                .await
                .map_err(|_| "the client's connection closed before switching".to_owned()),
        }
    }
}

/// A tunnel to run once the `101` has been sent.
pub(super) struct Tunnel {
    pub(super) client: ClientSide,
    pub(super) backend: OnUpgrade,
    pub(super) route: Route,
    pub(super) shared: Arc<Shared>,
    pub(super) hard_stop: CancellationToken,
    /// Counts the tunnel as open from the `101` to its end.
    pub(super) open: OpenUpgrade,
}

impl Tunnel {
    /// Copies until the tunnel ends, and logs why it did.
    pub(super) async fn run(self) {
        let route = self.route.clone();
        let started = Instant::now();
        let end = self.copy().await;
        match &end {
            TunnelEnd::Closed(_) => {
                tracing::debug!(region = %route.region, backend = %route.backend, secs = started.elapsed().as_secs(), reason = %end, "upgraded connection ended")
            }
            _ => {
                tracing::info!(region = %route.region, backend = %route.backend, secs = started.elapsed().as_secs(), reason = %end, "upgraded connection closed by Meridian")
            }
        }
    }

    async fn copy(self) -> TunnelEnd {
        let Tunnel {
            client,
            backend,
            route,
            shared,
            hard_stop,
            // Dropped last, once both connections are closed.
            open: _open,
        } = self;
        let backend = async { backend.await.map_err(|e| e.to_string()) };
        let handover = async { tokio::try_join!(client.stream(), backend) };
        let (client, backend) = tokio::select! {
            _ = hard_stop.cancelled() => return TunnelEnd::Shutdown,
            r = tokio::time::timeout(HANDOVER_WAIT, handover) => match r {
                Ok(Ok(pair)) => pair,
                Ok(Err(e)) => return TunnelEnd::Handover(e),
                Err(_) => return TunnelEnd::Handover(format!("not done within {HANDOVER_WAIT:?}")),
            },
        };
        let clock = Arc::new(Clock::new());
        let mut client = Watched::new(client, Arc::clone(&clock));
        let mut backend = Watched::new(TokioIo::new(backend), Arc::clone(&clock));
        let copying = tokio::io::copy_bidirectional_with_sizes(
            &mut client,
            &mut backend,
            COPY_BUFFER,
            COPY_BUFFER,
        );
        tokio::pin!(copying);
        let mut changes = shared.subscribe();
        let mut watching = true;
        let idle = shared.load().config.proxy.upgrade_idle_timeout;
        let idle_timer = tokio::time::sleep(idle);
        tokio::pin!(idle_timer);
        let grace_timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(grace_timer);
        let mut grace = drain_grace(&shared, &route);
        if let Some(g) = grace {
            grace_timer.as_mut().reset(Instant::now() + g);
        }
        let end = loop {
            tokio::select! {
                r = copying.as_mut() => break TunnelEnd::Closed(match r {
                    Ok((up, down)) => format!("{up} bytes up, {down} bytes down"),
                    Err(e) => e.to_string(),
                }),
                _ = hard_stop.cancelled() => break TunnelEnd::Shutdown,
                () = idle_timer.as_mut() => {
                    let deadline = clock.last() + idle;
                    if deadline <= Instant::now() {
                        break TunnelEnd::Idle(idle);
                    }
                    idle_timer.as_mut().reset(deadline);
                }
                () = grace_timer.as_mut(), if grace.is_some() => {
                    break TunnelEnd::Drained(grace.unwrap_or_default());
                }
                changed = changes.changed(), if watching => {
                    if changed.is_err() {
                        // The state is gone: nothing can be drained any more.
                        watching = false;
                        continue;
                    }
                    // The grace runs from the drain being seen, and a second
                    // drain of the same tunnel does not restart it.
                    match (grace, drain_grace(&shared, &route)) {
                        (None, Some(g)) => {
                            tracing::info!(region = %route.region, backend = %route.backend, grace = ?g, "upgraded connection drained: closing after the grace period");
                            grace = Some(g);
                            grace_timer.as_mut().reset(Instant::now() + g);
                        }
                        (Some(_), None) => grace = None,
                        _ => {}
                    }
                }
            }
        };
        end
    }
}

/// The drain grace when the tunnel's region or backend is drained now, or
/// its backend is gone from the configuration (its DNS record removed, say).
fn drain_grace(shared: &Shared, route: &Route) -> Option<Duration> {
    let snapshot = shared.load();
    let control = &snapshot.control;
    let backend = snapshot
        .config
        .regions
        .iter()
        .find(|r| r.name == route.region)
        .and_then(|r| r.backends.iter().find(|b| b.address == route.backend));
    let drained = control.region_drained(&route.region)
        || backend.is_none_or(|b| control.drains(&route.region, b));
    drained.then_some(snapshot.config.proxy.drain_grace)
}

/// When bytes last moved through a tunnel, either way; shared by its two
/// sides, which run on one task, so relaxed ordering is enough.
#[derive(Debug)]
struct Clock {
    base: Instant,
    last_ms: AtomicU64,
}

impl Clock {
    fn new() -> Self {
        Clock {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// One side of a tunnel, which marks the clock whenever it reads bytes.
struct Watched<T> {
    io: T,
    clock: Arc<Clock>,
}

impl<T> Watched<T> {
    fn new(io: T, clock: Arc<Clock>) -> Self {
        Watched { io, clock }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.clock.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
