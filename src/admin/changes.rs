//! What operators change through the API: drains and the incident. Changes
//! are made one at a time, saved to the state file, then put in force; the
//! answer is the resulting object.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::status::{backend_status, region_status};
use super::ApiError;
use crate::reload::{ReloadError, Reloader};
use crate::state::{control, BackendRef, Control, Incident, Shared, Snapshot};
use crate::tls::Terminator;

// What the status page shows in full: longer incidents are refused here
// rather than cut short in front of users.
use crate::status_page::{
    MAX_INCIDENT_LINK as MAX_LINK, MAX_INCIDENT_MESSAGE as MAX_MESSAGE,
    MAX_INCIDENT_TITLE as MAX_TITLE,
};

/// The state behind the API's handlers.
#[derive(Debug)]
pub struct AdminApi {
    shared: Arc<Shared>,
    state_file: Option<PathBuf>,
    reloader: Option<Arc<Reloader>>,
    tls: Option<Arc<Terminator>>,
    /// Changes are read, saved and published one at a time, so that two
    /// operators' calls cannot undo each other or reach the file out of order.
    changes: Arc<tokio::sync::Mutex<()>>,
}

/// An answer with the warnings the change earned.
#[derive(Debug, Serialize)]
struct Answer<T: Serialize> {
    #[serde(flatten)]
    object: T,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

impl AdminApi {
    /// The API over `shared`, saving changes to `state_file` when set,
    /// reloading the configuration with `reloader`, and showing the
    /// certificates of `tls`.
    pub fn new(
        shared: Arc<Shared>,
        state_file: Option<PathBuf>,
        reloader: Option<Arc<Reloader>>,
        tls: Option<Arc<Terminator>>,
    ) -> AdminApi {
        AdminApi {
            shared,
            state_file,
            reloader,
            tls,
            changes: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// The shared state.
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The state of automatic certificates, if configured.
    pub fn acme(&self) -> Option<crate::acme::AcmeStatus> {
        self.tls.as_ref()?.acme().map(|a| a.status())
    }

    /// Backend names found by DNS, with their addresses.
    pub fn dns(&self) -> Vec<crate::discovery::NameStatus> {
        self.reloader
            .as_ref()
            .map(|r| r.dns_status())
            .unwrap_or_default()
    }

    /// The HTTPS certificates in force, with their expiry.
    pub fn certificates(&self) -> Vec<crate::tls::CertStatus> {
        self.tls.as_ref().map(|t| t.status()).unwrap_or_default()
    }

    /// Applies `edit` to the current control, saves and publishes the
    /// result, and returns the snapshot that has it with any warnings.
    /// Once the edit is accepted, saving and publishing run in a task of
    /// their own: a client that goes away cannot leave a change saved but
    /// not in force.
    async fn change(
        &self,
        edit: impl FnOnce(&mut Control, &Snapshot) -> Result<(), ApiError>,
    ) -> Result<(Arc<Snapshot>, Vec<String>), ApiError> {
        let one_at_a_time = Arc::clone(&self.changes).lock_owned().await;
        let before = self.shared.load();
        let mut next = (*before.control).clone();
        edit(&mut next, &before)?;
        let (shared, state_file) = (Arc::clone(&self.shared), self.state_file.clone());
        let task = tokio::spawn(async move {
            let _one_at_a_time = one_at_a_time;
            let warnings = match state_file {
                Some(path) => save(path, next.clone()).await,
                None => Vec::new(),
            };
            shared
                .set_control(Arc::new(next))
                .await
                .then(|| (shared.load(), warnings))
        });
        match task.await {
            Ok(Some(done)) => Ok(done),
            _ => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Meridian is shutting down",
            )),
        }
    }
}

/// Saves `control` to `path`; a failure becomes a warning. An emergency
/// drain must not wait for a disk to be fixed: the change goes into force,
/// and the operator is told it is not saved.
async fn save(path: PathBuf, control: Control) -> Vec<String> {
    let file = path.clone();
    let result = tokio::task::spawn_blocking(move || control::save(&file, &control))
        .await
        .unwrap_or_else(|e| {
            Err(control::StateFileError::Io {
                file: path.display().to_string(),
                source: std::io::Error::other(e.to_string()),
            })
        });
    match result {
        Ok(()) => Vec::new(),
        Err(e) => {
            tracing::error!(error = %e, "cannot save drains and incident");
            vec![format!(
                "the change is in force but could not be saved ({e}); it will not survive a restart"
            )]
        }
    }
}

/// Index of the region named `name`, or a 404 answer.
fn find_region(snapshot: &Snapshot, name: &str) -> Result<usize, ApiError> {
    snapshot
        .config
        .regions
        .iter()
        .position(|r| r.name == name)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                &format!("no region named \"{name}\""),
            )
        })
}

/// Indices of backend `address` of region `region`, or a 404 answer.
fn find_backend(
    snapshot: &Snapshot,
    region: &str,
    address: &str,
) -> Result<(usize, usize), ApiError> {
    let r = find_region(snapshot, region)?;
    snapshot.config.regions[r]
        .backends
        .iter()
        .position(|b| b.address == address || b.discovered_from.as_deref() == Some(address))
        .map(|b| (r, b))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                &format!(
                    "region \"{region}\" has no backend \"{address}\" (expected its host:port, or the name:port of a DNS name)"
                ),
            )
        })
}

/// The answer about a drain of a region or backend that the configuration
/// does not have (any more).
#[derive(Debug, Serialize)]
struct Unconfigured<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    region: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<&'a str>,
    drained: bool,
    configured: bool,
}

impl<'a> Unconfigured<'a> {
    fn region(name: &'a str, drained: bool) -> Self {
        Unconfigured {
            name: Some(name),
            region: None,
            address: None,
            drained,
            configured: false,
        }
    }

    fn backend(region: &'a str, address: &'a str, drained: bool) -> Self {
        Unconfigured {
            name: None,
            region: Some(region),
            address: Some(address),
            drained,
            configured: false,
        }
    }
}

/// Adds `item` to the drained `set` (`drain`) or takes it out; a 409 naming
/// `what` when it already was, or was not, there.
fn toggle<T: Ord>(
    set: &mut std::collections::BTreeSet<T>,
    item: T,
    drain: bool,
    what: &str,
) -> Result<(), ApiError> {
    let changed = if drain {
        set.insert(item)
    } else {
        set.remove(&item)
    };
    if changed {
        return Ok(());
    }
    let state = if drain {
        "already drained"
    } else {
        "not drained"
    };
    Err(ApiError::new(
        StatusCode::CONFLICT,
        &format!("{what} is {state}"),
    ))
}

/// The warning a drain earns when nothing can serve any more.
fn nothing_serves(snapshot: &Snapshot) -> Option<String> {
    (!snapshot.regions.iter().any(|v| v.state.serves())).then(|| {
        "no region can serve now: every user gets the status page until a region is undrained or recovers".to_owned()
    })
}

async fn region_drain(api: &AdminApi, name: &str, drain: bool) -> Response {
    let result = api
        .change(|control, snapshot| {
            // A drain kept for a region the configuration no longer has can
            // still be lifted; anything else needs a configured region.
            if drain || !control.drained_regions.contains(name) {
                find_region(snapshot, name)?;
            }
            toggle(
                &mut control.drained_regions,
                name.to_owned(),
                drain,
                &format!("region \"{name}\""),
            )
        })
        .await;
    match result {
        Ok((snapshot, mut warnings)) => {
            let Ok(index) = find_region(&snapshot, name) else {
                return Json(Answer {
                    object: Unconfigured::region(name, drain),
                    warnings,
                })
                .into_response();
            };
            warnings.extend(drain.then(|| nothing_serves(&snapshot)).flatten());
            Json(Answer {
                object: region_status(&snapshot, index).count_upgrades(api.shared().upgrades()),
                warnings,
            })
            .into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn backend_drain(api: &AdminApi, region: &str, address: &str, drain: bool) -> Response {
    let wanted = BackendRef {
        region: region.to_owned(),
        backend: address.to_owned(),
    };
    let result = api
        .change(|control, snapshot| {
            if drain || !control.drained_backends.contains(&wanted) {
                find_backend(snapshot, region, address)?;
            }
            toggle(
                &mut control.drained_backends,
                wanted.clone(),
                drain,
                &format!("backend \"{address}\" of region \"{region}\""),
            )
        })
        .await;
    match result {
        Ok((snapshot, mut warnings)) => {
            let Ok((r, b)) = find_backend(&snapshot, region, address) else {
                return Json(Answer {
                    object: Unconfigured::backend(region, address, drain),
                    warnings,
                })
                .into_response();
            };
            if drain && !snapshot.regions[r].state.serves() {
                warnings.push(format!(
                    "region \"{region}\" has no backend left to serve: its users go to its failover regions"
                ));
            }
            warnings.extend(drain.then(|| nothing_serves(&snapshot)).flatten());
            Json(Answer {
                object: backend_status(&snapshot, r, b),
                warnings,
            })
            .into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// `POST /api/v1/regions/{region}/drain`
pub(super) async fn drain_region(
    State(api): State<Arc<AdminApi>>,
    Path(region): Path<String>,
) -> Response {
    region_drain(&api, &region, true).await
}

/// `POST /api/v1/regions/{region}/undrain`
pub(super) async fn undrain_region(
    State(api): State<Arc<AdminApi>>,
    Path(region): Path<String>,
) -> Response {
    region_drain(&api, &region, false).await
}

/// `POST /api/v1/regions/{region}/backends/{backend}/drain`
pub(super) async fn drain_backend(
    State(api): State<Arc<AdminApi>>,
    Path((region, backend)): Path<(String, String)>,
) -> Response {
    backend_drain(&api, &region, &backend, true).await
}

/// `POST /api/v1/regions/{region}/backends/{backend}/undrain`
pub(super) async fn undrain_backend(
    State(api): State<Arc<AdminApi>>,
    Path((region, backend)): Path<(String, String)>,
) -> Response {
    backend_drain(&api, &region, &backend, false).await
}

/// Reads and checks an incident from a request body. The content type is
/// not insisted on: `curl -d` sends a form type, and the body is JSON or an error.
fn parse_incident(body: &[u8]) -> Result<Incident, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, &m);
    let incident: Incident =
        serde_json::from_slice(body).map_err(|e| bad(format!("invalid incident JSON: {e}")))?;
    let Incident {
        title,
        message,
        link,
    } = incident;
    let (title, message) = (title.trim().to_owned(), message.trim().to_owned());
    if title.is_empty() || message.is_empty() {
        return Err(bad("an incident needs a non-empty title and message".into()));
    }
    if title.chars().count() > MAX_TITLE || message.chars().count() > MAX_MESSAGE {
        return Err(bad(format!(
            "an incident title is at most {MAX_TITLE} characters and its message at most {MAX_MESSAGE}"
        )));
    }
    let link = match link.map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()) {
        None => None,
        Some(l) => match url::Url::parse(&l) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.as_str().len() <= MAX_LINK => {
                Some(u.to_string())
            }
            _ => {
                return Err(bad(format!(
                    "invalid link \"{l}\": expected an http(s) URL of at most {MAX_LINK} bytes"
                )))
            }
        },
    };
    Ok(Incident {
        title,
        message,
        link,
    })
}

/// `PUT /api/v1/incident`
pub(super) async fn set_incident(State(api): State<Arc<AdminApi>>, body: Bytes) -> Response {
    let incident = match parse_incident(&body) {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    let posted = incident.clone();
    match api
        .change(|control, _| {
            control.incident = Some(posted);
            Ok(())
        })
        .await
    {
        Ok((_, warnings)) => Json(Answer {
            object: incident,
            warnings,
        })
        .into_response(),
        Err(e) => e.into_response(),
    }
}

/// `DELETE /api/v1/incident`
pub(super) async fn clear_incident(State(api): State<Arc<AdminApi>>) -> Response {
    #[derive(Serialize)]
    struct Cleared {
        incident: Option<Incident>,
    }
    match api
        .change(|control, _| match control.incident.take() {
            Some(_) => Ok(()),
            None => Err(ApiError::new(StatusCode::CONFLICT, "no incident is set")),
        })
        .await
    {
        Ok((_, warnings)) => Json(Answer {
            object: Cleared { incident: None },
            warnings,
        })
        .into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /api/v1/reload`: 200 with what changed, or 400 with every
/// problem of the file (file, line, key) and nothing changed.
pub(super) async fn reload(State(api): State<Arc<AdminApi>>) -> Response {
    let Some(reloader) = &api.reloader else {
        return ApiError::new(StatusCode::CONFLICT, &ReloadError::NoFile.to_string())
            .into_response();
    };
    match reloader.reload().await {
        Ok(reloaded) => Json(reloaded).into_response(),
        Err(ReloadError::Config(e)) => {
            tracing::error!("reload refused, the configuration in force is unchanged: {e}");
            let issues: Vec<String> = e.issues().iter().map(ToString::to_string).collect();
            let message = if issues.is_empty() {
                e.to_string()
            } else {
                format!(
                    "invalid configuration: {} error(s); nothing was changed",
                    issues.len()
                )
            };
            (
                StatusCode::BAD_REQUEST,
                Json(serde_json::json!({ "error": message, "issues": issues })),
            )
                .into_response()
        }
        Err(e @ ReloadError::Template(_)) => ApiError::new(
            StatusCode::BAD_REQUEST,
            &format!("{e}; nothing was changed"),
        )
        .into_response(),
        Err(e @ ReloadError::NoFile) => {
            ApiError::new(StatusCode::CONFLICT, &e.to_string()).into_response()
        }
        Err(e @ ReloadError::Stopping) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()).into_response()
        }
    }
}

/// `POST /api/v1/alerts/test`: sends a test alert to every webhook now, once
/// each within `[alerts] timeout`; 200 when all took it, 502 naming those
/// that did not, 409 without `[alerts]`.
pub(super) async fn test_alert(State(api): State<Arc<AdminApi>>) -> Response {
    let Some(config) = api.shared.load().config.alerts.clone() else {
        return ApiError::new(
            StatusCode::CONFLICT,
            "no alert webhooks: add [alerts] webhooks to the configuration",
        )
        .into_response();
    };
    let client = crate::alerts::client(config.timeout);
    let message = crate::alerts::test_message();
    let mut results = Vec::new();
    let mut failures = Vec::new();
    for url in &config.webhooks {
        let webhook = crate::alerts::redacted(url);
        match crate::alerts::deliver_once(&client, url, &message, config.timeout).await {
            Ok(()) => results.push(serde_json::json!({ "webhook": webhook, "ok": true })),
            Err(e) => {
                failures.push(format!("{webhook}: {e}"));
                results.push(
                    serde_json::json!({ "webhook": webhook, "ok": false, "error": e.to_string() }),
                );
            }
        }
    }
    if failures.is_empty() {
        Json(serde_json::json!({ "delivered": results.len(), "webhooks": results })).into_response()
    } else {
        (
            StatusCode::BAD_GATEWAY,
            Json(serde_json::json!({
                "error": format!("test alert not delivered to {} of {} webhooks: {}", failures.len(), results.len(), failures.join("; ")),
                "webhooks": results,
            })),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incidents_are_checked_and_trimmed() {
        let ok = parse_incident(
            br#"{"title": " Slow checkout ", "message": "We are on it.", "link": "https://status.example.com"}"#,
        )
        .unwrap();
        assert_eq!(ok.title, "Slow checkout");
        assert_eq!(ok.link.as_deref(), Some("https://status.example.com/"));
        let no_link = parse_incident(br#"{"title": "t", "message": "m", "link": ""}"#).unwrap();
        assert_eq!(no_link.link, None);
        for bad in [
            &b"not json"[..],
            br#"{"title": "t"}"#,
            br#"{"message": "m"}"#,
            br#"{"title": " ", "message": "m"}"#,
            br#"{"title": "t", "message": "m", "link": "javascript:alert(1)"}"#,
            br#"{"title": "t", "message": "m", "colour": "red"}"#,
            br#"{"title": 5, "message": "m"}"#,
        ] {
            assert!(
                parse_incident(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!(
            r#"{{"title": "{}", "message": "m"}}"#,
            "x".repeat(MAX_TITLE + 1)
        );
        assert!(parse_incident(long.as_bytes()).is_err());
    }
}
