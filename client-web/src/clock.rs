//! How times are shown: local wall-clock time, `HH:MM:SS`.

/// Formats `time_ms` (milliseconds since the Unix epoch) as local `HH:MM:SS`.
/// `tz_offset_min` is what JavaScript's `Date.getTimezoneOffset()` returns
/// for that instant: minutes to add to local time to get UTC.
pub fn hms(time_ms: f64, tz_offset_min: f64) -> String {
    if !time_ms.is_finite() {
        return "--:--:--".to_owned();
    }
    let offset = if tz_offset_min.is_finite() {
        tz_offset_min
    } else {
        0.0
    };
    let local_secs = ((time_ms - offset * 60_000.0) / 1_000.0).floor();
    let day_secs = local_secs.rem_euclid(86_400.0) as u64;
    format!(
        "{:02}:{:02}:{:02}",
        day_secs / 3_600,
        day_secs / 60 % 60,
        day_secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::hms;

    #[test]
    fn formats_local_time() {
        // 2023-11-14T22:13:20.000Z
        let t = 1_700_000_000_000.0;
        assert_eq!(hms(t, 0.0), "22:13:20");
        // UTC+1 (getTimezoneOffset() = -60).
        assert_eq!(hms(t, -60.0), "23:13:20");
        // UTC+2 wraps past midnight.
        assert_eq!(hms(t, -120.0), "00:13:20");
        // UTC-5:30.
        assert_eq!(hms(t, 330.0), "16:43:20");
        assert_eq!(hms(t + 999.0, 0.0), "22:13:20");
        assert_eq!(hms(0.0, 60.0), "23:00:00");
        assert_eq!(hms(f64::NAN, 0.0), "--:--:--");
    }
}
