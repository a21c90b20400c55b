//! `meridian demo`: tiny in-process backends that name their region, and a
//! control listener that breaks a whole region the ways nodes break (off the
//! network, hanging after accepting, answering raw 503s) and brings it back,
//! so that routing and failover can be watched with nothing but curl.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// The demo's configuration file, built into the binary.
pub const DEMO_CONFIG: &str = include_str!("../config/demo.toml");

/// Address of the demo control listener.
pub const CONTROL_ADDR: &str = "127.0.0.1:18080";

/// The demo configuration, parsed.
pub fn config() -> Config {
    Config::parse("config/demo.toml (built in)", DEMO_CONFIG)
        .expect("the built-in demo configuration is valid")
}

/// How a demo region's backends behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoMode {
    /// Serving.
    Up,
    /// Off the network: the ports are closed.
    Down,
    /// Accepting connections and never answering, health checks included.
    Hang,
    /// Answering every request, health checks included, with a bare 503.
    Fail503,
}

impl DemoMode {
    fn parse(action: &str) -> Option<DemoMode> {
        match action {
            "up" => Some(DemoMode::Up),
            "down" => Some(DemoMode::Down),
            "hang" => Some(DemoMode::Hang),
            "503" => Some(DemoMode::Fail503),
            _ => None,
        }
    }
}

/// Running demo backends, one switch per region.
#[derive(Debug, Clone)]
pub struct DemoBackends {
    switches: Arc<HashMap<String, watch::Sender<DemoMode>>>,
    stop: CancellationToken,
}

impl DemoBackends {
    /// Starts a backend for every backend address of every region in `config`.
    /// Each answers `Hello from region <name>` on any path and `ok` on the
    /// health path.
    pub async fn start(config: &Config) -> std::io::Result<DemoBackends> {
        let stop = CancellationToken::new();
        let mut switches = HashMap::new();
        for region in &config.regions {
            let (tx, rx) = watch::channel(DemoMode::Up);
            for backend in &region.backends {
                let addr: SocketAddr = backend.address.parse().map_err(|_| {
                    std::io::Error::other(format!(
                        "demo backend {} is not IP:PORT",
                        backend.address
                    ))
                })?;
                // Bind once now so that a busy port is reported at start-up.
                let listener = TcpListener::bind(addr).await?;
                let name = format!("{} ({})", region.name, backend.address);
                tokio::spawn(backend_loop(
                    Some(listener),
                    addr,
                    region.name.clone(),
                    name,
                    rx.clone(),
                    stop.clone(),
                ));
            }
            switches.insert(region.name.clone(), tx);
        }
        Ok(DemoBackends {
            switches: Arc::new(switches),
            stop,
        })
    }

    /// Puts `region`'s backends in `mode`. Returns false for an unknown region.
    pub fn set(&self, region: &str, mode: DemoMode) -> bool {
        match self.switches.get(region) {
            Some(tx) => {
                tx.send_replace(mode);
                true
            }
            None => false,
        }
    }

    /// Serves the control API on `listener`: `POST /regions/{name}/down`,
    /// `/hang`, `/503` and `/up`.
    pub async fn serve_control(self, listener: TcpListener) {
        loop {
            let (stream, _) = tokio::select! {
                _ = self.stop.cancelled() => return,
                a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            };
            let this = self.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let this = this.clone();
                    async move { Ok::<_, Infallible>(this.control(req)) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    fn control(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let parts: Vec<&str> = req.uri().path().trim_matches('/').split('/').collect();
        let (status, text) = match (req.method(), parts.as_slice()) {
            (&Method::POST, ["regions", region, action]) if DemoMode::parse(action).is_some() => {
                let mode = DemoMode::parse(action).unwrap_or(DemoMode::Up);
                if self.set(region, mode) {
                    (
                        StatusCode::OK,
                        format!("demo region {region} is now {action}\n"),
                    )
                } else {
                    (StatusCode::NOT_FOUND, format!("no demo region {region}\n"))
                }
            }
            _ => (
                StatusCode::NOT_FOUND,
                "use POST /regions/{name}/down, /hang, /503 or /up\n".to_owned(),
            ),
        };
        let mut r = Response::new(Full::new(Bytes::from(text)));
        *r.status_mut() = status;
        r
    }

    /// Stops every demo backend.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// Serves unless the region is down; while it is down the port is closed
/// and open connections are dropped, as when a node dies.
async fn backend_loop(
    mut listener: Option<TcpListener>,
    addr: SocketAddr,
    region: String,
    name: String,
    mut up: watch::Receiver<DemoMode>,
    stop: CancellationToken,
) {
    loop {
        if *up.borrow_and_update() == DemoMode::Down {
            listener = None;
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = up.changed() => if changed.is_err() { return },
            }
            continue;
        }
        let l = match listener.take() {
            Some(l) => l,
            None => match TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "demo backend cannot listen again");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let went_down = CancellationToken::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => { went_down.cancel(); return }
                changed = up.changed() => {
                    if changed.is_err() || *up.borrow() == DemoMode::Down {
                        went_down.cancel();
                        break;
                    }
                }
                accepted = l.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let (region, name, went_down, mode) = (region.clone(), name.clone(), went_down.clone(), up.clone());
                    tokio::spawn(async move {
                        let service = service_fn(move |req: Request<Incoming>| {
                            let mode = *mode.borrow();
                            let body = if req.uri().path() == "/healthz" {
                                "ok\n".to_owned()
                            } else {
                                format!("Hello from region {region}: backend {name}, path {}\n", req.uri().path())
                            };
                            async move {
                                match mode {
                                    DemoMode::Hang => std::future::pending::<()>().await,
                                    DemoMode::Fail503 => {
                                        let mut r = Response::new(Full::new(Bytes::from_static(b"<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>\n")));
                                        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                                        return Ok::<_, Infallible>(r);
                                    }
                                    DemoMode::Up | DemoMode::Down => {}
                                }
                                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                            }
                        });
                        let builder = auto::Builder::new(TokioExecutor::new());
                        let conn = builder.serve_connection(TokioIo::new(stream), service);
                        tokio::select! {
                            _ = conn => {}
                            _ = went_down.cancelled() => {}
                        }
                    });
                }
            }
        }
        drop(l);
    }
}

/// The lines `meridian demo` prints.
pub fn instructions(http: SocketAddr, admin: Option<SocketAddr>, control: SocketAddr) -> String {
    let admin = admin.map_or_else(|| "127.0.0.1:9901".to_owned(), |a| a.to_string());
    format!(
        r#"
Meridian demo is running: regions "us" (2 backends) and "eu" (1 backend) on loopback.
Try, in another terminal:

  # You are sent to your preferred region, us (run it twice: round robin).
  curl -s http://{http}/
  # Clients from 127.0.0.2 prefer eu (a [[geo.override]]).
  curl -s --interface 127.0.0.2 http://{http}/
  # A client in the Netherlands, by the built-in GeoIP database, prefers eu
  # (loopback is a trusted proxy in the demo, so X-Forwarded-For counts).
  curl -s -H 'X-Forwarded-For: 193.0.6.139' http://{http}/
  # Pin a region, as an operator's synthetic check would.
  curl -s -H 'X-Meridian-Pin: eu' http://{http}/
  # Regions, backends and their health.
  curl -s http://{admin}/api/v1/status
  # Make us hang after accepting, as a half-alive node does: requests are
  # hedged to eu within a quarter of a second, and us is taken out.
  curl -s -X POST http://{control}/regions/us/hang
  curl -s -i http://{http}/
  # Or answer raw 503s: retried on eu, never shown.
  curl -s -X POST http://{control}/regions/us/503
  curl -s -i http://{http}/
  # Take region us off the network: requests fail over to eu at once.
  curl -s -X POST http://{control}/regions/us/down
  curl -s -i http://{http}/
  # Take eu down too: the branded status page answers (503 once the checks notice, within a second).
  curl -s -X POST http://{control}/regions/eu/down
  curl -s -i -H 'Accept: text/html' http://{http}/
  # Tell users what is going on: the page shows the incident at once.
  curl -s -X PUT -d '{{"title": "Degraded service", "message": "We are on it."}}' http://{admin}/api/v1/incident
  curl -s -H 'Accept: application/json' http://{http}/
  # Bring us back: after 2 good checks (about a second) and the 5 s fail-back
  # hold, its users return to it.
  curl -s -X POST http://{control}/regions/us/up
  curl -s http://{http}/
  # Drain us as an operator would: new requests go to eu, none are lost.
  curl -s -X POST http://{control}/regions/eu/up
  curl -s -X POST http://{admin}/api/v1/regions/us/drain
  curl -s http://{http}/
  curl -s -X POST http://{admin}/api/v1/regions/us/undrain

Press Ctrl-C to stop.
"#
    )
}
