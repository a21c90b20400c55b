//! Walking a plan for one request: attempts in order, retries where they are
//! safe and within the budget, and hedges of slow idempotent requests.
//!
//! - A request that never reached a backend (no connection) goes to the next
//!   candidate whatever its method, without drawing on the retry budget.
//! - A request the backend may have seen — reset, no response head in time,
//!   a response that is not HTTP, or a 502/503/504 answer — goes on only when
//!   its method is in `retry_methods`, its body is still at hand (none, never
//!   read, or copied within `replay_buffer`), and the retry budget allows.
//! - A request with no response head after the hedge delay is also sent to
//!   the next candidate, under the same conditions; the first good answer
//!   wins and the others are dropped.
//! - Nothing is retried once a response has been handed to the client.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::Duration;

use http::Response;
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::attempt::{attempt, AttemptError};
use super::{build_upstream, Head, Proxy};
use crate::body::ResponseBody;
use crate::concurrency::Slot;
use crate::health::Failure;
use crate::pool::Lease;
use crate::request_body::{Replay, Returned, UpstreamBody};
use crate::routing::Plan;
use crate::state::{RegionState, Snapshot};
use crate::status_page::Rescue;

/// Longest wait for a failed connection to give back the request body.
const BODY_RETURN_WAIT: Duration = Duration::from_millis(50);

/// A response head, the connection it came on and the backend slot its
/// request holds.
type Answer = (Response<Incoming>, Lease, Slot);

type AttemptFuture = Pin<Box<dyn Future<Output = Result<Answer, AttemptError>> + Send>>;

/// A backend's response on its way to the client, and the region that gave it.
pub(super) struct Served {
    pub(super) response: Response<ResponseBody>,
    pub(super) region: usize,
    /// Goes to the client as it is, never replaced by the status page: a
    /// backend's answer to an upgrade.
    pub(super) as_is: bool,
}

/// An attempt in flight.
struct Running {
    /// Index in the plan's candidates.
    candidate: usize,
    started: Instant,
    /// When a request that had to wait for a full backend got its slot:
    /// `None` for one admitted at once.
    queued: Option<Arc<OnceLock<Instant>>>,
    /// Takes back the body; `None` for a request without one.
    returned: Option<Returned>,
    future: AttemptFuture,
}

impl Running {
    /// When its request got its backend slot; `None` while it still waits,
    /// never having reached the backend.
    fn admitted(&self) -> Option<Instant> {
        match &self.queued {
            None => Some(self.started),
            Some(at) => at.get().copied(),
        }
    }
}

/// The timer of the next hedge: one allocation per request at most,
/// re-armed only when the deadline moves.
#[derive(Default)]
struct HedgeTimer {
    sleep: Option<Pin<Box<Sleep>>>,
    deadline: Option<Instant>,
}

impl HedgeTimer {
    fn set(&mut self, deadline: Option<Instant>) {
        if deadline == self.deadline {
            return;
        }
        self.deadline = deadline;
        if let Some(d) = deadline {
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(d),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(d))),
            }
        }
    }

    fn poll(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        match (&mut self.sleep, self.deadline) {
            (Some(sleep), Some(_)) => sleep.as_mut().poll(cx),
            _ => Poll::Pending,
        }
    }
}

enum Event {
    Done(usize, Result<Answer, AttemptError>),
    Hedge,
}

/// The forwarding of one request along its plan.
pub(super) struct Forward<'a> {
    proxy: &'a Proxy,
    snapshot: &'a Snapshot,
    plan: &'a Plan,
    head: &'a Head,
    keep_host: bool,
    /// The method may be retried after a backend may have seen it, and hedged.
    retry_method: bool,
    has_body: bool,
    /// The body between attempts, when it can still be sent.
    pending: Option<Replay>,
    /// The next candidate not tried yet.
    next: usize,
    retried_same: bool,
    /// Attempts started: the first, retries and hedges.
    attempts: u32,
    hedging: bool,
    running: Vec<Running>,
    last_error: Option<(AttemptError, usize)>,
    /// A 502/503/504 answer kept while a retry may do better.
    fallback: Option<(Answer, usize)>,
    /// When waits for a full backend must end: one
    /// `limits.backend_queue_timeout` per request, however many backends.
    queue_deadline: Option<Instant>,
}

impl<'a> Forward<'a> {
    pub(super) fn new(
        proxy: &'a Proxy,
        snapshot: &'a Snapshot,
        plan: &'a Plan,
        head: &'a Head,
        keep_host: bool,
        body: Incoming,
    ) -> Self {
        use http_body::Body as _;
        let retry_method = snapshot.config.proxy.retry_methods.contains(&head.method);
        let has_body = !body.is_end_stream();
        Forward {
            proxy,
            snapshot,
            plan,
            head,
            keep_host,
            retry_method,
            has_body,
            pending: has_body.then(|| Replay::unread(body)),
            next: 0,
            retried_same: false,
            attempts: 0,
            hedging: retry_method && snapshot.config.proxy.hedge.is_some(),
            running: Vec::new(),
            last_error: None,
            fallback: None,
            queue_deadline: None,
        }
    }

    /// Attempts started so far: the first, retries and hedges.
    pub(super) fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Forwards until a backend answers; otherwise says which page to serve.
    /// Borrows rather than consumes `self`, so that the caller's future
    /// holds the forwarding state once, not twice.
    pub(super) async fn walk(&mut self) -> Result<Served, Rescue> {
        if self.plan.candidates.is_empty() {
            return Err(empty_plan(self.snapshot));
        }
        self.start(None, false)?;
        let mut hedge_timer = HedgeTimer::default();
        hedge_timer.set(self.hedge_deadline());
        while !self.running.is_empty() {
            let event = poll_fn(|cx| {
                for (i, r) in self.running.iter_mut().enumerate() {
                    if let Poll::Ready(result) = r.future.as_mut().poll(cx) {
                        return Poll::Ready(Event::Done(i, result));
                    }
                }
                if hedge_timer.poll(cx).is_ready() {
                    return Poll::Ready(Event::Hedge);
                }
                Poll::Pending
            })
            .await;
            match event {
                Event::Hedge => {
                    if !self.hedge() {
                        self.hedging = false;
                    }
                }
                Event::Done(i, Ok(answer)) => {
                    let running = self.running.swap_remove(i);
                    if let Some(response) = self.answered(running, answer) {
                        return Ok(response);
                    }
                }
                Event::Done(i, Err(e)) => {
                    let Running {
                        candidate,
                        mut returned,
                        future,
                        ..
                    } = self.running.swap_remove(i);
                    // Dropped now, not at the end of this arm: a timed-out
                    // exchange still holds the request body that the wait
                    // below expects back, and its backend slot.
                    drop(future);
                    if let (Some(returned), true) =
                        (returned.as_mut(), e.may_retry(self.retry_method))
                    {
                        if let Some(r) = returned.wait(BODY_RETURN_WAIT).await {
                            self.pending = Some(r);
                        }
                    }
                    if let Err(rescue) = self.failed(candidate, e) {
                        return match self.fallback.take() {
                            Some((answer, candidate)) => Ok(self.deliver(answer, candidate)),
                            None => Err(rescue),
                        };
                    }
                }
            }
            hedge_timer.set(self.hedge_deadline());
        }
        if let Some((answer, candidate)) = self.fallback.take() {
            return Ok(self.deliver(answer, candidate));
        }
        Err(self.give_up())
    }

    /// A response head arrived: hands it on, or keeps a 502/503/504 aside
    /// while another try may do better.
    fn answered(&mut self, mut running: Running, answer: Answer) -> Option<Served> {
        let response = &answer.0;
        let c = self.plan.candidates[running.candidate];
        let shared = &self.proxy.shared;
        let generation = &*self.snapshot.generation;
        let status = response.status().as_u16();
        if status >= 500 {
            shared.passive_failure(generation, c.region, c.backend, Failure::Status(status));
        } else {
            generation.passive.success(c.region, c.backend);
        }
        if (502..=504).contains(&status) && self.retry_method {
            self.collect(&mut running.returned);
            let retried = self.running.is_empty() && self.start(None, true).unwrap_or(false);
            if retried {
                self.proxy.shared.metrics().retry();
            }
            if !self.running.is_empty() || retried {
                tracing::debug!(region = %self.region_name(running.candidate), status, "retrying a gateway error");
                self.fallback = Some((answer, running.candidate));
                return None;
            }
        }
        self.snapshot.generation.latency.observe(
            c.region,
            running.admitted().unwrap_or(running.started).elapsed(),
        );
        // Attempts started earlier and still waiting lost to a good answer:
        // as slow as a timeout, as far as their backends' health goes —
        // unless they are still waiting for a slot, which is busy, not slow.
        if status < 500 {
            let slow = |o: &&Running| o.started < running.started && o.admitted().is_some();
            for other in self.running.iter().filter(slow) {
                let o = self.plan.candidates[other.candidate];
                shared.passive_failure(generation, o.region, o.backend, Failure::Timeout);
            }
        }
        Some(self.deliver(answer, running.candidate))
    }

    /// An attempt failed: counts it against the backend and tries again where allowed.
    fn failed(&mut self, candidate: usize, e: AttemptError) -> Result<(), Rescue> {
        let c = self.plan.candidates[candidate];
        // Moving past a full backend is not a retry: the request never left.
        let full = matches!(e, AttemptError::Full(_));
        if full {
            self.proxy.shared.metrics().queue_timeout();
        }
        if let Some(failure) = e.failure() {
            self.proxy.shared.passive_failure(
                &self.snapshot.generation,
                c.region,
                c.backend,
                failure,
            );
        }
        tracing::debug!(region = %self.region_name(candidate), backend = %self.backend_address(candidate), error = %e, "attempt failed");
        let retry = e.may_retry(self.retry_method);
        let reached = e.reached_backend();
        // A dropped keep-alive connection says little about the backend: it
        // gets one more try before the next candidate, once per request, so
        // a request that kills backends cannot take twice its share of them.
        let same = !self.retried_same && matches!(e, AttemptError::Disconnected(_));
        self.last_error = Some((e, candidate));
        if !retry {
            // Whatever else is running may still answer.
            return Ok(());
        }
        if same {
            // Not counted against the budget: this is the everyday race of a
            // keep-alive connection closed by the backend as it was reused.
            self.retried_same = true;
            if self.start(Some(candidate), false)? {
                self.proxy.shared.metrics().retry();
            }
        } else if self.start(None, reached)? && !full {
            self.proxy.shared.metrics().retry();
        }
        Ok(())
    }

    /// Sends the request to the next candidate too, if the body and the
    /// budget allow; false when no hedge can be sent.
    fn hedge(&mut self) -> bool {
        for i in 0..self.running.len() {
            if let Some(r) = self.running[i].returned.as_mut().and_then(Returned::take) {
                self.pending = Some(r);
            }
        }
        let complete = !self.has_body
            || self
                .pending
                .as_ref()
                .is_some_and(|p| p.copy_if_complete().is_some());
        if !complete || self.next >= self.plan.candidates.len() {
            return false;
        }
        let started = self.start(None, true).unwrap_or(false);
        if started {
            self.proxy.shared.metrics().hedge();
            let c = self.running.last().map(|r| r.candidate).unwrap_or_default();
            tracing::debug!(region = %self.region_name(c), backend = %self.backend_address(c), "hedged a slow request");
        }
        started
    }

    /// When the next hedge is due: the hedge delay after the latest attempt started.
    fn hedge_deadline(&self) -> Option<Instant> {
        let hedge = self.snapshot.config.proxy.hedge.as_ref()?;
        if !self.hedging || self.next >= self.plan.candidates.len() {
            return None;
        }
        let last = self.running.iter().max_by_key(|r| r.started)?;
        let region = self.plan.candidates[last.candidate].region;
        Some(last.started + self.snapshot.generation.latency.hedge_delay(region, hedge))
    }

    /// Takes back what an attempt left of the body.
    fn collect(&mut self, returned: &mut Option<Returned>) {
        if let Some(r) = returned.as_mut().and_then(Returned::take) {
            self.pending = Some(r);
        }
    }

    /// The body for one more attempt: a copy when it is whole in memory,
    /// else what is left of it; `None` when it is gone.
    fn next_body(&mut self) -> Option<Option<Replay>> {
        if !self.has_body {
            return Some(None);
        }
        match self.pending.as_ref().and_then(Replay::copy_if_complete) {
            Some(copy) => Some(Some(copy)),
            None => self.pending.take().map(Some),
        }
    }

    /// Starts an attempt on `same` or the next candidate; false when there
    /// is none, the body is gone, or a retry that would reach a backend
    /// finds the budget spent.
    fn start(&mut self, same: Option<usize>, costs_budget: bool) -> Result<bool, Rescue> {
        let candidate = match same {
            Some(c) => c,
            None if self.next < self.plan.candidates.len() => self.next,
            None => return Ok(false),
        };
        if self.has_body && self.pending.is_none() {
            return Ok(false);
        }
        if costs_budget && !self.snapshot.generation.budget.try_retry(Instant::now()) {
            tracing::debug!("retry budget spent");
            return Ok(false);
        }
        let Some(body) = self.next_body() else {
            return Ok(false);
        };
        if same.is_none() {
            self.next += 1;
        }
        self.attempts += 1;
        let config = &self.snapshot.config;
        let c = self.plan.candidates[candidate];
        let region = &config.regions[c.region];
        let backend = &region.backends[c.backend];
        let keep = (self.retry_method && config.proxy.replay_buffer > 0)
            .then_some(config.proxy.replay_buffer);
        let (upstream_body, returned, sent) = match body {
            Some(b) => {
                let (b, returned, sent) =
                    UpstreamBody::new(b, config.limits.client_body_timeout, keep);
                // gRPC streams requests for as long as a call lasts, at
                // whatever pace the application has.
                let grpc = self
                    .head
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
                let rate = if grpc {
                    0
                } else {
                    config.limits.client_body_min_rate
                };
                let b = b.with_min_rate(rate);
                (b, Some(returned), sent)
            }
            None => {
                let (b, sent) = UpstreamBody::empty();
                (b, None, sent)
            }
        };
        let request =
            build_upstream(self.head, backend, self.keep_host, upstream_body).map_err(|e| {
                tracing::warn!(error = %e, "cannot build the upstream request");
                Rescue::BackendFailed
            })?;
        let first_byte = region
            .first_byte_timeout
            .unwrap_or(config.proxy.first_byte_timeout);
        let generation = &self.snapshot.generation;
        // Every configured backend has its slots; the spare is never used.
        let spare;
        let slots = match generation.metrics.slots(c.region, c.backend) {
            Some(slots) => slots,
            None => {
                spare = Arc::default();
                &spare
            }
        };
        let max = config.limits.backend_max_requests;
        let at = (c.region, c.backend);
        let (future, queued): (AttemptFuture, _) = match slots.try_take(max) {
            Some(slot) => {
                let future = attempt(&generation.client, at, request, sent, first_byte, slot);
                (Box::pin(future), None)
            }
            None => {
                // The backend is full: wait for a slot, within what is
                // left of this request's queue time.
                let now = Instant::now();
                let deadline = *self
                    .queue_deadline
                    .get_or_insert(now + config.limits.backend_queue_timeout);
                let wait = deadline.saturating_duration_since(now);
                let client = generation.client.clone();
                let slots = Arc::clone(slots);
                let queued = Arc::new(OnceLock::new());
                let admitted = Arc::clone(&queued);
                let future = Box::pin(async move {
                    let slot = slots.take(max, wait).await.ok_or(AttemptError::Full(max))?;
                    let _ = admitted.set(Instant::now());
                    attempt(&client, at, request, sent, first_byte, slot).await
                });
                (future, Some(queued))
            }
        };
        self.running.push(Running {
            candidate,
            started: Instant::now(),
            queued,
            returned,
            future,
        });
        Ok(true)
    }

    /// The response as the client gets it.
    fn deliver(&self, (mut response, lease, slot): Answer, candidate: usize) -> Served {
        let config = &self.snapshot.config;
        let version = response.version();
        crate::headers::forward_response(response.headers_mut(), version);
        let read_timeout = config.proxy.read_timeout;
        Served {
            response: response.map(|b| {
                ResponseBody::upstream(b, read_timeout)
                    .with_slot(slot)
                    .with_lease(lease)
            }),
            region: self.plan.candidates[candidate].region,
            as_is: false,
        }
    }

    /// Nothing answered: logs why and picks the page.
    fn give_up(&mut self) -> Rescue {
        match self.last_error.take() {
            None => Rescue::NoRegion,
            // The client's own doing: nothing an operator needs to hear about.
            Some((e @ AttemptError::ClientBody { .. }, _)) => {
                tracing::debug!(error = %e, "request body failed");
                e.rescue()
            }
            // Counted in metrics: a line per shed request would flood the
            // log just when the machine is busiest.
            Some((e @ AttemptError::Full(_), candidate)) => {
                tracing::debug!(region = %self.region_name(candidate), error = %e, "request shed");
                e.rescue()
            }
            Some((e, candidate)) => {
                tracing::warn!(region = %self.region_name(candidate), backend = %self.backend_address(candidate), error = %e, "request failed");
                e.rescue()
            }
        }
    }

    fn region_name(&self, candidate: usize) -> &str {
        &self.snapshot.config.regions[self.plan.candidates[candidate].region].name
    }

    fn backend_address(&self, candidate: usize) -> &str {
        let c = self.plan.candidates[candidate];
        &self.snapshot.config.regions[c.region].backends[c.backend].address
    }
}

/// Why a plan is empty: operators drained every region, or no region can
/// serve this client. The page says which, so users are not told of an
/// outage during planned maintenance.
pub(super) fn empty_plan(snapshot: &Snapshot) -> Rescue {
    let drained = !snapshot.regions.is_empty()
        && snapshot
            .regions
            .iter()
            .all(|r| r.state == RegionState::Drained);
    if drained {
        Rescue::Drained
    } else {
        Rescue::NoRegion
    }
}
