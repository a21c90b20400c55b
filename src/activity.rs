//! Per-connection activity: requests in flight and when the connection last
//! went idle, so that an idle keep-alive connection can be closed on time.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// Requests in flight on one connection and when it last went idle.
#[derive(Debug)]
pub struct Activity {
    base: Instant,
    active: AtomicUsize,
    idle_since_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            base: Instant::now(),
            active: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
        }
    }
}

impl Activity {
    /// Time left until the connection has been idle for `limit`; `None` once it has.
    pub fn idle_left(&self, limit: Duration) -> Option<Duration> {
        if self.active.load(Ordering::Acquire) > 0 {
            return Some(limit);
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        let idle = self.base.elapsed().saturating_sub(since);
        limit.checked_sub(idle).filter(|left| !left.is_zero())
    }

    /// Completes once the connection has had no request in flight for `limit`.
    pub async fn idle_for(&self, limit: Duration) {
        while let Some(left) = self.idle_left(limit) {
            tokio::time::sleep(left).await;
        }
    }
}

/// Marks one request in flight until dropped, which happens when its response
/// body has been sent or abandoned.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl InFlight {
    /// Counts a new request on `activity`.
    pub fn begin(activity: &Arc<Activity>) -> Self {
        activity.active.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(activity))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Record the idle start before the count drops, so a reader that sees
        // zero requests also sees when they ended.
        let ms = self.0.base.elapsed().as_millis() as u64;
        self.0.idle_since_ms.store(ms, Ordering::Release);
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_time_counts_from_the_end_of_the_last_request() {
        let activity = Arc::new(Activity::default());
        let limit = Duration::from_secs(5);
        assert_eq!(activity.idle_left(limit), Some(limit));
        let request = InFlight::begin(&activity);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(activity.idle_left(limit), Some(limit), "busy is never idle");
        drop(request);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(activity.idle_left(limit), Some(Duration::from_secs(2)));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(activity.idle_left(limit), None);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_for_waits_out_overlapping_requests() {
        let activity = Arc::new(Activity::default());
        let a = InFlight::begin(&activity);
        let b = InFlight::begin(&activity);
        drop(a);
        let waiter = {
            let activity = Arc::clone(&activity);
            tokio::spawn(async move { activity.idle_for(Duration::from_secs(1)).await })
        };
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!waiter.is_finished(), "one request is still in flight");
        drop(b);
        tokio::time::advance(Duration::from_millis(1100)).await;
        tokio::task::yield_now().await;
        waiter.await.unwrap();
    }
}
