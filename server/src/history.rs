//! The message history of each channel name, in memory, on this node: what
//! lets a client that reconnects get what it missed (see `docs/history.md`).
//!
//! One [`Log`] per channel name, independent of the channel table (whose
//! entries die with their last member): a bounded ring of the messages
//! published to it, each holding the already-framed shared [`Bytes`] its
//! live recipients got (a reference count, never a copy per subscriber).
//! Every message gets the next `offset` of its log (first 1), and every log
//! an `epoch` chosen when it is created: a log created again (after a
//! restart, or after it expired) has a new one, so a client resuming from a
//! position of the old history is told instead of silently missing
//! messages.
//!
//! Limits ([`Limits`]): `--history-size` entries per log, `--history-ttl`
//! age, and `--history-memory` bytes over all logs, past which the oldest
//! entries of any log are evicted first.
//!
//! Ordering: the publisher assigns the offset, frames the events, appends
//! and pushes to the shard inboxes while holding the log's lock
//! ([`Log::lock`]), and a subscriber joins and reads its replay under the
//! same lock, so every message is either in its replay or reaches it live
//! (see `publish` and `conn::v2`). The lock is a `std::sync::Mutex`, held
//! for that only, never across an `.await`.
//!
//! A message's v1 and v2 events are built only when some client of that
//! format is connected (`Stats::wanted`); an entry keeps what it needs to
//! build a missing one at replay time, once, and then keeps that too.

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::history::Unrecovered;

use crate::fanout::Format;
use crate::frame::{self, Wanted};
use crate::stats::HistoryStats;

/// Default `--history-size`: messages kept per channel.
pub const DEFAULT_HISTORY_SIZE: usize = 100;
/// Default `--history-ttl`.
pub const DEFAULT_HISTORY_TTL: Duration = Duration::from_secs(300);
/// Default `--history-memory`: bytes kept over all channels.
pub const DEFAULT_HISTORY_MEMORY: usize = 64 << 20;

/// Bytes an entry costs besides its frames and a long sender name: its
/// slot in the ring.
const ENTRY_OVERHEAD: usize = std::mem::size_of::<Entry>();

/// Length of an epoch.
const EPOCH_LEN: usize = 8;

/// The three limits of the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Entries kept per channel (0: no history).
    pub(crate) size: usize,
    /// How long an entry is kept.
    pub(crate) ttl: Duration,
    /// Bytes kept over all channels.
    pub(crate) memory: usize,
}

/// The clock the history ages entries by (injected by the tests).
pub(crate) type Clock = fn() -> Instant;

/// Every channel's log on this node.
#[derive(Debug)]
pub(crate) struct History {
    limits: Limits,
    logs: Mutex<HashMap<Arc<str>, Arc<Log>>>,
    /// Bytes and messages held by all entries (see [`Entry::size`]),
    /// evictions: shared with the server's `Stats`.
    stats: Arc<HistoryStats>,
    /// Held by whoever evicts over the byte budget.
    evicting: Mutex<()>,
    clock: Clock,
    /// A moment of `clock` and the Unix time then (ms), so that a message's
    /// wall-clock time is derived from its append time without another
    /// clock read per message.
    base: (Instant, u64),
}

/// One channel's history.
#[derive(Debug)]
pub(crate) struct Log {
    pub(crate) name: Arc<str>,
    ring: Mutex<Ring>,
    /// With `--redis`: every message of the channel after the last one
    /// appended reaches this log from the subscription (false before the
    /// node subscribed and read the stream, and while its link is down).
    following: AtomicBool,
}

#[derive(Debug)]
struct Ring {
    /// The history the offsets belong to (with `--redis`, Redis's: it
    /// changes when the node learns a new one).
    epoch: Box<str>,
    /// The offset of the last message appended (0: none yet).
    last: u64,
    entries: VecDeque<Entry>,
    /// When the last message was appended (or the log created).
    touched: Instant,
}

/// One kept message.
#[derive(Debug)]
struct Entry {
    offset: u64,
    /// When it was appended (by the history's clock).
    at: Instant,
    /// The frame raw clients got.
    raw: Bytes,
    from: u64,
    name: SenderName,
    /// Milliseconds since the Unix epoch, as its events show.
    time: u64,
    v1: Option<Bytes>,
    v2: Option<Bytes>,
}

impl Entry {
    fn size(&self) -> usize {
        ENTRY_OVERHEAD
            + held(self.raw.len())
            + self.name.heap_len()
            + self.v1.as_ref().map_or(0, |b| held(b.len()))
            + self.v2.as_ref().map_or(0, |b| held(b.len()))
    }
}

/// A kept message's sender name, inline up to 24 bytes (most names): an
/// append then allocates nothing for it, and the drop of the entry it
/// replaces frees nothing, often on another shard's thread.
#[derive(Debug)]
struct SenderName(smallvec::SmallVec<[u8; 24]>);

impl SenderName {
    fn as_str(&self) -> &str {
        // Built from a `&str` only.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// Bytes it holds outside the entry.
    fn heap_len(&self) -> usize {
        if self.0.spilled() {
            self.0.len()
        } else {
            0
        }
    }
}

impl From<&str> for SenderName {
    fn from(name: &str) -> Self {
        Self(smallvec::SmallVec::from_slice(name.as_bytes()))
    }
}

/// What the allocator holds for a buffer of `len` bytes: its size class.
/// jemalloc's classes are four per doubling (above 4 KiB: 4, 5, 6, 7, 8,
/// 10, 12, 14, 16 KiB...), so a 4,100-byte frame takes 5,120 bytes.
/// Counting that keeps `--history-memory` close to the memory history
/// really takes: measured with 1,000 channels flooded with 4 KiB messages,
/// counting frame lengths let the process grow 115 MiB over a 64 MiB
/// budget.
fn held(len: usize) -> usize {
    if len <= 16 {
        return 16;
    }
    // The spacing of the classes between 2^k and 2^(k+1) is 2^(k-2).
    let k = usize::BITS - 1 - (len - 1).leading_zeros();
    let step = 1usize << k.saturating_sub(2).max(4);
    len.div_ceil(step) * step
}

/// A kept message as the HTTP API shows it.
#[derive(Debug, Clone)]
pub(crate) struct Kept {
    pub(crate) offset: u64,
    pub(crate) from: u64,
    pub(crate) name: String,
    pub(crate) time: u64,
    /// The raw frame (header + payload).
    pub(crate) raw: Bytes,
}

/// With `--redis`: a message read from the channel's Redis stream, older
/// than the ring's first (see `cluster::recover`).
#[derive(Debug, Clone)]
pub(crate) struct Older {
    pub(crate) offset: u64,
    /// The frame raw clients get.
    pub(crate) raw: Bytes,
    pub(crate) from: u64,
    pub(crate) name: Box<str>,
    pub(crate) time: u64,
}

/// What a resume finds: the frames to write first, and how it went.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    /// The missed messages' frames, oldest first.
    pub(crate) frames: Vec<Bytes>,
    /// The log's last offset when it was read: live messages up to it are
    /// in `frames` (or were missed), so they are skipped.
    pub(crate) after: u64,
    /// `None`: everything asked for is in `frames`.
    pub(crate) lost: Option<Unrecovered>,
}

impl History {
    /// An empty history with these limits (`limits.size > 0`).
    pub(crate) fn new(limits: Limits, stats: Arc<HistoryStats>) -> Self {
        Self::with_clock(limits, Instant::now, stats)
    }

    pub(crate) fn with_clock(limits: Limits, clock: Clock, stats: Arc<HistoryStats>) -> Self {
        Self {
            limits,
            logs: Mutex::default(),
            stats,
            evicting: Mutex::new(()),
            clock,
            base: (clock(), frame::unix_millis()),
        }
    }

    /// The Unix time (ms) at `at`, a moment of the history's clock.
    fn unix_millis_at(&self, at: Instant) -> u64 {
        let (instant, millis) = self.base;
        millis + at.saturating_duration_since(instant).as_millis() as u64
    }

    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }

    /// Bytes its entries hold now.
    pub(crate) fn bytes(&self) -> usize {
        self.stats.bytes.load(Ordering::Relaxed)
    }

    /// Counts an entry gone (`evicted`: for the byte budget).
    fn forget(&self, entry: &Entry, evicted: bool) {
        self.stats.bytes.fetch_sub(entry.size(), Ordering::Relaxed);
        self.stats.messages.fetch_sub(1, Ordering::Relaxed);
        if evicted {
            self.stats.evicted.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn logs(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<Log>>> {
        self.logs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The log of channel `name`, created (with a new epoch) if there is
    /// none or the one there expired: no entry left, no message for a TTL,
    /// and nobody holding it.
    pub(crate) fn log(&self, name: &str) -> Arc<Log> {
        let now = (self.clock)();
        let mut logs = self.logs();
        if let Some(log) = logs.get(name) {
            let unused = Arc::strong_count(log) == 1;
            if !unused || !log.expired(now, self.limits.ttl) {
                return log.clone();
            }
        }
        let name: Arc<str> = name.into();
        let log = Arc::new(Log {
            name: name.clone(),
            following: AtomicBool::new(false),
            ring: Mutex::new(Ring {
                epoch: new_epoch().into_boxed_str(),
                last: 0,
                entries: VecDeque::new(),
                touched: now,
            }),
        });
        logs.insert(name, log.clone());
        log
    }

    /// Locks `log` to append to it or read it.
    pub(crate) fn lock<'a>(&'a self, log: &'a Log) -> Locked<'a> {
        let ring = log.ring.lock().unwrap_or_else(|e| e.into_inner());
        let mut locked = Locked {
            history: self,
            log,
            ring,
            now: (self.clock)(),
        };
        locked.expire();
        locked
    }

    /// Evicts the oldest entries of any log while the byte budget is
    /// exceeded, down to 7/8 of it (so that a flood evicts in batches).
    /// Call it without holding a log's lock; one caller at a time does the
    /// work, the others return at once.
    pub(crate) fn trim(&self) {
        if self.bytes() <= self.limits.memory {
            return;
        }
        let Ok(_evicting) = self.evicting.try_lock() else {
            return;
        };
        let target = self.limits.memory - self.limits.memory / 8;
        let logs: Vec<Arc<Log>> = self.logs().values().cloned().collect();
        // The oldest head first (a min-heap by append time).
        let head = |log: &Log| log.lock_ring().entries.front().map(|e| e.at);
        let mut heap: BinaryHeap<(std::cmp::Reverse<Instant>, usize)> = logs
            .iter()
            .enumerate()
            .filter_map(|(i, log)| head(log).map(|at| (std::cmp::Reverse(at), i)))
            .collect();
        while self.bytes() > target {
            let Some((_, i)) = heap.pop() else { break };
            let mut ring = logs[i].lock_ring();
            if let Some(entry) = ring.entries.pop_front() {
                self.forget(&entry, true);
            }
            if let Some(next) = ring.entries.front() {
                heap.push((std::cmp::Reverse(next.at), i));
            }
        }
    }

    /// Drops expired entries everywhere, and forgets the logs nobody holds
    /// that have expired (a periodic sweep: otherwise entries expire only
    /// when their log is used).
    pub(crate) fn sweep(&self) {
        let logs: Vec<Arc<Log>> = self.logs().values().cloned().collect();
        for log in &logs {
            drop(self.lock(log));
        }
        drop(logs);
        let now = (self.clock)();
        let ttl = self.limits.ttl;
        self.logs()
            .retain(|_, log| Arc::strong_count(log) > 1 || !log.expired(now, ttl));
    }

    /// How many logs it has.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.logs().len()
    }
}

impl Log {
    /// With `--redis`: whether the log receives every message of the
    /// channel from the subscription (one relaxed load).
    pub(crate) fn following(&self) -> bool {
        self.following.load(Ordering::Relaxed)
    }

    pub(crate) fn set_following(&self, following: bool) {
        self.following.store(following, Ordering::Relaxed);
    }

    fn lock_ring(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// No entry left and no message for `ttl` (only checked on a log
    /// nobody else holds, so the lock is free).
    fn expired(&self, now: Instant, ttl: Duration) -> bool {
        match self.ring.try_lock() {
            Ok(ring) => {
                ring.entries.is_empty() && now.saturating_duration_since(ring.touched) >= ttl
            }
            Err(_) => false,
        }
    }
}

/// A locked log.
#[derive(Debug)]
pub(crate) struct Locked<'a> {
    history: &'a History,
    log: &'a Log,
    ring: MutexGuard<'a, Ring>,
    /// When it was locked: the one clock read an append costs.
    now: Instant,
}

impl Locked<'_> {
    /// The offset of its last message (0: none yet).
    pub(crate) fn last(&self) -> u64 {
        self.ring.last
    }

    pub(crate) fn epoch(&self) -> &str {
        &self.ring.epoch
    }

    /// Forgets every entry and starts history `epoch` after `last` (the
    /// node learnt that the channel's history is another one, or that it
    /// missed messages no longer kept anywhere).
    pub(crate) fn reset(&mut self, epoch: &str, last: u64) {
        while !self.ring.entries.is_empty() {
            self.drop_front();
        }
        self.ring.epoch = epoch.into();
        self.ring.last = last;
    }

    /// Drops the entries older than the TTL.
    fn expire(&mut self) {
        let now = self.now;
        let ttl = self.history.limits.ttl;
        while let Some(front) = self.ring.entries.front() {
            if now.saturating_duration_since(front.at) < ttl {
                break;
            }
            self.drop_front();
        }
    }

    fn drop_front(&mut self) {
        if let Some(entry) = self.ring.entries.pop_front() {
            self.history.forget(&entry, false);
        }
    }

    /// Appends a message (`raw`: its frame for raw clients, sent by
    /// connection `from` named `name`): gives it the next offset and builds
    /// the v1 and v2 events `wanted` asks for, carrying that position.
    /// Returns the offset and those events.
    pub(crate) fn append(
        &mut self,
        raw: &Bytes,
        from: u64,
        name: &str,
        wanted: Wanted,
    ) -> (u64, Option<Bytes>, Option<Bytes>) {
        let offset = self.ring.last + 1;
        let time = self.history.unix_millis_at(self.now);
        let (v1, v2) = self.push(offset, raw, from, name, time, wanted);
        (offset, v1, v2)
    }

    /// With `--redis`: appends a message whose position Redis assigned
    /// (`time`: its receive time on the sender's node). A message of
    /// another epoch starts that history afresh; one at or before the last
    /// offset is a duplicate (`None`); one past the next offset leaves a
    /// gap, so the entries before it are dropped (a resume from before the
    /// gap is then told `expired`, never silently short).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn append_at(
        &mut self,
        offset: u64,
        epoch: &str,
        raw: &Bytes,
        from: u64,
        name: &str,
        time: u64,
        wanted: Wanted,
    ) -> Option<(Option<Bytes>, Option<Bytes>)> {
        if epoch != &*self.ring.epoch {
            self.reset(epoch, offset.saturating_sub(1));
        } else if offset <= self.ring.last {
            return None;
        } else if offset > self.ring.last + 1 {
            self.reset(epoch, offset - 1);
        }
        Some(self.push(offset, raw, from, name, time, wanted))
    }

    fn push(
        &mut self,
        offset: u64,
        raw: &Bytes,
        from: u64,
        name: &str,
        time: u64,
        wanted: Wanted,
    ) -> (Option<Bytes>, Option<Bytes>) {
        let mut entry = Entry {
            offset,
            at: self.now,
            raw: raw.clone(),
            from,
            name: name.into(),
            time,
            v1: None,
            v2: None,
        };
        if wanted.v1 {
            entry.v1 = Some(self.build(&entry, Format::V1));
        }
        if wanted.v2 {
            entry.v2 = Some(self.build(&entry, Format::V2));
        }
        let (v1, v2) = (entry.v1.clone(), entry.v2.clone());
        self.ring.last = offset;
        self.ring.touched = entry.at;
        // A full ring drops its oldest entry for each new one: the shared
        // counters (a cache line every shard's publishers write) change by
        // the difference only, which is usually nothing.
        let added = entry.size();
        self.ring.entries.push_back(entry);
        let (mut removed, mut dropped) = (0usize, 0usize);
        while self.ring.entries.len() > self.history.limits.size {
            if let Some(old) = self.ring.entries.pop_front() {
                removed += old.size();
                dropped += 1;
            }
        }
        let stats = &self.history.stats;
        if added > removed {
            stats.bytes.fetch_add(added - removed, Ordering::Relaxed);
        } else if removed > added {
            stats.bytes.fetch_sub(removed - added, Ordering::Relaxed);
        }
        if dropped != 1 {
            // At most one entry is added, so this is 1 - dropped.
            if dropped == 0 {
                stats.messages.fetch_add(1, Ordering::Relaxed);
            } else {
                stats.messages.fetch_sub(dropped - 1, Ordering::Relaxed);
            }
        }
        (v1, v2)
    }

    /// The event of `entry` for `format` (not `Raw`), with its position.
    fn build(&self, entry: &Entry, format: Format) -> Bytes {
        let position = Some((entry.offset, &*self.ring.epoch));
        match format {
            Format::V2 => frame::v2_message(
                &entry.raw,
                &self.log.name,
                entry.from,
                entry.name.as_str(),
                entry.time,
                position,
            ),
            _ => frame::v1_message(
                &entry.raw,
                entry.from,
                entry.name.as_str(),
                entry.time,
                position,
            ),
        }
    }

    /// The frame of entry `i` for `format`, built (and kept) if missing.
    fn frame_of(&mut self, i: usize, format: Format) -> Bytes {
        let entry = &self.ring.entries[i];
        let cached = match format {
            Format::Raw => return entry.raw.clone(),
            Format::V1 => &entry.v1,
            Format::V2 => &entry.v2,
        };
        if let Some(frame) = cached {
            return frame.clone();
        }
        let built = self.build(entry, format);
        self.history
            .stats
            .bytes
            .fetch_add(held(built.len()), Ordering::Relaxed);
        let entry = &mut self.ring.entries[i];
        match format {
            Format::V1 => entry.v1 = Some(built.clone()),
            _ => entry.v2 = Some(built.clone()),
        }
        built
    }

    /// The offset of the first kept message (the next one if none is).
    pub(crate) fn first(&self) -> u64 {
        self.ring
            .entries
            .front()
            .map_or(self.ring.last + 1, |e| e.offset)
    }

    /// Resuming from position `(offset, epoch)`: the kept messages after
    /// `offset` in `format`, and whether that is all of them.
    #[cfg(test)]
    pub(crate) fn since(&mut self, offset: u64, epoch: &str, format: Format) -> Replay {
        self.since_with(offset, epoch, format, Vec::new())
    }

    /// [`Locked::since`], the messages between `offset` and the ring's
    /// first coming from `older` (read from the Redis stream).
    pub(crate) fn since_with(
        &mut self,
        offset: u64,
        epoch: &str,
        format: Format,
        older: Vec<Older>,
    ) -> Replay {
        let after = self.ring.last;
        if epoch != &*self.ring.epoch {
            return Replay {
                frames: Vec::new(),
                after: 0,
                lost: Some(Unrecovered::Epoch),
            };
        }
        let first = self.first();
        let mut frames = Vec::new();
        let mut next = offset + 1;
        for o in older {
            if o.offset != next || o.offset >= first {
                break;
            }
            let entry = Entry {
                offset: o.offset,
                at: self.now,
                raw: o.raw,
                from: o.from,
                name: SenderName::from(&*o.name),
                time: o.time,
                v1: None,
                v2: None,
            };
            frames.push(match format {
                Format::Raw => entry.raw.clone(),
                _ => self.build(&entry, format),
            });
            next += 1;
        }
        let lost = (next < first && offset < after).then_some(Unrecovered::Expired);
        let skip = self
            .ring
            .entries
            .iter()
            .take_while(|e| e.offset <= offset)
            .count();
        frames.extend((skip..self.ring.entries.len()).map(|i| self.frame_of(i, format)));
        Replay {
            frames,
            after,
            lost,
        }
    }

    /// The last `n` kept messages in `format` (`?rewind=N`); `lost` says
    /// fewer are kept than asked for (and the channel had more).
    pub(crate) fn rewind(&mut self, n: u64, format: Format) -> Replay {
        let kept = self.ring.entries.len();
        let take = usize::try_from(n).unwrap_or(usize::MAX).min(kept);
        let lost =
            (n > kept as u64 && self.ring.last > kept as u64).then_some(Unrecovered::Expired);
        let frames = (kept - take..kept)
            .map(|i| self.frame_of(i, format))
            .collect();
        Replay {
            frames,
            after: self.ring.last,
            lost,
        }
    }

    /// Up to `limit` kept messages after `offset`, for the HTTP API.
    pub(crate) fn list(&self, offset: u64, limit: usize) -> Vec<Kept> {
        self.ring
            .entries
            .iter()
            .filter(|e| e.offset > offset)
            .take(limit)
            .map(|e| Kept {
                offset: e.offset,
                from: e.from,
                name: e.name.as_str().to_owned(),
                time: e.time,
                raw: e.raw.clone(),
            })
            .collect()
    }
}

/// A fresh epoch: [`EPOCH_LEN`] random letters and digits.
pub(crate) fn new_epoch() -> String {
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(EPOCH_LEN)
        .collect()
}

#[cfg(test)]
#[path = "history_tests.rs"]
mod tests;
