//! A webhook receiver on loopback for alert tests: records every POST (when
//! it arrived, its JSON) and answers 200, 500, or never.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::time::Instant;

/// How the receiver answers.
pub const ACCEPT: u8 = 0;
pub const FAIL_500: u8 = 1;
pub const HANG: u8 = 2;

/// A webhook on loopback that records every POST (when it arrived, its
/// JSON) and answers as `mode` says.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<(Instant, Value)>>>,
    pub mode: Arc<AtomicU8>,
}

impl Receiver {
    pub async fn start(mode: u8) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let r = Receiver {
            addr: listener.local_addr().unwrap(),
            received: Arc::default(),
            mode: Arc::new(AtomicU8::new(mode)),
        };
        let state = r.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| receive(req, state.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        r
    }

    pub fn url(&self) -> String {
        format!("http://{}/services/T0/B0/secret", self.addr)
    }

    pub fn messages(&self) -> Vec<(Instant, Value)> {
        self.received.lock().unwrap().clone()
    }
}

async fn receive(
    req: Request<Incoming>,
    state: Receiver,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    state.received.lock().unwrap().push((Instant::now(), json));
    let mode = state.mode.load(Ordering::Relaxed);
    if mode == HANG {
        std::future::pending::<()>().await;
    }
    let status = if mode == FAIL_500 {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    let mut r = Response::new(Full::new(Bytes::from_static(b"ok")));
    *r.status_mut() = status;
    Ok(r)
}
