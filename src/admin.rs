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
        .and_then(|v| v.split_once(' '))
        // The scheme name is case-insensitive (RFC 9110 §11.1).
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
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
    /// Recovered, but waiting out its fail-back hold before its users return.
    pub failback_held: bool,
    /// During slow start, the share of its users sent back to it, 0 to 1.
    pub slow_start_share: f64,
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
    /// Ejections in a row by passive checks.
    pub ejections: u32,
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
            failback_held: v.held,
            slow_start_share: f64::from(v.ramp_permille) / 1000.0,
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
                    ejections: bv.ejections,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn shared() -> Arc<Shared> {
        let text = "[[region]]\nname = \"us\"\nbackends = [\"http://10.0.0.1:80\"]\n";
        let (signals, _) = tokio::sync::mpsc::channel(1);
        Arc::new(Shared::new(
            Arc::new(Config::parse("t.toml", text).unwrap()),
            signals,
        ))
    }

    async fn call(
        router: Router,
        path: &str,
        auth: Option<&str>,
    ) -> (StatusCode, serde_json::Value) {
        let mut request = Request::get(path);
        if let Some(auth) = auth {
            request = request.header(header::AUTHORIZATION, auth);
        }
        let response = router
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    #[tokio::test]
    async fn the_token_is_required_and_compared_exactly() {
        let router = router(shared(), Some("t0ken".into()));
        for auth in [
            None,
            Some("Bearer"),
            Some("Bearer t0ke"),
            Some("Bearer t0kenX"),
            Some("Basic t0ken"),
            Some("t0ken"),
        ] {
            let (status, body) = call(router.clone(), "/api/v1/status", auth).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}");
            assert_eq!(body["error"], "missing or invalid bearer token");
        }
        for auth in ["Bearer t0ken", "bearer t0ken", "BEARER  t0ken "] {
            let (status, body) = call(router.clone(), "/api/v1/status", Some(auth)).await;
            assert_eq!(status, StatusCode::OK, "{auth}");
            assert_eq!(body["regions"][0]["name"], "us");
            assert_eq!(body["regions"][0]["state"], "unknown");
            assert_eq!(body["regions"][0]["backends"][0]["state"], "unknown");
        }
    }

    #[tokio::test]
    async fn healthz_needs_no_token_and_unknown_paths_are_json_404() {
        let router = router(shared(), Some("t0ken".into()));
        let response = router
            .clone()
            .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let (status, body) = call(router, "/api/v2/status", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"], "no such endpoint");
    }
}
