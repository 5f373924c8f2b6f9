//! The binary payload publishers send and subscribers decode.
//!
//! Layout (little endian), exactly `size` bytes, `size >= HEADER_LEN`:
//!
//! | offset | bytes | field                                               |
//! |--------|-------|-----------------------------------------------------|
//! | 0      | 4     | publisher id (u32)                                  |
//! | 4      | 8     | sequence number (u64), per publisher, from 0        |
//! | 12     | 8     | send timestamp: ns since the in-process origin (u64)|
//! | 20     | 4     | send delay: µs the actual write came after the      |
//! |        |       | timestamp (u32, saturating; 0 in `--max-rate` mode) |
//! | 24     | ..    | body, up to `size`: padding (`0x2e`), or JSON       |
//!
//! In rate mode the timestamp is the *scheduled* send time (see `run.rs`), so
//! `timestamp + delay` is when the publisher actually wrote the message.
//!
//! The `json` body (`--payload json`) is an array of records like those a
//! real feed carries (ids, names, prices, timestamps, a nested object and
//! arrays), generated from a fixed seed, so that compression sees what it
//! would in production and not 4 KiB of one repeated byte. The binary
//! header stays in front rather than moving seq and timestamp into the
//! JSON: subscribers keep decoding fixed offsets (parsing JSON per delivery
//! would make this tool the bottleneck), `--compression header` inflates
//! just those 24 bytes, and the header is under 1 % of a 4 KiB message,
//! so the compression ratio is the JSON's.

/// Smallest payload: the header alone.
pub(crate) const HEADER_LEN: usize = 24;
const PAD: u8 = b'.';
/// The seed of the `json` body: every run sends the same bytes.
const JSON_SEED: u64 = 0x6a73_6f6e;

/// What fills a payload after its header (`--payload`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Body {
    /// `.` repeated.
    #[default]
    Dots,
    /// JSON records from a fixed seed.
    Json,
}

/// The decoded header of one payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) publisher: u32,
    pub(crate) seq: u64,
    pub(crate) sent_ns: u64,
    pub(crate) delay_us: u32,
}

/// Why a received message is not one of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecodeError {
    TooShort,
}

/// Writes a full payload of `buf.len()` bytes (must be `>= HEADER_LEN`).
pub(crate) fn encode_into(buf: &mut [u8], h: Header) {
    assert!(buf.len() >= HEADER_LEN, "payload shorter than header");
    write_header(buf, h);
    buf[HEADER_LEN..].fill(PAD);
}

/// Writes a full payload with `body` after the header.
pub(crate) fn encode_body_into(buf: &mut [u8], h: Header, body: Body) {
    encode_into(buf, h);
    if body == Body::Json {
        let json = json_body(buf.len() - HEADER_LEN);
        buf[HEADER_LEN..].copy_from_slice(&json);
    }
}

/// A JSON array of exactly `len` bytes (at least `[]`; shorter than 2:
/// spaces), made of records from [`JSON_SEED`]; the last element is a
/// string that fills what no further whole record would.
pub(crate) fn json_body(len: usize) -> Vec<u8> {
    const NAMES: [&str; 12] = [
        "Walnut desk lamp",
        "Linen shirt",
        "Espresso grinder",
        "Trail running shoes",
        "Cast iron skillet",
        "Wool blanket",
        "Noise cancelling headphones",
        "Ceramic mug set",
        "Standing desk",
        "Rain jacket",
        "Mechanical keyboard",
        "Chef knife",
    ];
    const SELLERS: [&str; 6] = [
        "Nordic Goods",
        "Atelier Brun",
        "Blue Harbor Supply",
        "Kettle & Co",
        "Maple Street",
        "Okta Trading",
    ];
    const TAGS: [&str; 8] = [
        "home", "sale", "new", "outdoor", "kitchen", "office", "gift", "eco",
    ];
    const CURRENCIES: [&str; 3] = ["EUR", "USD", "GBP"];
    if len < 2 {
        return vec![b' '; len];
    }
    let mut rng = fastrand::Rng::with_seed(JSON_SEED);
    let mut out = String::with_capacity(len);
    out.push('[');
    // A catalog feed: ids that follow each other, products and sellers
    // from small sets with their own prices and ratings, times within the
    // same hour, prices that move a little: what makes real JSON compress.
    let mut id = 480_000 + rng.u32(..10_000);
    loop {
        id += rng.u32(1..4);
        let product = rng.usize(..NAMES.len());
        let seller = rng.usize(..SELLERS.len());
        let cents = 1_000 + 3_517 * product as u32 % 90_000;
        let tags: Vec<String> = (0..rng.usize(1..4))
            .map(|_| format!("\"{}\"", TAGS[rng.usize(..TAGS.len())]))
            .collect();
        let history: Vec<String> = (0..rng.usize(2..5))
            .map(|_| {
                let c = cents + rng.u32(..200) - 100;
                format!("{}.{:02}", c / 100, c % 100)
            })
            .collect();
        let record = format!(
            "{{\"id\":{id},\"sku\":\"SKU-{:05}\",\"name\":\"{}\",\"price\":{}.{:02},\
             \"currency\":\"{}\",\"qty\":{},\"in_stock\":{},\
             \"updated_at\":\"2026-12-01T20:{:02}:{:02}.{:03}Z\",\"tags\":[{}],\
             \"seller\":{{\"id\":{},\"name\":\"{}\",\"rating\":4.{}}},\"price_history\":[{}]}}",
            10_000 + product * 37,
            NAMES[product],
            cents / 100,
            cents % 100,
            CURRENCIES[seller % CURRENCIES.len()],
            rng.u32(1..10),
            rng.u8(..8) != 0,
            rng.u32(..60),
            rng.u32(..60),
            rng.u32(..1000),
            tags.join(","),
            7_100 + seller * 13,
            SELLERS[seller],
            seller + 2,
            history.join(","),
        );
        let sep = usize::from(out.len() > 1);
        // Room for the record, and the closing bracket.
        if out.len() + sep + record.len() + 1 > len {
            break;
        }
        if sep == 1 {
            out.push(',');
        }
        out.push_str(&record);
    }
    // Fill up to the bracket: a string of words if one fits, else spaces.
    let room = len - out.len() - 1;
    let sep = usize::from(out.len() > 1);
    if room >= sep + 2 {
        if sep == 1 {
            out.push(',');
        }
        out.push('"');
        let mut left = room - sep - 2;
        while left > 0 {
            let word = NAMES[rng.usize(..NAMES.len())];
            let take = word.len().min(left);
            out.push_str(&word[..take]);
            left -= take;
            if left > 0 {
                out.push(' ');
                left -= 1;
            }
        }
        out.push('"');
    } else {
        out.extend(std::iter::repeat_n(' ', room));
    }
    out.push(']');
    debug_assert_eq!(out.len(), len);
    out.into_bytes()
}

/// Writes only the header; the padding of a reused buffer is already in place.
pub(crate) fn write_header(buf: &mut [u8], h: Header) {
    buf[0..4].copy_from_slice(&h.publisher.to_le_bytes());
    buf[4..12].copy_from_slice(&h.seq.to_le_bytes());
    buf[12..20].copy_from_slice(&h.sent_ns.to_le_bytes());
    buf[20..24].copy_from_slice(&h.delay_us.to_le_bytes());
}

/// Reads the header; the padding is not checked (the server must not touch it,
/// but checking every byte would cost more than the rest of the hot path).
pub(crate) fn decode(buf: &[u8]) -> Result<Header, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Err(DecodeError::TooShort);
    }
    let u32_at = |o: usize| u32::from_le_bytes(buf[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(buf[o..o + 8].try_into().expect("8 bytes"));
    Ok(Header {
        publisher: u32_at(0),
        seq: u64_at(4),
        sent_ns: u64_at(12),
        delay_us: u32_at(20),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_at_minimum_size() {
        let h = Header {
            publisher: 7,
            seq: u64::MAX - 1,
            sent_ns: 123_456_789_012,
            delay_us: u32::MAX,
        };
        let mut buf = [0u8; HEADER_LEN];
        encode_into(&mut buf, h);
        assert_eq!(decode(&buf), Ok(h));
    }

    #[test]
    fn round_trip_with_padding_and_header_rewrite() {
        let mut buf = vec![0u8; 128];
        encode_into(
            &mut buf,
            Header {
                publisher: 1,
                seq: 0,
                sent_ns: 0,
                delay_us: 0,
            },
        );
        assert!(buf[HEADER_LEN..].iter().all(|&b| b == PAD));
        let h = Header {
            publisher: 3,
            seq: 42,
            sent_ns: 99,
            delay_us: 12,
        };
        write_header(&mut buf, h);
        assert_eq!(buf.len(), 128);
        assert_eq!(decode(&buf), Ok(h));
        assert!(buf[HEADER_LEN..].iter().all(|&b| b == PAD));
    }

    #[test]
    fn layout_is_little_endian() {
        let mut buf = [0u8; HEADER_LEN];
        encode_into(
            &mut buf,
            Header {
                publisher: 0x0102_0304,
                seq: 5,
                sent_ns: 0x0a0b,
                delay_us: 0x0c0d,
            },
        );
        assert_eq!(&buf[0..4], &[4, 3, 2, 1]);
        assert_eq!(buf[4], 5);
        assert_eq!(&buf[12..14], &[0x0b, 0x0a]);
        assert_eq!(&buf[20..22], &[0x0d, 0x0c]);
    }

    #[test]
    fn json_bodies_are_valid_json_of_the_size_and_compress_like_json() {
        for len in [0, 1, 2, 3, 5, 40, 300, 1000, 4096 - HEADER_LEN, 65_536] {
            let body = json_body(len);
            assert_eq!(body.len(), len);
            if len >= 2 {
                let v: serde_json::Value = serde_json::from_slice(&body)
                    .unwrap_or_else(|e| panic!("{len}: {e}: {}", String::from_utf8_lossy(&body)));
                assert!(v.is_array());
            }
        }
        assert_eq!(json_body(500), json_body(500), "fixed seed");
        // What the server does (raw deflate, level 1, fresh state).
        let mut buf = vec![0u8; 4096];
        encode_body_into(
            &mut buf,
            Header {
                publisher: 1,
                seq: 2,
                sent_ns: 3,
                delay_us: 4,
            },
            Body::Json,
        );
        assert_eq!(decode(&buf).unwrap().seq, 2);
        let mut z = flate2::Compress::new(flate2::Compression::new(1), false);
        let mut out = Vec::with_capacity(8192);
        z.compress_vec(&buf, &mut out, flate2::FlushCompress::Sync)
            .unwrap();
        let ratio = buf.len() as f64 / (out.len() - 4) as f64;
        println!(
            "4 KiB json payload: {} -> {} bytes at level 1, {ratio:.2}x",
            buf.len(),
            out.len() - 4
        );
        assert!((3.0..=5.0).contains(&ratio), "{ratio:.2}x");
    }

    #[test]
    fn rejects_short_messages() {
        assert_eq!(decode(&[0u8; HEADER_LEN - 1]), Err(DecodeError::TooShort));
        assert_eq!(decode(b""), Err(DecodeError::TooShort));
    }
}
