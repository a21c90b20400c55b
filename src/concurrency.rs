//! Per-backend caps on requests in flight (`limits.backend_max_requests`),
//! with a bounded wait for a free slot. A request holds its slot from the
//! moment it is sent until its response body is done, so a backend that
//! slows down fills up and sheds to its siblings instead of queueing without
//! end. The counts are kept by backend across reloads, so that a new
//! configuration does not start from an empty backend that is in fact full.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// One backend's requests in flight.
#[derive(Debug, Default)]
pub struct Slots {
    taken: AtomicUsize,
    freed: Notify,
}

impl Slots {
    /// Requests in flight now.
    pub fn taken(&self) -> usize {
        self.taken.load(Ordering::Relaxed)
    }

    /// A slot if fewer than `max` are taken; never waits.
    pub fn try_take(self: &Arc<Self>, max: usize) -> Option<Slot> {
        self.taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(Arc::clone(self)))
    }

    /// A slot, waiting at most `wait` for one to be freed; `None` after that.
    pub async fn take(self: &Arc<Self>, max: usize, wait: Duration) -> Option<Slot> {
        let waiting = async {
            loop {
                let freed = self.freed.notified();
                tokio::pin!(freed);
                // Registered before the check, so a slot freed between the
                // check and the await still wakes this waiter.
                freed.as_mut().enable();
                if let Some(slot) = self.try_take(max) {
                    return slot;
                }
                freed.await;
            }
        };
        tokio::time::timeout(wait, waiting).await.ok()
    }
}

/// A request's place on a backend, given back when dropped.
#[derive(Debug)]
pub struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_and_given_back() {
        let slots = Arc::new(Slots::default());
        let a = slots.try_take(2).expect("first");
        let _b = slots.try_take(2).expect("second");
        assert!(slots.try_take(2).is_none(), "the cap holds");
        assert_eq!(slots.taken(), 2);
        drop(a);
        assert_eq!(slots.taken(), 1);
        assert!(slots.try_take(2).is_some(), "a freed slot is taken again");
        assert_eq!(slots.taken(), 1, "and given back when dropped");
    }

    #[test]
    fn a_lowered_cap_admits_nothing_until_enough_are_given_back() {
        let slots = Arc::new(Slots::default());
        let held: Vec<Slot> = (0..3).map(|_| slots.try_take(3).unwrap()).collect();
        assert!(slots.try_take(1).is_none());
        drop(held);
        assert!(slots.try_take(1).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gets_the_slot_freed_while_it_waits() {
        let slots = Arc::new(Slots::default());
        let held = slots.try_take(1).unwrap();
        let waiter = {
            let slots = Arc::clone(&slots);
            tokio::spawn(async move { slots.take(1, Duration::from_secs(1)).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(held);
        let slot = waiter.await.unwrap();
        assert!(slot.is_some(), "woken by the freed slot");
        assert_eq!(slots.taken(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_is_bounded() {
        let slots = Arc::new(Slots::default());
        let _held = slots.try_take(1).unwrap();
        let started = tokio::time::Instant::now();
        assert!(slots.take(1, Duration::from_millis(250)).await.is_none());
        assert_eq!(started.elapsed(), Duration::from_millis(250));
        assert!(
            slots.take(1, Duration::ZERO).await.is_none(),
            "no wait at all"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn each_freed_slot_wakes_one_waiter() {
        let slots = Arc::new(Slots::default());
        let held: Vec<Slot> = (0..2).map(|_| slots.try_take(2).unwrap()).collect();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let slots = Arc::clone(&slots);
                tokio::spawn(async move { slots.take(2, Duration::from_secs(1)).await })
            })
            .collect();
        tokio::task::yield_now().await;
        drop(held);
        let mut got = Vec::new();
        for w in waiters {
            got.push(w.await.unwrap());
        }
        assert_eq!(got.iter().filter(|s| s.is_some()).count(), 2);
        assert_eq!(slots.taken(), 2);
    }
}
