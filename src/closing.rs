//! Runs a connection beside the signals that may end it (shutdown, idle
//! timeout), polling the signals only when one of them woke the task.
//!
//! A connection's task wakes several times per request, for its socket and
//! its backend. Polled on every one of those wakes, as `select!` does, the
//! signals' futures cost about 1.3k instructions per request (callgrind):
//! each poll of a cancellation future takes the lock of the token's waiter
//! list, shared by every connection, and each poll of the idle timer
//! re-registers it. Here they get a waker of their own, which marks that a
//! signal moved before it wakes the task.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;

/// What ended a [`watched`] run first.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended<O, S> {
    /// The connection finished, with its output.
    Done(O),
    /// A signal fired first, with its output; the connection is left as it
    /// was, to be polled again.
    Signal(S),
}

/// Polls `conn` on every wake and `signal` only after its own wake.
pub fn watched<C, S>(conn: C, signal: S) -> Watched<C, S>
where
    C: Future + Unpin,
    S: Future + Unpin,
{
    let flag = Arc::new(Flag {
        // The first poll registers the signal's waker.
        woken: AtomicBool::new(true),
        task: AtomicWaker::new(),
    });
    Watched {
        conn,
        signal,
        waker: Waker::from(Arc::clone(&flag)),
        flag,
    }
}

/// The future of [`watched`].
#[derive(Debug)]
pub struct Watched<C, S> {
    conn: C,
    signal: S,
    flag: Arc<Flag>,
    waker: Waker,
}

/// The signal's waker: notes the wake, then wakes the task.
#[derive(Debug)]
struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<C, S> Future for Watched<C, S>
where
    C: Future + Unpin,
    S: Future + Unpin,
{
    type Output = Ended<C::Output, S::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        this.flag.task.register(cx.waker());
        // The signal first when it moved: a connection that spends the
        // task's whole budget on every poll must not hold off a stop.
        if this.flag.woken.swap(false, Ordering::AcqRel) {
            let mut signal_cx = Context::from_waker(&this.waker);
            if let Poll::Ready(out) = Pin::new(&mut this.signal).poll(&mut signal_cx) {
                return Poll::Ready(Ended::Signal(out));
            }
        }
        Pin::new(&mut this.conn).poll(cx).map(Ended::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::pin::pin;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    /// A future that counts its polls and is never ready.
    struct Counted(Arc<AtomicUsize>);

    impl Future for Counted {
        type Output = ();

        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Poll::Pending
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_signal_fired_from_another_thread_wakes_the_run() {
        for _ in 0..200 {
            let token = CancellationToken::new();
            let cancel = token.clone();
            let canceller = std::thread::spawn(move || cancel.cancel());
            let conn = pin!(std::future::pending::<()>());
            let signal = pin!(token.cancelled());
            let run = watched(conn, signal);
            let ended = tokio::time::timeout(Duration::from_secs(10), run).await;
            assert_eq!(ended.ok(), Some(Ended::Signal(())), "a wake-up was lost");
            canceller.join().unwrap();
        }
    }

    #[tokio::test]
    async fn the_connection_finishes_first() {
        let token = CancellationToken::new();
        let ended = watched(pin!(async { 7 }), pin!(token.cancelled())).await;
        assert_eq!(ended, Ended::Done(7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_signal_ends_the_run_and_leaves_the_connection() {
        let token = CancellationToken::new();
        let mut conn = pin!(async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            "finished"
        });
        let cancel = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            cancel.cancel();
        });
        let ended = watched(conn.as_mut(), pin!(token.cancelled())).await;
        assert_eq!(ended, Ended::Signal(()));
        // The connection goes on where it was.
        assert_eq!(conn.await, "finished");
    }

    #[tokio::test]
    async fn the_signal_is_not_polled_on_the_connections_wakes() {
        let polls = Arc::new(AtomicUsize::new(0));
        let conn = pin!(async {
            // A hundred wakes of the task, none of them the signal's.
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
        });
        let ended = watched(conn, Counted(Arc::clone(&polls))).await;
        assert_eq!(ended, Ended::Done(()));
        assert_eq!(polls.load(Ordering::SeqCst), 1, "only the first poll");
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_signal_fires_while_the_connection_waits() {
        let conn = pin!(std::future::pending::<()>());
        let signal = pin!(tokio::time::sleep(Duration::from_secs(5)));
        let run = watched(conn, signal);
        // A lost wake-up would leave the run pending: a failure, not a hang.
        let ended = tokio::time::timeout(Duration::from_secs(60), run).await;
        assert_eq!(ended.ok(), Some(Ended::Signal(())));
    }
}
