//! The proxy service: for each request, in phases — find the client address,
//! plan the candidates, forward to one candidate at a time, and rescue with
//! the status page when the plan runs out. Bodies stream in both directions.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::header::HeaderValue;
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::{Reclaim, ResponseBody, UpstreamBody};
use crate::config::Config;
use crate::routing::{self, Plan};
use crate::state::{Shared, Snapshot};
use crate::status_page::{PublicRegion, Rescue, StatusPages};
use crate::{geo, headers};

/// Response header naming the region that served the request.
pub const X_MERIDIAN_REGION: http::HeaderName = http::HeaderName::from_static("x-meridian-region");

/// The pooled client used for live traffic.
pub type UpstreamClient = Client<HttpConnector, UpstreamBody>;

/// Builds the pooled client for live traffic from `[proxy]`.
pub fn upstream_client(config: &Config) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(config.proxy.connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(config.proxy.pool_idle_timeout)
        .pool_max_idle_per_host(config.proxy.pool_max_idle_per_backend)
        .build(connector)
}

/// The request handler of the public listener.
#[derive(Debug, Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
    client: UpstreamClient,
    pages: Arc<StatusPages>,
}

/// How one forwarding attempt ended without a response.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    /// The backend could not be reached; the request never left Meridian, so
    /// another backend may be tried.
    #[error("connect: {0}")]
    Connect(String),
    /// No response head within the first-byte timeout.
    #[error("no response within {0:?}")]
    Timeout(std::time::Duration),
    /// The request was sent but the exchange failed.
    #[error("{0}")]
    Exchange(String),
}

impl AttemptError {
    fn retry_is_safe(&self) -> bool {
        matches!(self, AttemptError::Connect(_))
    }

    fn rescue(&self) -> Rescue {
        match self {
            AttemptError::Timeout(_) => Rescue::BackendTimeout,
            _ => Rescue::BackendFailed,
        }
    }
}

/// The parts of a request needed to send it again.
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Proxy {
    /// A proxy over `shared` state, forwarding with `client`.
    pub fn new(shared: Arc<Shared>, client: UpstreamClient, pages: Arc<StatusPages>) -> Self {
        Proxy {
            shared,
            client,
            pages,
        }
    }

    /// Serves one request from `peer`. Never fails: errors become Meridian's own answers.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<ResponseBody>, Infallible> {
        let snapshot = self.shared.load();
        let client = geo::client_ip(peer);
        let plan = self.plan(&snapshot, client);
        Ok(self.forward(&snapshot, plan, request, client).await)
    }

    /// Phase 1: the client's preferred region and the ordered candidates.
    fn plan(&self, snapshot: &Snapshot, client: IpAddr) -> Plan {
        let config = &snapshot.config;
        let preferred = geo::preferred_region(&config.geo, client);
        routing::plan(
            &config.regions,
            &snapshot.regions,
            preferred,
            self.shared.next_rotation(),
            config.proxy.max_attempts,
        )
    }

    /// Phase 2: tries candidates in order until one answers. Only a failure to
    /// connect moves on to the next candidate: the request never reached that
    /// backend, and its body, never read, comes back to be sent elsewhere.
    async fn forward(
        &self,
        snapshot: &Snapshot,
        plan: Plan,
        request: Request<Incoming>,
        client: IpAddr,
    ) -> Response<ResponseBody> {
        let config = &snapshot.config;
        let (parts, body) = request.into_parts();
        let mut head = Head {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
        };
        let mut body = (!body.is_end_stream()).then_some(body);
        let host_fallback = head.headers.get(http::header::HOST).is_none();
        headers::forward_request(&mut head.headers, head.version, client, "http", None);

        let mut last_error = None;
        for candidate in &plan.candidates {
            let region = &config.regions[candidate.region];
            let backend = &region.backends[candidate.backend];
            let had_body = body.is_some();
            let (upstream_body, reclaim) = match body.take() {
                Some(b) => {
                    let (b, reclaim) = UpstreamBody::reclaimable(b);
                    (b, Some(reclaim))
                }
                None => (UpstreamBody::empty(), None),
            };
            let host_override =
                (!config.proxy.preserve_host || host_fallback).then_some(backend.address.as_str());
            let request = match build_upstream(&head, backend, host_override, upstream_body) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot build upstream request");
                    return self.rescue(snapshot, Rescue::BackendFailed, &head.headers);
                }
            };
            match self.attempt(request, config.proxy.first_byte_timeout).await {
                Ok(mut response) => {
                    headers::forward_response(response.headers_mut(), head.version);
                    if let Ok(v) = HeaderValue::from_str(&region.name) {
                        response.headers_mut().insert(X_MERIDIAN_REGION, v);
                    }
                    return response.map(ResponseBody::upstream);
                }
                Err(e) => {
                    tracing::warn!(region = %region.name, backend = %backend.address, error = %e, "attempt failed");
                    // The attempt is over and its request dropped: an unread body is back.
                    body = reclaim.and_then(Reclaim::take);
                    let body_lost = had_body && body.is_none();
                    let retry = e.retry_is_safe() && !body_lost;
                    last_error = Some(e);
                    if !retry {
                        break;
                    }
                }
            }
        }
        let rescue = last_error.map_or(Rescue::NoRegion, |e| e.rescue());
        self.rescue(snapshot, rescue, &head.headers)
    }

    /// One attempt on one backend, bounded by the first-byte timeout.
    async fn attempt(
        &self,
        request: Request<UpstreamBody>,
        first_byte: std::time::Duration,
    ) -> Result<Response<Incoming>, AttemptError> {
        match tokio::time::timeout(first_byte, self.client.request(request)).await {
            Err(_) => Err(AttemptError::Timeout(first_byte)),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) if e.is_connect() => {
                Err(AttemptError::Connect(crate::health::error_chain(&e)))
            }
            Ok(Err(e)) => Err(AttemptError::Exchange(crate::health::error_chain(&e))),
        }
    }

    /// Phase 3: Meridian's own answer, the branded page, when no backend can.
    fn rescue(
        &self,
        snapshot: &Snapshot,
        rescue: Rescue,
        request_headers: &HeaderMap,
    ) -> Response<ResponseBody> {
        let regions: Vec<PublicRegion> = snapshot
            .config
            .regions
            .iter()
            .zip(&snapshot.regions)
            .map(|(r, v)| PublicRegion {
                name: r.name.clone(),
                up: v.healthy_backends() > 0,
            })
            .collect();
        self.pages
            .respond(rescue, &regions, request_headers)
            .map(ResponseBody::local)
    }
}

/// The request as the backend receives it.
fn build_upstream(
    head: &Head,
    backend: &crate::config::Backend,
    host_override: Option<&str>,
    body: UpstreamBody,
) -> Result<Request<UpstreamBody>, http::Error> {
    let path = head.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = Uri::builder()
        .scheme("http")
        .authority(backend.address.as_str())
        .path_and_query(path)
        .build()?;
    let mut request = Request::builder()
        .method(head.method.clone())
        .uri(uri)
        .body(body)?;
    *request.headers_mut() = head.headers.clone();
    if let Some(host) = host_override.and_then(|h| HeaderValue::from_str(h).ok()) {
        request.headers_mut().insert(http::header::HOST, host);
    }
    Ok(request)
}
