//! The bodies of the request path: the client's body on its way to a backend,
//! which comes back to the proxy if the backend could not be reached before
//! any of it was sent, and the body sent back to the client.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::sync::oneshot;

use crate::activity::InFlight;

/// A request body sent to a backend.
///
/// When it is dropped without ever having been polled — the connection to
/// the backend failed before anything was written — the client's body is
/// handed back through [`Reclaim`], so the request can go to another backend
/// without buffering anything.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Option<Incoming>,
    polled: bool,
    back: Option<oneshot::Sender<Incoming>>,
}

/// Receives a client body that was never sent.
#[derive(Debug)]
pub struct Reclaim(oneshot::Receiver<Incoming>);

impl Reclaim {
    /// The body, if the backend never read any of it. Call after the request
    /// future has finished, which drops the request.
    pub fn take(mut self) -> Option<Incoming> {
        self.0.try_recv().ok()
    }
}

impl UpstreamBody {
    /// Wraps the client's body; the returned [`Reclaim`] gets it back if unsent.
    pub fn reclaimable(body: Incoming) -> (UpstreamBody, Reclaim) {
        let (tx, rx) = oneshot::channel();
        let body = UpstreamBody {
            inner: Some(body),
            polled: false,
            back: Some(tx),
        };
        (body, Reclaim(rx))
    }

    /// No body at all.
    pub fn empty() -> UpstreamBody {
        UpstreamBody {
            inner: None,
            polled: false,
            back: None,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        self.polled = true;
        match self.inner.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if !self.polled {
            if let (Some(body), Some(back)) = (self.inner.take(), self.back.take()) {
                let _ = back.send(body);
            }
        }
    }
}

/// Where a response body comes from.
#[derive(Debug)]
enum Source {
    /// A backend's body, streamed.
    Upstream(Incoming),
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
    /// A backend's response body.
    pub fn upstream(body: Incoming) -> Self {
        ResponseBody {
            source: Source::Upstream(body),
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
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = match &mut self.source {
            Source::Upstream(body) => Pin::new(body).poll_frame(cx),
            Source::Local(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        };
        if let Poll::Ready(None) = polled {
            self.in_flight = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Upstream(body) => body.is_end_stream(),
            Source::Local(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Upstream(body) => body.size_hint(),
            Source::Local(body) => body.size_hint(),
        }
    }
}
