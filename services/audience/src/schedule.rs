//! Recompute schedules: a five-field cron subset (`minute hour day-of-month month
//! day-of-week`) evaluated in the workspace's IANA time zone.
//!
//! Each field is `*`, a number, a range `a-b`, a step `*/n` or `a-b/n`, or a list of those
//! separated by commas (`0,30`, `1-5`). Day-of-week counts 0 (Sunday) to 6, 7 is Sunday too.
//! As in classic cron, when both day-of-month and day-of-week are restricted a day matches
//! if either does (`0 3 1 * 1`: the 1st of the month and every Monday).
//!
//! Daylight-saving time: a local time that does not exist (skipped by a spring-forward
//! change) runs at the first instant after the gap; a local time that happens twice (the
//! autumn fold) runs once, at its first occurrence.

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

/// A schedule that does not parse: which field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ScheduleError(String);

/// A parsed schedule: the allowed values of each field as bit sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u32,
    /// Bits 1..=31.
    days_of_month: u32,
    /// Bits 1..=12.
    months: u16,
    /// Bits 0..=6, Sunday is 0.
    days_of_week: u8,
    day_of_month_restricted: bool,
    day_of_week_restricted: bool,
}

/// How far ahead the next run is looked for: past this a schedule counts as never firing
/// (`0 0 30 2 *`). Eight years cover every leap-day schedule.
const HORIZON_DAYS: i64 = 366 * 8;

fn parse_field(text: &str, name: &str, lo: u32, hi: u32) -> Result<(u64, bool), ScheduleError> {
    let bad = |why: &str| ScheduleError(format!("{name} field `{text}`: {why}"));
    let number = |s: &str| -> Result<u32, ScheduleError> {
        let n: u32 = s
            .parse()
            .map_err(|_| bad(&format!("`{s}` is not a number")))?;
        if n < lo || n > hi {
            return Err(bad(&format!("{n} is outside {lo}-{hi}")));
        }
        Ok(n)
    };
    if text.is_empty() {
        return Err(bad("is empty"));
    }
    let mut bits = 0u64;
    let mut restricted = false;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step
                    .parse()
                    .ok()
                    .filter(|s| *s >= 1)
                    .ok_or_else(|| bad(&format!("step `{step}` is not a positive number")))?;
                (range, step)
            }
            None => (item, 1),
        };
        let (first, last) = if range == "*" {
            (lo, hi)
        } else {
            restricted = true;
            match range.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (number(a)?, number(b)?);
                    if a > b {
                        return Err(bad(&format!("range {a}-{b} runs backwards")));
                    }
                    (a, b)
                }
                None if step > 1 => return Err(bad("a step needs `*` or a range before it")),
                None => {
                    let n = number(range)?;
                    (n, n)
                }
            }
        };
        if range == "*" && step > 1 {
            restricted = true;
        }
        let mut value = first;
        while value <= last {
            bits |= 1 << value;
            value += step;
        }
    }
    Ok((bits, restricted))
}

impl Schedule {
    /// Parses a five-field expression (`0 3 * * *`).
    pub fn parse(text: &str) -> Result<Schedule, ScheduleError> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(ScheduleError(format!(
                "has {} fields, needs 5: minute hour day-of-month month day-of-week (`0 3 * * *`)",
                fields.len()
            )));
        };
        let (minutes, _) = parse_field(minute, "minute", 0, 59)?;
        let (hours, _) = parse_field(hour, "hour", 0, 23)?;
        let (days_of_month, day_of_month_restricted) = parse_field(day, "day-of-month", 1, 31)?;
        let (months, _) = parse_field(month, "month", 1, 12)?;
        let (weekdays, day_of_week_restricted) = parse_field(weekday, "day-of-week", 0, 7)?;
        // 7 is Sunday as well as 0.
        let days_of_week = ((weekdays | (weekdays >> 7)) & 0x7f) as u8;
        let schedule = Schedule {
            minutes,
            hours: hours as u32,
            days_of_month: days_of_month as u32,
            months: months as u16,
            days_of_week,
            day_of_month_restricted,
            day_of_week_restricted,
        };
        // A schedule that never fires (`0 0 31 4 *`) is a mistake worth naming.
        if schedule
            .next_after(
                Utc.timestamp_opt(0, 0).single().unwrap_or_default(),
                chrono_tz::UTC,
            )
            .is_none()
        {
            return Err(ScheduleError("never matches a day".into()));
        }
        Ok(schedule)
    }

    fn matches_day(&self, date: NaiveDate) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let by_month_day = self.days_of_month & (1 << date.day()) != 0;
        let by_week_day = self.days_of_week & (1 << date.weekday().num_days_from_sunday()) != 0;
        match (self.day_of_month_restricted, self.day_of_week_restricted) {
            (true, true) => by_month_day || by_week_day,
            (true, false) => by_month_day,
            (false, true) => by_week_day,
            (false, false) => true,
        }
    }

    /// The first run strictly after `after`, in `zone`; `None` when there is none within
    /// the horizon.
    pub fn next_after(&self, after: DateTime<Utc>, zone: Tz) -> Option<DateTime<Utc>> {
        let start = after.with_timezone(&zone).date_naive();
        // Local times map to instants in order (the fold maps to its first pass, a gap to
        // its end), so the first candidate after `after` in local order is the earliest.
        for offset in 0..HORIZON_DAYS {
            let date = start.checked_add_signed(Duration::days(offset))?;
            if !self.matches_day(date) {
                continue;
            }
            for hour in (0..24).filter(|h| self.hours & (1 << h) != 0) {
                for minute in (0..60).filter(|m| self.minutes & (1 << m) != 0) {
                    let local = date.and_hms_opt(hour, minute, 0)?;
                    let at = resolve(local, zone)?;
                    if at > after {
                        return Some(at);
                    }
                }
            }
        }
        None
    }
}

/// The instant a local wall-clock time runs at: its only occurrence, the first of two in a
/// fold, or the end of the gap it falls in.
fn resolve(local: NaiveDateTime, zone: Tz) -> Option<DateTime<Utc>> {
    match zone.from_local_datetime(&local) {
        LocalResult::Single(at) => Some(at.with_timezone(&Utc)),
        LocalResult::Ambiguous(first, _) => Some(first.with_timezone(&Utc)),
        LocalResult::None => {
            // Gaps are whole minutes (at most a few hours) in the tz database: the first
            // local minute that exists again is the instant the clocks jumped to.
            (1..=24 * 60).find_map(|minutes| {
                zone.from_local_datetime(&(local + Duration::minutes(minutes)))
                    .earliest()
                    .map(|at| at.with_timezone(&Utc))
            })
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn next(schedule: &str, after: &str, zone: &str) -> String {
        let zone: Tz = zone.parse().unwrap();
        Schedule::parse(schedule)
            .unwrap()
            .next_after(utc(after), zone)
            .unwrap()
            .to_rfc3339()
    }

    /// The runs after `after`, one after another.
    fn runs(schedule: &str, after: &str, zone: &str, count: usize) -> Vec<String> {
        let zone: Tz = zone.parse().unwrap();
        let schedule = Schedule::parse(schedule).unwrap();
        let mut at = utc(after);
        let mut out = Vec::new();
        for _ in 0..count {
            at = schedule.next_after(at, zone).unwrap();
            out.push(at.to_rfc3339());
        }
        out
    }

    #[test]
    fn parses_the_subset_and_names_the_field_at_fault() {
        for ok in [
            "0 3 * * *",
            "*/15 8-18 * * 1-5",
            "0,30 * * * *",
            "0 0 1 1,4,7,10 *",
            "5 4 * * 7",
            "0 0 29 2 *",
            "0 9-17/2 * * *",
        ] {
            assert!(Schedule::parse(ok).is_ok(), "{ok}");
        }
        let error = |text: &str| Schedule::parse(text).unwrap_err().to_string();
        assert!(error("0 3 * *").contains("needs 5"));
        assert!(error("0 3 * * * *").contains("needs 5"));
        assert!(error("60 3 * * *").starts_with("minute field"));
        assert!(error("0 24 * * *").starts_with("hour field"));
        assert!(error("0 3 0 * *").starts_with("day-of-month field"));
        assert!(error("0 3 * 13 *").starts_with("month field"));
        assert!(error("0 3 * * 8").starts_with("day-of-week field"));
        assert!(error("*/0 3 * * *").contains("step"));
        assert!(error("5-1 3 * * *").contains("backwards"));
        assert!(error("0 3 ,1 * *").contains("is not a number"));
        assert!(error("0 3 * JAN *").contains("is not a number"));
        assert!(error("0 3 5/2 * *").contains("step"));
        assert!(error("0 0 30 2 *").contains("never"));
        assert!(error("0 0 31 4,6,9,11 *").contains("never"));
        assert!(error("").contains("needs 5"));
    }

    #[test]
    fn daily_runs_in_the_workspace_zone() {
        // 03:00 in Paris is 02:00 UTC in winter.
        assert_eq!(
            next("0 3 * * *", "2026-01-10T12:00:00Z", "Europe/Paris"),
            "2026-01-11T02:00:00+00:00"
        );
        // Strictly after: a run at the instant itself is not next.
        assert_eq!(
            next("0 3 * * *", "2026-01-11T02:00:00Z", "Europe/Paris"),
            "2026-01-12T02:00:00+00:00"
        );
        assert_eq!(
            next("0 3 * * *", "2026-01-11T01:59:59Z", "Europe/Paris"),
            "2026-01-11T02:00:00+00:00"
        );
        assert_eq!(
            runs("*/20 10 * * *", "2026-06-01T00:00:00Z", "UTC", 4),
            [
                "2026-06-01T10:00:00+00:00",
                "2026-06-01T10:20:00+00:00",
                "2026-06-01T10:40:00+00:00",
                "2026-06-02T10:00:00+00:00"
            ]
        );
    }

    #[test]
    fn weekdays_and_month_days() {
        // 2026-11-25 is a Wednesday; the next Monday-to-Friday 08:30 after Friday evening
        // is Monday.
        assert_eq!(
            next("30 8 * * 1-5", "2026-11-27T20:00:00Z", "UTC"),
            "2026-11-30T08:30:00+00:00"
        );
        // Sunday as 7 and as 0.
        assert_eq!(
            next("0 0 * * 7", "2026-11-25T00:00:00Z", "UTC"),
            "2026-11-29T00:00:00+00:00"
        );
        assert_eq!(
            next("0 0 * * 0", "2026-11-25T00:00:00Z", "UTC"),
            "2026-11-29T00:00:00+00:00"
        );
        // Both restricted: either matches (the 1st, or a Monday).
        assert_eq!(
            runs("0 0 1 * 1", "2026-11-25T00:00:00Z", "UTC", 3),
            [
                "2026-11-30T00:00:00+00:00",
                "2026-12-01T00:00:00+00:00",
                "2026-12-07T00:00:00+00:00"
            ]
        );
    }

    #[test]
    fn month_ends() {
        // The 31st skips the months without one.
        assert_eq!(
            runs("0 12 31 * *", "2026-01-31T12:00:00Z", "UTC", 3),
            [
                "2026-03-31T12:00:00+00:00",
                "2026-05-31T12:00:00+00:00",
                "2026-07-31T12:00:00+00:00"
            ]
        );
        // The 29th of February waits for a leap year.
        assert_eq!(
            next("0 0 29 2 *", "2026-03-01T00:00:00Z", "UTC"),
            "2028-02-29T00:00:00+00:00"
        );
        // Across the year end, in Los Angeles (UTC-8 in winter).
        assert_eq!(
            next(
                "0 23 31 12 *",
                "2026-12-31T12:00:00Z",
                "America/Los_Angeles"
            ),
            "2027-01-01T07:00:00+00:00"
        );
        // The local day decides, not the UTC one: 00:30 on the 1st in Paris is still the
        // 31st in UTC.
        assert_eq!(
            next("30 0 1 * *", "2026-01-15T00:00:00Z", "Europe/Paris"),
            "2026-01-31T23:30:00+00:00"
        );
    }

    #[test]
    fn spring_forward_runs_at_the_end_of_the_gap() {
        // Paris, 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00 UTC). 02:30 does not
        // exist: it runs at 03:00 CEST, and the next day at 02:30 CEST again.
        assert_eq!(
            runs("30 2 * * *", "2026-03-28T12:00:00Z", "Europe/Paris", 3),
            [
                "2026-03-29T01:00:00+00:00",
                "2026-03-30T00:30:00+00:00",
                "2026-03-31T00:30:00+00:00"
            ]
        );
        // Every 15 minutes through the gap: the skipped slots collapse into one run at
        // 03:00, and 03:00 itself is not run twice.
        assert_eq!(
            runs("*/15 1-3 29 3 *", "2026-03-29T00:40:00Z", "Europe/Paris", 4),
            [
                "2026-03-29T00:45:00+00:00",
                "2026-03-29T01:00:00+00:00",
                "2026-03-29T01:15:00+00:00",
                "2026-03-29T01:30:00+00:00"
            ]
        );
        // Los Angeles, 2026-03-08: 02:00 PST jumps to 03:00 PDT (10:00 UTC).
        assert_eq!(
            runs(
                "15 2 * * *",
                "2026-03-07T12:00:00Z",
                "America/Los_Angeles",
                2
            ),
            ["2026-03-08T10:00:00+00:00", "2026-03-09T09:15:00+00:00"]
        );
    }

    #[test]
    fn fall_back_runs_once_in_the_fold() {
        // Paris, 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens at 00:30
        // and 01:30 UTC and runs only at the first.
        assert_eq!(
            runs("30 2 * * *", "2026-10-24T12:00:00Z", "Europe/Paris", 2),
            ["2026-10-25T00:30:00+00:00", "2026-10-26T01:30:00+00:00"]
        );
        // Asked from between the two passes, the second pass is not a run.
        assert_eq!(
            next("30 2 * * *", "2026-10-25T01:00:00Z", "Europe/Paris"),
            "2026-10-26T01:30:00+00:00"
        );
        // Los Angeles, 2026-11-01: 02:00 PDT falls back to 01:00 PST; hourly runs see
        // 01:00 once (08:00 UTC), then 02:00 PST (10:00 UTC).
        assert_eq!(
            runs(
                "0 * 1 11 *",
                "2026-11-01T06:30:00Z",
                "America/Los_Angeles",
                3
            ),
            [
                "2026-11-01T07:00:00+00:00",
                "2026-11-01T08:00:00+00:00",
                "2026-11-01T10:00:00+00:00"
            ]
        );
    }
}
