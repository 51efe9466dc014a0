//! Periodic housekeeping tasks: closing forwarded connections that have been
//! idle for the idle timeout (`ConnRegistry::sweep_idle`), evicting metric
//! series nobody has used for the retention period (`Metrics::sweep`), and,
//! on every worker, freeing the bulk copy buffers its thread cached and no
//! stream took since (`copy::bulk::trim_cache`).
//!
//! Both compare counters with what they saw on their previous pass, so the
//! data path pays nothing for them: no timer per connection, no clock read
//! per byte. A pass runs every quarter of its period (at most every minute),
//! so an idle connection is closed between 1 and 1.25 idle timeouts after its
//! last byte (for long timeouts, at most a minute late). Each task holds the
//! engine only weakly and ends with it.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::proxy::Context;

/// Passes per period.
const PASSES: u32 = 4;
/// The longest pause between two passes.
const MAX_TICK: Duration = Duration::from_secs(60);

/// The pause between passes and how many quiet passes make a whole period.
fn cadence(period: Duration) -> (Duration, u32) {
    let tick = (period / PASSES).clamp(Duration::from_millis(1), MAX_TICK);
    let passes = period.as_nanos().div_ceil(tick.as_nanos()).max(1);
    (tick, u32::try_from(passes).unwrap_or(u32::MAX))
}

/// Spawns the housekeeping tasks the config asks for on `worker`.
pub(crate) fn spawn(ctx: &Arc<Context>, worker: &tokio::runtime::Handle) {
    if let Some(timeout) = ctx.idle_timeout {
        let (tick, passes) = cadence(timeout);
        worker.spawn(every(Arc::downgrade(ctx), tick, move |ctx| {
            let closed = ctx.conns.sweep_idle(passes);
            if closed > 0 {
                tracing::debug!(closed, "idle connections closed");
            }
        }));
    }
    if let Some(retain) = ctx.metrics_retain_idle {
        let (tick, passes) = cadence(retain);
        worker.spawn(every(Arc::downgrade(ctx), tick, move |ctx| {
            let evicted = ctx.metrics.sweep(passes) + ctx.mesh.metrics.sweep(passes);
            if evicted > 0 {
                tracing::debug!(evicted, "idle metric series evicted");
            }
        }));
    }
}

/// Spawns the housekeeping that runs on each worker's own thread (called for
/// every worker): thread-local caches can only be trimmed there.
pub(crate) fn spawn_per_worker(ctx: &Arc<Context>, worker: &tokio::runtime::Handle) {
    if !ctx.copy.bulk.enabled() {
        return;
    }
    worker.spawn(every(Arc::downgrade(ctx), crate::copy::bulk::TRIM_AFTER, |_| {
        let freed = crate::copy::bulk::trim_cache();
        if freed > 0 {
            tracing::debug!(freed, "unused bulk copy buffers freed");
        }
    }));
}

/// Runs `pass` every `tick` while the engine exists.
async fn every(ctx: Weak<Context>, tick: Duration, pass: impl Fn(&Context)) {
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(ctx) = ctx.upgrade() else { return };
        pass(&ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cadence_covers_the_period_in_quarters_up_to_a_minute() {
        assert_eq!(cadence(Duration::from_millis(400)), (Duration::from_millis(100), 4));
        assert_eq!(cadence(Duration::from_secs(3600)), (Duration::from_secs(60), 60));
        assert_eq!(cadence(Duration::from_secs(90)), (Duration::from_millis(22_500), 4));
        assert_eq!(cadence(Duration::from_millis(2)), (Duration::from_millis(1), 2));
    }
}
