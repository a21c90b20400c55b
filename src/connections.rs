//! Client connections: accepting them under `max_connections`, reading a
//! PROXY header from trusted balancers, terminating TLS on the HTTPS
//! listener, and serving HTTP/1.1 and HTTP/2 under the limits of
//! `[limits]` until the connection closes, idles out, or Meridian stops.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::activity::{Activity, InFlight};
use crate::config::Limits;
use crate::framing::Verdicts;
use crate::http1;
use crate::metrics::Listener;
use crate::proxy::Proxy;
use crate::tls::Terminator;

/// The two ways a connection is told to stop.
#[derive(Debug, Clone)]
pub(crate) struct Stops {
    /// Finish the request in flight, then close.
    pub graceful: CancellationToken,
    /// Close now: the grace period is over.
    pub hard: CancellationToken,
}

/// How a listener's connections begin.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// TLS is terminated here (the HTTPS listener).
    pub tls: Option<Arc<Terminator>>,
    /// Trusted peers must send a PROXY header first.
    pub proxy_protocol: bool,
    /// HTTP/2 by prior knowledge on a plain listener.
    pub h2c: bool,
}

/// Accepts connections while fewer than `max_connections` are open on all
/// listeners together (`slots`); beyond that, new connections wait in the
/// kernel's accept backlog.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    endpoint: Endpoint,
    proxy: Proxy,
    limits: Arc<Limits>,
    slots: Arc<Semaphore>,
    stops: Stops,
    connections: TaskTracker,
) {
    let http2 = endpoint.tls.is_some() || endpoint.h2c;
    let http = Arc::new(HttpServer::new(&limits, http2));
    let endpoint = Arc::new(endpoint);
    let stop = &stops.graceful;
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            p = Arc::clone(&slots).acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let accepted = Accepted {
            stream,
            peer,
            permit,
        };
        connections.spawn(serve_connection(
            accepted,
            proxy.clone(),
            Arc::clone(&http),
            Arc::clone(&limits),
            Arc::clone(&endpoint),
            stops.clone(),
        ));
    }
}

/// A client connection as accepted, with its place in `max_connections`.
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    permit: tokio::sync::OwnedSemaphorePermit,
}

/// hyper's own limit on request header lines. Setting any limit, even this
/// one, makes hyper fill a header array of that length for every request
/// it parses; hyper's default keeps the array uninitialised.
const HYPER_MAX_HEADERS: usize = 100;

/// The HTTP server settings of `[limits]`, for HTTP/1.1 alone or HTTP/1.1
/// and HTTP/2 where HTTP/2 is offered.
pub(crate) struct HttpServer {
    /// HTTP/1.1, served in turns (see [`crate::http1`]).
    http1: hyper::server::conn::http1::Builder,
    /// HTTP/2, negotiated over TLS or, on a plain listener with `h2c`,
    /// by prior knowledge. hyper-util's builder for both versions, as ALPN
    /// may leave the choice to the connection preface.
    both: Option<auto::Builder<TokioExecutor>>,
}

impl HttpServer {
    fn new(limits: &Limits, http2: bool) -> HttpServer {
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .keep_alive(true)
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes);
        if limits.max_headers != HYPER_MAX_HEADERS {
            http1.max_headers(limits.max_headers);
        }
        HttpServer {
            http1,
            both: http2.then(|| auto_builder(limits)),
        }
    }
}

/// The builder for HTTP/1.1 and HTTP/2 with the limits of `[limits]`.
fn auto_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes);
    if limits.max_headers != HYPER_MAX_HEADERS {
        builder.http1().max_headers(limits.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        // Rapid reset (CVE-2023-44487): a client that resets streams
        // faster than they are served loses its connection.
        .max_pending_accept_reset_streams(limits.http2_max_pending_resets)
        .max_local_error_reset_streams(Some(1024))
        // RFC 8441: WebSocket over HTTP/2 arrives as an extended CONNECT.
        .enable_connect_protocol()
        .keep_alive_interval(None);
    builder
}

/// Serves one client connection: the PROXY header, the TLS handshake, then HTTP.
///
/// A block rather than an `async fn`, whose future would hold each
/// argument twice: every connection's task holds this one.
#[allow(clippy::manual_async_fn)]
fn serve_connection(
    mut accepted: Accepted,
    proxy: Proxy,
    http: Arc<HttpServer>,
    limits: Arc<Limits>,
    endpoint: Arc<Endpoint>,
    stops: Stops,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    async move {
        let kind = if endpoint.tls.is_some() {
            Listener::Https
        } else {
            Listener::Http
        };
        let _open = proxy.shared().metrics().open_connection(kind);
        // Moved in, or the block would capture only the fields it uses and
        // the slot would be given back at once.
        let _permit = accepted.permit;
        let (http, limits) = (&*http, &*limits);
        // The rest of `accepted` is used in place: a local copy of a field
        // would take room of its own in this future, which every
        // connection's task holds.
        if endpoint.proxy_protocol && proxy.trusts(crate::geo::peer_ip(accepted.peer)) {
            use crate::proxy_protocol::{read_header, Source};
            let peer = accepted.peer;
            match Box::pin(read_header(
                &mut accepted.stream,
                limits.header_read_timeout,
            ))
            .await
            {
                Ok(Source::Client(client)) => accepted.peer = client,
                // The balancer's own connection, such as its health check.
                Ok(Source::Local) => {}
                // A PROXY listener requires the header from its balancers: without
                // it a client passed through at L4 would speak as the balancer.
                Ok(Source::Absent) => {
                    tracing::debug!(%peer, "connection refused: no PROXY header from a trusted peer");
                    return;
                }
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "connection refused");
                    return;
                }
            }
        }
        // HTTP serving is boxed, so that the task of an idle connection holds
        // only its state, not also that of the handshake it no longer needs.
        let Some(tls) = &endpoint.tls else {
            let proxy = Arc::new(proxy);
            if let Some(both) = http.both.as_ref().filter(|_| endpoint.h2c) {
                // HTTP/1.1 goes to the turns, whose idle connections hold no
                // buffers; hyper's auto builder would keep them all along.
                match Box::pin(opens_http2(&accepted.stream, limits, &stops)).await {
                    Some(true) => {
                        let (stream, peer) = (accepted.stream, accepted.peer);
                        return Box::pin(serve_both(
                            stream, peer, false, proxy, both, limits, stops,
                        ))
                        .await;
                    }
                    Some(false) => {}
                    None => return,
                }
            }
            let (stream, peer) = (accepted.stream, accepted.peer);
            return Box::pin(http1::serve(
                stream,
                peer,
                false,
                proxy,
                &http.http1,
                limits,
                &stops,
            ))
            .await;
        };
        let (stream, peer) = (accepted.stream, accepted.peer);
        Box::pin(serve_tls(stream, peer, proxy, tls, http, limits, stops)).await;
    }
}

/// The client connection preface of HTTP/2 (RFC 9113, section 3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a plain connection opens with the HTTP/2 preface, looked at
/// without reading it. `None` when the client closes before its first
/// byte, the socket fails, Meridian stops, or nothing that tells arrives
/// within `header_read_timeout` (like a TLS handshake, this wait comes
/// before hyper's own for the head).
async fn opens_http2(stream: &TcpStream, limits: &Limits, stops: &Stops) -> Option<bool> {
    let sniff = async {
        let mut seen = [0u8; HTTP2_PREFACE.len()];
        let mut pause = Duration::from_millis(1);
        loop {
            let n = stream.peek(&mut seen).await.ok()?;
            if n == 0 {
                return None;
            }
            if seen[..n] != HTTP2_PREFACE[..n] {
                return Some(false);
            }
            if n == HTTP2_PREFACE.len() {
                return Some(true);
            }
            // Bytes peeked stay readable, so the socket gives no signal
            // when more arrive: look again after a pause. Only a preface
            // in pieces (or a `P` alone) gets here; the pause grows to a
            // quarter of a second, so that a client holding one byte back
            // costs a few wake-ups a second, not a busy loop.
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    };
    tokio::select! {
        _ = stops.graceful.cancelled() => None,
        r = tokio::time::timeout(limits.header_read_timeout, sniff) => r.ok().flatten(),
    }
}

/// Serves one HTTPS connection: the handshake, then HTTP/2 where ALPN chose
/// it and HTTP/1.1 otherwise. A future of its own, so that a plain
/// connection's task has no room for TLS state.
async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    proxy: Proxy,
    tls: &Terminator,
    http: &HttpServer,
    limits: &Limits,
    stops: Stops,
) {
    // The handshake counts as reading the request head: a client that
    // opens connections and never finishes one must not hold them.
    let handshake = Box::pin(tls.acceptor().accept(stream));
    let stream = tokio::select! {
        _ = stops.graceful.cancelled() => return,
        r = tokio::time::timeout(limits.header_read_timeout, handshake) => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        },
    };
    let proxy = Arc::new(proxy);
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    match &http.both {
        Some(both) if h2 => {
            Box::pin(serve_both(stream, peer, true, proxy, both, limits, stops)).await
        }
        _ => {
            Box::pin(http1::serve(
                stream,
                peer,
                true,
                proxy,
                &http.http1,
                limits,
                &stops,
            ))
            .await
        }
    }
}

/// The future of one request on a client connection.
pub(crate) type ServiceFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<
                    hyper::Response<crate::body::ResponseBody>,
                    std::convert::Infallible,
                >,
            > + Send,
    >,
>;

/// Serves HTTP/2 (or HTTP/1.1, to a client that negotiated `h2` and then
/// did not send its preface) on `io` until it closes, idles out, or
/// shutdown; `tls` says whether it arrived over TLS.
async fn serve_both<IO>(
    io: IO,
    peer: SocketAddr,
    tls: bool,
    proxy: Arc<Proxy>,
    both: &auto::Builder<TokioExecutor>,
    limits: &Limits,
    stops: Stops,
) where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let activity = Arc::new(Activity::default());
    let verdicts = Arc::new(Verdicts::default());
    let service = {
        let activity = Arc::clone(&activity);
        let verdicts = Arc::clone(&verdicts);
        service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            let proxy = Arc::clone(&proxy);
            let in_flight = InFlight::begin(&activity);
            let upgrading = (request.version() < http::Version::HTTP_2
                && verdicts.take_request(&mut request))
            .then(|| Arc::clone(&verdicts));
            // Boxed, so that an idle connection does not keep a request's
            // worth of state (about 2.6 KB) in hyper's slot for the next one.
            Box::pin(async move {
                let response = proxy.handle(request, peer, tls).await?;
                if let Some(verdicts) = upgrading {
                    verdicts.answered_upgrade(response.status());
                }
                Ok(response.map(|b| b.with_in_flight(in_flight)))
            }) as ServiceFuture
        })
    };
    // With upgrades, a WebSocket's connection leaves hyper after the 101
    // for the proxy's tunnel, which keeps the send timeout set here.
    let io = TokioIo::new(http1::frame(io, limits, &verdicts));
    let conn = both.serve_connection_with_upgrades(io, service);
    drive(
        conn,
        |c| c.graceful_shutdown(),
        peer,
        &activity,
        limits,
        &stops,
    )
    .await;
}

/// Runs `conn` until it ends, closing it gracefully (with `shutdown`) on
/// Meridian's graceful stop or after the keep-alive idle timeout, and at
/// once on the hard stop.
async fn drive<C, E>(
    conn: C,
    shutdown: impl Fn(std::pin::Pin<&mut C>),
    peer: SocketAddr,
    activity: &Activity,
    limits: &Limits,
    stops: &Stops,
) where
    C: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    use crate::closing::{watched, Ended};
    /// Why a connection is closed before it ends by itself.
    enum Close {
        Now,
        Gracefully,
    }
    let mut conn = std::pin::pin!(conn);
    let mut closing = false;
    loop {
        let open = !closing;
        let signal = async move {
            tokio::select! {
                _ = stops.hard.cancelled() => Close::Now,
                _ = stops.graceful.cancelled(), if open => Close::Gracefully,
                _ = activity.idle_for(limits.keepalive_idle_timeout), if open => {
                    Close::Gracefully
                }
            }
        };
        let ended = watched(conn.as_mut(), std::pin::pin!(signal)).await;
        match ended {
            Ended::Done(result) => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            Ended::Signal(Close::Now) => return,
            Ended::Signal(Close::Gracefully) => {
                closing = true;
                shutdown(conn.as_mut());
            }
        }
    }
}
