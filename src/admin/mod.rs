//! The admin API on its own listener (axum): `GET /healthz` without
//! authentication, and everything under `/api/v1` behind a bearer token
//! compared in constant time. Answers and errors are JSON.

mod changes;
mod status;

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use subtle::ConstantTimeEq;

pub use changes::AdminApi;
pub use status::{
    backend_status, region_status, status_body, BackendStatus, RegionStatus, StatusBody,
};

use crate::reload::Reloader;
use crate::state::Shared;
use crate::tls::Terminator;

/// Largest request body the API reads: an incident is a few kilobytes.
const MAX_BODY: usize = 64 * 1024;

/// The admin router over `shared`: `token` guards `/api/v1` when set,
/// drains and the incident are saved to `state_file` when set,
/// `reloader` re-reads the configuration, and `tls` has the HTTPS
/// certificates whose expiry the status shows.
pub fn router(
    shared: Arc<Shared>,
    token: Option<String>,
    state_file: Option<PathBuf>,
    reloader: Option<Arc<Reloader>>,
    tls: Option<Arc<Terminator>>,
) -> Router {
    let scrape = (Arc::clone(&shared), tls.clone());
    let token = Arc::new(token);
    let api = Arc::new(AdminApi::new(shared, state_file, reloader, tls));
    let api = Router::new()
        .route("/status", get(status))
        .route("/regions/{region}/drain", post(changes::drain_region))
        .route("/regions/{region}/undrain", post(changes::undrain_region))
        .route(
            "/regions/{region}/backends/{backend}/drain",
            post(changes::drain_backend),
        )
        .route(
            "/regions/{region}/backends/{backend}/undrain",
            post(changes::undrain_backend),
        )
        .route(
            "/incident",
            axum::routing::put(changes::set_incident).delete(changes::clear_incident),
        )
        .route("/reload", post(changes::reload))
        .route("/alerts/test", post(changes::test_alert))
        .method_not_allowed_fallback(|| async {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&token),
            require_token,
        ))
        .with_state(api);
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || metrics(Arc::clone(&scrape.0), scrape.1.clone())).layer(
                middleware::from_fn_with_state(Arc::clone(&token), require_token),
            ),
        )
        .nest("/api/v1", api)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
}

/// `GET /metrics`: every metric in the Prometheus text format.
async fn metrics(shared: Arc<Shared>, tls: Option<Arc<Terminator>>) -> Response {
    let certificates = tls.map(|t| t.expiries()).unwrap_or_default();
    let text = shared.metrics().render(shared.load(), certificates);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// A JSON error answer: `{"error": "..."}`.
pub fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// A refused API call: its status and what to tell the caller.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    /// 400, 404, 409 or 503.
    pub status: StatusCode,
    /// The `error` field of the answer.
    pub message: String,
}

impl ApiError {
    /// An error with `status` saying `message`.
    pub fn new(status: StatusCode, message: &str) -> ApiError {
        ApiError {
            status,
            message: message.to_owned(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.status, &self.message)
    }
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

async fn status(State(api): State<Arc<AdminApi>>) -> Json<StatusBody> {
    let shared = api.shared();
    let mut body = status_body(&shared.load()).count_upgrades(shared.upgrades());
    body.certificates = api.certificates();
    body.acme = api.acme();
    body.dns = api.dns();
    Json(body)
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
        let config = Arc::new(Config::parse("t.toml", text).unwrap());
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let generation = Arc::new(crate::generation::Generation::new(config, 0, &metrics).unwrap());
        Arc::new(Shared::new(
            generation,
            crate::state::Control::default(),
            signals,
            metrics,
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
        let router = router(shared(), Some("t0ken".into()), None, None, None);
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
        let router = router(shared(), Some("t0ken".into()), None, None, None);
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
