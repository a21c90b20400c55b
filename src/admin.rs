//! The admin API on its own listener (axum): `GET /healthz` without
//! authentication, and everything under `/api/v1` behind a bearer token
//! compared in constant time. Answers and errors are JSON.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use subtle::ConstantTimeEq;

use crate::health::BackendState;
use crate::state::{Event, RegionState, Shared};

/// The admin router over `shared`, requiring `token` for `/api/v1` when set.
pub fn router(shared: Arc<Shared>, token: Option<String>) -> Router {
    let api = Router::new()
        .route("/status", get(status))
        .layer(middleware::from_fn_with_state(
            Arc::new(token),
            require_token,
        ))
        .with_state(Arc::clone(&shared));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .nest("/api/v1", api)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
}

/// A JSON error answer: `{"error": "..."}`.
pub fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn require_token(
    State(token): State<Arc<Option<String>>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = token.as_deref() else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(p) if bool::from(p.as_bytes().ct_eq(expected.as_bytes())) => next.run(request).await,
        _ => {
            let mut r = error(StatusCode::UNAUTHORIZED, "missing or invalid bearer token");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            r
        }
    }
}

/// `GET /api/v1/status` body.
#[derive(Debug, Serialize)]
pub struct StatusBody {
    /// Every region.
    pub regions: Vec<RegionStatus>,
    /// The posted incident; always `null` until incidents can be posted.
    pub incident: Option<()>,
    /// Recent transitions, oldest first.
    pub events: Vec<Event>,
}

/// One region in `/api/v1/status`.
#[derive(Debug, Serialize)]
pub struct RegionStatus {
    /// Name.
    pub name: String,
    /// Derived state.
    pub state: RegionState,
    /// Whether an operator drained it (drains are not available yet, so `false`).
    pub drained: bool,
    /// Backends taking traffic.
    pub healthy_backends: usize,
    /// Regions tried when this one cannot serve.
    pub failover: Vec<String>,
    /// Backends.
    pub backends: Vec<BackendStatus>,
}

/// One backend in `/api/v1/status`.
#[derive(Debug, Serialize)]
pub struct BackendStatus {
    /// `host:port`.
    pub address: String,
    /// Observed health.
    pub state: BackendState,
    /// Whether an operator drained it (drains are not available yet, so `false`).
    pub drained: bool,
    /// Why the last health check failed, if it did.
    pub last_error: Option<String>,
}

/// Builds the status body from the current snapshot.
pub fn status_body(shared: &Shared) -> StatusBody {
    let snapshot = shared.load();
    let config = &snapshot.config;
    let regions = config
        .regions
        .iter()
        .zip(&snapshot.regions)
        .map(|(r, v)| RegionStatus {
            name: r.name.clone(),
            state: v.state,
            drained: false,
            healthy_backends: v.healthy_backends(),
            failover: r
                .failover
                .iter()
                .map(|&i| config.regions[i].name.clone())
                .collect(),
            backends: r
                .backends
                .iter()
                .zip(&v.backends)
                .map(|(b, bv)| BackendStatus {
                    address: b.address.clone(),
                    state: bv.state,
                    drained: false,
                    last_error: bv.last_error.clone(),
                })
                .collect(),
        })
        .collect();
    StatusBody {
        regions,
        incident: None,
        events: snapshot.events.iter().cloned().collect(),
    }
}

async fn status(State(shared): State<Arc<Shared>>) -> Json<StatusBody> {
    Json(status_body(&shared))
}
