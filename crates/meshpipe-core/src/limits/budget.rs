//! The lock-free [`Budget`] every bound in `limits.rs` is made of: an atomic
//! count of units held against a limit, shared by every worker. Taking is one
//! compare-and-swap and giving back one subtraction; the waiters' list (a
//! `Notify`) is only touched when a task actually waits, so the hot path
//! takes and gives back units without a lock.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};

use tokio::sync::Notify;

/// A count of something held against a limit, shared by every worker.
pub struct Budget {
    limit: AtomicUsize,
    used: AtomicUsize,
    /// Tasks waiting for units: `give` only touches `notify` when there are.
    waiters: AtomicUsize,
    notify: Notify,
    /// Times a taker had to wait (or, for `try_take` only, was refused).
    pub(super) refused: AtomicU64,
}

impl Budget {
    /// A budget of `limit` units; `usize::MAX` is unlimited.
    pub fn new(limit: usize) -> Budget {
        Budget {
            limit: AtomicUsize::new(limit),
            used: AtomicUsize::new(0),
            waiters: AtomicUsize::new(0),
            notify: Notify::new(),
            refused: AtomicU64::new(0),
        }
    }

    /// A budget for a configured limit where 0 means unlimited.
    pub fn configured(limit: usize) -> Budget {
        Budget::new(if limit == 0 { usize::MAX } else { limit })
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Relaxed)
    }

    pub fn used(&self) -> usize {
        self.used.load(Relaxed)
    }

    pub fn refused(&self) -> u64 {
        self.refused.load(Relaxed)
    }

    pub fn is_unlimited(&self) -> bool {
        self.limit() == usize::MAX
    }

    pub(super) fn set_limit(&self, limit: usize) {
        self.limit.store(limit, SeqCst);
        self.wake();
    }

    /// Takes `n` units if they are free.
    pub fn try_take(&self, n: usize) -> bool {
        let limit = self.limit.load(Relaxed);
        if limit == usize::MAX {
            self.used.fetch_add(n, Relaxed);
            return true;
        }
        let mut used = self.used.load(SeqCst);
        loop {
            if used.saturating_add(n) > limit {
                return false;
            }
            match self.used.compare_exchange_weak(used, used + n, SeqCst, SeqCst) {
                Ok(_) => return true,
                Err(now) => used = now,
            }
        }
    }

    /// Like `try_take`, counting a refusal.
    pub fn try_take_counted(&self, n: usize) -> bool {
        let ok = self.try_take(n);
        if !ok {
            self.refused.fetch_add(1, Relaxed);
        }
        ok
    }

    /// Waits until `n` units are free and takes them.
    pub async fn take(&self, n: usize) {
        if self.try_take(n) {
            return;
        }
        self.refused.fetch_add(1, Relaxed);
        // Registered as a waiter *before* looking again, so a `give` in
        // between either sees the waiter or frees the units this look finds.
        self.waiters.fetch_add(1, SeqCst);
        let _unregister = Unregister(&self.waiters);
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.try_take(n) {
                return;
            }
            notified.await;
        }
    }

    /// Gives back `n` units.
    pub fn give(&self, n: usize) {
        self.used.fetch_sub(n, SeqCst);
        if self.waiters.load(SeqCst) > 0 {
            self.wake();
        }
    }

    fn wake(&self) {
        self.notify.notify_waiters();
    }
}

/// Gives units back when dropped (a wait cancelled half-way).
pub(super) struct GiveBack<'a>(pub(super) &'a Budget, pub(super) usize);

impl Drop for GiveBack<'_> {
    fn drop(&mut self) {
        self.0.give(self.1);
    }
}

struct Unregister<'a>(&'a AtomicUsize);

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn try_take_respects_the_limit_and_give_frees() {
        let b = Budget::new(3);
        assert!(b.try_take(2));
        assert!(!b.try_take(2));
        assert!(b.try_take(1));
        b.give(2);
        assert!(b.try_take(2));
        assert_eq!(b.used(), 3);
        let unlimited = Budget::configured(0);
        assert!(unlimited.is_unlimited());
        for _ in 0..100 {
            assert!(unlimited.try_take(2));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_is_woken_by_a_give_on_another_task() {
        let b = Arc::new(Budget::new(1));
        assert!(b.try_take(1));
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.take(1).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished(), "nothing was free");
        b.give(1);
        tokio::time::timeout(Duration::from_secs(1), waiter).await.expect("woken").unwrap();
        assert_eq!(b.used(), 1);
        assert_eq!(b.refused(), 1);
    }
}
