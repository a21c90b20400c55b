//! HTTP/1.1 client connections that give up their buffers when idle.
//! Served by hyper from start to end, a keep-alive connection kept an 8 KB
//! read and an 8 KB write buffer and hyper's serving state for its whole
//! life: 34 KB of memory for a connection doing nothing.
//!
//! hyper serves the connection in turns. Once no request has been in
//! flight for [`PARK_AFTER`], everything written has been sent and no part
//! of a next request has arrived, the turn asks hyper to shut down
//! gracefully: idle, it stops at once, without writing anything, and hands
//! back the socket and any bytes it read. The
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
use http::header::CONTENT_LENGTH;
use http::Version;
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
use crate::framing::{Framed, Verdicts};
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
///
/// A block rather than an `async fn`, whose future would hold each
/// argument twice: this one is held by every idle connection.
#[allow(clippy::manual_async_fn)]
pub(crate) fn serve<'a, IO>(
    io: IO,
    peer: SocketAddr,
    tls: bool,
    proxy: Arc<Proxy>,
    builder: &'a http1::Builder,
    limits: &'a Limits,
    stops: &'a Stops,
) -> impl std::future::Future<Output = ()> + Send + 'a
where
    IO: AsyncRead + AsyncWrite + Readiness + Send + Unpin + 'static,
{
    async move {
        let verdicts = Arc::new(Verdicts::default());
        let turn = Arc::new(Turn::default());
        let activity = Arc::new(Activity::default());
        let mut framed = frame(io, limits, &verdicts);
        let mut unread = Bytes::new();
        // Until its first request, a connection is hyper's, with
        // `header_read_timeout` from when hyper began to wait for it (after
        // the TLS handshake, or the look for h2c's preface); after it, an
        // idle one waits no longer than a head may take to arrive.
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
                    Parked::Close => return Box::pin(close(framed, limits, stops)).await,
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
            // Boxed, so that a parked connection keeps no room for a turn.
            let turn_run = Box::pin(one_turn(conn, rest, idle_limit, peer, stops));
            let Some((parts, asked)) = turn_run.await else {
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
            if let Ok(mut slot) = turn.upgrade.lock() {
                // A handshake the backend refused leaves nothing to hand over.
                slot.take();
            }
            // hyper ending a turn by itself means the connection is done: the
            // client closed it, or the answer's framing or a `Connection:
            // close` ends it.
            let reusable = asked
                && !turn.close.load(Relaxed)
                && !stops.graceful.is_cancelled()
                && framed.at_end_of_last_request(unread.len());
            if !reusable {
                return Box::pin(close(framed, limits, stops)).await;
            }
        }
    }
}

/// The connection under the send timeout and the framing scanner. Built
/// outside [`serve`], whose future would otherwise keep room for the
/// unboxed stream all the connection long.
pub(crate) fn frame<IO>(
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
        let upgrading = verdicts.take_request(&mut request);
        let version = request.version();
        // As hyper reads it: `close` wins, and HTTP/1.0 needs `keep-alive`.
        let keep_alive = !connection_lists(request.headers(), "close")
            && (version != Version::HTTP_10 || connection_lists(request.headers(), "keep-alive"));
        if !keep_alive {
            turn.close.store(true, Relaxed);
        }
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
            if upgrading && verdicts.answered_upgrade(response.status()) {
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

/// When a connection is at rest: no request in flight for `after`, all
/// written sent, and no part of a next request read.
#[derive(Clone, Copy)]
struct Rest<'a> {
    activity: &'a Activity,
    verdicts: &'a Verdicts,
    turn: &'a Turn,
    after: Duration,
}

impl Rest<'_> {
    /// Completes once the connection is at rest: with `Gracefully` when a
    /// request was served in the turn, with `Now` when none was for
    /// `unused` (hyper would not end such a turn when asked: it waits for
    /// a first request).
    async fn reached(self, unused: Duration) -> Stop {
        loop {
            self.activity.idle_for(self.after).await;
            // A head begun stays with hyper, whose `header_read_timeout`
            // started when it began waiting for it; a new turn would
            // restart it. Bytes still unsent would be lost with hyper's
            // buffer.
            if self.verdicts.at_rest() && !self.verdicts.unsent() {
                if self.turn.served.load(Relaxed) > 0 {
                    return Stop::Gracefully;
                }
                if self.activity.idle_left(unused).is_none() {
                    return Stop::Now;
                }
            }
            tokio::time::sleep(self.after).await;
        }
    }
}

/// Why a turn is ended before hyper ends it.
enum Stop {
    /// Drop the connection.
    Now,
    /// Ask hyper to finish.
    Gracefully,
}

/// Runs one turn of hyper's connection until hyper ends it, or until the
/// connection is at rest or Meridian stops gracefully, when hyper is asked
/// to finish; with whether it was asked. `None` when the connection is
/// done: closed at once on the hard stop, an error or `unused` without a
/// request, or after hyper sent what it still held.
async fn one_turn<IO, S>(
    mut conn: Box<http1::Connection<TokioIo<Stream<IO>>, S>>,
    rest: Rest<'_>,
    unused: Duration,
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
    let mut asked = false;
    loop {
        let open = !asked;
        let signal = async move {
            tokio::select! {
                _ = stops.hard.cancelled() => Stop::Now,
                _ = stops.graceful.cancelled(), if open => Stop::Gracefully,
                // Idle, hyper, asked now, ends without writing anything, so
                // no client hears `Connection: close`.
                stop = rest.reached(unused), if open => stop,
            }
        };
        let run = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx));
        let ended = watched(std::pin::pin!(run), std::pin::pin!(signal)).await;
        match ended {
            Ended::Done(Ok(())) if rest.verdicts.unsent() => {
                // hyper is done once its answer is buffered, not sent; its
                // buffer would go with its parts. Run as a plain future,
                // it sends what it holds (within the send timeout), then
                // closes the connection.
                tokio::select! {
                    _ = stops.hard.cancelled() => {}
                    _ = &mut *conn => {}
                }
                return None;
            }
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

/// Closes the connection: its write side shut, within the send timeout or
/// until the hard stop. Nothing is left unsent: a turn with bytes to send
/// ends in [`one_turn`].
async fn close<IO>(mut framed: Framed<Pin<Box<TimeoutStream<IO>>>>, limits: &Limits, stops: &Stops)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    tokio::select! {
        _ = stops.hard.cancelled() => {}
        _ = tokio::time::timeout(limits.send_timeout, framed.shutdown()) => {}
    }
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
    use crate::body::ResponseBody;
    use hyper_util::rt::TokioTimer;
    use tokio::io::AsyncReadExt;
    use tokio_util::sync::CancellationToken;

    /// One turn over a pipe narrower than the answer, the client reading
    /// only after the connection could have rested: the whole answer
    /// arrives. `close` asks for `Connection: close`, which hyper ends by
    /// itself. How the turn ended: `Some(asked)`, or `None` when it closed
    /// the connection after sending what hyper still held.
    async fn a_turn_with_a_slow_reader(close: bool) -> Option<bool> {
        const BODY: usize = 256 * 1024;
        let (mut client, server) = tokio::io::duplex(4096);
        let verdicts = Arc::new(Verdicts::default());
        let turn = Arc::new(Turn::default());
        let activity = Arc::new(Activity::default());
        let framed = Framed::new(Box::pin(TimeoutStream::new(server)), Arc::clone(&verdicts));
        let stream = TokioIo::new(Rewind {
            prefix: Bytes::new(),
            inner: framed,
        });
        let service = {
            let (turn, activity) = (Arc::clone(&turn), Arc::clone(&activity));
            service_fn(move |_: hyper::Request<hyper::body::Incoming>| {
                turn.served.fetch_add(1, Relaxed);
                let in_flight = InFlight::begin(&activity);
                let body = http_body_util::Full::new(Bytes::from(vec![b'x'; BODY]));
                Box::pin(async move {
                    Ok(hyper::Response::new(
                        ResponseBody::local(body).with_in_flight(in_flight),
                    ))
                }) as crate::connections::ServiceFuture
            })
        };
        let mut builder = http1::Builder::new();
        builder.timer(TokioTimer::new()).keep_alive(true);
        let conn = Box::new(builder.serve_connection(stream, service));
        let head = if close {
            "GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        } else {
            "GET / HTTP/1.1\r\nhost: x\r\n\r\n"
        };
        client.write_all(head.as_bytes()).await.unwrap();
        let reader = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut all = Vec::new();
            let mut buf = vec![0u8; 16 * 1024];
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            loop {
                let head = all.windows(4).position(|w| w == b"\r\n\r\n");
                if head.is_some_and(|h| all.len() - h - 4 >= BODY) {
                    break;
                }
                match tokio::time::timeout_at(deadline, client.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => all.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
            // Kept open: the turn must end by resting, not by the client
            // going away.
            (all, client)
        });
        let stops = Stops {
            graceful: CancellationToken::new(),
            hard: CancellationToken::new(),
        };
        let rest = Rest {
            activity: &activity,
            verdicts: &verdicts,
            turn: &turn,
            after: Duration::from_millis(50),
        };
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        let ended = one_turn(conn, rest, Duration::from_secs(60), peer, &stops)
            .await
            .map(|(_, asked)| asked);
        let (all, _client) = reader.await.unwrap();
        let body = all.len() - all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() - 4;
        assert_eq!(body, BODY, "the answer was cut short");
        ended
    }

    #[tokio::test]
    async fn a_connection_rests_only_once_its_answer_is_sent() {
        assert_eq!(a_turn_with_a_slow_reader(false).await, Some(true));
    }

    #[tokio::test]
    async fn a_closing_turn_sends_its_whole_answer() {
        assert_ne!(
            a_turn_with_a_slow_reader(true).await,
            Some(true),
            "hyper ends a closing turn itself"
        );
    }

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
