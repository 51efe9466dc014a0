//! Events the engine reports to its control layer, e.g. "this target speaks
//! first". They are rare (once per learned target, never per connection), so
//! a small mutex-guarded queue is enough: the data path touches it only when
//! something new happens. The queue is bounded; past [`MAX_EVENTS`] unread
//! events new ones are dropped and counted, so a control layer that stops
//! reading cannot make the engine grow without limit.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use serde::Serialize;

/// Unread events kept at most.
pub const MAX_EVENTS: usize = 1024;

/// Something the control layer should know about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum EngineEvent {
    /// A target was learned to speak first (its later connections skip
    /// detection); the control layer logs how to make that permanent.
    #[serde(rename_all = "camelCase")]
    ServerFirstLearned {
        /// `ip:port`.
        target: String,
    },
}

/// A bounded queue of unread events.
#[derive(Default)]
pub struct EventQueue {
    queue: Mutex<VecDeque<EngineEvent>>,
    dropped: AtomicU64,
}

impl EventQueue {
    /// Queues an event, or counts it as dropped when the queue is full.
    pub fn push(&self, event: EngineEvent) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() < MAX_EVENTS {
            q.push_back(event);
        } else {
            self.dropped.fetch_add(1, Relaxed);
        }
    }

    /// Takes every queued event, oldest first.
    pub fn take(&self) -> Vec<EngineEvent> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect()
    }

    /// Events dropped because nobody read the queue.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_drained_in_order() {
        let q = EventQueue::default();
        for i in 0..MAX_EVENTS + 5 {
            q.push(EngineEvent::ServerFirstLearned { target: format!("10.0.0.1:{i}") });
        }
        assert_eq!(q.dropped(), 5);
        let all = q.take();
        assert_eq!(all.len(), MAX_EVENTS);
        assert_eq!(all[0], EngineEvent::ServerFirstLearned { target: "10.0.0.1:0".into() });
        assert!(q.take().is_empty());
        let json = serde_json::to_string(&all[1]).unwrap();
        assert_eq!(json, r#"{"kind":"serverFirstLearned","target":"10.0.0.1:1"}"#);
    }
}
