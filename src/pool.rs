//! Idle keep-alive connections to one backend, kept for the next request.
//!
//! A connection is lent to one request at a time ([`Lease`]) and comes back
//! only when its response has been read to the end; one whose response was
//! cut short, refused or upgraded is closed instead. Taking and giving back
//! are a lock-free queue operation each: no lock, no hashing on the request
//! path. The queue is oldest first, so idle connections are reaped from its
//! front, by the taker and by a timer that closes connections idle past
//! `proxy.pool_idle_timeout` when no request comes to take them.
//!
//! A connection has no task of its own: its reads and writes (the
//! [`Driver`]) are polled by the request that holds it, from the future that
//! waits for the response head and then from the response body. A backend's
//! answer thus wakes the request's task directly instead of a connection
//! task that would hand it over, the pieces of a body read in one poll are
//! written to the client together, and an idle connection costs no task.
//! Since the body is read only as the client takes it, a request body that
//! is still being sent when the answer comes is finished by a task of its
//! own ([`Lease::detach`]), and that connection is not kept.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crossbeam_queue::SegQueue;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::client::conn::TrySendError;
use tokio::runtime::Handle;
use tokio::time::Instant;

use crate::request_body::UpstreamBody;

/// The request side of one backend connection.
pub type Sender = SendRequest<UpstreamBody>;

/// The I/O side of one backend connection (hyper's connection future, with
/// upgrades): it must be polled for requests to be written and responses
/// read, and ends when the connection closes or is upgraded.
pub type Driver = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// The idle connections of one backend.
#[derive(Debug)]
pub struct Pool {
    /// Where new connections go: the backend's URL.
    target: Uri,
    idle: SegQueue<Idle>,
    /// Connections in `idle`, kept within `max_idle`.
    count: AtomicUsize,
    max_idle: usize,
    idle_timeout: Duration,
    reaper: AtomicBool,
}

struct Idle {
    sender: Sender,
    driver: Driver,
    since: Instant,
}

impl std::fmt::Debug for Idle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idle").field("since", &self.since).finish()
    }
}

/// Polls `driver` once without asking to be woken: whoever takes the
/// connection next polls it with its own waker. False once the connection
/// has ended (the backend closed it, or it failed).
fn still_open(driver: &mut Driver) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    driver.as_mut().poll(&mut cx).is_pending()
}

impl Pool {
    /// An empty pool for the backend at `target`.
    pub fn new(target: Uri, max_idle: usize, idle_timeout: Duration) -> Self {
        Pool {
            target,
            idle: SegQueue::new(),
            count: AtomicUsize::new(0),
            max_idle,
            idle_timeout,
            reaper: AtomicBool::new(false),
        }
    }

    /// The backend's URL, to connect to.
    pub fn target(&self) -> &Uri {
        &self.target
    }

    /// Idle connections held.
    pub fn idle(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Lends the oldest idle connection still open, within the idle timeout
    /// and ready for a request; the others are closed on the way.
    pub fn take(self: &Arc<Self>) -> Option<Lease> {
        loop {
            let mut idle = self.pop()?;
            // Polled first: that is where a close by the backend is seen,
            // and where hyper gets ready for the next request.
            if idle.since.elapsed() < self.idle_timeout
                && still_open(&mut idle.driver)
                && idle.sender.is_ready()
            {
                return Some(Lease::new(idle.sender, idle.driver, Arc::clone(self)));
            }
        }
    }

    fn pop(&self) -> Option<Idle> {
        let idle = self.idle.pop()?;
        self.count.fetch_sub(1, Ordering::Relaxed);
        Some(idle)
    }

    /// Keeps a connection whose response was read to the end; one that is
    /// closed, not ready for another request (hyper is not done with the
    /// exchange) or beyond `max_idle` is dropped, which closes it. Outside a
    /// runtime (a body dropped at shutdown) nothing could poll it again, and
    /// it is dropped too.
    fn put(self: &Arc<Self>, sender: Sender, mut driver: Driver) {
        let Ok(runtime) = Handle::try_current() else {
            return;
        };
        // hyper gets ready for the next request on the poll after the
        // response's end, which may not have come yet.
        if !sender.is_ready() && (!still_open(&mut driver) || !sender.is_ready()) {
            return;
        }
        if self.count.fetch_add(1, Ordering::Relaxed) >= self.max_idle {
            self.count.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        self.idle.push(Idle {
            sender,
            driver,
            since: Instant::now(),
        });
        if !self.reaper.load(Ordering::Relaxed) && !self.reaper.swap(true, Ordering::Relaxed) {
            runtime.spawn(reap(Arc::downgrade(self)));
        }
    }

    /// Closes the connections idle for the whole timeout and those the
    /// backend has closed: each idle connection is looked at once, and the
    /// others go back in the order they were in.
    fn reap(&self) {
        for _ in 0..self.idle() {
            let Some(mut idle) = self.pop() else { return };
            if idle.since.elapsed() < self.idle_timeout && still_open(&mut idle.driver) {
                self.count.fetch_add(1, Ordering::Relaxed);
                self.idle.push(idle);
            }
        }
    }
}

/// Reaps `pool` a few times per idle timeout for as long as it exists.
async fn reap(pool: Weak<Pool>) {
    let period = match pool.upgrade() {
        Some(p) => (p.idle_timeout / 4).max(Duration::from_millis(50)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        match pool.upgrade() {
            Some(p) => p.reap(),
            None => return,
        }
    }
}

/// Polls `consume`, which takes what a connection delivers, driving the
/// connection with `drive` only when there is nothing to take yet: a poll
/// of the connection that finds nothing to do costs as much as one that
/// reads a response. Until the connection has been driven, `consume` is
/// polled without a waker, so that what the drive delivers does not wake
/// the very task that is polling, which would poll it all once more.
pub fn driven<T>(
    mut consume: impl FnMut(&mut Context<'_>) -> Poll<T>,
    drive: impl FnOnce(&mut Context<'_>),
    cx: &mut Context<'_>,
) -> Poll<T> {
    let mut quiet = Context::from_waker(Waker::noop());
    if let Poll::Ready(taken) = consume(&mut quiet) {
        return Poll::Ready(taken);
    }
    drive(cx);
    consume(cx)
}

/// A connection lent to one request, which drives it ([`Lease::drive`])
/// whenever it waits on it. [`Lease::release`] gives it back once the
/// response has been read to the end; dropped otherwise, it is closed.
pub struct Lease {
    sender: Sender,
    /// `None` once the connection has ended.
    driver: Option<Driver>,
    pool: Arc<Pool>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("open", &self.driver.is_some())
            .field("pool", &self.pool.target)
            .finish()
    }
}

impl Lease {
    /// Lends the connection made of `sender` and `driver`, one of `pool`'s.
    pub fn new(sender: Sender, driver: Driver, pool: Arc<Pool>) -> Self {
        Lease {
            sender,
            driver: Some(driver),
            pool,
        }
    }

    /// Moves the connection's reads and writes on as far as they go, and
    /// has `cx` woken when they can go further.
    pub fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(driver) = self.driver.as_mut() {
            if let Poll::Ready(ended) = driver.as_mut().poll(cx) {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "backend connection ended");
                }
                self.driver = None;
            }
        }
    }

    /// Sends `request` and waits for the response head, driving the
    /// connection meanwhile. A request the connection could not take (it
    /// was closed just as it was lent) comes back whole with the error.
    pub async fn send(
        &mut self,
        request: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<UpstreamBody>>> {
        let mut sending = std::pin::pin!(self.sender.try_send_request(request));
        poll_fn(|cx| {
            let lease = &mut *self;
            driven(|cx| sending.as_mut().poll(cx), |cx| lease.drive(cx), cx)
        })
        .await
    }

    /// The response was read to its end: the connection may serve the next
    /// request, unless it was detached or has ended.
    pub fn release(self) {
        if let Some(driver) = self.driver {
            self.pool.put(self.sender, driver);
        }
    }

    /// The connection goes on in a task of its own, and closes after this
    /// exchange: for an upgrade, whose stream hyper hands over once it is
    /// done with the handshake, and for a request body still being sent
    /// when the answer came, which must not wait for the client to read the
    /// answer.
    pub fn detach(&mut self) {
        let Some(driver) = self.driver.take() else {
            return;
        };
        if let Ok(runtime) = Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = driver.await {
                    tracing::debug!(error = %e, "backend connection ended");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::server::conn::http1 as server;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::net::{TcpListener, TcpStream};

    /// A backend that answers "ok" on every request of every connection,
    /// or on only the first when `keep_alive` is off, and counts its
    /// connections.
    async fn backend(keep_alive: bool) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    });
                    let _ = server::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    /// Waits up to two seconds for `done`, checking every 10 ms.
    async fn eventually(mut done: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if done() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        done()
    }

    /// A new connection to `addr`, lent from `pool`.
    async fn connect(addr: std::net::SocketAddr, pool: &Arc<Pool>) -> Lease {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        Lease::new(sender, Box::pin(connection), Arc::clone(pool))
    }

    /// Sends one request and reads its response to the end, driving the
    /// connection as the proxy's response body does.
    async fn exchange(lease: &mut Lease) {
        use hyper::body::Body as _;
        let request = http::Request::builder()
            .uri("/")
            .header(http::header::HOST, "backend")
            .body(UpstreamBody::empty().0)
            .unwrap();
        let mut body = lease.send(request).await.unwrap().into_body();
        let mut read = Vec::new();
        while let Some(frame) = poll_fn(|cx| {
            lease.drive(cx);
            Pin::new(&mut body).poll_frame(cx)
        })
        .await
        {
            read.extend_from_slice(&frame.unwrap().into_data().unwrap());
        }
        assert_eq!(read, b"ok");
    }

    fn pool(addr: std::net::SocketAddr, max_idle: usize, idle: Duration) -> Arc<Pool> {
        let target: Uri = format!("http://{addr}").parse().unwrap();
        Arc::new(Pool::new(target, max_idle, idle))
    }

    /// A waker that counts its wakes.
    struct Counting(AtomicUsize);

    impl std::task::Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn what_is_ready_is_taken_without_driving_or_waking() {
        let counting = Arc::new(Counting(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&counting));
        let mut cx = Context::from_waker(&waker);
        let mut drives = 0;
        let taken = driven(
            |cx| {
                // What hyper does on a take: wake whoever polled last.
                cx.waker().wake_by_ref();
                Poll::Ready(7)
            },
            |_| drives += 1,
            &mut cx,
        );
        assert_eq!(taken, Poll::Ready(7));
        assert_eq!(drives, 0, "nothing to drive for");
        assert_eq!(
            counting.0.load(Ordering::SeqCst),
            0,
            "the task is not woken"
        );
    }

    #[test]
    fn what_is_not_ready_is_driven_then_waited_for_with_the_task_waker() {
        let counting = Arc::new(Counting(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&counting));
        let mut cx = Context::from_waker(&waker);
        let mut polls = 0;
        let mut drives = 0;
        let taken: Poll<()> = driven(
            |cx| {
                polls += 1;
                cx.waker().wake_by_ref();
                Poll::Pending
            },
            |_| drives += 1,
            &mut cx,
        );
        assert!(taken.is_pending());
        assert_eq!((polls, drives), (2, 1), "polled, driven, polled again");
        assert_eq!(
            counting.0.load(Ordering::SeqCst),
            1,
            "the second poll has the task's waker"
        );
    }

    #[tokio::test]
    async fn a_released_connection_serves_the_next_request() {
        let (addr, accepted) = backend(true).await;
        let pool = pool(addr, 8, Duration::from_secs(60));
        assert!(pool.take().is_none(), "a new pool is empty");
        let mut lease = connect(addr, &pool).await;
        exchange(&mut lease).await;
        lease.release();
        assert_eq!(pool.idle(), 1);
        let mut again = pool.take().expect("the released connection");
        exchange(&mut again).await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one connection served both"
        );
        assert_eq!(pool.idle(), 0);
    }

    #[tokio::test]
    async fn many_requests_take_turns_on_one_connection() {
        let (addr, accepted) = backend(true).await;
        let pool = pool(addr, 8, Duration::from_secs(60));
        let mut lease = connect(addr, &pool).await;
        for _ in 0..50 {
            exchange(&mut lease).await;
            lease.release();
            lease = pool.take().expect("the connection back after each");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_dropped_lease_never_comes_back() {
        let (addr, _) = backend(true).await;
        let pool = pool(addr, 8, Duration::from_secs(60));
        let mut lease = connect(addr, &pool).await;
        exchange(&mut lease).await;
        drop(lease);
        assert_eq!(pool.idle(), 0);
        assert!(pool.take().is_none());
    }

    #[tokio::test]
    async fn idle_connections_are_capped() {
        let (addr, _) = backend(true).await;
        let pool = pool(addr, 2, Duration::from_secs(60));
        for _ in 0..4 {
            let mut lease = connect(addr, &pool).await;
            exchange(&mut lease).await;
            lease.release();
        }
        assert_eq!(pool.idle(), 2, "the two beyond the cap were closed");
    }

    #[tokio::test]
    async fn connections_closed_by_the_backend_are_not_lent() {
        let (addr, _) = backend(false).await;
        let pool = pool(addr, 8, Duration::from_secs(60));
        let mut lease = connect(addr, &pool).await;
        exchange(&mut lease).await;
        lease.release();
        // Until the close has reached Meridian's socket, the connection may
        // still look open; once it has, it is never lent again.
        let closed = eventually(|| match pool.take() {
            Some(open) => {
                open.release();
                false
            }
            None => true,
        })
        .await;
        assert!(closed, "the backend closed it, and it is not lent");
        assert_eq!(pool.idle(), 0);
    }

    #[tokio::test]
    async fn connections_closed_by_the_backend_while_idle_do_not_stay() {
        let (addr, _) = backend(false).await;
        // Reaped every 500 ms; none is idle past the timeout within 1 s.
        let pool = pool(addr, 8, Duration::from_secs(2));
        let mut lease = connect(addr, &pool).await;
        exchange(&mut lease).await;
        lease.release();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(pool.idle(), 0, "closed, so dropped without being taken");
    }

    #[tokio::test]
    async fn connections_idle_past_the_timeout_are_closed() {
        let (addr, _) = backend(true).await;
        let pool = pool(addr, 8, Duration::from_millis(200));
        let mut lease = connect(addr, &pool).await;
        exchange(&mut lease).await;
        lease.release();
        assert_eq!(pool.idle(), 1);
        // Nothing takes it: the reaper closes it.
        assert!(eventually(|| pool.idle() == 0).await, "reaped");
    }
}
