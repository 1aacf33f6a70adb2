//! Wall-clock time as the server stores it (milliseconds since the Unix epoch) and its RFC 3339
//! rendering. Every timestamp on the wire is UTC with millisecond precision, as the HTTP binding
//! recommends.
//!
//! Time is injected: every component that reads the time holds a [`Clock`], the system clock in
//! production and a [`ManualClock`] in tests, so that leases, schedules, sessions and windows
//! can be tested without sleeping. This file is the only one that reads `SystemTime::now()`.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// The system's wall clock in milliseconds since the Unix epoch.
fn system_now() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Where a component reads the time: the system clock, or a manual one a test moves.
/// Cheap to clone; every clone of a manual clock sees the same time.
#[derive(Clone, Debug)]
pub struct Clock {
    source: Source,
}

#[derive(Clone, Debug)]
enum Source {
    System,
    Manual(Arc<AtomicI64>),
}

impl Clock {
    /// The system's wall clock (production).
    #[must_use]
    pub fn system() -> Self {
        Self {
            source: Source::System,
        }
    }

    /// A clock that stands at `start` until the returned [`ManualClock`] moves it.
    #[must_use]
    pub fn manual(start: Millis) -> (Self, ManualClock) {
        let now = Arc::new(AtomicI64::new(start));
        (
            Self {
                source: Source::Manual(now.clone()),
            },
            ManualClock { now },
        )
    }

    /// The current time in milliseconds since the Unix epoch.
    #[must_use]
    pub fn now_ms(&self) -> Millis {
        match &self.source {
            Source::System => system_now(),
            Source::Manual(now) => now.load(Ordering::SeqCst),
        }
    }

    /// The current time in whole seconds since the Unix epoch.
    #[must_use]
    pub fn now_secs(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    /// Whether this is a manual clock (tests): real-time waits then poll more often, since the
    /// time can jump.
    #[must_use]
    pub fn is_manual(&self) -> bool {
        matches!(self.source, Source::Manual(_))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

/// The control of a manual [`Clock`]: tests move time with it.
#[derive(Clone, Debug)]
pub struct ManualClock {
    now: Arc<AtomicI64>,
}

impl ManualClock {
    /// Moves the clock forward by `ms` (never backwards).
    pub fn advance(&self, ms: u64) {
        let ms = i64::try_from(ms).unwrap_or(i64::MAX);
        let _ = self
            .now
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_add(ms))
            });
    }

    /// Sets the clock to `at`.
    pub fn set(&self, at: Millis) {
        self.now.store(at, Ordering::SeqCst);
    }

    /// The time the clock shows.
    #[must_use]
    pub fn now_ms(&self) -> Millis {
        self.now.load(Ordering::SeqCst)
    }
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
    fn a_manual_clock_moves_only_when_told_and_every_clone_sees_it() {
        let (clock, hand) = Clock::manual(1_000);
        let copy = clock.clone();
        assert_eq!(clock.now_ms(), 1_000);
        hand.advance(250);
        assert_eq!((clock.now_ms(), copy.now_ms()), (1_250, 1_250));
        hand.set(5_999);
        assert_eq!(copy.now_secs(), 5);
        assert!(clock.is_manual() && !Clock::system().is_manual());
        assert!(Clock::system().now_ms() > 1_700_000_000_000);
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
