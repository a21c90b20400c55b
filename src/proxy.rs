//! The proxy service: for each request, in phases — find the client address,
//! plan the candidates, forward to one candidate at a time, and rescue with
//! the status page when the plan runs out. Bodies stream in both directions.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, HOST};
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::client::legacy;

use crate::body::{BodyError, ResponseBody, Sent, Unsent, UpstreamBody};
use crate::config::Backend;
use crate::routing::{self, Plan};
use crate::state::{Shared, Snapshot};
use crate::status_page::{PublicRegion, Rescue, StatusPages};
use crate::telemetry::error_chain;
use crate::upstream::UpstreamClient;
use crate::{geo, headers};

/// Response header naming the region that served the request.
pub const X_MERIDIAN_REGION: http::HeaderName = http::HeaderName::from_static("x-meridian-region");

/// The request handler of the public listener.
#[derive(Debug, Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
    client: UpstreamClient,
    pages: Arc<StatusPages>,
}

/// How one forwarding attempt ended without a response, with what decides
/// whether another backend may be tried.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    /// No connection to the backend: the request never left Meridian.
    #[error("cannot connect: {}", error_chain(.0))]
    Connect(legacy::Error),
    /// The connection closed or was reset before any response, as when a
    /// pooled keep-alive connection was closed by the backend just as it was
    /// reused. The backend may have seen the request.
    #[error("connection lost before a response: {}", error_chain(.0))]
    Disconnected(legacy::Error),
    /// No response head within the first-byte timeout after the request was sent.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The client's body stalled (`timed_out`) or broke while it was being forwarded.
    #[error("client body: {detail}")]
    ClientBody {
        /// The client paused longer than the client body timeout.
        timed_out: bool,
        /// What happened.
        detail: String,
    },
    /// Any other failure of the exchange.
    #[error("{}", error_chain(.0))]
    Exchange(legacy::Error),
}

impl AttemptError {
    fn from_client(e: legacy::Error) -> Self {
        if e.is_connect() {
            return AttemptError::Connect(e);
        }
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            if let Some(body) = s.downcast_ref::<BodyError>() {
                return AttemptError::ClientBody {
                    timed_out: matches!(body, BodyError::Idle(_)),
                    detail: body.to_string(),
                };
            }
            let lost = s
                .downcast_ref::<hyper::Error>()
                .is_some_and(|h| h.is_incomplete_message() || h.is_canceled())
                || s.downcast_ref::<std::io::Error>().is_some_and(|io| {
                    matches!(
                        io.kind(),
                        std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::BrokenPipe
                            | std::io::ErrorKind::ConnectionAborted
                    )
                });
            if lost {
                return AttemptError::Disconnected(e);
            }
            source = s.source();
        }
        AttemptError::Exchange(e)
    }

    /// Whether the request may go to the next candidate. A request that never
    /// left Meridian always may; one that may have reached the backend only
    /// when its method is idempotent (RFC 9110 §9.2.2).
    fn may_retry(&self, idempotent: bool) -> bool {
        match self {
            AttemptError::Connect(_) => true,
            AttemptError::Disconnected(_) => idempotent,
            _ => false,
        }
    }

    fn rescue(&self) -> Rescue {
        match self {
            AttemptError::Timeout(_) => Rescue::BackendTimeout,
            AttemptError::ClientBody {
                timed_out: true, ..
            } => Rescue::ClientTimeout,
            _ => Rescue::BackendFailed,
        }
    }
}

/// RFC 9110 §9.2.2.
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
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
            self.shared.next_rotation(preferred),
            config.proxy.max_attempts,
        )
    }

    /// Phase 2: tries candidates in order until one answers. A failed attempt
    /// moves on only when [`AttemptError::may_retry`] allows it and the
    /// request body, if any, was never read by the failed backend — it then
    /// comes back and is handed to the next candidate as it is. A connection
    /// that dropped before any response is retried once on the same backend.
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
        // RFC 9112 §3.2.2: the authority of an absolute-form target replaces
        // Host — host and port only, never a user:password part.
        if let Some(authority) = head.uri.authority() {
            let host = match authority.port() {
                Some(port) => HeaderValue::from_str(&format!("{}:{port}", authority.host())),
                None => HeaderValue::from_str(authority.host()),
            };
            if let Ok(host) = host {
                head.headers.insert(HOST, host);
            }
        }
        let keep_host = config.proxy.preserve_host && head.headers.contains_key(HOST);
        headers::forward_request(&mut head.headers, head.version, client, "http");
        let idempotent = idempotent(&head.method);

        let mut body = (!body.is_end_stream()).then_some(body);
        let mut last_error = None;
        let (mut index, mut retried_same) = (0, false);
        while let Some(candidate) = plan.candidates.get(index) {
            let region = &config.regions[candidate.region];
            let backend = &region.backends[candidate.backend];
            let had_body = body.is_some();
            let (upstream_body, unsent, sent) = match body.take() {
                Some(b) => {
                    let (b, unsent, sent) = UpstreamBody::new(b, config.limits.client_body_timeout);
                    (b, Some(unsent), sent)
                }
                None => {
                    let (b, sent) = UpstreamBody::empty();
                    (b, None, sent)
                }
            };
            let request = match build_upstream(&head, backend, keep_host, upstream_body) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot build the upstream request");
                    return self.rescue(snapshot, Rescue::BackendFailed, &head.headers);
                }
            };
            match self
                .attempt(request, sent, config.proxy.first_byte_timeout)
                .await
            {
                Ok(mut response) => {
                    let version = response.version();
                    headers::forward_response(response.headers_mut(), version);
                    response
                        .headers_mut()
                        .insert(X_MERIDIAN_REGION, region.name_header.clone());
                    let read_timeout = config.proxy.read_timeout;
                    return response.map(|b| ResponseBody::upstream(b, read_timeout));
                }
                Err(e) => {
                    tracing::debug!(region = %region.name, backend = %backend.address, error = %e, "attempt failed");
                    // The attempt is over and its request dropped: an unread body is back.
                    body = unsent.and_then(Unsent::take);
                    let body_lost = had_body && body.is_none();
                    let retry = e.may_retry(idempotent) && !body_lost;
                    // A dropped keep-alive connection says little about the
                    // backend: it gets one more try before the next candidate,
                    // once per request, so a request that kills backends
                    // cannot take twice its share of them.
                    let same_again = !retried_same && matches!(e, AttemptError::Disconnected(_));
                    last_error = Some((e, &region.name, &backend.address));
                    if !retry {
                        break;
                    }
                    if same_again {
                        retried_same = true;
                    } else {
                        index += 1;
                    }
                }
            }
        }
        let rescue = match &last_error {
            None => Rescue::NoRegion,
            // The client's own doing: nothing an operator needs to hear about.
            Some((e @ AttemptError::ClientBody { .. }, _, _)) => {
                tracing::debug!(error = %e, "request body failed");
                e.rescue()
            }
            Some((e, region, backend)) => {
                tracing::warn!(%region, %backend, error = %e, "request failed");
                e.rescue()
            }
        };
        self.rescue(snapshot, rescue, &head.headers)
    }

    /// One attempt on one backend. The first-byte timeout starts once the
    /// request has been handed to a backend connection with its body read
    /// whole from the client: connecting is bounded by the connect timeout
    /// (and a failure to connect goes to the next candidate), a slow upload by
    /// the client body timeout, and a backend that stops reading by the send
    /// timeout.
    async fn attempt(
        &self,
        request: Request<UpstreamBody>,
        sent: Sent,
        first_byte: Duration,
    ) -> Result<Response<Incoming>, AttemptError> {
        let exchange = self.client.request(request);
        let deadline = async {
            sent.wait().await;
            tokio::time::sleep(first_byte).await;
        };
        tokio::select! {
            result = exchange => result.map_err(AttemptError::from_client),
            () = deadline => Err(AttemptError::Timeout(first_byte)),
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

/// The request as `backend` receives it: origin-form target, the prepared
/// headers, and `Host` kept or set to the backend's address.
fn build_upstream(
    head: &Head,
    backend: &Backend,
    keep_host: bool,
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
    if !keep_host {
        request
            .headers_mut()
            .insert(HOST, backend.host_header.clone());
    }
    Ok(request)
}
