//! Connections to backends: hyper-util's pooled client over its HTTP
//! connector, with a write timeout on every connection so that a backend
//! that stops reading a request body cannot hold the request, its client and
//! its connection slot forever.
//!
//! `https://` backends get TLS over the same timed connection, with the
//! rustls settings of their region (see [`crate::config::TlsSettings`]). The
//! pool is keyed by scheme and address, so an http and an https backend on
//! one address never share a connection. A failed or slow handshake fails
//! the connection: to the client and to passive health it is a failure to
//! connect, and the request may go to another backend.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_io_timeout::TimeoutStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tower_service::Service;

use crate::config::{BackendTls, Config};
use crate::request_body::UpstreamBody;

/// The most a backend connection buffers, response head included.
pub const UPSTREAM_BUFFER: usize = 64 * 1024;

/// The pooled client used for live traffic.
pub type UpstreamClient = Client<UpstreamConnector, UpstreamBody>;

/// Builds the pooled client for live traffic from `[proxy]` and the TLS
/// settings of the https backends.
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
    Client::builder(TokioExecutor::new())
        // hyper grows a connection's read buffer to ~400 KB while a body
        // comes faster than the client takes it; 64 KB bounds what one
        // stalled response holds without slowing a fast one.
        .http1_max_buf_size(UPSTREAM_BUFFER)
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(config.proxy.pool_idle_timeout)
        .pool_max_idle_per_host(config.proxy.pool_max_idle_per_backend)
        .build(connector)
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
