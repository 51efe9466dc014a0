//! Graceful shutdown: stop accepting, let open connections finish until a
//! deadline, then cut the rest.
//!
//! Two signals, because they happen at different times: `stop_accepting`
//! ends the accept loops (listeners can also be stopped one by one, so a
//! sidecar can stop inbound before outbound), and `cut` cancels every
//! connection task still running at the deadline. Connection tasks are
//! tracked so `close` knows when the last one has finished.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How a drain ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct CloseSummary {
    /// Connections that finished on their own during the drain.
    pub drained: u64,
    /// Connections cut at the deadline.
    pub cut: u64,
}

/// The engine's shutdown signals and its connection task tracker.
#[derive(Clone, Default)]
pub struct Drain {
    /// Cancelled when every listener must stop accepting.
    pub stop_accepting: CancellationToken,
    /// Cancelled at the drain deadline: every connection task ends at once.
    pub cut: CancellationToken,
    /// Every connection task is spawned through this tracker.
    pub tasks: TaskTracker,
}

impl Drain {
    /// Stops accepting, waits up to `deadline` for open connections, then
    /// cuts the rest and waits for their tasks to unwind.
    pub async fn close(&self, deadline: Duration, open_now: impl Fn() -> usize) -> CloseSummary {
        self.stop_accepting.cancel();
        self.tasks.close();
        let before = open_now() as u64;
        if tokio::time::timeout(deadline, self.tasks.wait()).await.is_ok() {
            return CloseSummary { drained: before, cut: 0 };
        }
        let cut = open_now() as u64;
        self.cut.cancel();
        self.tasks.wait().await;
        CloseSummary { drained: before.saturating_sub(cut), cut }
    }
}
