//! Wall-clock formatting: RFC 3339 in UTC, without a date crate.

use std::time::{SystemTime, UNIX_EPOCH};

/// `2026-11-23T10:15:30Z` (whole seconds, UTC).
pub fn rfc3339(time: SystemTime) -> String {
    let mut text = utc(time);
    text.truncate(19);
    text.push('Z');
    text
}

/// `2026-11-23T10:15:30.123` (UTC, milliseconds, no zone: callers add the form they need).
/// Times before the Unix epoch format as the epoch.
pub fn utc(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let of_day = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}",
        of_day / 3_600,
        of_day / 60 % 60,
        of_day % 60,
        since.subsec_millis()
    )
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_437_330);
        assert_eq!(rfc3339(t), "2026-11-23T12:35:30Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_042);
        assert_eq!(utc(t), "2023-11-14T22:13:20.042");
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
