//! Forwarding a WebSocket handshake: the same plan as any request, but one
//! backend at a time and no hedging, since a tunnel cannot be raced or
//! replayed. The next candidate is tried only when a backend cannot be
//! connected to, before anything was sent. A backend's `101` starts a
//! [`Tunnel`]; any other answer goes to the client as it is.
//!
//! Over HTTP/2 (RFC 8441) the handshake is an extended CONNECT: it goes to
//! the backend as the HTTP/1.1 GET of RFC 6455, and the backend's `101`
//! becomes a `200` that turns the client's stream into the tunnel.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use super::attempt::{attempt, AttemptError};
use super::forward::{empty_plan, Served};
use super::tunnel::{ClientSide, Route, Tunnel};
use super::{build_upstream, Head, Proxy};
use crate::body::ResponseBody;
use crate::headers;
use crate::health::Failure;
use crate::pool::Lease;
use crate::request_body::UpstreamBody;
use crate::routing::Plan;
use crate::state::Snapshot;
use crate::status_page::Rescue;

/// The handshake to forward: the protocol asked for, and the client's side
/// of the connection once it has switched.
pub(super) struct Handshake {
    pub(super) protocol: HeaderValue,
    pub(super) client: ClientSide,
    /// An RFC 8441 extended CONNECT on an HTTP/2 stream.
    pub(super) over_http2: bool,
}

/// Phase 2 for a WebSocket handshake: sends it along `plan` until a backend
/// answers, and starts the tunnel when that answer is a `101`.
pub(super) async fn forward(
    proxy: &Proxy,
    snapshot: &Arc<Snapshot>,
    plan: &Plan,
    head: &Head,
    keep_host: bool,
    handshake: Handshake,
) -> Result<Served, Rescue> {
    if plan.candidates.is_empty() {
        return Err(empty_plan(snapshot));
    }
    let config = &snapshot.config;
    let generation = &snapshot.generation;
    let shared = &proxy.shared;
    let mut last_error = None;
    let translated;
    let head = if handshake.over_http2 {
        let mut headers = head.headers.clone();
        headers::websocket_over_http1(&mut headers, websocket_key());
        translated = Head {
            method: http::Method::GET,
            uri: head.uri.clone(),
            version: http::Version::HTTP_11,
            headers,
        };
        &translated
    } else {
        head
    };
    for c in plan.candidates.iter() {
        let region = &config.regions[c.region];
        let backend = &region.backends[c.backend];
        let (body, sent) = UpstreamBody::empty();
        let mut request = build_upstream(head, backend, keep_host, body).map_err(|e| {
            tracing::warn!(error = %e, "cannot build the upstream request");
            Rescue::BackendFailed
        })?;
        headers::restore_upgrade(request.headers_mut(), handshake.protocol.clone());
        let first_byte = region
            .first_byte_timeout
            .unwrap_or(config.proxy.first_byte_timeout);
        let at = (c.region, c.backend);
        match attempt(&generation.client, at, request, sent, first_byte, ()).await {
            Ok((response, lease, ())) => {
                let status = response.status().as_u16();
                if status >= 500 {
                    shared.passive_failure(
                        generation,
                        c.region,
                        c.backend,
                        Failure::Status(status),
                    );
                } else if !(handshake.over_http2 && response.status().is_success()) {
                    // A 2xx to an HTTP/2 handshake is refused below: not a success.
                    generation.passive.success(c.region, c.backend);
                }
                let route = Route {
                    region: region.name.clone(),
                    backend: backend.address.clone(),
                };
                let response = answer(proxy, snapshot, response, lease, route, handshake)?;
                return Ok(Served {
                    response,
                    region: c.region,
                    as_is: true,
                });
            }
            Err(e) => {
                if let Some(failure) = e.failure() {
                    shared.passive_failure(generation, c.region, c.backend, failure);
                }
                tracing::debug!(region = %region.name, backend = %backend.address, error = %e, "upgrade attempt failed");
                // Only a connection never made leaves the handshake unsent.
                if !matches!(e, AttemptError::Connect(_)) {
                    tracing::warn!(region = %region.name, backend = %backend.address, error = %e, "upgrade failed");
                    return Err(e.rescue());
                }
                last_error = Some(e);
            }
        }
    }
    let e = last_error.map_or(Rescue::NoRegion, |e| {
        tracing::warn!(error = %e, "upgrade failed: no backend could be connected to");
        e.rescue()
    });
    Err(e)
}

/// The client's answer: a `101` with the tunnel started behind it, or the
/// backend's refusal as it is.
fn answer(
    proxy: &Proxy,
    snapshot: &Snapshot,
    mut response: Response<Incoming>,
    lease: Lease,
    route: Route,
    handshake: Handshake,
) -> Result<Response<ResponseBody>, Rescue> {
    let version = response.version();
    if handshake.over_http2 && response.status().is_success() {
        // A 2xx would tell an HTTP/2 client that its stream is a tunnel
        // while the backend did not switch.
        tracing::warn!(region = %route.region, backend = %route.backend, status = response.status().as_u16(), "backend answered a WebSocket handshake without switching");
        return Err(Rescue::BackendFailed);
    }
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        headers::forward_response(response.headers_mut(), version);
        let read_timeout = snapshot.config.proxy.read_timeout;
        return Ok(response.map(|b| ResponseBody::upstream(b, read_timeout).with_lease(lease)));
    }
    let Some(protocol) = response
        .headers()
        .get(http::header::UPGRADE)
        .filter(|_| headers::switches_to_websocket(response.headers()))
        .cloned()
    else {
        // The client asked for WebSocket only; anything else is a broken backend.
        tracing::warn!(region = %route.region, backend = %route.backend, "backend switched to a protocol other than WebSocket");
        return Err(Rescue::BackendFailed);
    };
    let backend = hyper::upgrade::on(&mut response);
    let (mut parts, _) = response.into_parts();
    headers::forward_response(&mut parts.headers, version);
    if handshake.over_http2 {
        parts.status = StatusCode::OK;
        headers::websocket_accepted_over_http2(&mut parts.headers);
    } else {
        headers::restore_upgrade(&mut parts.headers, protocol);
    }
    let tunnel = Tunnel {
        client: handshake.client,
        backend,
        open: proxy.shared.upgrades().open(&route.region),
        route,
        shared: Arc::clone(&proxy.shared),
        hard_stop: proxy.tunnels.hard_stop.clone(),
    };
    // The client's side switches only once this answer is written, so the
    // tunnel waits for it in a task of its own, tracked with the
    // connections so that shutdown waits for it within its grace.
    proxy.tunnels.tracker.spawn(tunnel.run());
    Ok(Response::from_parts(
        parts,
        ResponseBody::local(Full::new(Bytes::new())),
    ))
}

/// A fresh `Sec-WebSocket-Key` nonce (RFC 6455 §4.1: 16 random bytes).
fn websocket_key() -> [u8; 16] {
    let mut key = [0u8; 16];
    if crate::tls::certs::provider()
        .secure_random
        .fill(&mut key)
        .is_err()
    {
        // The key only proves to the client that the backend speaks
        // WebSocket; Meridian checks nothing with it, so any value works.
        key = *b"meridian-ws-key!";
    }
    key
}
