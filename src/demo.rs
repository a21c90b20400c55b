//! `meridian demo`: tiny in-process backends that name their region, and a
//! control listener that takes a whole region off the network and brings it
//! back, so that routing and failover can be watched with nothing but curl.

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

/// Running demo backends, one switch per region.
#[derive(Debug, Clone)]
pub struct DemoBackends {
    switches: Arc<HashMap<String, watch::Sender<bool>>>,
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
            let (tx, rx) = watch::channel(true);
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

    /// Takes `region`'s backends off the network (`up = false`) or brings them
    /// back. Returns false for an unknown region.
    pub fn set(&self, region: &str, up: bool) -> bool {
        match self.switches.get(region) {
            Some(tx) => {
                tx.send_replace(up);
                true
            }
            None => false,
        }
    }

    /// Serves the control API on `listener`: `POST /regions/{name}/down` and `/up`.
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
            (&Method::POST, ["regions", region, action @ ("up" | "down")]) => {
                if self.set(region, *action == "up") {
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
                "use POST /regions/{name}/down or POST /regions/{name}/up\n".to_owned(),
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

/// Serves while the region is up; while it is down the port is closed and
/// open connections are dropped, as when a node dies.
async fn backend_loop(
    mut listener: Option<TcpListener>,
    addr: SocketAddr,
    region: String,
    name: String,
    mut up: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    loop {
        if !*up.borrow_and_update() {
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
                    if changed.is_err() || !*up.borrow() {
                        went_down.cancel();
                        break;
                    }
                }
                accepted = l.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let (region, name, went_down) = (region.clone(), name.clone(), went_down.clone());
                    tokio::spawn(async move {
                        let service = service_fn(move |req: Request<Incoming>| {
                            let body = if req.uri().path() == "/healthz" {
                                "ok\n".to_owned()
                            } else {
                                format!("Hello from region {region}: backend {name}, path {}\n", req.uri().path())
                            };
                            async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
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
  # Regions, backends and their health.
  curl -s http://{admin}/api/v1/status
  # Take region us off the network: requests fail over to eu at once.
  curl -s -X POST http://{control}/regions/us/down
  curl -s -i http://{http}/
  # Take eu down too: the branded status page answers (503 once the checks notice, within a second).
  curl -s -X POST http://{control}/regions/eu/down
  curl -s -i -H 'Accept: text/html' http://{http}/
  # Bring us back: after 2 good checks (about a second) it serves again.
  curl -s -X POST http://{control}/regions/us/up
  curl -s http://{http}/

Press Ctrl-C to stop.
"#
    )
}
