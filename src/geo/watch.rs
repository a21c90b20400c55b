//! Re-opens the GeoIP database file when it changes: its modification time,
//! length or inode differ from the open one's. A new file that cannot be
//! opened or is corrupt is refused with a log line naming it, and the old
//! database keeps answering; the new file is tried again when it changes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use super::db::{GeoDb, Stamp};

/// Checks `path` every `every` and swaps a good new version into `current`.
pub async fn watch(
    path: PathBuf,
    every: Duration,
    current: Arc<ArcSwap<GeoDb>>,
    stop: CancellationToken,
) {
    let mut refused: Option<Stamp> = None;
    // Said once per outage, not at every check.
    let mut missing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let stamp = match Stamp::of(&path) {
            Ok(s) => s,
            Err(e) => {
                if !missing {
                    tracing::warn!(file = %path.display(), error = %e, "GeoIP database unreadable; keeping the one in use");
                    missing = true;
                }
                continue;
            }
        };
        missing = false;
        let open = current.load();
        if open.origin().stamp == Some(stamp) || refused == Some(stamp) {
            continue;
        }
        let p = path.clone();
        // Checking every record takes a while for a large database: not on the runtime's threads.
        match tokio::task::spawn_blocking(move || GeoDb::open(&p)).await {
            Ok(Ok(db)) => {
                tracing::info!(file = %path.display(), database_type = db.database_type(), "GeoIP database reloaded");
                current.store(Arc::new(db));
                refused = None;
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "new GeoIP database refused; keeping the one in use");
                refused = Some(stamp);
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "GeoIP database reload failed; keeping the one in use");
                refused = Some(stamp);
            }
        }
    }
}
