//! The proxy service: for each request, in phases — find the client address,
//! plan the candidates, forward along the plan (retrying and hedging where
//! that is safe), and rescue with the status page when the plan runs out.
//! Bodies stream in both directions. A WebSocket handshake takes the same
//! plan, and once a backend switches protocols, the connection becomes a
//! tunnel (see `upgrade` and `tunnel`).

mod attempt;
mod forward;
mod redirect;
mod tunnel;
mod upgrade;

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::header::{HeaderValue, HOST};
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::acme::AcmeHandle;
use crate::body::ResponseBody;
use crate::config::{Backend, Config};
use crate::geo;
use crate::headers;
use crate::request_body::UpstreamBody;
use crate::routing::{self, Plan};
use crate::state::{Shared, Snapshot};
use crate::status_page::{
    self, PublicIncident, PublicRegion, Rescue, Situation, X_MERIDIAN_PASSTHROUGH,
};

/// Response header naming the region that served the request.
pub const X_MERIDIAN_REGION: http::HeaderName = http::HeaderName::from_static("x-meridian-region");

/// The request handler of the public listener. What it builds from the
/// configuration comes with each snapshot, in its [`crate::generation::Generation`].
#[derive(Debug, Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
    /// The port the HTTPS listener is bound to, for redirects.
    https_port: Option<u16>,
    tunnels: Tunnels,
    /// HTTP-01 answers, when `[tls.acme]` is set.
    acme: Option<Arc<AcmeHandle>>,
}

/// Where upgraded connections run, and what stops them.
#[derive(Debug, Clone, Default)]
struct Tunnels {
    /// Tracks their tasks, so that shutdown waits for them.
    tracker: TaskTracker,
    /// Closes them: the shutdown grace period is over.
    hard_stop: CancellationToken,
}

/// The parts of a request needed to send it again.
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

/// What phase 1 made of a request.
// Returned once per request and taken apart at once; boxing the larger
// variant would cost an allocation per request instead.
#[allow(clippy::large_enum_variant)]
enum Admission {
    /// Meridian answers it itself: a refusal, the status endpoint, an ACME
    /// challenge or a redirect to HTTPS.
    Answer(Response<ResponseBody>),
    /// It goes to the backends.
    Forward(Prepared),
}

/// A request admitted for forwarding, with the decision that routes it.
struct Prepared {
    head: Head,
    body: Incoming,
    /// Set for a WebSocket handshake, which is tunnelled.
    handshake: Option<upgrade::Handshake>,
    plan: Plan,
    location: geo::Location,
    /// The client's address, after trusted proxies.
    client: IpAddr,
    /// `Host` goes to the backend as the client sent it.
    keep_host: bool,
}

impl Proxy {
    /// A proxy over `shared` state; `https_port` is where the HTTPS
    /// listener is bound, for redirects to it.
    pub fn new(shared: Arc<Shared>, https_port: Option<u16>) -> Self {
        Proxy {
            shared,
            https_port,
            tunnels: Tunnels::default(),
            acme: None,
        }
    }

    /// Runs upgraded connections (WebSockets) as tasks of `tracker`, and
    /// closes them when `hard_stop` is cancelled.
    pub fn with_tunnels(mut self, tracker: TaskTracker, hard_stop: CancellationToken) -> Self {
        self.tunnels = Tunnels { tracker, hard_stop };
        self
    }

    /// The shared state this proxy serves from.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Answers the ACME CA's HTTP-01 requests from `acme`.
    pub fn with_acme(mut self, acme: Option<Arc<AcmeHandle>>) -> Self {
        self.acme = acme;
        self
    }

    /// Serves one request from `peer`, which arrived over TLS when `tls`.
    /// Never fails: errors become Meridian's own answers.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
        tls: bool,
    ) -> Result<Response<ResponseBody>, Infallible> {
        let snapshot = self.shared.load();
        let started = tokio::time::Instant::now();
        let (mut response, preferred, served) =
            self.serve(request, peer, tls, &snapshot, started).await;
        snapshot.generation.metrics.request(
            preferred,
            served,
            response.status().as_u16(),
            started.elapsed(),
        );
        if tls {
            if let Some(hsts) = snapshot.config.tls.as_ref().and_then(|t| t.hsts.as_ref()) {
                response
                    .headers_mut()
                    .insert(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone());
            }
        }
        // The client connection's write buffer is as large as its read buffer.
        let up_to = snapshot.config.limits.max_header_bytes as u64;
        response.body_mut().gather(up_to).await;
        Ok(response)
    }

    /// The answer to a request that arrived at `started`, the client's
    /// preferred region and the region that served it (none for Meridian's
    /// own answers).
    async fn serve(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
        tls: bool,
        snapshot: &Arc<Snapshot>,
        started: tokio::time::Instant,
    ) -> (Response<ResponseBody>, usize, Option<usize>) {
        // Decided in a plain function: an `async fn` keeps every local it
        // ever had across its awaits, moved-from or not, and this future is
        // moved into a task or a box on every request.
        let Prepared {
            head,
            body,
            handshake,
            plan,
            location,
            client,
            keep_host,
        } = match self.admit(request, peer, tls, snapshot, started) {
            Admission::Forward(prepared) => prepared,
            Admission::Answer(answer) => return (answer, 0, None),
        };
        let (forwarded, attempts) = match handshake {
            // Rare, and a large future: boxed so that every other request's
            // future need not make room for it.
            Some(handshake) => (
                Box::pin(upgrade::forward(
                    self, snapshot, &plan, &head, keep_host, handshake,
                ))
                .await,
                1,
            ),
            None => {
                let mut forward =
                    forward::Forward::new(self, snapshot, &plan, &head, keep_host, body);
                let outcome = forward.walk().await;
                (outcome, forward.attempts())
            }
        };
        let config = &snapshot.config;
        let (response, served) = match forwarded {
            Ok(served) if !served.as_is && self.intercepted(config, &served.response) => {
                let status = served.response.status();
                // The backend's own error page is dropped unread: its
                // connection closes instead of going back to the pool.
                drop(served.response);
                let rescue = Rescue::Upstream(status);
                (
                    self.rescue(snapshot, rescue, &head.headers),
                    Some(served.region),
                )
            }
            Ok(served) => {
                let mut response = served.response;
                response.headers_mut().remove(X_MERIDIAN_PASSTHROUGH);
                let region = &config.regions[served.region];
                if config.proxy.region_header {
                    response
                        .headers_mut()
                        .insert(X_MERIDIAN_REGION, region.name_header.clone());
                }
                if let Some(value) = sticky_update(
                    config,
                    &head.headers,
                    &location,
                    &plan,
                    served.region,
                    response.status(),
                ) {
                    response
                        .headers_mut()
                        .append(http::header::SET_COOKIE, value);
                }
                (response, Some(served.region))
            }
            Err(Rescue::ClientBody) => {
                let refusal = crate::strict::Refusal {
                    status: http::StatusCode::BAD_REQUEST,
                    reason: "The request body could not be read.",
                    close: true,
                };
                (refuse(&refusal, head.version), None)
            }
            Err(rescue) => (self.rescue(snapshot, rescue, &head.headers), None),
        };
        let why = match served {
            Some(r) if r != location.region && snapshot.regions[location.region].drained => "drain",
            Some(r) if r != location.region => "failover",
            _ => location.why.as_str(),
        };
        if config.log.access {
            tracing::info!(
                target: crate::telemetry::ACCESS,
                client = %client,
                country = %geo::Code(location.place.country),
                continent = %geo::Code(location.place.continent),
                preferred = %config.regions[location.region].name,
                served = %served.map_or("-", |r| config.regions[r].name.as_str()),
                why = %why,
                retries = attempts.saturating_sub(1),
                method = %head.method,
                path = %head.uri.path(),
                status = response.status().as_u16(),
                ms = started.elapsed().as_millis() as u64,
            );
        }
        (response, location.region, served)
    }

    /// Phase 1: Meridian's own answer to the request, or the request
    /// prepared for its backends with the decision that routes it.
    fn admit(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
        tls: bool,
        snapshot: &Arc<Snapshot>,
        started: tokio::time::Instant,
    ) -> Admission {
        let (mut parts, body) = request.into_parts();
        let tunnel = headers::websocket_connect(
            &parts.method,
            parts.version,
            parts.extensions.get::<hyper::ext::Protocol>(),
        );
        let rules = crate::strict::Rules {
            max_head: snapshot.config.limits.max_header_bytes,
            tunnel,
        };
        let checked = match parts.extensions.get::<crate::framing::Ambiguous>() {
            Some(ambiguous) => Err(ambiguous.refusal()),
            None => crate::strict::check(
                &parts.method,
                &parts.uri,
                parts.version,
                &mut parts.headers,
                rules,
            ),
        };
        if let Err(refusal) = checked {
            tracing::debug!(client = %peer, status = refusal.status.as_u16(), reason = refusal.reason, "request refused");
            return Admission::Answer(refuse(&refusal, parts.version));
        }
        let request = Request::from_parts(parts, body);
        // Meridian's own answers are never the 2xx that would open an
        // HTTP/2 extended CONNECT tunnel.
        let own = request.method() != Method::CONNECT;
        if own && request.uri().path() == status_page::STATUS_PATH {
            // Meridian's own answer, before any routing: the status page
            // polls it during an outage, and it must never reach a backend.
            return Admission::Answer(self.public_status(snapshot, request.method()));
        }
        if let Some(answer) = self
            .acme
            .as_ref()
            .filter(|_| own)
            .and_then(|a| a.answer(request.uri().path()))
        {
            return Admission::Answer(acme_answer(answer));
        }
        if !tls && snapshot.config.listen.redirect_to_https {
            let port = self.https_port.unwrap_or(443);
            if let Some(redirect) = redirect::to_https(port, &request) {
                return Admission::Answer(redirect);
            }
        }
        let config = &snapshot.config;
        let generation = &snapshot.generation;
        generation.budget.request(started);
        let peer = geo::peer_ip(peer);
        let client = geo::client_ip(peer, request.headers(), &generation.trusted);
        let location = self.locate(snapshot, client, request.headers());
        let plan = self.plan(snapshot, location.region, client);
        let mut request = request;
        let handshake = self.handshake(&mut request);
        let (parts, body) = request.into_parts();
        let mut head = Head {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
        };
        let proto = if tls { "https" } else { "http" };
        let keep_host = prepare_headers(&mut head, config.proxy.preserve_host, peer, proto);
        Admission::Forward(Prepared {
            head,
            body,
            handshake,
            plan,
            location,
            client,
            keep_host,
        })
    }

    /// Whether `ip` is one of `geo.trusted_proxies`.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.shared.load().generation.trusted.contains(ip)
    }

    /// Phase 1a: the client's preferred region — pinned by a request from a trusted host,
    /// kept by the sticky cookie when that region can serve, or by geography.
    fn locate(&self, snapshot: &Snapshot, client: IpAddr, headers: &HeaderMap) -> geo::Location {
        let config = &snapshot.config;
        let generation = &snapshot.generation;
        let mut location = generation.locator.locate(&self.shared.geodb(), client);
        if let Some(pin) = &config.geo.pin_header {
            // Only a request that started on a trusted host: proxies pass
            // their clients' headers on, a pin header included.
            if generation.trusted.contains(client) {
                if let Some(region) = geo::pinned_region(headers, pin, &config.regions) {
                    location.region = region;
                    location.why = geo::Why::Pin;
                    return location;
                }
            }
        }
        if let Some(cookie) = &config.geo.sticky_cookie {
            let serving = |r: usize| {
                snapshot
                    .regions
                    .get(r)
                    .is_some_and(|v| v.state.serves() && !v.held)
            };
            if let Some(region) =
                geo::sticky_region(headers, cookie, &config.regions).filter(|&r| serving(r))
            {
                location.region = region;
                location.why = geo::Why::Sticky;
            }
        }
        location
    }

    /// Phase 1c: whether the request is a WebSocket handshake to tunnel,
    /// taking the client's side of the connection for later if it is. Only
    /// a bodiless one: the connection switches right after its head.
    fn handshake(&self, request: &mut Request<Incoming>) -> Option<upgrade::Handshake> {
        use http_body::Body as _;
        if headers::websocket_connect(
            request.method(),
            request.version(),
            request.extensions().get::<hyper::ext::Protocol>(),
        ) {
            // The stream itself is the tunnel: its body is the data.
            return Some(upgrade::Handshake {
                protocol: HeaderValue::from_static("websocket"),
                client: tunnel::ClientSide::Hyper(hyper::upgrade::on(request)),
                over_http2: true,
            });
        }
        let protocol =
            headers::websocket_upgrade(request.method(), request.version(), request.headers())?;
        if !request.body().is_end_stream() {
            return None;
        }
        // An HTTP/1.1 connection hands itself over once the 101 is
        // written (`crate::http1`); one served by hyper throughout (on a
        // listener that also takes h2c) switches through hyper.
        let client = match request
            .extensions()
            .get::<crate::http1::HandOver>()
            .and_then(|h| h.take())
        {
            Some(receiver) => tunnel::ClientSide::HandedOver(receiver),
            None => tunnel::ClientSide::Hyper(hyper::upgrade::on(request)),
        };
        Some(upgrade::Handshake {
            protocol,
            client,
            over_http2: false,
        })
    }

    /// Phase 1b: the ordered candidates.
    fn plan(&self, snapshot: &Snapshot, preferred: usize, client: IpAddr) -> Plan {
        let config = &snapshot.config;
        routing::plan(
            &config.regions,
            &snapshot.regions,
            preferred,
            snapshot.generation.next_rotation(preferred),
            client_key(client),
            config.proxy.max_attempts,
        )
    }

    /// Phase 2b: whether a backend's answer is an error page to replace
    /// with Meridian's own (`status_page.intercept`), so that users never
    /// see a raw 503 even when a backend's proxy answers one.
    fn intercepted(&self, config: &Config, response: &Response<ResponseBody>) -> bool {
        status_page::intercepts(
            &config.status_page.intercept,
            response.status(),
            response.headers(),
        )
    }

    /// Phase 3: Meridian's own answer, the branded page, when no backend can.
    fn rescue(
        &self,
        snapshot: &Snapshot,
        rescue: Rescue,
        request_headers: &HeaderMap,
    ) -> Response<ResponseBody> {
        self.shared.metrics().status_page(rescue);
        let regions: Vec<PublicRegion> = snapshot
            .config
            .regions
            .iter()
            .zip(&snapshot.regions)
            .map(|(r, v)| PublicRegion {
                name: r.name.clone(),
                up: v.state.serves(),
            })
            .collect();
        let situation = Situation {
            regions: &regions,
            incident: public_incident(snapshot),
        };
        snapshot
            .generation
            .pages
            .respond(rescue, &situation, request_headers)
            .map(ResponseBody::local)
    }

    /// The answer of [`status_page::STATUS_PATH`]: whether any region serves,
    /// and the incident.
    fn public_status(&self, snapshot: &Snapshot, method: &Method) -> Response<ResponseBody> {
        let up = snapshot.regions.iter().any(|r| r.state.serves());
        snapshot
            .generation
            .pages
            .public_status(method, up, public_incident(snapshot))
            .map(ResponseBody::local)
    }
}

/// The incident in force, as the public may see it.
fn public_incident(snapshot: &Snapshot) -> Option<PublicIncident<'_>> {
    snapshot
        .control
        .incident
        .as_ref()
        .map(|i| PublicIncident::new(&i.title, &i.message, i.link.as_deref()))
}

/// Readies the request head for backends, `peer` being the address the
/// request came from and `proto` its scheme; returns whether the client's
/// `Host` is kept.
fn prepare_headers(
    head: &mut Head,
    preserve_host: bool,
    peer: IpAddr,
    proto: &'static str,
) -> bool {
    // RFC 9112 §3.2.2: the authority of an absolute-form target replaces
    // Host — host and port only, never a user:password part.
    if let Some(authority) = head.uri.authority() {
        if let Ok(host) = HeaderValue::from_str(&host_of(authority)) {
            head.headers.insert(HOST, host);
        }
    }
    let keep_host = preserve_host && head.headers.contains_key(HOST);
    headers::forward_request(&mut head.headers, head.version, peer, proto);
    keep_host
}

/// An authority's host and port as `Host` carries them: without any
/// `user:password@` part, with the port as a number, or the host alone when
/// the port is empty or not a number. Every HTTP/2 request carries an
/// authority, and it is nearly always already in that form: then it is
/// sliced, not formatted.
fn host_of(authority: &http::uri::Authority) -> Cow<'_, str> {
    let host = authority.host();
    let Some(port) = authority.port() else {
        return Cow::Borrowed(host);
    };
    let text = authority.as_str();
    let text = text.rsplit_once('@').map_or(text, |(_, rest)| rest);
    let digits = port.as_str();
    let canonical =
        digits.bytes().all(|b| b.is_ascii_digit()) && (!digits.starts_with('0') || digits == "0");
    if canonical && text.len() == host.len() + 1 + digits.len() {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(format!("{host}:{}", port.as_u16()))
    }
}

/// The `Set-Cookie` that moves a user's sticky region, if any: a user
/// served away from their region by a planned failover stays there for the
/// session; one back home needs no cookie. A hedge or retry that happened to
/// win, an error, or a pin never moves the cookie.
fn sticky_update(
    config: &Config,
    headers: &HeaderMap,
    location: &geo::Location,
    plan: &Plan,
    served: usize,
    status: http::StatusCode,
) -> Option<HeaderValue> {
    let cookie = config.geo.sticky_cookie.as_ref()?;
    let cookie_region = geo::sticky_region(headers, cookie, &config.regions);
    let planned = plan.candidates.first().map(|c| c.region);
    let moved = served != location.region || cookie_region.is_some();
    let set = status.as_u16() < 500
        && location.why != geo::Why::Pin
        && planned == Some(served)
        && cookie_region != Some(served)
        && moved;
    if !set {
        return None;
    }
    geo::sticky_cookie(cookie, &config.regions[served], config.geo.sticky_ttl)
}

/// A stable number per client address, so that a slow start sends the same
/// users back first and never bounces one user between regions.
fn client_key(client: IpAddr) -> u64 {
    let bits: u128 = match client {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    };
    let folded = (bits as u64) ^ ((bits >> 64) as u64);
    // splitmix64's finaliser spreads neighbouring addresses apart.
    let mut z = folded.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The request as `backend` receives it: origin-form target, the prepared
/// headers, and `Host` kept or set to the backend's address.
fn build_upstream(
    head: &Head,
    backend: &Backend,
    keep_host: bool,
    body: UpstreamBody,
) -> Result<Request<UpstreamBody>, http::Error> {
    // The connection is chosen by backend, not by the target: the target
    // is the path and query alone.
    let uri = match head.uri.path_and_query() {
        Some(path) => Uri::from(path.clone()),
        None => Uri::from_static("/"),
    };
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

/// Meridian's answer to a request it refuses to forward: plain text, and
/// the end of an HTTP/1 connection whose framing is in doubt.
fn refuse(refusal: &crate::strict::Refusal, version: Version) -> Response<ResponseBody> {
    let body = http_body_util::Full::new(bytes::Bytes::from(format!("{}\n", refusal.reason)));
    let mut response = Response::new(ResponseBody::local(body));
    *response.status_mut() = refusal.status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    if refusal.status == http::StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(
            http::header::ALLOW,
            HeaderValue::from_static(crate::strict::ALLOWED),
        );
    }
    if refusal.close && version < Version::HTTP_2 {
        headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The key authorization the CA fetches for an HTTP-01 challenge.
fn acme_answer(key_authorization: String) -> Response<ResponseBody> {
    let body = http_body_util::Full::new(bytes::Bytes::from(key_authorization));
    let mut response = Response::new(ResponseBody::local(body));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/octet-stream"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::host_of;
    use http::uri::Authority;

    #[test]
    fn host_of_keeps_host_and_port_and_drops_credentials() {
        for (authority, host) in [
            ("example.com", "example.com"),
            ("example.com:8080", "example.com:8080"),
            ("user:secret@example.com:8080", "example.com:8080"),
            ("user@example.com", "example.com"),
            ("a@b@example.com", "example.com"),
            ("[::1]:443", "[::1]:443"),
            ("user:pw@[::1]", "[::1]"),
            ("example.com:", "example.com"),
            ("example.com:0080", "example.com:80"),
            ("example.com:0", "example.com:0"),
            ("example.com:abc", "example.com"),
            ("example.com:99999", "example.com"),
            ("example.com:+80", "example.com:80"),
            ("[::1]x:80", "[::1]:80"),
            ("[::1]x", "[::1]"),
        ] {
            let parsed: Authority = authority.parse().unwrap();
            assert_eq!(host_of(&parsed), host, "{authority}");
            // The same as the host and port the URI parser found.
            let rebuilt = match parsed.port() {
                Some(port) => format!("{}:{port}", parsed.host()),
                None => parsed.host().to_owned(),
            };
            assert_eq!(host_of(&parsed), rebuilt, "{authority}");
        }
    }
}
