//! Fuzzes `protocol::utf8::Utf8Validator`, the incremental validator of
//! fragmented text messages, against `std::str::from_utf8`.
//!
//! Input: the first byte says how many cut points follow (0-7), the next
//! bytes are the cut points (each taken modulo the message length + 1, then
//! sorted, so chunks may be empty or end inside a code point), the rest is
//! the message. The message is fed the way the server feeds a reassembly
//! buffer: each growing prefix with `complete = false`, then the whole with
//! `complete = true`. Checked:
//!
//! - the final verdict equals `from_utf8(message).is_ok()`, however the
//!   message was cut, and equals feeding it whole in one call;
//! - fail fast: a prefix is refused exactly when no continuation could make
//!   it valid (`from_utf8` reports an invalid sequence, not just an
//!   incomplete one at the end); after a refusal the server stops feeding;
//! - incomplete at the end: at every point, a copy of the validator told
//!   that this prefix is complete refuses exactly the prefixes that are not
//!   valid UTF-8 (a code point cut at the end included).

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::utf8::Utf8Validator;

fuzz_target!(|data: &[u8]| {
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(count & 7).min(rest.len());
    let (cuts, msg) = rest.split_at(count);
    let mut cuts: Vec<usize> = cuts
        .iter()
        .map(|&c| usize::from(c) % (msg.len() + 1))
        .collect();
    cuts.sort_unstable();

    let valid = std::str::from_utf8(msg).is_ok();
    assert_eq!(Utf8Validator::new().feed(msg, true).is_ok(), valid);

    let mut v = Utf8Validator::new();
    for &cut in &cuts {
        let prefix = &msg[..cut];
        let got = v.feed(prefix, false);
        assert_eq!(
            got.is_ok(),
            can_still_be_valid(prefix),
            "feeding the prefix of {cut} bytes (fail fast)"
        );
        if got.is_err() {
            // The message is refused: no prefix or extension can fix it.
            assert!(!valid);
            return;
        }
        // What if this prefix were the whole message?
        assert_eq!(
            v.clone().feed(prefix, true).is_ok(),
            std::str::from_utf8(prefix).is_ok(),
            "the prefix of {cut} bytes as a complete message"
        );
    }
    assert_eq!(
        v.feed(msg, true).is_ok(),
        valid,
        "the whole message after the cuts"
    );
});

/// Whether some continuation of `prefix` is valid UTF-8.
fn can_still_be_valid(prefix: &[u8]) -> bool {
    match std::str::from_utf8(prefix) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    }
}
