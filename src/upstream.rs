//! Connections to backends: a pool of idle keep-alive connections per
//! backend (see [`crate::pool`]), hyper's HTTP/1.1 client on each, and
//! hyper-util's HTTP connector with a write timeout on every connection, so
//! that a backend that stops reading a request body cannot hold the
//! request, its client and its connection slot forever.
//!
//! `https://` backends get TLS over the same timed connection, with the
//! rustls settings of their region (see [`crate::config::TlsSettings`]). A
//! pool belongs to one backend URL, so an http and an https backend on one
//! address never share a connection. A failed or slow handshake fails the
//! connection: to the client and to passive health it is a failure to
//! connect, and the request may go to another backend.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_io_timeout::TimeoutStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tower_service::Service;

use crate::config::{BackendTls, Config};
use crate::pool::{Lease, Pool};
use crate::request_body::UpstreamBody;

/// The most a backend connection buffers, response head included.
pub const UPSTREAM_BUFFER: usize = 64 * 1024;

/// The connections to the backends of one configuration.
#[derive(Debug, Clone)]
pub struct UpstreamClient {
    inner: Arc<ClientInner>,
}

#[derive(Debug)]
struct ClientInner {
    connector: UpstreamConnector,
    http1: hyper::client::conn::http1::Builder,
    /// The pool of each backend, by region and backend index; backends
    /// with one URL share one.
    pools: Vec<Vec<Arc<Pool>>>,
}

/// Why a request got no response from a backend.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made: the request never left Meridian.
    #[error("{0}")]
    Connect(#[source] BoxError),
    /// The exchange failed on the connection.
    #[error(transparent)]
    Exchange(#[from] hyper::Error),
    /// The request names a backend the configuration does not have; the
    /// request path only names configured ones, so this is a bug.
    #[error("no backend {1} in region {0}")]
    NoBackend(usize, usize),
}

/// Builds the connections to the backends of `config`, from `[proxy]` and
/// the TLS settings of the https backends.
pub fn client(config: &Config) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(config.proxy.connect_timeout));
    http.set_nodelay(true);
    // The scheme is checked here, in `call`, which also handles https.
    http.enforce_http(false);
    // Validation gives one address one trust choice, so keying by address
    // loses nothing.
    let tls: HashMap<String, BackendTls> = config
        .regions
        .iter()
        .flat_map(|r| &r.backends)
        .filter_map(|b| Some((b.address.clone(), b.tls.clone()?)))
        .collect();
    let connector = UpstreamConnector {
        http,
        send_timeout: config.proxy.send_timeout,
        handshake_timeout: config.proxy.connect_timeout,
        tls: Arc::new(tls),
    };
    let mut http1 = hyper::client::conn::http1::Builder::new();
    // hyper grows a connection's read buffer to ~400 KB while a body comes
    // faster than the client takes it; 64 KB bounds what one stalled
    // response holds without slowing a fast one.
    http1.max_buf_size(UPSTREAM_BUFFER);
    let mut by_url: HashMap<&Uri, Arc<Pool>> = HashMap::new();
    let pools = config
        .regions
        .iter()
        .map(|r| {
            r.backends
                .iter()
                .map(|b| {
                    let pool = by_url.entry(&b.url).or_insert_with(|| {
                        Arc::new(Pool::new(
                            b.url.clone(),
                            config.proxy.pool_max_idle_per_backend,
                            config.proxy.pool_idle_timeout,
                        ))
                    });
                    Arc::clone(pool)
                })
                .collect()
        })
        .collect();
    UpstreamClient {
        inner: Arc::new(ClientInner {
            connector,
            http1,
            pools,
        }),
    }
}

impl UpstreamClient {
    /// Sends `request`, whose target is in origin form and which has its
    /// `Host`, to backend `backend` of region `region`: on an idle pooled
    /// connection when there is one, else on a new one. Returns the
    /// response head and the connection it came on, to give back once the
    /// body has been read.
    pub fn send(
        &self,
        region: usize,
        backend: usize,
        mut request: Request<UpstreamBody>,
    ) -> impl Future<Output = Result<(Response<Incoming>, Lease), UpstreamError>> + Send + 'static
    {
        let inner = Arc::clone(&self.inner);
        let pool = self
            .inner
            .pools
            .get(region)
            .and_then(|r| r.get(backend))
            .cloned();
        async move {
            let pool = pool.ok_or(UpstreamError::NoBackend(region, backend))?;
            // `request` is used where it was captured: rebinding it would
            // give the future a second copy of it.
            while let Some(mut sender) = pool.take() {
                match sender.try_send_request(request).await {
                    Ok(response) => return Ok((response, Lease::new(sender, pool))),
                    // Never written: the backend closed the connection just
                    // as it was taken. The request is whole; on to the next.
                    Err(mut e) => match e.take_message() {
                        Some(unsent) => request = unsent,
                        None => return Err(UpstreamError::Exchange(e.into_error())),
                    },
                }
            }
            // Boxed so that the common, pooled path's future does not carry
            // the connector's and the handshake's state inline: every
            // request's future is moved into a box by its caller, and a large
            // one costs a large copy each time.
            Box::pin(connect_and_send(inner, pool, request)).await
        }
    }
}

/// Opens a new connection to `pool`'s backend, sends `request` on it and
/// lends the connection to the response.
async fn connect_and_send(
    inner: Arc<ClientInner>,
    pool: Arc<Pool>,
    request: Request<UpstreamBody>,
) -> Result<(Response<Incoming>, Lease), UpstreamError> {
    let io = inner
        .connector
        .clone()
        .call(pool.target().clone())
        .await
        .map_err(UpstreamError::Connect)?;
    let (mut sender, connection) = inner
        .http1
        .handshake(io)
        .await
        .map_err(|e| UpstreamError::Connect(e.into()))?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "backend connection ended");
        }
    });
    let response = sender.send_request(request).await?;
    Ok((response, Lease::new(sender, pool)))
}

/// Why a backend connection could not be made, beyond what the HTTP
/// connector reports.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URI is neither `http` nor `https`.
    #[error("unsupported scheme in {0}")]
    Scheme(Uri),
    /// An `https` URI for an address with no TLS settings; the request path
    /// only builds URIs for configured backends, so this is a bug.
    #[error("no TLS settings for backend {0}")]
    NoTlsSettings(String),
    /// The TLS handshake failed, as when the certificate does not verify.
    #[error("TLS handshake with {backend} failed: {source}")]
    Handshake {
        /// The backend's address.
        backend: String,
        /// What rustls or the connection said.
        source: io::Error,
    },
    /// The TLS handshake did not finish within the connect timeout.
    #[error("TLS handshake with {backend} did not finish within {timeout:?}")]
    HandshakeTimeout {
        /// The backend's address.
        backend: String,
        /// `proxy.connect_timeout`.
        timeout: Duration,
    },
}

/// hyper-util's HTTP connector, whose connections give up on a write that
/// waits longer than `send_timeout` for the backend to read, and which makes
/// the TLS handshake for https backends.
#[derive(Debug, Clone)]
pub struct UpstreamConnector {
    http: HttpConnector,
    send_timeout: Duration,
    /// Bounds the TLS handshake as the connect timeout bounds the TCP
    /// connection: a backend that accepts and never answers must not hold
    /// a request that has not even been sent.
    handshake_timeout: Duration,
    /// TLS settings of the https backends, by address.
    tls: Arc<HashMap<String, BackendTls>>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Service<Uri> for UpstreamConnector {
    type Response = TokioIo<UpstreamStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = match uri.scheme_str() {
            Some("http") => None,
            Some("https") => {
                let address = uri.authority().map_or("", |a| a.as_str());
                match self.tls.get(address) {
                    Some(tls) => Some((address.to_owned(), tls.clone())),
                    None => {
                        let error = ConnectError::NoTlsSettings(address.to_owned());
                        return Box::pin(async move { Err(error.into()) });
                    }
                }
            }
            _ => return Box::pin(async move { Err(ConnectError::Scheme(uri).into()) }),
        };
        let connecting = self.http.call(uri);
        let send_timeout = self.send_timeout;
        let handshake_timeout = self.handshake_timeout;
        Box::pin(async move {
            let tcp = connecting.await?.into_inner();
            let mut stream = TimeoutStream::new(tcp);
            // Reads are bounded elsewhere (first-byte and read timeouts); a
            // read timeout here would also close idle pooled connections.
            stream.set_write_timeout(Some(send_timeout));
            let stream = Box::pin(stream);
            let Some((backend, tls)) = tls else {
                return Ok(TokioIo::new(UpstreamStream::Plain(stream)));
            };
            // TLS runs over the timed stream, so that the write timeout
            // holds for encrypted writes too.
            let connector = TlsConnector::from(Arc::clone(&tls.settings.traffic));
            let handshake = connector.connect(tls.server_name.clone(), stream);
            match tokio::time::timeout(handshake_timeout, handshake).await {
                Ok(Ok(tls)) => Ok(TokioIo::new(UpstreamStream::Tls(Box::new(tls)))),
                Ok(Err(source)) => Err(ConnectError::Handshake { backend, source }.into()),
                Err(_) => Err(ConnectError::HandshakeTimeout {
                    backend,
                    timeout: handshake_timeout,
                }
                .into()),
            }
        })
    }
}

/// A TCP connection with a write timeout.
type TimedTcp = Pin<Box<TimeoutStream<TcpStream>>>;

/// A backend connection with a write timeout, in plain text or TLS.
#[derive(Debug)]
pub enum UpstreamStream {
    /// To an `http://` backend.
    Plain(TimedTcp),
    /// To an `https://` backend.
    Tls(Box<TlsStream<TimedTcp>>),
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        match self {
            UpstreamStream::Plain(tcp) => tcp.get_ref().connected(),
            UpstreamStream::Tls(tls) => tls.get_ref().0.get_ref().connected(),
        }
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => s.as_mut().poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => s.as_mut().poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => s.as_mut().poll_write_vectored(cx, bufs),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamStream::Plain(s) => s.is_write_vectored(),
            UpstreamStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => s.as_mut().poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => s.as_mut().poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
