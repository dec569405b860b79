//! The process-wide buffer budget: bytes of block data in flight.
//!
//! A peer takes budget for a block when it sends the request and the budget
//! is given back when the block is written to disk or dropped. When the bytes
//! in use reach the high watermark the budget *pauses*: every reservation
//! fails, so peers send no new requests, until releases bring the use down to
//! the low watermark. The gap between the two (hysteresis) keeps peers from
//! flapping between paused and running on every block. A slow disk therefore
//! slows the requests, which slows the remote senders, and memory stays flat.
//!
//! Two implementations with the same semantics:
//!
//! - [`Budget`], a plain struct for a single owner (for example the Session
//!   actor, with peers asking it over a mailbox).
//! - [`AtomicBudget`], lock-free, shared by every peer through an `Arc`
//!   (wrapped with its wake-up in [`BufferBudget`], what the actors use):
//!   the paused flag and the bytes in use live in one `AtomicU64`, so every
//!   transition is a single compare-and-swap and the flag can never disagree
//!   with the count.
//!
//! **Recommended: [`AtomicBudget`].** A reservation happens per request, that
//! is per 16 KiB block: 65 536 a second at 1 GiB/s. Through a single owner
//! each would be a mailbox round trip, i.e. a cross-core wake-up costing
//! microseconds (the first design note, "Mailboxes and backpressure"), and the owner would
//! become the one serial point of the data path. A CAS on one cache line
//! costs tens of nanoseconds even when contended, needs no task to own it,
//! and holds no lock. The async shell only has to add a wake-up for paused
//! peers: [`AtomicBudget::release`] returns `true` exactly once per resume,
//! for the caller whose release crossed the low watermark, which can then
//! `notify_waiters()` a `tokio::sync::Notify`.
//!
//! **The backlog bound.** Bytes in use are of two kinds: requests in the
//! network (their sum follows the rate and the round trip, which the
//! pipelines size) and blocks landed but not yet written (waiting for the
//! rest of their piece, for a hash worker or for the disk writer). Only the
//! second grows when a hash worker or the writer loses the CPU, and with a
//! 256 MiB capacity it used to fill most of it on a loaded machine (RSS
//! tracks the bytes in use). So [`BufferBudget`] also counts landed bytes
//! and refuses new reservations while they reach `backlog` bytes, resuming
//! at half of it: memory follows the work (rate x latency in the network,
//! plus a bounded backlog), with `capacity` the ceiling.
//!
//! **The effective limit.** The capacity is a ceiling, not a target: the
//! bytes the network needs are rate x (request latency + hash + write time),
//! a few MiB on a fast disk. So [`BufferBudget`] also holds an *effective
//! limit*, starting at `floor`, on the bytes *in the network* (reserved and
//! not landed): what rate x latency sizes; the landed bytes have their own
//! bound, the backlog, so a limit near the backlog is not filled by blocks
//! waiting for the hash workers and the writer. It has no pause of its
//! own: a reservation that does not fit is refused (the peer asks for
//! less), and the peers left with nothing outstanding wait until the bytes
//! in the network fall under the limit's high watermark (blocks landing or
//! requests given back). A pause
//! with hysteresis here let the network run dry while the landed blocks
//! drained (a stop-and-go pipeline: 3.7 s for 1 GiB against 2.2 s).
//! [`Governor`], driven by the session's tick, doubles the limit after a
//! tick in which the limit (not the backlog bound, not the capacity) cut a
//! peer that had request slots to less than half its pipeline (starved: more
//! room would become more requests on a drying link), and halves it, never
//! below `floor`, after [`SHRINK_TICKS`] ticks in which the use stayed under
//! half of it (idle). On a slow disk the backlog bound refuses first and the
//! limit stays put. The use is at most limit + backlog (+ the blocks that
//! finish started pieces), and never more than the capacity.
//!
//! A reservation that crosses the high watermark still succeeds (as long as
//! it stays within capacity) and pauses the budget for the next ones; one
//! that would exceed the capacity fails without changing anything.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering, fence};

use bytes::Bytes;
use tokio::sync::Notify;

/// Sizes of the buffer budget. These become named config values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetConfig {
    /// Total bytes of block data allowed in flight. Default 256 MiB.
    pub capacity: u64,
    /// Use, in percent of `capacity`, at which the budget pauses. Default 90:
    /// the last 10 % absorbs the blocks already requested when the pause
    /// begins (a full pipeline per peer) without reaching the hard capacity.
    pub high_watermark_percent: u8,
    /// Use, in percent of `capacity`, at or below which a paused budget
    /// resumes. Default 70: a 20 % gap, about 50 MiB with the defaults, so
    /// resuming lets a burst of requests out before the next pause instead of
    /// one request per block written.
    pub low_watermark_percent: u8,
    /// Landed bytes (received, not yet written) at which new reservations
    /// are refused until half of them are written; 0 for no such bound.
    /// Default 8 MiB: a few pieces per hash worker plus a write batch.
    pub backlog: u64,
    /// The smallest effective limit on the bytes in the network (requested,
    /// not landed), where it starts (see the module docs); at or above
    /// `capacity` the limit is fixed at `capacity`. Default 16 MiB: four
    /// full 256-block pipelines before it has to grow.
    pub floor: u64,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            capacity: 256 * 1024 * 1024,
            high_watermark_percent: 90,
            low_watermark_percent: 70,
            backlog: 8 * 1024 * 1024,
            floor: 16 * 1024 * 1024,
        }
    }
}

/// A budget configuration that cannot work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BudgetConfigError {
    /// The capacity is zero or does not fit in 63 bits.
    #[error("buffer budget capacity {0} must be between 1 and 2^63 - 1 bytes")]
    Capacity(u64),
    /// The watermarks are not `low < high <= 100` with `high > 0`.
    #[error("buffer budget watermarks must satisfy low < high <= 100, got low {low}% high {high}%")]
    Watermarks {
        /// The low watermark given, in percent.
        low: u8,
        /// The high watermark given, in percent.
        high: u8,
    },
}

/// What refused a [`BufferBudget::reserve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The landed backlog is at its bound: the hash workers or the disk
    /// are behind.
    Backlog,
    /// The bytes would cross the effective limit.
    Limit,
    /// The budget is paused at its watermark or the capacity is reached.
    Budget,
}

/// Watermarks in bytes, computed once from a validated config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Limits {
    capacity: u64,
    high: u64,
    low: u64,
}

impl Limits {
    fn new(config: BudgetConfig) -> Result<Self, BudgetConfigError> {
        if config.capacity == 0 || config.capacity > VALUE_MASK {
            return Err(BudgetConfigError::Capacity(config.capacity));
        }
        let (low, high) = (config.low_watermark_percent, config.high_watermark_percent);
        if high == 0 || high > 100 || low >= high {
            return Err(BudgetConfigError::Watermarks { low, high });
        }
        let of = |p: u8| {
            u64::try_from(u128::from(config.capacity) * u128::from(p) / 100).unwrap_or(u64::MAX)
        };
        // At least one byte must be reservable before pausing.
        let high = of(high).max(1);
        let low = of(low).min(high - 1);
        Ok(Self {
            capacity: config.capacity,
            high,
            low,
        })
    }
}

/// Single-owner buffer budget.
#[derive(Clone, Debug)]
pub struct Budget {
    limits: Limits,
    in_use: u64,
    peak: u64,
    paused: bool,
}

impl Budget {
    /// An empty, running budget.
    pub fn new(config: BudgetConfig) -> Result<Self, BudgetConfigError> {
        Ok(Self {
            limits: Limits::new(config)?,
            in_use: 0,
            peak: 0,
            paused: false,
        })
    }

    /// Takes `bytes` if the budget is running and they fit in the capacity.
    /// Pauses the budget if the use reaches the high watermark.
    pub fn try_reserve(&mut self, bytes: u64) -> bool {
        if self.paused {
            return false;
        }
        let Some(next) = self.in_use.checked_add(bytes) else {
            return false;
        };
        if next > self.limits.capacity {
            return false;
        }
        self.in_use = next;
        self.peak = self.peak.max(next);
        if next >= self.limits.high {
            self.paused = true;
        }
        true
    }

    /// Gives back `bytes`. Returns `true` if this release resumed a paused
    /// budget (the use fell to the low watermark). Releasing more than is in
    /// use is a bug: it panics in debug builds and saturates at zero
    /// otherwise.
    pub fn release(&mut self, bytes: u64) -> bool {
        debug_assert!(
            bytes <= self.in_use,
            "buffer budget: released {bytes} bytes with only {} in use",
            self.in_use
        );
        self.in_use = self.in_use.saturating_sub(bytes);
        if self.paused && self.in_use <= self.limits.low {
            self.paused = false;
            return true;
        }
        false
    }

    /// Whether reservations currently fail.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> u64 {
        self.in_use
    }

    /// Most bytes ever reserved at once.
    pub fn peak(&self) -> u64 {
        self.peak
    }

    /// Total bytes allowed in flight.
    pub fn capacity(&self) -> u64 {
        self.limits.capacity
    }

    /// Use in bytes at which the budget pauses.
    pub fn high_watermark(&self) -> u64 {
        self.limits.high
    }

    /// Use in bytes at or below which a paused budget resumes.
    pub fn low_watermark(&self) -> u64 {
        self.limits.low
    }
}

impl Default for Budget {
    fn default() -> Self {
        Self::new(BudgetConfig::default()).expect("the default budget config is valid")
    }
}

const PAUSED_BIT: u64 = 1 << 63;
const VALUE_MASK: u64 = PAUSED_BIT - 1;

/// Lock-free buffer budget shared by every peer (put it in an `Arc`).
///
/// Same semantics as [`Budget`]; the state word holds the paused flag in bit
/// 63 and the bytes in use in bits 0..63, so each call is one CAS loop.
#[derive(Debug)]
pub struct AtomicBudget {
    limits: Limits,
    state: AtomicU64,
    peak: AtomicU64,
}

impl AtomicBudget {
    /// An empty, running budget.
    pub fn new(config: BudgetConfig) -> Result<Self, BudgetConfigError> {
        Ok(Self {
            limits: Limits::new(config)?,
            state: AtomicU64::new(0),
            peak: AtomicU64::new(0),
        })
    }

    /// Takes `bytes` if the budget is running and they fit in the capacity.
    /// Pauses the budget if the use reaches the high watermark.
    pub fn try_reserve(&self, bytes: u64) -> bool {
        let high = self.limits.high;
        let capacity = self.limits.capacity;
        let result = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                if s & PAUSED_BIT != 0 {
                    return None;
                }
                let next = s.checked_add(bytes).filter(|n| *n <= capacity)?;
                Some(if next >= high {
                    next | PAUSED_BIT
                } else {
                    next
                })
            });
        match result {
            Ok(prev) => {
                self.peak.fetch_max(prev + bytes, Ordering::Relaxed);
                true
            }
            Err(_) => false,
        }
    }

    /// Takes `bytes` even if the budget is paused or full, pausing it if
    /// the use reaches the high watermark. Only for requests that finish
    /// pieces already started: no new piece starts while the budget is
    /// paused, so these are bounded by the started pieces' remaining
    /// blocks, and without them a budget filled by partial pieces would
    /// never drain (nothing completes, nothing is written, nothing released).
    pub fn force_reserve(&self, bytes: u64) {
        let high = self.limits.high;
        let prev = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                let next = (s & VALUE_MASK).saturating_add(bytes).min(VALUE_MASK);
                Some(if next >= high || s & PAUSED_BIT != 0 {
                    next | PAUSED_BIT
                } else {
                    next
                })
            })
            .unwrap_or_else(|s| s);
        self.peak
            .fetch_max((prev & VALUE_MASK).saturating_add(bytes), Ordering::Relaxed);
    }

    /// Gives back `bytes`. Returns `true` for exactly the one release that
    /// resumed a paused budget. Releasing more than is in use is a bug: it
    /// panics in debug builds and saturates at zero otherwise.
    pub fn release(&self, bytes: u64) -> bool {
        let low = self.limits.low;
        let result = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                let paused = s & PAUSED_BIT;
                let next = (s & VALUE_MASK).saturating_sub(bytes);
                if paused != 0 && next <= low {
                    Some(next)
                } else {
                    Some(next | paused)
                }
            });
        // The closure never returns None.
        let prev = result.unwrap_or_else(|s| s);
        debug_assert!(
            bytes <= prev & VALUE_MASK,
            "buffer budget: released {bytes} bytes with only {} in use",
            prev & VALUE_MASK
        );
        let was_paused = prev & PAUSED_BIT != 0;
        was_paused && (prev & VALUE_MASK).saturating_sub(bytes) <= low
    }

    /// Whether reservations currently fail.
    pub fn is_paused(&self) -> bool {
        self.state.load(Ordering::Acquire) & PAUSED_BIT != 0
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> u64 {
        self.state.load(Ordering::Acquire) & VALUE_MASK
    }

    /// Most bytes ever reserved at once.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Total bytes allowed in flight.
    pub fn capacity(&self) -> u64 {
        self.limits.capacity
    }

    /// Use in bytes at which the budget pauses.
    pub fn high_watermark(&self) -> u64 {
        self.limits.high
    }

    /// Use in bytes at or below which a paused budget resumes.
    pub fn low_watermark(&self) -> u64 {
        self.limits.low
    }
}

/// The process-wide buffer budget: bytes of block data in flight, taken
/// when a request is sent and given back when the block is written or
/// dropped. Shared by reference between peers and torrents; it is a pair of
/// atomics and a [`Notify`], not a lock, so no actor ever waits on another
/// while holding it.
#[derive(Debug)]
pub struct BufferBudget {
    budget: AtomicBudget,
    resumed: Notify,
    /// Bytes of blocks the torrents took and have not yet written (or
    /// dropped after a failed hash).
    landed: AtomicU64,
    /// See [`BudgetConfig::backlog`]; 0 for none.
    backlog: u64,
    /// A reservation was refused for the backlog: the release that brings
    /// it down to half wakes the peers.
    backlog_paused: std::sync::atomic::AtomicBool,
    /// The effective limit in bytes (see the module docs), set by
    /// [`Self::tick`]; at most the capacity.
    limit: AtomicU64,
    /// High watermark percentage, applied to `limit`: peers refused by the
    /// limit are woken once the use is at or under it.
    high_percent: u8,
    /// A reservation was refused by the limit: the release that brings the
    /// use under its high watermark wakes the peers.
    limit_waiting: std::sync::atomic::AtomicBool,
    /// Peers that reported starving (see [`Self::starving`]) since the last
    /// tick.
    starved: AtomicU64,
    /// Reservations refused since the last tick, by the limit and by the
    /// backlog bound (for the trace at each tick).
    refused_limit: AtomicU64,
    refused_backlog: AtomicU64,
    /// Highest use and highest landed bytes since the last tick.
    window_peak: AtomicU64,
    window_landed: AtomicU64,
    /// Highest effective limit set.
    limit_peak: AtomicU64,
    /// Resumes so far (see [`Self::resumed_since`]).
    epoch: AtomicU64,
}

/// A request's size (BitTorrent's 16 KiB block): the smallest
/// reservation a peer makes.
const BLOCK: u64 = 16 * 1024;

/// How often the session steps the effective limit: growing from the
/// 16 MiB floor to 256 MiB takes 4 ticks.
pub const TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// Ticks of low use after which [`Governor`] halves the effective limit.
pub const SHRINK_TICKS: u32 = 10;

/// Grows and shrinks the effective limit of a [`BufferBudget`], one step
/// per tick; owned by whoever ticks (the session), so the rules are plain
/// arithmetic on explicit ticks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Governor {
    floor: u64,
    ceiling: u64,
    limit: u64,
    idle_ticks: u32,
}

impl Governor {
    /// Starts at the floor (at most the capacity).
    pub fn new(config: BudgetConfig) -> Self {
        let ceiling = config.capacity;
        let floor = config.floor.clamp(1, ceiling.max(1));
        Self {
            floor,
            ceiling,
            limit: floor,
            idle_ticks: 0,
        }
    }

    /// One tick: `starved` if peers were refused by the limit since the
    /// last one, `peak` the most bytes in the network since then. Doubles the limit when
    /// starved (up to the capacity), halves it (down to the floor) after
    /// [`SHRINK_TICKS`] ticks in a row with the use under half of it.
    /// Returns the new limit.
    pub fn tick(&mut self, starved: bool, peak: u64) -> u64 {
        if starved {
            self.idle_ticks = 0;
            self.limit = self.limit.saturating_mul(2).min(self.ceiling);
        } else if peak < self.limit / 2 {
            self.idle_ticks += 1;
            if self.idle_ticks >= SHRINK_TICKS {
                self.idle_ticks = 0;
                self.limit = (self.limit / 2).max(self.floor);
            }
        } else {
            self.idle_ticks = 0;
        }
        self.limit
    }

    /// The limit now.
    pub fn limit(&self) -> u64 {
        self.limit
    }
}

impl BufferBudget {
    /// A budget sized by `config`.
    pub fn new(config: BudgetConfig) -> Result<Self, BudgetConfigError> {
        let budget = AtomicBudget::new(config)?;
        let limit = Governor::new(config).limit();
        Ok(BufferBudget {
            budget,
            resumed: Notify::new(),
            landed: AtomicU64::new(0),
            backlog: config.backlog,
            backlog_paused: std::sync::atomic::AtomicBool::new(false),
            limit: AtomicU64::new(limit),
            high_percent: config.high_watermark_percent,
            limit_waiting: std::sync::atomic::AtomicBool::new(false),
            starved: AtomicU64::new(0),
            refused_limit: AtomicU64::new(0),
            refused_backlog: AtomicU64::new(0),
            window_peak: AtomicU64::new(0),
            window_landed: AtomicU64::new(0),
            limit_peak: AtomicU64::new(limit),
            epoch: AtomicU64::new(0),
        })
    }

    /// The effective limit and the use at or under which peers it refused
    /// are woken, in bytes: its high watermark, and at least one block
    /// under the limit (with a limit under 160 KiB the watermark alone
    /// would leave a refused block no wake-up).
    fn effective(&self) -> (u64, u64) {
        let limit = self.limit.load(Ordering::Acquire);
        let high = u64::try_from(u128::from(limit) * u128::from(self.high_percent) / 100)
            .unwrap_or(u64::MAX)
            .min(limit.saturating_sub(BLOCK));
        (limit, high)
    }

    /// A peer with request slots (unchoked, interested, pipeline not full)
    /// was cut by the effective limit ([`Refused::Limit`]) to less than half
    /// its pipeline: it counts as starvation for the next tick. Refusals by
    /// the backlog bound are not starvation (the disk or the hash workers
    /// are behind; more room would only hold more unwritten blocks), and
    /// neither is a cut that leaves the pipeline more than half full.
    pub fn starving(&self) {
        self.starved.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes `bytes` unless the budget is paused or full, the landed
    /// backlog is at its bound, or they would cross the effective limit.
    pub fn try_reserve(&self, bytes: u64) -> bool {
        self.reserve(bytes).is_ok()
    }

    /// [`Self::try_reserve`], saying what refused. The limit check and the
    /// reservation are two steps, so concurrent peers may overshoot the
    /// limit by a reservation each; the capacity is exact.
    pub fn reserve(&self, bytes: u64) -> Result<(), Refused> {
        if self.backlog > 0 {
            let landed = self.landed.load(Ordering::Acquire);
            if landed >= self.backlog {
                self.backlog_paused.store(true, Ordering::Release);
                // A release may have crossed half before the flag was set
                // (the fence pairs with the one in `release_landed`).
                fence(Ordering::SeqCst);
                if self.landed.load(Ordering::Acquire) > self.backlog / 2 {
                    self.refused_backlog.fetch_add(1, Ordering::Relaxed);
                    return Err(Refused::Backlog);
                }
                if self.backlog_paused.swap(false, Ordering::AcqRel) {
                    self.notify();
                }
            } else if landed > self.backlog / 2 && self.backlog_paused.load(Ordering::Acquire) {
                self.refused_backlog.fetch_add(1, Ordering::Relaxed);
                return Err(Refused::Backlog);
            }
        }
        let (limit, high) = self.effective();
        let used = self.in_network();
        if used.saturating_add(bytes) > limit {
            self.refused_limit.fetch_add(1, Ordering::Relaxed);
            // Under the high watermark a smaller reservation fits: the
            // caller asks for less and nobody needs waking.
            if used > high {
                self.limit_waiting.store(true, Ordering::Release);
                // A release may have made room before the flag was set;
                // then nobody else would wake the peers. The fence pairs
                // with the one in `wake_if_room`: flag store then use load
                // here, use update then flag load there, so at least one
                // side sees the other.
                fence(Ordering::SeqCst);
                if self.in_network() <= high && self.limit_waiting.swap(false, Ordering::AcqRel) {
                    self.notify();
                }
            }
            return Err(Refused::Limit);
        }
        if !self.budget.try_reserve(bytes) {
            return Err(Refused::Budget);
        }
        self.window_peak
            .fetch_max(self.in_network(), Ordering::Relaxed);
        Ok(())
    }

    /// Bytes reserved and not landed: requests in the network, what the
    /// effective limit bounds. Two loads, so a concurrent land or release
    /// may skew it by that call's bytes; every change is followed by a
    /// [`Self::wake_if_room`], so a skewed refusal still gets its wake-up.
    fn in_network(&self) -> u64 {
        self.budget
            .in_use()
            .saturating_sub(self.landed.load(Ordering::Acquire))
    }

    /// Whether peers refused by the limit should be woken now (the bytes in
    /// the network are at or under its high watermark); true once per
    /// refusal episode.
    fn wake_if_room(&self) -> bool {
        fence(Ordering::SeqCst);
        if !self.limit_waiting.load(Ordering::Acquire) {
            return false;
        }
        let (_, high) = self.effective();
        self.in_network() <= high && self.limit_waiting.swap(false, Ordering::AcqRel)
    }

    /// One step of the effective limit: `governor` decides from what
    /// happened since the last tick (see [`Governor::tick`]). Logs the
    /// window at debug level (`actors::budget`), the trace to tune it by.
    pub fn tick(&self, governor: &mut Governor) {
        let starved = self.starved.swap(0, Ordering::AcqRel);
        let in_use = self.budget.in_use();
        let landed = self.landed();
        let peak = self
            .window_peak
            .swap(in_use.saturating_sub(landed), Ordering::AcqRel);
        let landed_peak = self.window_landed.swap(landed, Ordering::AcqRel);
        let refused_limit = self.refused_limit.swap(0, Ordering::Relaxed);
        let refused_backlog = self.refused_backlog.swap(0, Ordering::Relaxed);
        let before = governor.limit();
        let limit = governor.tick(starved > 0, peak);
        if peak > 0 || limit != before {
            tracing::debug!(
                limit_kib = before >> 10,
                next_kib = limit >> 10,
                in_use_kib = in_use >> 10,
                net_peak_kib = peak >> 10,
                landed_kib = landed >> 10,
                landed_peak_kib = landed_peak >> 10,
                starved,
                refused_limit,
                refused_backlog,
                "budget tick"
            );
        }
        self.limit.store(limit, Ordering::Release);
        self.limit_peak.fetch_max(limit, Ordering::Relaxed);
        // A grown limit wakes every waiter, not only those refused over the
        // watermark: under a limit smaller than a block (a `floor` under
        // 16 KiB) the watermark is 0 and a peer refused with nothing in the
        // network set no flag.
        if self.wake_if_room() || limit > before {
            self.notify();
        }
    }

    /// The effective limit now.
    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Acquire)
    }

    /// The highest effective limit set.
    pub fn limit_peak(&self) -> u64 {
        self.limit_peak.load(Ordering::Relaxed)
    }

    /// Moves `bytes` already reserved to the landed backlog: blocks a
    /// torrent took, to be given back with [`Self::release_landed`].
    /// Landing takes the bytes out of the network, so it may make room
    /// under the effective limit and wake the peers it refused.
    pub fn land(&self, bytes: u64) {
        if bytes > 0 {
            let now = self.landed.fetch_add(bytes, Ordering::AcqRel) + bytes;
            self.window_landed.fetch_max(now, Ordering::Relaxed);
            if self.wake_if_room() {
                self.notify();
            }
        }
    }

    /// Gives back landed bytes (written, or dropped after their piece
    /// failed its hash); wakes the peers waiting if this resumed the budget
    /// or brought the backlog down to half its bound.
    pub fn release_landed(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let prev = self
            .landed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| {
                Some(l.saturating_sub(bytes))
            })
            .unwrap_or_else(|l| l);
        debug_assert!(bytes <= prev, "landed {prev} bytes, released {bytes}");
        let now = prev.saturating_sub(bytes);
        let resumed = self.budget.release(bytes);
        // Landed update then flag load here, flag store then landed load in
        // `reserve`: without the fences both could miss the other.
        fence(Ordering::SeqCst);
        let drained = now <= self.backlog / 2 && self.backlog_paused.swap(false, Ordering::AcqRel);
        let room = self.wake_if_room();
        if resumed || drained || room {
            self.notify();
        }
    }

    /// Landed bytes not yet written.
    pub fn landed(&self) -> u64 {
        self.landed.load(Ordering::Acquire)
    }

    /// Takes `bytes` whatever the state; see [`AtomicBudget::force_reserve`]
    /// for the one use that is sound.
    pub fn force_reserve(&self, bytes: u64) {
        self.budget.force_reserve(bytes);
        self.window_peak
            .fetch_max(self.in_network(), Ordering::Relaxed);
    }

    /// Gives back `bytes`; wakes the peers waiting if this resumed it.
    pub fn release(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let resumed = self.budget.release(bytes);
        if self.wake_if_room() || resumed {
            self.notify();
        }
    }

    /// Counts the resumes, so a waiter can tell one happened before it
    /// started waiting (`Notify::notify_waiters` wakes only those already
    /// waiting).
    fn notify(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.resumed.notify_waiters();
    }

    /// The resume count now; take it before the reservation that fails.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Resolves once the budget has resumed since `epoch` (at once if it
    /// already did). With a small effective limit pauses are frequent and
    /// a wake-up lost between the refusal and the wait cost a whole peer
    /// tick (250 ms): 16 MiB/s with a 4 MiB limit.
    pub async fn resumed_since(&self, epoch: u64) {
        let notified = self.resumed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.epoch() != epoch {
            return;
        }
        notified.await;
    }

    /// Bytes in use.
    pub fn in_use(&self) -> u64 {
        self.budget.in_use()
    }

    /// The highest use seen.
    pub fn peak(&self) -> u64 {
        self.budget.peak()
    }

    /// Whether new requests are held back.
    pub fn is_paused(&self) -> bool {
        self.budget.is_paused()
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.budget.capacity()
    }
}

/// Data that holds `bytes` of a [`BufferBudget`] until the last slice of
/// it is dropped, not until whoever reserved them lets go of it: a block
/// sliced from a piece read for upload keeps the whole piece buffer alive
/// while it waits in a send queue, so a peer that asks for tiny blocks of
/// many pieces and never reads would otherwise pin piece after piece the
/// budget no longer counts.
pub fn held(budget: &Arc<BufferBudget>, data: Bytes, bytes: u64) -> Bytes {
    if bytes == 0 {
        return data;
    }
    Bytes::from_owner(Held {
        data,
        budget: budget.clone(),
        bytes,
    })
}

/// The owner behind [`held`]'s bytes.
struct Held {
    data: Bytes,
    budget: Arc<BufferBudget>,
    bytes: u64,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> BudgetConfig {
        BudgetConfig {
            capacity: 1000,
            high_watermark_percent: 90,
            low_watermark_percent: 70,
            backlog: 0,
            floor: u64::MAX,
        }
    }

    #[test]
    fn held_bytes_give_the_budget_back_with_their_last_slice() {
        let b = Arc::new(BufferBudget::new(small()).unwrap());
        assert!(b.try_reserve(600));
        let data = held(&b, Bytes::from(vec![5u8; 600]), 600);
        let block = data.slice(100..116);
        drop(data);
        assert_eq!(b.in_use(), 600, "a live slice still holds it");
        assert_eq!(&block[..], &[5u8; 16]);
        drop(block);
        assert_eq!(b.in_use(), 0);
        // Nothing reserved, nothing given back.
        assert!(b.try_reserve(10));
        drop(held(&b, Bytes::from_static(b"abc"), 0));
        assert_eq!(b.in_use(), 10);
    }

    #[test]
    fn default_config() {
        let c = BudgetConfig::default();
        assert_eq!(c.capacity, 256 * 1024 * 1024);
        assert_eq!(c.high_watermark_percent, 90);
        assert_eq!(c.low_watermark_percent, 70);
        let b = Budget::new(c).unwrap();
        let d = Budget::default();
        assert_eq!(b.high_watermark(), d.high_watermark());
        assert_eq!(b.low_watermark(), d.low_watermark());
        assert_eq!(b.capacity(), d.capacity());
    }

    #[test]
    fn config_errors() {
        let bad = |capacity, high, low| BudgetConfig {
            capacity,
            high_watermark_percent: high,
            low_watermark_percent: low,
            backlog: 0,
            floor: u64::MAX,
        };
        assert_eq!(
            Budget::new(bad(0, 90, 70)).unwrap_err(),
            BudgetConfigError::Capacity(0)
        );
        assert!(matches!(
            AtomicBudget::new(bad(u64::MAX, 90, 70)),
            Err(BudgetConfigError::Capacity(_))
        ));
        for (high, low) in [(0, 0), (101, 70), (70, 70), (70, 90)] {
            assert_eq!(
                Budget::new(bad(1000, high, low)).unwrap_err(),
                BudgetConfigError::Watermarks { low, high }
            );
        }
        // Tiny capacities still leave a gap between the watermarks.
        let b = Budget::new(bad(1, 90, 70)).unwrap();
        assert_eq!((b.high_watermark(), b.low_watermark()), (1, 0));
    }

    /// The same behaviour tests run against both implementations.
    macro_rules! budget_tests {
        ($m:ident, $ty:ty, $($mut_:tt)?) => {
            mod $m {
                use super::*;

                fn make() -> $ty {
                    <$ty>::new(small()).unwrap()
                }

                #[test]
                fn watermarks_in_bytes() {
                    let b = make();
                    assert_eq!(b.capacity(), 1000);
                    assert_eq!(b.high_watermark(), 900);
                    assert_eq!(b.low_watermark(), 700);
                }

                #[test]
                fn reserve_and_release() {
                    let $($mut_)? b = make();
                    assert!(b.try_reserve(300));
                    assert!(b.try_reserve(300));
                    assert_eq!(b.in_use(), 600);
                    assert!(!b.is_paused());
                    assert!(!b.release(100));
                    assert_eq!(b.in_use(), 500);
                    assert_eq!(b.peak(), 600);
                }

                #[test]
                fn pauses_at_high_and_resumes_at_low() {
                    let $($mut_)? b = make();
                    assert!(b.try_reserve(899));
                    assert!(!b.is_paused());
                    // Crossing the high watermark succeeds and pauses.
                    assert!(b.try_reserve(1));
                    assert!(b.is_paused());
                    assert!(!b.try_reserve(1));
                    assert_eq!(b.in_use(), 900);
                    // Below high but above low: still paused (hysteresis).
                    assert!(!b.release(100));
                    assert_eq!(b.in_use(), 800);
                    assert!(b.is_paused());
                    assert!(!b.try_reserve(1));
                    assert!(!b.release(99));
                    assert!(b.is_paused());
                    // Exactly at low: resumes, reported once.
                    assert!(b.release(1));
                    assert_eq!(b.in_use(), 700);
                    assert!(!b.is_paused());
                    assert!(!b.release(100));
                    assert!(b.try_reserve(10));
                    assert_eq!(b.peak(), 900);
                }

                #[test]
                fn crossing_reservation_allowed_within_capacity() {
                    let $($mut_)? b = make();
                    assert!(b.try_reserve(500));
                    assert!(b.try_reserve(500));
                    assert_eq!(b.in_use(), 1000);
                    assert!(b.is_paused());
                    assert_eq!(b.peak(), 1000);
                }

                #[test]
                fn beyond_capacity_fails_without_effect() {
                    let $($mut_)? b = make();
                    assert!(b.try_reserve(500));
                    assert!(!b.try_reserve(501));
                    assert!(!b.try_reserve(u64::MAX));
                    assert_eq!(b.in_use(), 500);
                    assert!(!b.is_paused());
                    assert_eq!(b.peak(), 500);
                }

                #[test]
                fn zero_byte_operations() {
                    let $($mut_)? b = make();
                    assert!(b.try_reserve(0));
                    assert!(!b.release(0));
                    assert_eq!(b.in_use(), 0);
                }

                #[test]
                #[cfg_attr(debug_assertions, should_panic(expected = "buffer budget"))]
                fn over_release_is_a_bug_that_saturates() {
                    let $($mut_)? b = make();
                    assert!(b.try_reserve(10));
                    b.release(20);
                    assert_eq!(b.in_use(), 0);
                }
            }
        };
    }

    budget_tests!(single_owner, Budget, mut);
    budget_tests!(atomic, AtomicBudget,);

    #[test]
    fn atomic_concurrent_never_exceeds_capacity_and_balances() {
        use std::sync::Arc;
        let b = Arc::new(
            AtomicBudget::new(BudgetConfig {
                capacity: 64 * 16384,
                ..BudgetConfig::default()
            })
            .unwrap(),
        );
        let resumes = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = Arc::clone(&b);
                let resumes = Arc::clone(&resumes);
                std::thread::spawn(move || {
                    let mut held = 0u64;
                    for i in 0..20_000u64 {
                        if i % 3 != 2 && b.try_reserve(16384) {
                            held += 1;
                        } else if held > 0 {
                            held -= 1;
                            if b.release(16384) {
                                resumes.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        assert!(b.in_use() <= b.capacity());
                    }
                    while held > 0 {
                        held -= 1;
                        if b.release(16384) {
                            resumes.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(b.in_use(), 0);
        assert!(!b.is_paused());
        assert!(b.peak() <= b.capacity());
        assert!(b.peak() >= b.high_watermark());
        assert!(resumes.load(Ordering::Relaxed) >= 1);
    }

    #[test]
    fn force_reserve_goes_past_pause_and_capacity_and_drains_back() {
        let b = AtomicBudget::new(BudgetConfig {
            capacity: 100,
            high_watermark_percent: 90,
            low_watermark_percent: 70,
            backlog: 0,
            floor: u64::MAX,
        })
        .unwrap();
        assert!(b.try_reserve(95));
        assert!(b.is_paused());
        assert!(!b.try_reserve(1));
        b.force_reserve(20);
        assert_eq!(b.in_use(), 115);
        assert_eq!(b.peak(), 115);
        assert!(b.is_paused());
        assert!(!b.release(40), "75 is still above the low watermark");
        assert!(b.release(5), "70 resumes");
        assert!(!b.is_paused());
        b.force_reserve(1);
        assert!(!b.is_paused(), "71 is below the high watermark");
    }

    #[test]
    fn backlog_refuses_until_half_is_written() {
        let b = BufferBudget::new(BudgetConfig {
            capacity: 1000,
            backlog: 100,
            ..BudgetConfig::default()
        })
        .unwrap();
        assert!(b.try_reserve(120));
        b.land(120);
        assert!(!b.try_reserve(10), "landed 120 of a 100 backlog");
        assert!(
            !b.is_paused(),
            "the budget itself is far from its watermark"
        );
        b.release_landed(60);
        assert!(
            !b.try_reserve(10),
            "60 landed: above half the bound, still refused"
        );
        b.release_landed(20);
        assert_eq!(b.landed(), 40);
        assert!(b.try_reserve(10), "40 landed: at most half, resumed");
        b.release(10);
        b.release_landed(40);
        assert_eq!((b.in_use(), b.landed()), (0, 0));
    }

    fn adaptive(capacity: u64, floor: u64) -> BudgetConfig {
        BudgetConfig {
            capacity,
            floor,
            backlog: 0,
            ..BudgetConfig::default()
        }
    }

    #[test]
    fn governor_doubles_when_starved_up_to_capacity() {
        let mut g = Governor::new(adaptive(1000, 100));
        assert_eq!(g.limit(), 100);
        assert_eq!(g.tick(true, 100), 200);
        assert_eq!(g.tick(true, 200), 400);
        assert_eq!(g.tick(false, 300), 400, "busy, not starved: stays");
        assert_eq!(g.tick(true, 400), 800);
        assert_eq!(g.tick(true, 800), 1000, "the capacity is the ceiling");
        assert_eq!(g.tick(true, 1000), 1000);
    }

    #[test]
    fn governor_halves_after_idle_ticks_down_to_floor() {
        let mut g = Governor::new(adaptive(1000, 100));
        for _ in 0..4 {
            g.tick(true, 0);
        }
        assert_eq!(g.limit(), 1000);
        for _ in 0..SHRINK_TICKS - 1 {
            assert_eq!(g.tick(false, 499), 1000);
        }
        // A busy tick restarts the count.
        assert_eq!(g.tick(false, 500), 1000);
        for _ in 0..SHRINK_TICKS - 1 {
            assert_eq!(g.tick(false, 0), 1000);
        }
        assert_eq!(g.tick(false, 0), 500);
        let mut ticks = 0;
        while g.limit() > 100 {
            g.tick(false, 0);
            ticks += 1;
        }
        assert_eq!(g.limit(), 100, "never below the floor");
        assert_eq!(ticks, 3 * SHRINK_TICKS, "500 -> 250 -> 125 -> 100");
    }

    #[test]
    fn governor_floor_at_or_above_capacity_is_fixed() {
        let mut g = Governor::new(adaptive(1000, u64::MAX));
        assert_eq!(g.limit(), 1000);
        for _ in 0..3 * SHRINK_TICKS {
            assert_eq!(g.tick(false, 0), 1000);
        }
    }

    #[test]
    fn effective_limit_refuses_grows_when_starved_and_shrinks_when_idle() {
        let b = BufferBudget::new(adaptive(10_000, 1000)).unwrap();
        let mut g = Governor::new(adaptive(10_000, 1000));
        assert_eq!(b.limit(), 1000);
        assert!(b.try_reserve(800));
        assert_eq!(b.reserve(300), Err(Refused::Limit), "would cross 1000");
        assert!(!b.is_paused(), "the capacity is far");
        b.tick(&mut g);
        assert_eq!(b.limit(), 1000, "refused, but no peer said it starved");
        b.starving();
        b.tick(&mut g);
        assert_eq!(b.limit(), 2000, "a peer starved: doubled");
        assert!(b.try_reserve(300));
        b.release(1100);
        b.tick(&mut g);
        assert_eq!(b.limit(), 2000, "that window peaked at 1100: busy");
        // Idle: the use stays under half the limit.
        for _ in 0..SHRINK_TICKS {
            b.tick(&mut g);
        }
        assert_eq!(b.limit(), 1000);
        assert_eq!(b.limit_peak(), 2000);
    }

    #[test]
    fn effective_limit_takes_what_fits_without_a_pause() {
        let b = BufferBudget::new(adaptive(10_000, 1000)).unwrap();
        assert!(b.try_reserve(900), "90 % of the limit");
        assert!(b.try_reserve(100), "up to the limit itself: no hysteresis");
        assert_eq!(b.reserve(1), Err(Refused::Limit));
        b.release(1);
        assert!(b.try_reserve(1), "room again after one byte");
        b.release(1000);
        assert_eq!(b.in_use(), 0);
    }

    #[test]
    fn peers_refused_by_the_limit_wake_at_its_high_watermark() {
        const K: u64 = 1024;
        let b = BufferBudget::new(adaptive(10_000 * K, 1000 * K)).unwrap();
        assert!(b.try_reserve(1000 * K));
        let epoch = b.epoch();
        assert_eq!(b.reserve(BLOCK), Err(Refused::Limit));
        b.release(50 * K);
        assert_eq!(b.epoch(), epoch, "950 K is above the 900 K high watermark");
        b.release(50 * K);
        assert_ne!(b.epoch(), epoch, "900 K: the waiting peers are woken");
        let again = b.epoch();
        b.release(100 * K);
        assert_eq!(b.epoch(), again, "once per refusal");
        b.release(800 * K);
    }

    #[test]
    fn a_block_refused_under_a_small_limits_watermark_still_wakes() {
        const K: u64 = 1024;
        // 100 KiB: the 90 % watermark is less than a block under the limit.
        let b = BufferBudget::new(adaptive(10_000 * K, 100 * K)).unwrap();
        assert!(b.try_reserve(90 * K));
        let epoch = b.epoch();
        assert_eq!(b.reserve(BLOCK), Err(Refused::Limit), "90 + 16 > 100");
        b.release(4 * K);
        assert_eq!(b.epoch(), epoch, "86 K: a block still does not fit");
        b.release(2 * K);
        assert_ne!(b.epoch(), epoch, "84 K: a block fits, the peer is woken");
        assert_eq!(b.reserve(BLOCK), Ok(()));
        b.release(84 * K + BLOCK);
        assert_eq!(b.in_use(), 0);
    }

    #[test]
    fn a_limit_under_a_block_wakes_the_refused_when_it_grows() {
        const K: u64 = 1024;
        // A 1 KiB floor: its watermark is 0, so a block refused with nothing
        // in the network sets no waiting flag; the growth must wake it.
        let config = adaptive(10_000 * K, K);
        let b = BufferBudget::new(config).unwrap();
        let mut g = Governor::new(config);
        let epoch = b.epoch();
        assert_eq!(b.reserve(BLOCK), Err(Refused::Limit), "16 K > 1 K");
        b.starving();
        b.tick(&mut g);
        assert!(b.limit() > K, "starved: the limit grew");
        assert_ne!(b.epoch(), epoch, "the growth woke the refused peer");
    }

    #[test]
    fn landed_bytes_leave_the_limit_and_landing_wakes_the_refused() {
        const K: u64 = 1024;
        let b = BufferBudget::new(BudgetConfig {
            capacity: 10_000 * K,
            floor: 1000 * K,
            backlog: 4000 * K,
            ..BudgetConfig::default()
        })
        .unwrap();
        assert!(b.try_reserve(1000 * K));
        let epoch = b.epoch();
        assert_eq!(
            b.reserve(BLOCK),
            Err(Refused::Limit),
            "1000 K in the network"
        );
        b.land(50 * K);
        assert_eq!(b.epoch(), epoch, "950 K in the network: over the watermark");
        b.land(50 * K);
        assert_ne!(
            b.epoch(),
            epoch,
            "900 K: landing made room, the peer is woken"
        );
        b.land(900 * K);
        assert_eq!(b.reserve(1000 * K), Ok(()), "1000 K landed do not count");
        assert_eq!(b.in_use(), 2000 * K);
        b.release_landed(1000 * K);
        b.release(1000 * K);
        assert_eq!((b.in_use(), b.landed()), (0, 0));
    }

    #[test]
    fn backlog_refusals_are_not_the_limit() {
        let b = BufferBudget::new(BudgetConfig {
            capacity: 10_000,
            floor: 1000,
            backlog: 500,
            ..BudgetConfig::default()
        })
        .unwrap();
        assert!(b.try_reserve(600));
        b.land(600);
        assert_eq!(b.reserve(16), Err(Refused::Backlog), "a slow disk");
        b.release_landed(600);
        assert_eq!(b.reserve(16), Ok(()));
        b.release(16);
        assert_eq!((b.in_use(), b.landed()), (0, 0));
    }

    #[tokio::test]
    async fn a_resume_before_the_wait_is_not_lost() {
        let b = BufferBudget::new(adaptive(10_000, 1000)).unwrap();
        let epoch = b.epoch();
        assert!(b.try_reserve(1000));
        assert!(!b.try_reserve(1), "at the limit");
        // Drains before anyone waits.
        b.release(1000);
        tokio::time::timeout(std::time::Duration::from_secs(5), b.resumed_since(epoch))
            .await
            .expect("the resume happened before the wait and was lost");
    }
}
