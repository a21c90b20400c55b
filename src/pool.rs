//! Idle keep-alive connections to one backend, kept for the next request.
//!
//! A connection is lent to one request at a time ([`Lease`]) and comes back
//! only when its response has been read to the end; one whose response was
//! cut short, refused or upgraded is closed instead. Taking and giving back
//! are a lock-free queue operation each: no lock, no hashing on the request
//! path. The queue is oldest first, so idle connections are reaped from its
//! front, by the taker and by a timer that closes connections idle past
//! `proxy.pool_idle_timeout` when no request comes to take them.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crossbeam_queue::SegQueue;
use http::Uri;
use hyper::client::conn::http1::SendRequest;
use tokio::runtime::Handle;
use tokio::time::Instant;

use crate::request_body::UpstreamBody;

/// The request side of one backend connection.
pub type Sender = SendRequest<UpstreamBody>;

/// Longest wait for a connection whose response was read to become ready
/// for the next request; the connection task normally gets there in the
/// same turn in which it delivered the end of the body.
const READY_WAIT: Duration = Duration::from_secs(1);

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

#[derive(Debug)]
struct Idle {
    sender: Sender,
    since: Instant,
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

    /// The oldest idle connection still open and within the idle timeout;
    /// those past it are closed on the way.
    pub fn take(&self) -> Option<Sender> {
        loop {
            let idle = self.pop()?;
            if idle.since.elapsed() < self.idle_timeout && idle.sender.is_ready() {
                return Some(idle.sender);
            }
        }
    }

    fn pop(&self) -> Option<Idle> {
        let idle = self.idle.pop()?;
        self.count.fetch_sub(1, Ordering::Relaxed);
        Some(idle)
    }

    /// Keeps a connection whose response was read to the end, once it can
    /// take another request; a closed one, or one beyond `max_idle`, is
    /// dropped, which closes it.
    fn put(self: &Arc<Self>, sender: Sender) {
        if sender.is_ready() {
            self.keep(sender);
        } else if !sender.is_closed() {
            // The connection task has not yet seen the end of the exchange.
            // Outside a runtime (a body dropped at shutdown) nothing could
            // wait for it, and the connection is simply closed.
            let Ok(runtime) = Handle::try_current() else {
                return;
            };
            let pool = Arc::clone(self);
            let mut sender = sender;
            runtime.spawn(async move {
                let ready = poll_fn(|cx| sender.poll_ready(cx));
                if let Ok(Ok(())) = tokio::time::timeout(READY_WAIT, ready).await {
                    pool.keep(sender);
                }
            });
        }
    }

    fn keep(self: &Arc<Self>, sender: Sender) {
        if self.count.fetch_add(1, Ordering::Relaxed) >= self.max_idle {
            self.count.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        self.idle.push(Idle {
            sender,
            since: Instant::now(),
        });
        if !self.reaper.load(Ordering::Relaxed) {
            if let Ok(runtime) = Handle::try_current() {
                if !self.reaper.swap(true, Ordering::Relaxed) {
                    runtime.spawn(reap(Arc::downgrade(self)));
                }
            }
        }
    }

    /// Closes the connections at the front that have been idle for the
    /// whole timeout. The first one still fresh goes back, at the end: the
    /// order is a little off for one connection, and nothing is lost.
    fn reap(&self) {
        while let Some(idle) = self.pop() {
            if idle.since.elapsed() < self.idle_timeout {
                if !idle.sender.is_closed() {
                    self.count.fetch_add(1, Ordering::Relaxed);
                    self.idle.push(idle);
                }
                return;
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

/// A connection lent to one request. [`Lease::release`] gives it back once
/// the response has been read to the end; dropped otherwise, it is closed
/// after its response (hyper closes a connection whose sender is gone).
#[derive(Debug)]
pub struct Lease {
    sender: Sender,
    pool: Arc<Pool>,
}

impl Lease {
    /// Lends `sender`, a connection of `pool`.
    pub fn new(sender: Sender, pool: Arc<Pool>) -> Self {
        Lease { sender, pool }
    }

    /// The response was read to its end: the connection may serve the next
    /// request.
    pub fn release(self) {
        self.pool.put(self.sender);
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

    async fn connect(addr: std::net::SocketAddr) -> Sender {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        sender
    }

    /// Sends one request and reads its response to the end.
    async fn exchange(sender: &mut Sender) {
        use http_body_util::BodyExt as _;
        let request = http::Request::builder()
            .uri("/")
            .header(http::header::HOST, "backend")
            .body(UpstreamBody::empty().0)
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "ok");
    }

    fn pool(addr: std::net::SocketAddr, max_idle: usize, idle: Duration) -> Arc<Pool> {
        let target: Uri = format!("http://{addr}").parse().unwrap();
        Arc::new(Pool::new(target, max_idle, idle))
    }

    #[tokio::test]
    async fn a_released_connection_serves_the_next_request() {
        let (addr, accepted) = backend(true).await;
        let pool = pool(addr, 8, Duration::from_secs(60));
        assert!(pool.take().is_none(), "a new pool is empty");
        let mut sender = connect(addr).await;
        exchange(&mut sender).await;
        Lease::new(sender, Arc::clone(&pool)).release();
        tokio::task::yield_now().await;
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
    async fn a_dropped_lease_never_comes_back() {
        let (addr, _) = backend(true).await;
        let pool = pool(addr, 8, Duration::from_secs(60));
        let mut sender = connect(addr).await;
        exchange(&mut sender).await;
        drop(Lease::new(sender, Arc::clone(&pool)));
        tokio::task::yield_now().await;
        assert_eq!(pool.idle(), 0);
        assert!(pool.take().is_none());
    }

    #[tokio::test]
    async fn idle_connections_are_capped() {
        let (addr, _) = backend(true).await;
        let pool = pool(addr, 2, Duration::from_secs(60));
        for _ in 0..4 {
            let mut sender = connect(addr).await;
            exchange(&mut sender).await;
            Lease::new(sender, Arc::clone(&pool)).release();
        }
        tokio::task::yield_now().await;
        assert_eq!(pool.idle(), 2, "the two beyond the cap were closed");
    }

    #[tokio::test]
    async fn connections_closed_by_the_backend_are_not_lent() {
        let (addr, _) = backend(false).await;
        let pool = pool(addr, 8, Duration::from_secs(60));
        let mut sender = connect(addr).await;
        exchange(&mut sender).await;
        Lease::new(sender, Arc::clone(&pool)).release();
        // Until the connection task has seen the close, the connection may
        // still look open; once it has, it is never lent again.
        let closed = eventually(|| match pool.take() {
            Some(open) => {
                pool.keep(open);
                false
            }
            None => true,
        })
        .await;
        assert!(closed, "the backend closed it, and it is not lent");
        assert_eq!(pool.idle(), 0);
    }

    #[tokio::test]
    async fn connections_idle_past_the_timeout_are_closed() {
        let (addr, _) = backend(true).await;
        let pool = pool(addr, 8, Duration::from_millis(200));
        let mut sender = connect(addr).await;
        exchange(&mut sender).await;
        Lease::new(sender, Arc::clone(&pool)).release();
        tokio::task::yield_now().await;
        assert_eq!(pool.idle(), 1);
        // Nothing takes it: the reaper closes it.
        assert!(eventually(|| pool.idle() == 0).await, "reaped");
    }
}
