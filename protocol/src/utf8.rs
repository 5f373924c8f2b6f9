//! Incremental UTF-8 validation for messages that arrive in fragments.
//!
//! A text message may be split across frames at any byte, even inside a
//! code point. [`Utf8Validator`] checks each appended chunk once, fails as
//! soon as a byte sequence can no longer become valid (RFC 6455 §8.1 "fail
//! fast"), and tolerates an incomplete code point at the end until the final
//! fragment arrives.

/// Tracks how much of a growing buffer is known to be valid UTF-8.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    valid_up_to: usize,
}

/// The buffer holds bytes that can never be valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8;

impl Utf8Validator {
    /// A validator for an empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks the bytes of `buf` not seen before. `buf` must be the same
    /// buffer as in earlier calls, only grown. With `complete`, an incomplete
    /// code point at the end is an error too.
    pub fn feed(&mut self, buf: &[u8], complete: bool) -> Result<(), InvalidUtf8> {
        let rest = &buf[self.valid_up_to..];
        match std::str::from_utf8(rest) {
            Ok(_) => {
                self.valid_up_to = buf.len();
                Ok(())
            }
            Err(e) => {
                if e.error_len().is_some() || complete {
                    return Err(InvalidUtf8);
                }
                // Only an incomplete sequence at the end: keep it for later.
                self.valid_up_to += e.valid_up_to();
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_code_point_is_accepted_when_completed() {
        let s = "κόσμε".as_bytes();
        for cut in 0..s.len() {
            let mut v = Utf8Validator::new();
            v.feed(&s[..cut], false).unwrap();
            v.feed(s, true).unwrap();
        }
    }

    #[test]
    fn invalid_byte_fails_fast() {
        let mut v = Utf8Validator::new();
        v.feed(b"ok", false).unwrap();
        assert_eq!(v.feed(b"ok\xff", false), Err(InvalidUtf8));
    }

    #[test]
    fn truncated_code_point_fails_at_end() {
        let mut v = Utf8Validator::new();
        v.feed(b"\xce", false).unwrap();
        assert_eq!(v.feed(b"\xce", true), Err(InvalidUtf8));
    }
}
