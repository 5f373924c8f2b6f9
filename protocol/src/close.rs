//! Close codes (RFC 6455 §7.4) and the reasons broadcast-server sends with them.

/// Normal closure.
pub const NORMAL: u16 = 1000;
/// The endpoint is going away (server shutdown, idle connection).
pub const GOING_AWAY: u16 = 1001;
/// The peer violated the protocol.
pub const PROTOCOL_ERROR: u16 = 1002;
/// The peer sent a data type the endpoint cannot accept.
pub const UNSUPPORTED_DATA: u16 = 1003;
/// A text message (or close reason) was not valid UTF-8.
pub const INVALID_PAYLOAD: u16 = 1007;
/// The peer violated a policy of the endpoint.
pub const POLICY_VIOLATION: u16 = 1008;
/// A message was larger than the endpoint accepts.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// The server hit an unexpected condition.
pub const INTERNAL_ERROR: u16 = 1011;
/// The service is restarting: reconnect (a paced drain's close).
pub const SERVICE_RESTART: u16 = 1012;
/// The server is overloaded; try again later (used for slow consumers).
pub const TRY_AGAIN_LATER: u16 = 1013;
/// Reported (never sent) for a close frame that carried no code.
pub const NO_STATUS: u16 = 1005;
/// Reported (never sent) for a connection that ended without a close frame.
pub const ABNORMAL: u16 = 1006;

/// Why the server closes a connection: a close code and a short human reason.
///
/// The reason always fits in a close frame (at most 123 bytes of UTF-8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    /// The RFC 6455 status code.
    pub code: u16,
    /// A short explanation, sent as the close frame's reason.
    pub reason: &'static str,
}

impl CloseReason {
    /// The server is shutting down (sent to every client on SIGINT/SIGTERM).
    pub const SHUTTING_DOWN: Self = Self::new(GOING_AWAY, "server shutting down");
    /// The server is draining before a restart (`--drain-period`): reconnect,
    /// to another node if there is one.
    pub const RESTARTING: Self = Self::new(SERVICE_RESTART, "server restarting: reconnect");
    /// The connection stayed silent longer than the idle timeout.
    pub const IDLE_TIMEOUT: Self = Self::new(GOING_AWAY, "idle timeout");
    /// The connection's outbound backlog overflowed: it does not read fast enough.
    pub const SLOW_CONSUMER: Self = Self::new(TRY_AGAIN_LATER, "slow consumer");
    /// A message exceeded the size limit.
    pub const MESSAGE_TOO_BIG: Self = Self::new(MESSAGE_TOO_BIG, "message too big");
    /// A text message or close reason was not valid UTF-8.
    pub const INVALID_UTF8: Self = Self::new(INVALID_PAYLOAD, "invalid UTF-8");
    /// The connection sent messages faster than `--max-message-rate` allows.
    pub const RATE_LIMITED: Self = Self::new(POLICY_VIOLATION, "rate limited");
    /// Answer to a normal close from the peer.
    pub const NORMAL: Self = Self::new(NORMAL, "");

    /// A protocol violation with a specific reason.
    pub const fn protocol(reason: &'static str) -> Self {
        Self::new(PROTOCOL_ERROR, reason)
    }

    /// Builds a reason; `reason` must be at most 123 bytes.
    pub const fn new(code: u16, reason: &'static str) -> Self {
        assert!(reason.len() <= 123, "close reason longer than 123 bytes");
        Self { code, reason }
    }

    /// The close frame payload: the code in network byte order, then the reason.
    pub fn payload(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(2 + self.reason.len());
        p.extend_from_slice(&self.code.to_be_bytes());
        p.extend_from_slice(self.reason.as_bytes());
        p
    }
}

/// Whether `code` may appear in a close frame received from a peer (RFC 6455 §7.4).
///
/// 1005, 1006 and 1015 are reserved for reporting and never sent; 1004 and
/// 1014 and the rest of 1016-2999 are unassigned; 3000-4999 are for
/// libraries and applications.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999)
}

/// Human words for a close code, for clients that print why they were closed.
pub fn describe(code: u16) -> &'static str {
    match code {
        1000 => "normal closure",
        1001 => "going away",
        1002 => "protocol error",
        1003 => "unsupported data",
        1005 => "no status code",
        1006 => "abnormal closure",
        1007 => "invalid payload data",
        1008 => "policy violation",
        1009 => "message too big",
        1010 => "missing extension",
        1011 => "internal server error",
        1012 => "service restart",
        1013 => "try again later",
        1015 => "TLS handshake failure",
        3000..=3999 => "registered application code",
        4000..=4999 => "private application code",
        _ => "unknown code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_codes_follow_rfc_6455() {
        for ok in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 3000, 4999,
        ] {
            assert!(is_valid_close_code(ok), "{ok} should be valid");
        }
        for bad in [
            0,
            999,
            1004,
            1005,
            1006,
            1014,
            1015,
            1016,
            2000,
            2999,
            5000,
            u16::MAX,
        ] {
            assert!(!is_valid_close_code(bad), "{bad} should be invalid");
        }
    }

    #[test]
    fn payload_is_code_then_reason() {
        assert_eq!(
            CloseReason::SLOW_CONSUMER.payload(),
            b"\x03\xf5slow consumer"
        );
        assert_eq!(CloseReason::NORMAL.payload(), vec![0x03, 0xe8]);
    }
}
