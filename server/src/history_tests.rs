//! The ring's rules: offsets, the three limits, resume and rewind.

use std::cell::Cell;

use super::*;
use crate::frame::{frame_message, server_header_len};

thread_local! {
    static BASE: Instant = Instant::now();
    static LATER: Cell<Duration> = const { Cell::new(Duration::ZERO) };
}

/// The test's clock: this thread's start plus what [`advance`] added.
fn clock() -> Instant {
    BASE.with(|b| *b) + LATER.with(Cell::get)
}

fn advance(by: Duration) {
    LATER.with(|l| l.set(l.get() + by));
}

fn history(size: usize, ttl_secs: u64, memory: usize) -> History {
    History::with_clock(
        Limits {
            size,
            ttl: Duration::from_secs(ttl_secs),
            memory,
        },
        clock,
        Default::default(),
    )
}

const NONE: Wanted = Wanted {
    v1: false,
    v2: false,
};

/// Appends messages `texts` to channel `name`; returns their offsets.
fn publish(h: &History, name: &str, texts: &[&str]) -> Vec<u64> {
    let log = h.log(name);
    let offsets = {
        let mut locked = h.lock(&log);
        texts
            .iter()
            .map(|t| {
                let raw = frame_message(protocol::frame::OpCode::Text, t.as_bytes());
                locked.append(&raw, 7, "ann", NONE).0
            })
            .collect()
    };
    h.trim();
    offsets
}

/// The payloads of raw frames.
fn payloads(frames: &[Bytes]) -> Vec<String> {
    frames
        .iter()
        .map(|f| String::from_utf8_lossy(&f[server_header_len(f)..]).into_owned())
        .collect()
}

fn since(h: &History, name: &str, offset: u64, format: Format) -> Replay {
    let log = h.log(name);
    let epoch = h.lock(&log).epoch().to_owned();
    let mut locked = h.lock(&log);
    locked.since(offset, &epoch, format)
}

#[test]
fn offsets_count_from_one_per_channel_and_resume_replays_what_follows() {
    let h = history(10, 300, 1 << 20);
    assert_eq!(publish(&h, "a", &["a1", "a2", "a3"]), [1, 2, 3]);
    assert_eq!(publish(&h, "b", &["b1"]), [1]);
    let (a, b) = (h.log("a"), h.log("b"));
    assert_ne!(h.lock(&a).epoch(), h.lock(&b).epoch());
    assert_eq!(h.lock(&a).epoch().len(), EPOCH_LEN);

    let r = since(&h, "a", 1, Format::Raw);
    assert_eq!(payloads(&r.frames), ["a2", "a3"]);
    assert_eq!((r.after, r.lost), (3, None));
    // Up to date: nothing to replay, nothing lost.
    let r = since(&h, "a", 3, Format::Raw);
    assert!(r.frames.is_empty() && r.lost.is_none());
    // Another epoch: nothing replayed, and the client is told.
    let log = h.log("a");
    let r = h.lock(&log).since(1, "someother", Format::Raw);
    assert_eq!((r.frames.len(), r.lost), (0, Some(Unrecovered::Epoch)));
}

#[test]
fn events_missing_at_publish_are_built_at_replay_with_their_position() {
    let h = history(10, 300, 1 << 20);
    publish(&h, "room", &["hello"]);
    let before = h.bytes();
    let r = since(&h, "room", 0, Format::V2);
    let epoch = h.lock(&h.log("room")).epoch().to_owned();
    let v: serde_json::Value = serde_json::from_slice(&r.frames[0][2..]).unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["channel"], "room");
    assert_eq!(v["text"], "hello");
    assert_eq!(v["offset"], 1);
    assert_eq!(v["epoch"], epoch.as_str());
    // Built once, then kept (and counted in the budget).
    assert!(h.bytes() > before);
    let again = since(&h, "room", 0, Format::V2);
    assert_eq!(again.frames[0].as_ptr(), r.frames[0].as_ptr());
    let v1: serde_json::Value =
        serde_json::from_slice(&since(&h, "room", 0, Format::V1).frames[0][2..]).unwrap();
    assert_eq!((v1["offset"].as_u64(), v1.get("channel")), (Some(1), None));
}

#[test]
fn the_ring_keeps_the_last_size_messages_and_says_when_more_were_lost() {
    let h = history(3, 300, 1 << 20);
    publish(&h, "a", &["1", "2", "3", "4", "5"]);
    let r = since(&h, "a", 0, Format::Raw);
    assert_eq!(payloads(&r.frames), ["3", "4", "5"]);
    assert_eq!(r.lost, Some(Unrecovered::Expired));
    // From just before the oldest kept one: complete.
    let r = since(&h, "a", 2, Format::Raw);
    assert_eq!(
        (payloads(&r.frames), r.lost),
        (vec!["3".into(), "4".into(), "5".into()], None)
    );

    let log = h.log("a");
    let r = h.lock(&log).rewind(2, Format::Raw);
    assert_eq!(
        (payloads(&r.frames), r.lost, r.after),
        (vec!["4".into(), "5".into()], None, 5)
    );
    let r = h.lock(&log).rewind(10, Format::Raw);
    assert_eq!((r.frames.len(), r.lost), (3, Some(Unrecovered::Expired)));
}

#[test]
fn entries_expire_after_the_ttl_and_an_expired_log_gets_a_new_epoch() {
    let h = history(10, 60, 1 << 20);
    publish(&h, "a", &["old"]);
    advance(Duration::from_secs(30));
    publish(&h, "a", &["new"]);
    advance(Duration::from_secs(31));
    let r = since(&h, "a", 0, Format::Raw);
    assert_eq!(payloads(&r.frames), ["new"]);
    assert_eq!(r.lost, Some(Unrecovered::Expired));
    let epoch = h.lock(&h.log("a")).epoch().to_owned();
    // Nobody holds it and nothing is left for a TTL: swept, then new.
    advance(Duration::from_secs(61));
    h.sweep();
    assert_eq!(h.len(), 0);
    assert_eq!(h.bytes(), 0);
    let fresh = h.log("a");
    assert_ne!(h.lock(&fresh).epoch(), epoch);
    assert_eq!(h.lock(&fresh).last(), 0);
}

#[test]
fn a_log_someone_holds_keeps_its_epoch() {
    let h = history(10, 1, 1 << 20);
    let held = h.log("a");
    publish(&h, "a", &["x"]);
    advance(Duration::from_secs(5));
    h.sweep();
    let again = h.log("a");
    assert!(Arc::ptr_eq(&again, &held));
    assert_eq!(h.lock(&held).last(), 1, "offsets go on");
}

#[test]
fn the_byte_budget_evicts_the_oldest_messages_of_any_channel() {
    let big = "x".repeat(1000);
    // Room for about 5 entries of ~1.1 kB.
    let h = history(100, 300, 5_500);
    publish(&h, "a", &[&big, &big]);
    advance(Duration::from_millis(1));
    publish(&h, "b", &[&big, &big]);
    advance(Duration::from_millis(1));
    publish(&h, "a", &[&big]);
    assert!(h.bytes() <= 5_500);
    advance(Duration::from_millis(1));
    // Over it: evicts down to 7/8 of the budget, oldest first: a's two
    // first, whatever channel publishes.
    publish(&h, "b", &[&big]);
    assert!(h.bytes() <= 5_500 - 5_500 / 8, "{}", h.bytes());
    let a = since(&h, "a", 0, Format::Raw);
    assert_eq!(a.frames.len(), 1);
    assert_eq!(a.lost, Some(Unrecovered::Expired));
    let b = since(&h, "b", 0, Format::Raw);
    assert_eq!(b.frames.len(), 3, "b's are newer");
    assert_eq!(b.lost, None);
}

#[test]
fn the_api_lists_what_is_kept_after_an_offset() {
    let h = history(10, 300, 1 << 20);
    publish(&h, "a", &["1", "2", "3"]);
    let log = h.log("a");
    let kept = h.lock(&log).list(1, 1);
    assert_eq!(kept.len(), 1);
    assert_eq!(
        (kept[0].offset, kept[0].from, kept[0].name.as_str()),
        (2, 7, "ann")
    );
}

/// With `--redis`: appends `text` at the position Redis gave it.
fn append_at(h: &History, name: &str, offset: u64, epoch: &str, text: &str) -> bool {
    let log = h.log(name);
    let raw = frame_message(protocol::frame::OpCode::Text, text.as_bytes());
    let appended = h
        .lock(&log)
        .append_at(offset, epoch, &raw, 7, "ann", 1, NONE)
        .is_some();
    appended
}

#[test]
fn positions_from_redis_adopt_the_epoch_skip_duplicates_and_never_leave_a_gap_inside() {
    let h = history(10, 300, 1 << 20);
    // The first message seen adopts Redis's epoch and offset.
    assert!(append_at(&h, "a", 41, "redisEp1", "m41"));
    assert!(append_at(&h, "a", 42, "redisEp1", "m42"));
    // A copy of what the log has (from the stream and from the
    // subscription both) is dropped.
    assert!(!append_at(&h, "a", 42, "redisEp1", "again"));
    let log = h.log("a");
    let r = h.lock(&log).since(40, "redisEp1", Format::Raw);
    assert_eq!(payloads(&r.frames), ["m41", "m42"]);
    assert_eq!((r.after, r.lost), (42, None));
    // A message past the next offset: what came before it is not kept.
    assert!(append_at(&h, "a", 45, "redisEp1", "m45"));
    let r = h.lock(&log).since(42, "redisEp1", Format::Raw);
    assert_eq!(payloads(&r.frames), ["m45"]);
    assert_eq!(r.lost, Some(Unrecovered::Expired));
    let r = h.lock(&log).since(44, "redisEp1", Format::Raw);
    assert_eq!(
        (payloads(&r.frames), r.lost),
        (vec!["m45".to_owned()], None)
    );
    // Another epoch: a new history.
    assert!(append_at(&h, "a", 1, "redisEp2", "n1"));
    let mut locked = h.lock(&log);
    assert_eq!((locked.epoch(), locked.last()), ("redisEp2", 1));
    let r = locked.since(45, "redisEp1", Format::Raw);
    assert_eq!(r.lost, Some(Unrecovered::Epoch));
    locked.reset("redisEp3", 7);
    assert_eq!((locked.epoch(), locked.last()), ("redisEp3", 7));
    drop(locked);
    assert_eq!(h.bytes(), 0);
}

#[test]
fn frames_are_counted_at_their_allocator_size_class() {
    use super::held;
    assert_eq!(held(1), 16);
    assert_eq!(held(100), 112);
    assert_eq!(held(4096), 4096);
    assert_eq!(held(4100), 5120);
    assert_eq!(held(66), 80);
    assert_eq!(held(1 << 20), 1 << 20);
    assert_eq!(held((1 << 20) + 1), (1 << 20) + (1 << 18));
}

#[test]
fn the_counters_stay_exact_while_a_full_ring_replaces_its_entries() {
    // Each append to a full ring drops one entry and counts the difference
    // only: after many, the counters must equal a fresh count of what is kept.
    let long_name = "a sender name longer than twenty-four bytes";
    let h = history(3, 60, 1 << 20);
    let log = h.log("a");
    let long = "x".repeat(300);
    let texts = ["1", "22", "333333", "4", &long, "6"];
    {
        let mut locked = h.lock(&log);
        for (i, t) in texts.iter().enumerate() {
            let raw = frame_message(protocol::frame::OpCode::Text, t.as_bytes());
            let name = if i % 2 == 0 { "ann" } else { long_name };
            locked.append(&raw, 7, name, NONE);
        }
    }
    let fresh = history(3, 60, 1 << 20);
    let again = fresh.log("a");
    {
        let mut locked = fresh.lock(&again);
        for (i, t) in texts.iter().enumerate().skip(3) {
            let raw = frame_message(protocol::frame::OpCode::Text, t.as_bytes());
            let name = if i % 2 == 0 { "ann" } else { long_name };
            locked.append(&raw, 7, name, NONE);
        }
    }
    assert_eq!(h.bytes(), fresh.bytes());
    assert_eq!(h.stats.messages.load(Ordering::Relaxed), 3);
    // docs/history.md quotes an entry's slot.
    #[cfg(target_arch = "x86_64")]
    assert_eq!(ENTRY_OVERHEAD, 176);
    let r = since(&h, "a", 0, Format::Raw);
    assert_eq!(payloads(&r.frames), ["4", &long, "6"]);
    // Everything expires: nothing is counted any more.
    advance(Duration::from_secs(61));
    drop(h.lock(&log));
    assert_eq!(h.bytes(), 0);
    assert_eq!(h.stats.messages.load(Ordering::Relaxed), 0);
}
