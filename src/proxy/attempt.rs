//! One forwarding attempt on one backend, and what its failure means: for
//! passive health, for the page the client gets, and for whether the request
//! may go to another backend.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::time::Sleep;

use crate::body::BodyError;
use crate::health::Failure;
use crate::pool::Lease;
use crate::request_body::{Sent, UpstreamBody};
use crate::status_page::Rescue;
use crate::telemetry::error_chain;
use crate::upstream::{UpstreamClient, UpstreamError};

/// How one forwarding attempt ended without a response.
#[derive(Debug, thiserror::Error)]
pub(super) enum AttemptError {
    /// No connection to the backend: the request never left Meridian.
    #[error("cannot connect: {}", error_chain(.0))]
    Connect(UpstreamError),
    /// The connection closed or was reset before any response, as when a
    /// pooled keep-alive connection was closed by the backend just as it was
    /// reused. The backend may have seen the request.
    #[error("connection lost before a response: {}", error_chain(.0))]
    Disconnected(hyper::Error),
    /// No response head within the first-byte timeout after the request was sent.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The client's body stalled (`timed_out`) or broke while it was being forwarded.
    #[error("client body: {detail}")]
    ClientBody {
        /// The client paused longer than the client body timeout.
        timed_out: bool,
        /// What happened.
        detail: String,
    },
    /// Any other failure of the exchange, such as a response that is not HTTP.
    #[error("{}", error_chain(.0))]
    Exchange(hyper::Error),
    /// A response whose framing two parsers could read differently
    /// (`Content-Length` with `Transfer-Encoding`): never passed on, and
    /// its connection never reused.
    #[error("ambiguous response framing: {0}")]
    Framing(&'static str),
    /// The backend had `limits.backend_max_requests` in flight throughout
    /// the wait: the request never left Meridian.
    #[error("backend at its limit of {0} requests in flight")]
    Full(usize),
}

impl AttemptError {
    fn from_client(e: UpstreamError) -> Self {
        let e = match e {
            UpstreamError::Exchange(e) => e,
            other => return AttemptError::Connect(other),
        };
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = source {
            if let Some(body) = s.downcast_ref::<BodyError>() {
                return AttemptError::ClientBody {
                    timed_out: matches!(body, BodyError::Idle(_) | BodyError::TooSlow(_)),
                    detail: body.to_string(),
                };
            }
            let lost = s
                .downcast_ref::<hyper::Error>()
                .is_some_and(|h| h.is_incomplete_message() || h.is_canceled())
                || s.downcast_ref::<std::io::Error>().is_some_and(|io| {
                    matches!(
                        io.kind(),
                        std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::BrokenPipe
                            | std::io::ErrorKind::ConnectionAborted
                    )
                });
            if lost {
                return AttemptError::Disconnected(e);
            }
            source = s.source();
        }
        AttemptError::Exchange(e)
    }

    /// Whether the request may go to another backend. One that never left
    /// Meridian always may; one the backend may have seen only when its
    /// method may be retried; one whose client broke never.
    pub(super) fn may_retry(&self, retry_method: bool) -> bool {
        match self {
            AttemptError::Connect(_) | AttemptError::Full(_) => true,
            AttemptError::ClientBody { .. } => false,
            _ => retry_method,
        }
    }

    /// Whether another try costs the backends something, and so draws on the
    /// retry budget: all but a request that never left Meridian.
    pub(super) fn reached_backend(&self) -> bool {
        !matches!(self, AttemptError::Connect(_) | AttemptError::Full(_))
    }

    /// What it says about the backend's health, if anything.
    pub(super) fn failure(&self) -> Option<Failure> {
        match self {
            AttemptError::Connect(_) => Some(Failure::Connect),
            AttemptError::Disconnected(_)
            | AttemptError::Exchange(_)
            | AttemptError::Framing(_) => Some(Failure::Reset),
            AttemptError::Timeout(_) => Some(Failure::Timeout),
            // Busy is not broken: a full backend is not ejected for it.
            AttemptError::ClientBody { .. } | AttemptError::Full(_) => None,
        }
    }

    pub(super) fn rescue(&self) -> Rescue {
        match self {
            AttemptError::Timeout(_) => Rescue::BackendTimeout,
            AttemptError::ClientBody {
                timed_out: true, ..
            } => Rescue::ClientTimeout,
            AttemptError::ClientBody { .. } => Rescue::ClientBody,
            AttemptError::Full(_) => Rescue::Overloaded,
            _ => Rescue::BackendFailed,
        }
    }
}

/// Sends `request` to backend `backend` of region `region` and waits for
/// the response head, handing back `held` (the backend slot the request
/// holds) with it. The first-byte timeout starts once the request has been
/// handed to a backend connection with its body read whole from the client:
/// connecting is bounded by the connect timeout (and a failure to connect
/// goes to the next candidate), a slow upload by the client body timeout,
/// and a backend that stops reading by the send timeout.
pub(super) fn attempt<S>(
    client: &UpstreamClient,
    (region, backend): (usize, usize),
    request: Request<UpstreamBody>,
    sent: Sent,
    first_byte: Duration,
    held: S,
) -> Attempt<impl Future<Output = Result<(Response<Incoming>, Lease), UpstreamError>>, S> {
    let head_request = request.method() == http::Method::HEAD;
    Attempt {
        exchange: client.send(region, backend, request),
        sent: Some(sent),
        timer: None,
        first_byte,
        head_request,
        held: Some(held),
    }
}

pin_project_lite::pin_project! {
    /// One attempt in flight: the exchange raced against the first-byte
    /// timeout. A hand-written future rather than an `async` block with
    /// `select!`, which would hold the exchange twice over; every attempt
    /// is moved into a box, so its size is paid on every request.
    pub(super) struct Attempt<F, S> {
        #[pin]
        exchange: F,
        // Until the request is sent; then the timer runs.
        sent: Option<Sent>,
        #[pin]
        timer: Option<Sleep>,
        first_byte: Duration,
        head_request: bool,
        held: Option<S>,
    }
}

impl<F, S> Future for Attempt<F, S>
where
    F: Future<Output = Result<(Response<Incoming>, Lease), UpstreamError>>,
{
    type Output = Result<(Response<Incoming>, Lease, S), AttemptError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // The exchange first: a response that is ready wins over a timeout
        // that is due at the same moment.
        if let Poll::Ready(result) = this.exchange.poll(cx) {
            // Taken whatever the outcome: a failed attempt gives its backend
            // slot back at once, not when its box is dropped.
            let held = this
                .held
                .take()
                .expect("an attempt is not polled after it ends");
            let (response, lease) = result.map_err(AttemptError::from_client)?;
            return Poll::Ready(
                checked(response, lease, *this.head_request).map(|(r, l)| (r, l, held)),
            );
        }
        if let Some(sent) = this.sent.as_mut() {
            if Pin::new(sent).poll(cx).is_pending() {
                return Poll::Pending;
            }
            *this.sent = None;
            this.timer.set(Some(tokio::time::sleep(*this.first_byte)));
        }
        match this.timer.as_pin_mut().map(|timer| timer.poll(cx)) {
            Some(Poll::Ready(())) => {
                *this.held = None;
                Poll::Ready(Err(AttemptError::Timeout(*this.first_byte)))
            }
            _ => Poll::Pending,
        }
    }
}

/// A response head that may be passed on: one whose framing two parsers
/// could read differently is refused.
fn checked(
    response: Response<Incoming>,
    lease: Lease,
    head_request: bool,
) -> Result<(Response<Incoming>, Lease), AttemptError> {
    let headers = response.headers();
    let status = response.status();
    // A response without a body (to HEAD, 1xx, 204, 304) is framed by
    // its head alone, whatever its length headers say.
    let bodiless = head_request
        || status.is_informational()
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED;
    if !bodiless
        && headers.contains_key(http::header::TRANSFER_ENCODING)
        && headers.contains_key(http::header::CONTENT_LENGTH)
    {
        // The lease is dropped, not released: the connection closes
        // instead of going back to the pool.
        drop(lease);
        return Err(AttemptError::Framing(
            "Content-Length with Transfer-Encoding",
        ));
    }
    Ok((response, lease))
}
