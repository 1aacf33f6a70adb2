//! Wall-clock time as the server stores it (milliseconds since the Unix epoch) and its RFC 3339
//! rendering. Every timestamp on the wire is UTC with millisecond precision, as the HTTP binding
//! recommends.

use std::time::{SystemTime, UNIX_EPOCH};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// The current time in milliseconds since the Unix epoch.
#[must_use]
pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Renders a timestamp as `2026-02-12T10:30:00.000Z`.
#[must_use]
pub fn rfc3339(ms: Millis) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    match OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        Err(_) => "1970-01-01T00:00:00.000Z".to_string(),
    }
}

/// Parses an RFC 3339 timestamp (any offset) into milliseconds since the epoch.
#[must_use]
pub fn parse_rfc3339(text: &str) -> Option<Millis> {
    let t = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Parses an ISO 8601 duration of the forms `PnDTnHnMnS` / `PTnS` (fractional seconds allowed,
/// no years or months: their length is not fixed) into milliseconds.
#[must_use]
pub fn parse_iso_duration(text: &str) -> Option<u64> {
    let rest = text.strip_prefix('P')?;
    if rest.is_empty() {
        return None;
    }
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) if !t.is_empty() => (d, Some(t)),
        Some(_) => return None,
        None => (rest, None),
    };
    let mut total: f64 = 0.0;
    let mut any = false;
    let mut take = |part: &str, units: &[(char, f64)]| -> Option<()> {
        let mut number = String::new();
        let mut last_unit = 0usize;
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' {
                number.push(c);
                continue;
            }
            let pos = units.iter().position(|(u, _)| *u == c)?;
            // Units must appear in order, each at most once.
            if pos < last_unit || number.is_empty() {
                return None;
            }
            last_unit = pos + 1;
            let value: f64 = number.parse().ok()?;
            total += value * units[pos].1;
            any = true;
            number.clear();
        }
        number.is_empty().then_some(())
    };
    take(date, &[('W', 604_800_000.0), ('D', 86_400_000.0)])?;
    if let Some(time) = time {
        take(time, &[('H', 3_600_000.0), ('M', 60_000.0), ('S', 1000.0)])?;
    }
    if !any || !total.is_finite() || total > 1e15 {
        return None;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Some(total.round() as u64)
}

/// Parses an absolute RFC 3339 time or a relative one (`+PT2S`, from `now`).
#[must_use]
pub fn parse_time_spec(text: &str, now: Millis) -> Option<Millis> {
    if let Some(rel) = text.strip_prefix('+') {
        let ms = i64::try_from(parse_iso_duration(rel)?).ok()?;
        return now.checked_add(ms);
    }
    parse_rfc3339(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_iso_duration("PT1S"), Some(1000));
        assert_eq!(parse_iso_duration("PT5M"), Some(300_000));
        assert_eq!(parse_iso_duration("PT1H"), Some(3_600_000));
        assert_eq!(parse_iso_duration("P1D"), Some(86_400_000));
        assert_eq!(parse_iso_duration("P1DT1H30M0.5S"), Some(91_800_500));
        assert_eq!(parse_iso_duration("PT0.25S"), Some(250));
        for bad in [
            "", "P", "PT", "1S", "PTS", "PT1", "PT1S1M", "PT1X", "P1S", "PT1M1M",
        ] {
            assert_eq!(parse_iso_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn timestamps_round_trip() {
        let t = parse_rfc3339("2026-02-12T10:30:00.123Z").unwrap();
        assert_eq!(rfc3339(t), "2026-02-12T10:30:00.123Z");
        assert_eq!(
            parse_rfc3339("2026-02-12T12:30:00.123+02:00"),
            Some(t),
            "offsets are honoured"
        );
        assert_eq!(parse_time_spec("+PT2S", 1000), Some(3000));
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
