//! Connections to backends: hyper-util's pooled client over its HTTP
//! connector, with a write timeout on every connection so that a backend
//! that stops reading a request body cannot hold the request, its client and
//! its connection slot forever.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_io_timeout::TimeoutStream;
use tower_service::Service;

use crate::config::Config;
use crate::request_body::UpstreamBody;

/// The pooled client used for live traffic.
pub type UpstreamClient = Client<UpstreamConnector, UpstreamBody>;

/// Builds the pooled client for live traffic from `[proxy]`.
pub fn client(config: &Config) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(config.proxy.connect_timeout));
    http.set_nodelay(true);
    http.enforce_http(true);
    let connector = UpstreamConnector {
        http,
        send_timeout: config.proxy.send_timeout,
    };
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(config.proxy.pool_idle_timeout)
        .pool_max_idle_per_host(config.proxy.pool_max_idle_per_backend)
        .build(connector)
}

/// hyper-util's HTTP connector, whose connections give up on a write that
/// waits longer than `send_timeout` for the backend to read.
#[derive(Debug, Clone)]
pub struct UpstreamConnector {
    http: HttpConnector,
    send_timeout: Duration,
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
        let connecting = self.http.call(uri);
        let send_timeout = self.send_timeout;
        Box::pin(async move {
            let tcp = connecting.await?.into_inner();
            let mut stream = TimeoutStream::new(tcp);
            // Reads are bounded elsewhere (first-byte and read timeouts); a
            // read timeout here would also close idle pooled connections.
            stream.set_write_timeout(Some(send_timeout));
            Ok(TokioIo::new(UpstreamStream(Box::pin(stream))))
        })
    }
}

/// A backend connection with a write timeout.
#[derive(Debug)]
pub struct UpstreamStream(Pin<Box<TimeoutStream<TcpStream>>>);

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        self.0.get_ref().connected()
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.0.as_mut().poll_read(cx, buf)
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.as_mut().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.0.as_mut().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.as_mut().poll_shutdown(cx)
    }
}
