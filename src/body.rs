//! Response bodies on their way to clients, and the idle timer that bounds
//! both directions: a pause between two pieces of a body longer than the
//! timeout ends it, so that a stalled client or backend cannot hold a
//! connection forever. The request direction is in [`crate::request_body`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::activity::InFlight;
use crate::concurrency::Slot;
use crate::pool::Lease;

/// Why a body stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The peer broke the stream.
    #[error(transparent)]
    Stream(#[from] hyper::Error),
    /// The peer sent nothing for this long in the middle of a body.
    #[error("no body data for {0:?}")]
    Idle(Duration),
    /// The peer kept sending, but slower than the minimum rate.
    #[error("body slower than {0} bytes/s over {w:?}", w = RATE_WINDOW)]
    TooSlow(u64),
}

/// How long a body must have kept Meridian waiting before its rate is judged.
pub const RATE_WINDOW: Duration = Duration::from_secs(20);

/// The largest backend body whose pieces are gathered for one write to the
/// client (see [`ResponseBody::gather`]): what a backend connection reads
/// at most at once. It is also held to the client connection's write
/// buffer (`limits.max_header_bytes`). Larger bodies stream as they arrive.
pub const GATHER_UP_TO: u64 = 64 * 1024;

/// Bounds the pause between two frames of a body and, optionally, its
/// average rate: a client dripping a byte now and then never pauses long,
/// but never finishes either. Only the time Meridian spends waiting for the
/// peer counts, so a backend that reads an upload slowly is never charged
/// to the client. The timer is only allocated once a body actually has to
/// wait.
#[derive(Debug)]
pub(crate) struct IdleTimer {
    limit: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Since when the body has been waiting for the peer, if it is.
    waiting: Option<Instant>,
    /// Bytes per second below which the body is given up on; 0 is no minimum.
    min_rate: u64,
    /// Time spent waiting for the peer, and the bytes that came, since the
    /// rate was last judged.
    waited: Duration,
    bytes: u64,
}

impl IdleTimer {
    pub(crate) fn new(limit: Duration) -> Self {
        IdleTimer {
            limit,
            sleep: None,
            waiting: None,
            min_rate: 0,
            waited: Duration::ZERO,
            bytes: 0,
        }
    }

    /// Requires `rate` bytes per second on average, judged after each
    /// [`RATE_WINDOW`] of waiting for the peer.
    pub(crate) fn min_rate(&mut self, rate: u64) {
        self.min_rate = rate;
    }

    /// A frame of `len` bytes arrived: the next wait starts a new pause.
    /// False when the peer has kept the body waiting a whole window and
    /// sent less than the minimum rate over it.
    fn frame(&mut self, len: usize) -> bool {
        let since = self.waiting.take();
        if self.min_rate == 0 {
            return true;
        }
        if let Some(since) = since {
            self.waited += since.elapsed();
        }
        self.bytes = self.bytes.saturating_add(len as u64);
        if self.waited < RATE_WINDOW || len == 0 {
            return true;
        }
        let wanted = (self.min_rate as f64 * self.waited.as_secs_f64()) as u64;
        let fast_enough = self.bytes >= wanted;
        self.waited = Duration::ZERO;
        self.bytes = 0;
        fast_enough
    }

    /// The body is waiting; true once the pause has lasted `limit`.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.waiting.is_none() {
            let now = Instant::now();
            self.waiting = Some(now);
            let deadline = now + self.limit;
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        self.sleep
            .as_mut()
            .is_some_and(|s| s.as_mut().poll(cx).is_ready())
    }
}

/// Polls `body` under `timer`.
pub(crate) fn poll_timed(
    body: &mut Incoming,
    timer: &mut IdleTimer,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
    match Pin::new(body).poll_frame(cx) {
        Poll::Ready(frame) => {
            let len = match &frame {
                Some(Ok(f)) => f.data_ref().map_or(0, Bytes::len),
                _ => 0,
            };
            if !timer.frame(len) {
                return Poll::Ready(Some(Err(BodyError::TooSlow(timer.min_rate))));
            }
            Poll::Ready(frame.map(|f| f.map_err(BodyError::from)))
        }
        Poll::Pending if timer.expired(cx) => Poll::Ready(Some(Err(BodyError::Idle(timer.limit)))),
        Poll::Pending => Poll::Pending,
    }
}

/// Where a response body comes from. (`http_body_util::Either` would box
/// every error; these two sources need no allocation.)
#[derive(Debug)]
enum Source {
    /// A backend's body, streamed under an idle timeout.
    Upstream(Incoming, IdleTimer),
    /// One of Meridian's own pages.
    Local(Full<Bytes>),
}

/// A response body sent to a client. It holds the connection's [`InFlight`]
/// mark until it is finished or dropped, so that a connection streaming a
/// long response is never taken for idle.
#[derive(Debug)]
pub struct ResponseBody {
    source: Source,
    /// What [`ResponseBody::gather`] took from the backend's body ahead of
    /// the client connection.
    held: Option<Held>,
    /// The last frame given was held: an error right behind it waits a
    /// turn (see `poll_frame`).
    gave_held: bool,
    in_flight: Option<InFlight>,
    /// The backend's slot, when the body is a backend's.
    slot: Option<Slot>,
    /// The backend connection, given back to its pool at the end of the body.
    lease: Option<Lease>,
}

impl ResponseBody {
    /// A backend's response body; a pause longer than `idle` between two
    /// frames ends it with an error, so the client never takes a cut body
    /// for a complete one.
    pub fn upstream(body: Incoming, idle: Duration) -> Self {
        ResponseBody {
            source: Source::Upstream(body, IdleTimer::new(idle)),
            held: None,
            gave_held: false,
            in_flight: None,
            slot: None,
            lease: None,
        }
    }

    /// One of Meridian's own answers.
    pub fn local(body: Full<Bytes>) -> Self {
        ResponseBody {
            source: Source::Local(body),
            held: None,
            gave_held: false,
            in_flight: None,
            slot: None,
            lease: None,
        }
    }

    /// Holds `in_flight` until the body is finished or dropped.
    pub fn with_in_flight(mut self, in_flight: InFlight) -> Self {
        self.in_flight = Some(in_flight);
        self
    }

    /// Holds the backend's `slot` until the body is finished or dropped.
    pub fn with_slot(mut self, slot: Slot) -> Self {
        self.slot = Some(slot);
        self
    }

    /// Gives the backend connection back to its pool once the body has been
    /// read to its end; a body dropped before its end closes it.
    pub fn with_lease(mut self, lease: Lease) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Takes the first piece of a backend body of at most `up_to` bytes
    /// (and [`GATHER_UP_TO`]) ahead of the client connection and, when more
    /// is to come, yields one turn of the runtime.
    ///
    /// A backend's body reaches the client connection through the backend
    /// connection's task, one piece (one read) at a time, and the client
    /// connection writes what it has as soon as the body has nothing more
    /// ready: a body that came in two reads went out in two writes. Taking
    /// the first piece lets that task pass on the next, and the turn gives
    /// it the time to, when it already has it: the client connection then
    /// finds the head and both pieces ready and writes them at once. A body
    /// of more pieces still goes out in more writes, and when the next piece
    /// is not there yet, nothing waits for it.
    pub fn gather(&mut self, up_to: u64) -> Gather<'_> {
        Gather {
            body: self,
            up_to: up_to.min(GATHER_UP_TO),
            yielded: false,
        }
    }

    /// The body is over: the connection can serve another request.
    fn finished(&mut self) {
        self.in_flight = None;
        self.slot = None;
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // hyper never polls a body that is empty from the start (a 204, an
        // answer to HEAD, `Content-Length: 0`): it is over all the same. A
        // piece gathered but never sent does not matter to the backend
        // connection, which delivered the whole.
        let source_over = match &self.held {
            None | Some(Held::Data(_)) => self.source_at_end(),
            Some(Held::Other(_)) => false,
        };
        if self.lease.is_some() && source_over {
            self.finished();
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let gave_held = std::mem::take(&mut this.gave_held);
        let polled = match this.held.take() {
            Some(Held::Data(data)) => {
                this.gave_held = true;
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            Some(Held::Other(polled)) => Poll::Ready(*polled),
            None => match this.poll_source(cx) {
                // hyper cuts the client's connection on a body error without
                // writing what it buffered: a backend that failed right
                // behind the gathered data would have it lost, and the client
                // would see less than the backend sent. The error waits a
                // turn, so that the data is written first.
                Poll::Ready(Some(Err(e))) if gave_held => {
                    this.held = Some(Held::Other(Box::new(Some(Err(e)))));
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                polled => polled,
            },
        };
        if let Poll::Ready(None) = polled {
            this.finished();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        // Whatever is held must be polled, an end included: a body is only
        // gathered when more of it was announced, so an end held is a cut,
        // which hyper finds out only by polling (and then closes the
        // connection instead of passing the body off as empty).
        self.held.is_none() && self.source_at_end()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = match &self.source {
            Source::Upstream(body, _) => body.size_hint(),
            Source::Local(body) => body.size_hint(),
        };
        if let Some(Held::Data(data)) = &self.held {
            let held = data.len() as u64;
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper.saturating_add(held));
            }
            hint.set_lower(hint.lower().saturating_add(held));
        }
        hint
    }
}

impl ResponseBody {
    /// Whether where the body comes from has nothing more.
    fn source_at_end(&self) -> bool {
        match &self.source {
            Source::Upstream(body, _) => body.is_end_stream(),
            Source::Local(body) => body.is_end_stream(),
        }
    }

    /// The next frame from where the body comes from.
    fn poll_source(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.source {
            Source::Upstream(body, timer) => poll_timed(body, timer, cx),
            Source::Local(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        }
    }
}

/// What [`ResponseBody::gather`] took from a backend's body.
#[derive(Debug)]
enum Held {
    /// A piece of data, the usual.
    Data(Bytes),
    /// Anything else: an error, trailers or the end.
    Other(Box<Option<Result<Frame<Bytes>, BodyError>>>),
}

/// The future of [`ResponseBody::gather`].
#[derive(Debug)]
pub struct Gather<'a> {
    body: &'a mut ResponseBody,
    up_to: u64,
    yielded: bool,
}

impl Future for Gather<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if this.yielded {
            return Poll::Ready(());
        }
        let body = &mut *this.body;
        let short = match &body.source {
            Source::Upstream(incoming, _) => incoming
                .size_hint()
                .exact()
                .is_some_and(|n| n > 0 && n <= this.up_to),
            Source::Local(_) => false,
        };
        if !short || body.held.is_some() {
            return Poll::Ready(());
        }
        match body.poll_source(cx) {
            // Nothing has come yet: no reason to wait for it here.
            Poll::Pending => Poll::Ready(()),
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    body.held = Some(Held::Data(data));
                    if body.source_at_end() {
                        return Poll::Ready(());
                    }
                    this.yielded = true;
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Err(frame) => {
                    body.held = Some(Held::Other(Box::new(Some(Ok(frame)))));
                    Poll::Ready(())
                }
            },
            Poll::Ready(other) => {
                body.held = Some(Held::Other(Box::new(other)));
                Poll::Ready(())
            }
        }
    }
}

#[cfg(test)]
mod rate_tests {
    use super::*;

    /// The body waits `secs` for the peer, then gets a frame of `len` bytes.
    async fn wait_then(t: &mut IdleTimer, secs: u64, len: usize) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(!t.expired(&mut cx));
        tokio::time::advance(Duration::from_secs(secs)).await;
        t.frame(len)
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_slower_than_its_minimum_rate_is_given_up_on() {
        let mut t = IdleTimer::new(Duration::from_secs(60));
        assert!(wait_then(&mut t, 30, 1).await, "no minimum by default");
        t.min_rate(10);
        assert!(
            wait_then(&mut t, 19, 5).await,
            "19 s of waiting: not judged yet"
        );
        assert!(
            !wait_then(&mut t, 2, 5).await,
            "10 bytes in 21 s, 210 wanted"
        );
        assert!(
            wait_then(&mut t, 20, 200).await,
            "200 bytes in 20 s are enough"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_peer_was_not_waited_for_is_not_charged() {
        let mut t = IdleTimer::new(Duration::from_secs(60));
        t.min_rate(10);
        // A backend that reads slowly: long gaps between polls, but each
        // poll finds data at once.
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(10)).await;
            assert!(t.frame(1));
        }
        assert!(
            !wait_then(&mut t, 25, 1).await,
            "then the client itself is slow"
        );
    }
}
