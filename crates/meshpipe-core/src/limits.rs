//! Bounded resources: how many connections each direction may hold, how many
//! may be in protocol detection at once, and how many file descriptors the
//! engine may use, so the rest of the process (the admin server, Node.js
//! itself) always has some left.
//!
//! Each bound is a [`Budget`]: an atomic count against a limit, taken and
//! given back without a lock (one compare-and-swap to take, one subtraction
//! to give back; the waiters' list is only touched when someone waits).
//!
//! - **Connections, per direction.** A listener takes a slot of its
//!   direction's budget *before* accepting, so a full direction leaves new
//!   connections in the kernel backlog; the other direction is unaffected
//!   (idle inbound clients cannot starve the app's outbound traffic).
//! - **Descriptors.** At start the engine counts the descriptors already open
//!   and gives itself the rest of `RLIMIT_NOFILE` minus a reserve. Every
//!   accepted connection takes two descriptors' worth (the client and the
//!   upstream socket) before it is accepted, and every splice pipe two more
//!   (a direction that cannot get them copies through user space instead). At
//!   the budget, connections wait in the backlog like at a connection limit,
//!   and the reserve stays free for the admin server: `/live` and `/metrics`
//!   keep answering when thousands of silent clients hold the proxy.
//! - **Detection, per direction.** Each connection in protocol detection
//!   holds a slot (and up to 16 KiB of buffer) while it waits for bytes.
//!   When every slot is taken, a new connection does not wait: the bytes it
//!   has already sent are classified in one read, and if they do not decide
//!   it is forwarded as opaque TCP at once (result `over_limit`). A flood of
//!   slow clients costs neither memory nor a stall for the connections
//!   behind it, and clients that send their request or ClientHello at once
//!   are still detected. Inbound, one source address holds at most a
//!   sixteenth of the slots and one IPv6 /64 a quarter
//!   (`limits/per_source.rs`), so a flood from one host leaves the rest for
//!   everyone else.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use serde::Serialize;

use crate::vocab::Direction;

mod budget;
mod per_source;
pub use budget::Budget;
use budget::GiveBack;
pub use per_source::PerSource;

/// Descriptors one proxied connection holds: the client and the upstream socket.
pub const FDS_PER_CONNECTION: usize = 2;
/// Descriptors one splice pipe holds.
pub const FDS_PER_PIPE: usize = 2;

/// Errors from sizing the descriptor budget at start.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error(
        "fdReserve = {reserve}: the descriptor limit (RLIMIT_NOFILE) is {limit} and {open} are already open, \
         which leaves no room for a connection; expected a reserve below {max} (or raise the limit, e.g. ulimit -n)"
    )]
    FdReserveTooLarge { reserve: usize, limit: u64, open: usize, max: usize },
}

/// Every bound of one engine.
pub struct Limits {
    /// Open connections per direction (index with `Direction::index`).
    pub connections: [Budget; 2],
    /// Connections in protocol detection per direction.
    pub detecting: [Budget; 2],
    /// Inbound: each source's share of `detecting` (none when unlimited).
    per_source: Option<PerSource>,
    /// Inbound connections refused a detection slot because their host (or
    /// IPv6 /64) held its whole share, while slots may have been free:
    /// counted apart from `detecting[..].refused` (every slot taken), so an
    /// operator can tell one noisy host from a full direction.
    share_refused: AtomicU64,
    /// Descriptors the engine may hold; sized at start (`size_fds`). Shared
    /// with the splice pipes, which give theirs back when they close.
    pub fds: Arc<Budget>,
    fd_reserve: usize,
    /// The process's descriptor limit when the budget was sized.
    fd_limit: AtomicU64,
}

impl Limits {
    /// Limits as configured; 0 = unlimited for the counts, 0 = no descriptor
    /// budget at all for the reserve.
    pub fn new(connections: [usize; 2], detecting: usize, fd_reserve: usize) -> Limits {
        Limits {
            connections: connections.map(Budget::configured),
            detecting: [Budget::configured(detecting), Budget::configured(detecting)],
            per_source: PerSource::new(detecting),
            share_refused: AtomicU64::new(0),
            fds: Arc::new(Budget::new(usize::MAX)),
            fd_reserve,
            fd_limit: AtomicU64::new(0),
        }
    }

    /// Sizes the descriptor budget: the limit minus the descriptors open now
    /// (listeners bound, runtime, Node.js) minus the reserve. A reserve of 0
    /// leaves the engine unbounded (it still backs off on `EMFILE`).
    pub fn size_fds(&self, fd_limit: u64, open_now: usize) -> Result<(), LimitsError> {
        self.fd_limit.store(fd_limit, Relaxed);
        if self.fd_reserve == 0 {
            return Ok(());
        }
        let limit = usize::try_from(fd_limit).unwrap_or(usize::MAX);
        // Descriptors this engine already holds (a restart of the budget) are not "open by others".
        let others = open_now.saturating_sub(self.fds.used());
        let budget = limit.saturating_sub(others).saturating_sub(self.fd_reserve);
        if budget < FDS_PER_CONNECTION {
            let max = limit.saturating_sub(others).saturating_sub(FDS_PER_CONNECTION);
            return Err(LimitsError::FdReserveTooLarge { reserve: self.fd_reserve, limit: fd_limit, open: others, max });
        }
        self.fds.set_limit(budget);
        Ok(())
    }

    /// Takes what one new connection of `direction` needs, if it is free now.
    pub fn try_admit(&self, direction: Direction) -> bool {
        let conns = &self.connections[direction.index()];
        if !conns.try_take(1) {
            return false;
        }
        if !self.fds.try_take(FDS_PER_CONNECTION) {
            conns.give(1);
            return false;
        }
        true
    }

    /// Waits until one new connection of `direction` fits, then takes what it
    /// needs. Cancel-safe: dropped while waiting, it holds nothing.
    pub async fn admit(&self, direction: Direction) {
        let conns = &self.connections[direction.index()];
        conns.take(1).await;
        let held = GiveBack(conns, 1);
        self.fds.take(FDS_PER_CONNECTION).await;
        std::mem::forget(held);
    }

    /// Gives back what `try_admit`/`admit` took.
    pub fn release(&self, direction: Direction) {
        self.fds.give(FDS_PER_CONNECTION);
        self.connections[direction.index()].give(1);
    }

    pub fn snapshot(&self) -> LimitsSnapshot {
        let limit = |b: &Budget| (!b.is_unlimited()).then(|| b.limit() as u64);
        LimitsSnapshot {
            connections: Direction::ALL
                .iter()
                .map(|d| {
                    let b = &self.connections[d.index()];
                    DirectionLimitSnapshot { direction: *d, limit: limit(b), used: b.used() as u64, refused: b.refused() }
                })
                .collect(),
            detecting: Direction::ALL
                .iter()
                .map(|d| {
                    let b = &self.detecting[d.index()];
                    DirectionLimitSnapshot { direction: *d, limit: limit(b), used: b.used() as u64, refused: b.refused() }
                })
                .collect(),
            detecting_share: self.per_source.as_ref().map(|_| {
                let slots = self.detecting[Direction::Inbound.index()].limit();
                ShareSnapshot {
                    host: PerSource::share_of(slots) as u64,
                    prefix64: PerSource::prefix_share_of(slots) as u64,
                    refused: self.share_refused.load(Relaxed),
                }
            }),
            fds: FdSnapshot {
                process_limit: self.fd_limit.load(Relaxed),
                reserve: self.fd_reserve as u64,
                budget: limit(&self.fds),
                used: self.fds.used() as u64,
                waits: self.fds.refused(),
            },
        }
    }
}

/// Holds a detection slot (and, inbound, one of its source's share) until
/// dropped.
pub struct DetectSlot<'a> {
    budget: &'a Budget,
    /// Given back by its own drop.
    _share: Option<per_source::Share<'a>>,
}

impl Drop for DetectSlot<'_> {
    fn drop(&mut self) {
        self.budget.give(1);
    }
}

impl Limits {
    /// A detection slot for a connection of `direction` from `source`, or
    /// `None` when all are taken (counted as the direction's `refused`) or,
    /// inbound, the source holds its whole share (counted as
    /// `share_refused`).
    pub fn detect_slot(&self, direction: Direction, source: std::net::IpAddr) -> Option<DetectSlot<'_>> {
        let b = &self.detecting[direction.index()];
        // The share first: a source at its share never holds one of the
        // direction's slots, not even between taking and giving it back,
        // so its knocks cannot refuse another host the last free slot.
        let share = match (&self.per_source, direction) {
            (Some(p), Direction::Inbound) => match p.try_take(source) {
                Some(share) => Some(share),
                None => {
                    // When every slot is taken too, the refusal is a full
                    // direction's (only the reason is read here).
                    if b.used() >= b.limit() {
                        b.refused.fetch_add(1, Relaxed);
                    } else {
                        self.share_refused.fetch_add(1, Relaxed);
                    }
                    return None;
                }
            },
            _ => None,
        };
        if !b.try_take_counted(1) {
            // The share taken above goes back with it (dropped).
            return None;
        }
        Some(DetectSlot { budget: b, _share: share })
    }
}

/// One direction's bound: its limit (`None` = unlimited), what is held now,
/// and how often a taker found it full.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct DirectionLimitSnapshot {
    pub direction: Direction,
    pub limit: Option<u64>,
    pub used: u64,
    /// Connections: waits for a slot (the connection stayed in the backlog).
    /// Detecting: connections that found every slot taken (only the bytes
    /// they had already sent were classified; `over_limit` if undecided).
    pub refused: u64,
}

/// Inbound detection shared out by source host: the slots one host (and
/// one IPv6 /64) may hold at once, and the connections refused a slot
/// because theirs held its whole share (classified on the bytes already
/// sent, like a refusal of a full direction).
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct ShareSnapshot {
    pub host: u64,
    pub prefix64: u64,
    pub refused: u64,
}

/// The descriptor budget.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct FdSnapshot {
    /// `RLIMIT_NOFILE` when the engine started.
    pub process_limit: u64,
    /// Descriptors kept free for the rest of the process (0 = no budget).
    pub reserve: u64,
    /// Descriptors the engine may hold (`None` = no budget).
    pub budget: Option<u64>,
    /// Descriptors held now, counted as two per connection and per splice pipe.
    pub used: u64,
    /// Times a listener waited for descriptors (the connection stayed in the backlog).
    pub waits: u64,
}

/// Every bound, for one scrape.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct LimitsSnapshot {
    pub connections: Vec<DirectionLimitSnapshot>,
    pub detecting: Vec<DirectionLimitSnapshot>,
    /// Inbound detection's per-host shares (`None`: detection unlimited).
    pub detecting_share: Option<ShareSnapshot>,
    pub fds: FdSnapshot,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_descriptor_budget_leaves_the_reserve_free() {
        let l = Limits::new([0, 0], 0, 100);
        l.size_fds(1024, 40).unwrap();
        assert_eq!(l.fds.limit(), 1024 - 40 - 100);
        // Every admitted connection counts two descriptors.
        let mut admitted = 0;
        while l.try_admit(Direction::Inbound) {
            admitted += 1;
        }
        assert_eq!(admitted, (1024 - 40 - 100) / 2);
        l.release(Direction::Inbound);
        assert!(l.try_admit(Direction::Outbound), "a slot freed by either direction serves both");
        let err = Limits::new([0, 0], 0, 1000).size_fds(1024, 40).unwrap_err().to_string();
        assert!(err.contains("fdReserve = 1000") && err.contains("1024") && err.contains("below 982"), "{err}");
        let off = Limits::new([0, 0], 0, 0);
        off.size_fds(64, 60).unwrap();
        assert!(off.fds.is_unlimited(), "a reserve of 0 turns the budget off");
    }

    #[test]
    fn directions_have_their_own_connection_slots() {
        let l = Limits::new([2, 0], 0, 0);
        assert!(l.try_admit(Direction::Inbound));
        assert!(l.try_admit(Direction::Inbound));
        assert!(!l.try_admit(Direction::Inbound), "inbound is full");
        for _ in 0..10 {
            assert!(l.try_admit(Direction::Outbound), "outbound is not affected");
        }
        l.release(Direction::Inbound);
        assert!(l.try_admit(Direction::Inbound));
    }

    const A: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));

    #[test]
    fn detection_slots_are_counted_and_given_back() {
        let l = Limits::new([0, 0], 1, 0);
        let slot = l.detect_slot(Direction::Inbound, A).unwrap();
        assert!(l.detect_slot(Direction::Inbound, A).is_none());
        assert!(l.detect_slot(Direction::Outbound, A).is_some(), "per direction");
        drop(slot);
        assert!(l.detect_slot(Direction::Inbound, A).is_some());
        assert_eq!(l.detecting[Direction::Inbound.index()].refused(), 1);
        assert_eq!(l.snapshot().detecting_share.map(|s| s.refused), Some(0), "a full direction is not a host's share");
        assert!(Limits::new([0, 0], 0, 0).snapshot().detecting_share.is_none(), "unlimited detection has no shares");
    }

    #[test]
    fn one_inbound_source_gets_its_share_and_outbound_is_not_shared() {
        let l = Limits::new([0, 0], 160, 0);
        let held: Vec<_> = (0..10).map(|_| l.detect_slot(Direction::Inbound, A).expect("within the share")).collect();
        assert!(l.detect_slot(Direction::Inbound, A).is_none(), "a tenth slot from one host: past its share of 160 / 16");
        let b = (2..=255u8).map(|i| std::net::IpAddr::from([10, 0, 0, i])).find(|b| l.detect_slot(Direction::Inbound, *b).is_some());
        assert!(b.is_some(), "another host is detected");
        let outbound: Vec<_> = (0..50).map(|_| l.detect_slot(Direction::Outbound, A)).collect();
        assert!(outbound.iter().all(Option::is_some), "the local app's bursts are not shared out");
        // A share refusal is not a full direction: counted apart.
        assert_eq!(l.detecting[Direction::Inbound.index()].refused(), 0);
        let share = l.snapshot().detecting_share.expect("detection is limited");
        assert_eq!((share.host, share.prefix64, share.refused), (10, 40, 1));
        drop(held);
        assert!(l.detect_slot(Direction::Inbound, A).is_some());
    }

    /// A host at its share never holds a slot of the direction, not even
    /// for an instant: with one slot free and that host knocking without
    /// pause, another host gets the slot every time (were the direction's
    /// slot taken before the share, a knock would hold it just long enough
    /// to refuse someone else).
    #[test]
    fn a_host_at_its_share_never_takes_a_slot_from_another_host() {
        use std::sync::atomic::AtomicBool;
        let inbound = Direction::Inbound;
        let l = Limits::new([0, 0], 16, 0);
        let at_share: Vec<_> = (0..8).map(|_| l.detect_slot(inbound, A).expect("within the share of 8")).collect();
        assert!(l.detect_slot(inbound, A).is_none(), "A holds its share");
        // Other hosts take all but one slot (hosts whose bucket is A's, by chance, are skipped).
        let hosts = (2..=255u8).map(|i| std::net::IpAddr::from([10, 0, 1, i]));
        let others: Vec<_> = hosts.filter_map(|h| l.detect_slot(inbound, h)).take(7).collect();
        assert_eq!((others.len(), l.detecting[inbound.index()].used()), (7, 15));
        let c = (2..=255u8).map(|i| std::net::IpAddr::from([10, 0, 2, i])).find(|c| l.detect_slot(inbound, *c).is_some()).expect("a host");
        let counted = || l.snapshot().detecting_share.expect("limited").refused + l.detecting[inbound.index()].refused();
        let before = counted();
        let (started, stop) = (AtomicBool::new(false), AtomicBool::new(false));
        let (refused, knocks) = std::thread::scope(|s| {
            let knocker = s.spawn(|| {
                let mut knocks = 0u64;
                started.store(true, Relaxed);
                while !stop.load(Relaxed) {
                    assert!(l.detect_slot(inbound, A).is_none(), "A is past its share");
                    knocks += 1;
                }
                knocks
            });
            while !started.load(Relaxed) {
                std::hint::spin_loop();
            }
            let refused = (0..200_000).filter(|_| l.detect_slot(inbound, c).is_none()).count();
            stop.store(true, Relaxed);
            (refused, knocker.join().expect("the knocker"))
        });
        assert_eq!(refused, 0, "the free slot was refused to another host {refused} times of 200000 while A knocked");
        // Each knock counted once: as the share's, or as a full direction's
        // when the other host held the last slot at that instant.
        assert_eq!(counted() - before, knocks, "every knock counted once");
        drop((at_share, others));
    }

    /// IPv6 pods of one node share a /64 (Kubernetes' default node CIDR
    /// mask), and with Cilium's or Calico's default pools a whole cluster
    /// does: each address is a host of its own, and the /64 as a whole
    /// holds at most a quarter of the slots (an attacker picking addresses
    /// from its /64 still leaves the rest).
    #[test]
    fn ipv6_hosts_of_one_64_have_their_own_shares_and_the_64_a_quarter() {
        let l = Limits::new([0, 0], 1024, 0);
        let pod = |i: u16| std::net::IpAddr::from([0xfd00, 0x10, 0x244, 0x1, 0, 0, 0, i]);
        let one: Vec<_> = (0..64).map(|_| l.detect_slot(Direction::Inbound, pod(1)).expect("within the host's share")).collect();
        assert!(l.detect_slot(Direction::Inbound, pod(1)).is_none(), "a host's 65th: past its share of 1024 / 16");
        drop(one);
        let pods: Vec<_> =
            (1..=256).map(|i| l.detect_slot(Direction::Inbound, pod(i)).unwrap_or_else(|| panic!("pod {i} of the /64"))).collect();
        assert!(l.detect_slot(Direction::Inbound, pod(1000)).is_none(), "the /64's 257th: past its quarter");
        // (Three /64s: one whose bucket the full one's shares by chance, 1
        // in 16,384, would share its cap.)
        let elsewhere =
            (2..=4u16).filter_map(|n| l.detect_slot(Direction::Inbound, std::net::IpAddr::from([0xfd00, 0x10, 0x244, n, 0, 0, 0, 1])));
        assert!(elsewhere.count() >= 2, "other /64s are detected");
        assert_eq!(l.detecting[Direction::Inbound.index()].refused(), 0);
        assert_eq!(l.snapshot().detecting_share.map(|s| s.refused), Some(2));
        drop(pods);
        let again: Vec<_> = (0..64).map(|_| l.detect_slot(Direction::Inbound, pod(1000)).expect("every share given back")).collect();
        assert_eq!(again.len(), 64);
    }
}
