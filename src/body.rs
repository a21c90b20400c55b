//! The bodies of the request path. The client's body on its way to a backend
//! comes back to the proxy if the backend could not be reached before any of
//! it was sent, and tells the proxy when it has been sent whole. Both
//! directions are bounded by an idle timeout between two pieces of a body, so
//! that a stalled client or backend cannot hold a connection forever.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::sync::oneshot;
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
}

/// Bounds the pause between two frames of a body. The timer is only
/// allocated once a body actually has to wait.
#[derive(Debug)]
struct IdleTimer {
    limit: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    waiting: bool,
}

impl IdleTimer {
    fn new(limit: Duration) -> Self {
        IdleTimer {
            limit,
            sleep: None,
            waiting: false,
        }
    }

    /// A frame arrived: the next wait starts a new pause.
    fn frame(&mut self) {
        self.waiting = false;
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
fn poll_timed(
    body: &mut Incoming,
    timer: &mut IdleTimer,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
    match Pin::new(body).poll_frame(cx) {
        Poll::Ready(frame) => {
            timer.frame();
            Poll::Ready(frame.map(|f| f.map_err(BodyError::from)))
        }
        Poll::Pending if timer.expired(cx) => Poll::Ready(Some(Err(BodyError::Idle(timer.limit)))),
        Poll::Pending => Poll::Pending,
    }
}

/// A request body sent to a backend.
///
/// When it is dropped without ever having been polled — the connection to
/// the backend failed before anything was written — the client's body is
/// handed back through [`Unsent`], so the request can go to another backend
/// without buffering anything. When its last frame has been read, or when it
/// is dropped (hyper drops an empty body as it writes the request head), it
/// fires [`Sent`], which starts the wait for the response.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Option<(Incoming, IdleTimer)>,
    polled: bool,
    unsent: Option<oneshot::Sender<Incoming>>,
    sent: Option<oneshot::Sender<()>>,
}

/// Receives a client body that was never sent.
#[derive(Debug)]
pub struct Unsent(oneshot::Receiver<Incoming>);

impl Unsent {
    /// The body, if the backend never read any of it. Call after the request
    /// future has finished, which drops the request.
    pub fn take(mut self) -> Option<Incoming> {
        self.0.try_recv().ok()
    }
}

/// Completes when the request body has been read to its end, or is gone.
/// Dropping the sender counts as sent, so that nothing waits forever.
#[derive(Debug)]
pub struct Sent(oneshot::Receiver<()>);

impl Sent {
    /// Waits until the body is sent whole (or dropped, so that nothing waits forever).
    pub async fn wait(self) {
        let _ = self.0.await;
    }
}

impl UpstreamBody {
    /// Wraps the client's body, pausing at most `idle` between two frames.
    pub fn new(body: Incoming, idle: Duration) -> (UpstreamBody, Unsent, Sent) {
        let (unsent_tx, unsent_rx) = oneshot::channel();
        let (sent_tx, sent_rx) = oneshot::channel();
        let body = UpstreamBody {
            inner: Some((body, IdleTimer::new(idle))),
            polled: false,
            unsent: Some(unsent_tx),
            sent: Some(sent_tx),
        };
        (body, Unsent(unsent_rx), Sent(sent_rx))
    }

    /// No body at all.
    pub fn empty() -> (UpstreamBody, Sent) {
        let (sent_tx, sent_rx) = oneshot::channel();
        let body = UpstreamBody {
            inner: None,
            polled: false,
            unsent: None,
            sent: Some(sent_tx),
        };
        (body, Sent(sent_rx))
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        this.polled = true;
        let polled = match this.inner.as_mut() {
            Some((body, timer)) => poll_timed(body, timer, cx),
            None => Poll::Ready(None),
        };
        if let Poll::Ready(None) = polled {
            if let Some(sent) = this.sent.take() {
                let _ = sent.send(());
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|(b, _)| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |(b, _)| b.size_hint())
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if !self.polled {
            if let (Some((body, _)), Some(unsent)) = (self.inner.take(), self.unsent.take()) {
                let _ = unsent.send(body);
            }
        }
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
