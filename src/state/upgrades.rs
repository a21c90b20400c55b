//! Open upgraded connections (WebSockets) per region, for `/api/v1/status`
//! and, later, metrics. Counted by region name, not index, so that a count
//! survives a reload that reorders or adds regions. The request path only
//! loads a map and touches an atomic.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

/// Open upgraded connections per region name.
#[derive(Debug)]
pub struct UpgradeCounts {
    by_region: ArcSwap<BTreeMap<String, Arc<AtomicUsize>>>,
}

impl Default for UpgradeCounts {
    fn default() -> Self {
        UpgradeCounts {
            by_region: ArcSwap::from_pointee(BTreeMap::new()),
        }
    }
}

impl UpgradeCounts {
    /// Counts one more open connection on `region` until the guard is dropped.
    pub fn open(&self, region: &str) -> OpenUpgrade {
        let counter = match self.by_region.load().get(region) {
            Some(c) => Arc::clone(c),
            None => self.insert(region),
        };
        counter.fetch_add(1, Ordering::AcqRel);
        OpenUpgrade(counter)
    }

    /// The first connection of a region: a copy-on-write of the small map,
    /// once per region name for the life of the process.
    fn insert(&self, region: &str) -> Arc<AtomicUsize> {
        self.by_region.rcu(|map| {
            if map.contains_key(region) {
                return Arc::clone(map);
            }
            let mut next = BTreeMap::clone(map);
            next.insert(region.to_owned(), Arc::new(AtomicUsize::new(0)));
            Arc::new(next)
        });
        self.by_region
            .load()
            .get(region)
            .map(Arc::clone)
            .expect("inserted above; names are never removed")
    }

    /// Open upgraded connections on `region`.
    pub fn get(&self, region: &str) -> usize {
        self.by_region
            .load()
            .get(region)
            .map_or(0, |c| c.load(Ordering::Acquire))
    }

    /// Every region that ever had one, with its open connections, by name.
    pub fn all(&self) -> Vec<(String, usize)> {
        self.by_region
            .load()
            .iter()
            .map(|(name, c)| (name.clone(), c.load(Ordering::Acquire)))
            .collect()
    }
}

/// One open upgraded connection, counted until dropped.
#[derive(Debug)]
pub struct OpenUpgrade(Arc<AtomicUsize>);

impl Drop for OpenUpgrade {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_go_up_and_back_down_per_region() {
        let counts = UpgradeCounts::default();
        assert_eq!(counts.get("us"), 0);
        let a = counts.open("us");
        let b = counts.open("us");
        let c = counts.open("eu");
        assert_eq!((counts.get("us"), counts.get("eu")), (2, 1));
        drop(a);
        drop(c);
        assert_eq!(
            counts.all(),
            vec![("eu".to_owned(), 0), ("us".to_owned(), 1)]
        );
        drop(b);
        assert_eq!(counts.get("us"), 0);
    }
}
