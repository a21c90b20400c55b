//! HTTP/1.1 client connections that give up their buffers when idle.
//! Served by hyper from start to end, a keep-alive connection kept an 8 KB
//! read and an 8 KB write buffer and hyper's serving state for its whole
//! life: 34 KB of memory for a connection doing nothing.
//!
//! hyper serves the connection in turns. Once no request has been in
//! flight for [`PARK_AFTER`], the turn asks hyper to shut down gracefully:
//! with nothing in flight it stops at once, without writing anything, and
//! hands back the socket and any bytes it read of a next request. The
//! connection then waits for its next byte (parks) holding no buffer and no
//! HTTP state, and a new turn begins when it comes. It goes on only when
//! the last request was read to its end and no further (the framing
//! scanner of [`crate::framing`] knows where it ended), and neither side
//! asked to close. A busy connection stays in one turn, so the cost of a
//! turn (about 5k instructions) is paid once per idle period, not per
//! request.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, UPGRADE};
use http::{StatusCode, Version};
use http_body::Body as _;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_io_timeout::TimeoutStream;

use crate::activity::{Activity, InFlight};
use crate::closing::{watched, Ended};
use crate::config::Limits;
use crate::connections::Stops;
use crate::framing::{Ambiguous, Framed, Verdicts};
use crate::headers::connection_lists;
use crate::proxy::Proxy;

/// A client connection's byte stream, once it has left HTTP/1.1 for an
/// upgraded protocol.
pub trait ClientStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ClientStream for T {}

/// Where the client's side of an HTTP/1.1 upgrade arrives once the `101`
/// has been written.
pub type Receiver = oneshot::Receiver<Box<dyn ClientStream>>;

/// The client's side of an HTTP/1.1 upgrade, handed to the tunnel once the
/// `101` has been written: a request extension set by the connection.
#[derive(Clone)]
pub struct HandOver(Arc<Mutex<Option<Receiver>>>);

impl HandOver {
    /// The receiver, for the one tunnel that takes it.
    pub fn take(&self) -> Option<Receiver> {
        self.0.lock().ok().and_then(|mut r| r.take())
    }
}

impl std::fmt::Debug for HandOver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandOver")
    }
}

/// A transport that can say it has bytes to read without reading them.
pub(crate) trait Readiness {
    /// Ready once the peer has sent something or closed; `None` when the
    /// transport can only tell by reading (TLS, which may hold decrypted
    /// bytes of its own).
    fn poll_readable(&self, cx: &mut Context<'_>) -> Option<Poll<io::Result<()>>>;
}

impl Readiness for TcpStream {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Option<Poll<io::Result<()>>> {
        Some(self.poll_read_ready(cx))
    }
}

impl Readiness for tokio_rustls::server::TlsStream<TcpStream> {
    fn poll_readable(&self, _: &mut Context<'_>) -> Option<Poll<io::Result<()>>> {
        None
    }
}

/// The connection as hyper sees it: the send timeout, the framing scanner,
/// and bytes already read but not yet consumed put back in front.
type Stream<IO> = Rewind<Framed<Pin<Box<TimeoutStream<IO>>>>>;

/// How long a connection has no request in flight before hyper hands it
/// back. Long enough that a client sending a stream of requests stays in
/// one turn; short next to how long keep-alive connections idle.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// What a turn decided for the connection, set by its service.
#[derive(Default)]
struct Turn {
    /// Requests handed to the service in this turn.
    served: AtomicU64,
    /// The request or its answer closes the connection.
    close: AtomicBool,
    /// Where the client's side goes if the request switches protocols.
    upgrade: Mutex<Option<oneshot::Sender<Box<dyn ClientStream>>>>,
}

/// Serves HTTP/1.1 on `io` until it closes, idles out, upgrades, or
/// Meridian stops; `tls` says whether it arrived over TLS.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve<IO>(
    io: IO,
    peer: SocketAddr,
    tls: bool,
    proxy: Arc<Proxy>,
    builder: &http1::Builder,
    limits: &Limits,
    stops: &Stops,
) where
    IO: AsyncRead + AsyncWrite + Readiness + Send + Unpin + 'static,
{
    let verdicts = Arc::new(Verdicts::default());
    let turn = Arc::new(Turn::default());
    let activity = Arc::new(Activity::default());
    let mut framed = frame(io, limits, &verdicts);
    let mut unread = Bytes::new();
    // Until its first request, a connection is hyper's, with
    // `header_read_timeout` from the moment it opened; after it, an idle
    // one waits no longer than a head may take to arrive.
    let idle_limit = limits
        .keepalive_idle_timeout
        .min(limits.header_read_timeout);
    let park_after = PARK_AFTER.min(idle_limit);
    let mut first = true;
    loop {
        if !first && unread.is_empty() {
            // Parked after `park_after` of idleness.
            let deadline = Instant::now() + idle_limit.saturating_sub(park_after);
            match park(&mut framed, deadline, stops).await {
                Parked::Ready(None) => {}
                Parked::Ready(Some(byte)) => unread = Bytes::copy_from_slice(&[byte]),
                Parked::Close => return Box::pin(close(framed, limits)).await,
            }
        }
        first = false;
        turn.served.store(0, Relaxed);
        turn.close.store(false, Relaxed);
        let service = service(&proxy, &verdicts, &turn, &activity, peer, tls);
        let stream = TokioIo::new(Rewind {
            prefix: std::mem::take(&mut unread),
            inner: framed,
        });
        // Boxed, so that a parked connection holds none of hyper's state.
        let conn = Box::new(builder.serve_connection(stream, service));
        let rest = Rest {
            activity: &activity,
            verdicts: &verdicts,
            turn: &turn,
            after: park_after,
        };
        let Some((parts, asked)) = one_turn(conn, rest, peer, stops).await else {
            return;
        };
        let Rewind { prefix, inner } = parts.io.into_inner();
        framed = inner;
        unread = join(parts.read_buf, prefix);
        if verdicts.is_upgraded() {
            let sender = turn.upgrade.lock().ok().and_then(|mut slot| slot.take());
            if let Some(sender) = sender {
                let stream: Box<dyn ClientStream> = Box::new(Rewind {
                    prefix: unread,
                    inner: framed,
                });
                // The tunnel may have ended already; then the connection closes here.
                let _ = sender.send(stream);
            }
            return;
        }
        // hyper ending a turn by itself means the connection is done: the
        // client closed it, or the answer's framing or a `Connection:
        // close` ends it.
        let reusable = asked
            && !turn.close.load(Relaxed)
            && !stops.graceful.is_cancelled()
            && framed.at_end_of_last_request(unread.len());
        if !reusable {
            return Box::pin(close(framed, limits)).await;
        }
    }
}

/// The connection under the send timeout and the framing scanner. Built
/// outside [`serve`], whose future would otherwise keep room for the
/// unboxed stream all the connection long.
fn frame<IO>(
    io: IO,
    limits: &Limits,
    verdicts: &Arc<Verdicts>,
) -> Framed<Pin<Box<TimeoutStream<IO>>>>
where
    IO: AsyncRead + AsyncWrite,
{
    // A client that stops reading holds its connection and the response's
    // backend connection; the send timeout ends that.
    let mut timed = TimeoutStream::new(io);
    timed.set_write_timeout(Some(limits.send_timeout));
    Framed::new(Box::pin(timed), Arc::clone(verdicts))
}

/// The service for one turn: hands the request to the proxy, noting what
/// the connection needs to know for the next turn.
fn service(
    proxy: &Arc<Proxy>,
    verdicts: &Arc<Verdicts>,
    turn: &Arc<Turn>,
    activity: &Arc<Activity>,
    peer: SocketAddr,
    tls: bool,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = hyper::Response<crate::body::ResponseBody>,
    Error = std::convert::Infallible,
    Future = crate::connections::ServiceFuture,
> {
    let (proxy, verdicts, turn, activity) = (
        Arc::clone(proxy),
        Arc::clone(verdicts),
        Arc::clone(turn),
        Arc::clone(activity),
    );
    service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        turn.served.fetch_add(1, Relaxed);
        let in_flight = InFlight::begin(&activity);
        if let Some(why) = verdicts.next_request() {
            request.extensions_mut().insert(Ambiguous(why));
        }
        let version = request.version();
        let keep_alive = if version == Version::HTTP_10 {
            connection_lists(request.headers(), "keep-alive")
        } else {
            !connection_lists(request.headers(), "close")
        };
        if !keep_alive {
            turn.close.store(true, Relaxed);
        }
        let upgrading = request.headers().contains_key(UPGRADE);
        if upgrading {
            let (sender, receiver) = oneshot::channel();
            if let Ok(mut slot) = turn.upgrade.lock() {
                *slot = Some(sender);
            }
            request
                .extensions_mut()
                .insert(HandOver(Arc::new(Mutex::new(Some(receiver)))));
        }
        let (proxy, verdicts, turn) =
            (Arc::clone(&proxy), Arc::clone(&verdicts), Arc::clone(&turn));
        // Boxed, so that the turn's state stays small while the request is
        // in the proxy.
        Box::pin(async move {
            let response = proxy.handle(request, peer, tls).await?;
            if upgrading && response.status() == StatusCode::SWITCHING_PROTOCOLS {
                // The client speaks the new protocol only after the 101.
                verdicts.upgraded();
                return Ok(response);
            }
            let close = connection_lists(response.headers(), "close")
                // Without a length, hyper ends an HTTP/1.0 answer by closing.
                || (version == Version::HTTP_10
                    && !response.headers().contains_key(CONTENT_LENGTH)
                    && response.body().size_hint().exact().is_none());
            if close {
                turn.close.store(true, Relaxed);
            }
            Ok(response.map(|b| b.with_in_flight(in_flight)))
        }) as crate::connections::ServiceFuture
    })
}

/// What a waiting connection saw.
enum Parked {
    /// The client sent something (or closed): a byte it took reading to
    /// know that.
    Ready(Option<u8>),
    /// Idle too long, or Meridian is stopping.
    Close,
}

/// Waits, holding no buffer, until the client sends its next request.
async fn park<IO>(
    framed: &mut Framed<Pin<Box<TimeoutStream<IO>>>>,
    deadline: Instant,
    stops: &Stops,
) -> Parked
where
    IO: AsyncRead + AsyncWrite + Readiness + Unpin,
{
    let ready = std::future::poll_fn(|cx| {
        if let Some(ready) = framed.get_ref().get_ref().poll_readable(cx) {
            return ready.map_ok(|()| None);
        }
        // Through the scanner, which must see every byte read.
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        ready!(Pin::new(&mut *framed).poll_read(cx, &mut buf))?;
        Poll::Ready(Ok(buf.filled().first().copied()))
    });
    tokio::select! {
        _ = stops.graceful.cancelled() => Parked::Close,
        _ = stops.hard.cancelled() => Parked::Close,
        r = tokio::time::timeout_at(deadline, ready) => match r {
            Ok(Ok(byte)) => Parked::Ready(byte),
            Ok(Err(_)) | Err(_) => Parked::Close,
        },
    }
}

/// When a connection is at rest: no request in flight for `after`, and no
/// part of a next one read.
#[derive(Clone, Copy)]
struct Rest<'a> {
    activity: &'a Activity,
    verdicts: &'a Verdicts,
    turn: &'a Turn,
    after: Duration,
}

impl Rest<'_> {
    /// Completes once the connection is at rest.
    async fn reached(self) {
        loop {
            self.activity.idle_for(self.after).await;
            // A head begun stays with hyper, whose `header_read_timeout`
            // runs from its first byte; a new turn would restart it. And
            // hyper can end a turn without a word only between requests,
            // not before the first.
            if self.verdicts.at_rest() && self.turn.served.load(Relaxed) > 0 {
                return;
            }
            tokio::time::sleep(self.after).await;
        }
    }
}

/// Runs one turn of hyper's connection until hyper ends it, or until the
/// connection is at rest, or Meridian's graceful
/// stop, when hyper is asked to finish; with whether it was asked. `None`
/// on the hard stop or an error.
async fn one_turn<IO, S>(
    mut conn: Box<http1::Connection<TokioIo<Stream<IO>>, S>>,
    rest: Rest<'_>,
    peer: SocketAddr,
    stops: &Stops,
) -> Option<(http1::Parts<TokioIo<Stream<IO>>, S>, bool)>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = crate::body::ResponseBody>
        + Unpin,
    S::Future: Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Why a turn is ended before hyper ends it.
    enum Stop {
        Now,
        Gracefully,
    }
    let mut asked = false;
    loop {
        let open = !asked;
        let signal = async move {
            tokio::select! {
                _ = stops.hard.cancelled() => Stop::Now,
                _ = stops.graceful.cancelled(), if open => Stop::Gracefully,
                // Nothing in flight: hyper, asked now, ends without
                // writing anything, so no client hears `Connection: close`.
                _ = rest.reached(), if open => Stop::Gracefully,
            }
        };
        let run = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx));
        let ended = watched(std::pin::pin!(run), std::pin::pin!(signal)).await;
        match ended {
            Ended::Done(Ok(())) => return Some((conn.into_parts(), asked)),
            Ended::Done(Err(e)) => {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
                return None;
            }
            Ended::Signal(Stop::Now) => return None,
            Ended::Signal(Stop::Gracefully) => {
                asked = true;
                Pin::new(&mut *conn).graceful_shutdown();
            }
        }
    }
}

/// Closes the connection as hyper would have: its write side shut, within
/// the send timeout.
async fn close<IO>(mut framed: Framed<Pin<Box<TimeoutStream<IO>>>>, limits: &Limits)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(limits.send_timeout, framed.shutdown()).await;
}

/// Bytes hyper read but did not consume, then those it never read, in a
/// buffer of their own: hyper's, even empty, would keep its 8 KB alive.
fn join(read: Bytes, prefix: Bytes) -> Bytes {
    if read.is_empty() {
        return prefix;
    }
    let mut all = BytesMut::with_capacity(read.len() + prefix.len());
    all.extend_from_slice(&read);
    all.extend_from_slice(&prefix);
    all.freeze()
}

/// A stream with bytes already read from it put back in front.
#[derive(Debug)]
pub(crate) struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn rewound_bytes_are_read_before_the_stream() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b" world").await.unwrap();
        drop(a);
        let mut r = Rewind {
            prefix: Bytes::from_static(b"hello"),
            inner: b,
        };
        let mut all = String::new();
        r.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }

    #[test]
    fn unconsumed_bytes_come_before_unread_ones() {
        let b = |s: &'static str| Bytes::from_static(s.as_bytes());
        assert_eq!(join(b("ab"), b("cd")), b("abcd"));
        assert_eq!(join(b(""), b("cd")), b("cd"));
        assert_eq!(join(b("ab"), b("")), b("ab"));
    }
}
