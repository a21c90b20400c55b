//! Response bodies on their way to clients, and the idle timer that bounds
//! both directions: a pause between two pieces of a body longer than the
//! timeout ends it, so that a stalled client or backend cannot hold a
//! connection forever. The request direction is in [`crate::request_body`].

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::activity::InFlight;

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

/// The span over which a body's minimum rate is measured.
pub const RATE_WINDOW: Duration = Duration::from_secs(20);

/// Bounds the pause between two frames of a body and, optionally, its
/// average rate over each [`RATE_WINDOW`]: a client dripping a byte now
/// and then never pauses long, but never finishes either. The timer is only
/// allocated once a body actually has to wait.
#[derive(Debug)]
pub(crate) struct IdleTimer {
    limit: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    waiting: bool,
    /// Bytes per second below which the body is given up on; 0 is no minimum.
    min_rate: u64,
    /// Start of the current window and the bytes received in it.
    window: Option<(Instant, u64)>,
}

impl IdleTimer {
    pub(crate) fn new(limit: Duration) -> Self {
        IdleTimer {
            limit,
            sleep: None,
            waiting: false,
            min_rate: 0,
            window: None,
        }
    }

    /// Requires `rate` bytes per second on average over each window.
    pub(crate) fn min_rate(&mut self, rate: u64) {
        self.min_rate = rate;
    }

    /// A frame of `len` bytes arrived: the next wait starts a new pause.
    /// False when the window it closes fell short of the minimum rate.
    fn frame(&mut self, len: usize) -> bool {
        self.waiting = false;
        if self.min_rate == 0 {
            return true;
        }
        let now = Instant::now();
        let (start, bytes) = self.window.get_or_insert((now, 0));
        *bytes = bytes.saturating_add(len as u64);
        if now.duration_since(*start) < RATE_WINDOW {
            return true;
        }
        let wanted = self.min_rate.saturating_mul(RATE_WINDOW.as_secs());
        let fast_enough = *bytes >= wanted;
        self.window = Some((now, 0));
        fast_enough
    }

    /// The body is waiting; true once the pause has lasted `limit`.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.waiting {
            self.waiting = true;
            let deadline = Instant::now() + self.limit;
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
    in_flight: Option<InFlight>,
}

impl ResponseBody {
    /// A backend's response body; a pause longer than `idle` between two
    /// frames ends it with an error, so the client never takes a cut body
    /// for a complete one.
    pub fn upstream(body: Incoming, idle: Duration) -> Self {
        ResponseBody {
            source: Source::Upstream(body, IdleTimer::new(idle)),
            in_flight: None,
        }
    }

    /// One of Meridian's own answers.
    pub fn local(body: Full<Bytes>) -> Self {
        ResponseBody {
            source: Source::Local(body),
            in_flight: None,
        }
    }

    /// Holds `in_flight` until the body is finished or dropped.
    pub fn with_in_flight(mut self, in_flight: InFlight) -> Self {
        self.in_flight = Some(in_flight);
        self
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
        let polled = match &mut this.source {
            Source::Upstream(body, timer) => poll_timed(body, timer, cx),
            Source::Local(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        };
        if let Poll::Ready(None) = polled {
            this.in_flight = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Upstream(body, _) => body.is_end_stream(),
            Source::Local(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Upstream(body, _) => body.size_hint(),
            Source::Local(body) => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod rate_tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_body_slower_than_its_minimum_rate_over_a_window_is_given_up_on() {
        let mut t = IdleTimer::new(Duration::from_secs(60));
        assert!(t.frame(1), "no minimum by default");
        t.min_rate(10);
        assert!(t.frame(5), "the first frame opens a window");
        tokio::time::advance(Duration::from_secs(19)).await;
        assert!(t.frame(5), "the window is not over");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!t.frame(5), "15 bytes in 20 s, 200 wanted");
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(t.frame(200), "200 bytes in the next 20 s are enough");
    }
}
