//! Legal periods on the calendar: DSR deadlines and the like, counted in the
//! jurisdiction's time zone.

use chrono::{DateTime, Datelike, Days, Months, NaiveDate, TimeZone, Utc, Weekday};
use chrono_tz::Tz;

use crate::params::Period;

impl Period {
    /// The local calendar date on which a period starting on `start` ends.
    ///
    /// Months and years keep the day of the month, clamped to the end of a
    /// shorter month (31 January + 1 month = 28/29 February), as GDPR periods
    /// are counted (Regulation 1182/71 Art. 3(2)(c)). Business days skip
    /// Saturdays and Sundays; public holidays are not known here, so the date
    /// is never later than the law's. `None` on calendar overflow.
    pub fn end_date(&self, start: NaiveDate) -> Option<NaiveDate> {
        match *self {
            Self::Days(n) => start.checked_add_days(Days::new(u64::from(n))),
            Self::Months(n) => start.checked_add_months(Months::new(n)),
            Self::Years(n) => start.checked_add_months(Months::new(n.checked_mul(12)?)),
            Self::BusinessDays(n) => {
                let mut d = start;
                let mut left = n;
                while left > 0 {
                    d = d.succ_opt()?;
                    if !matches!(d.weekday(), Weekday::Sat | Weekday::Sun) {
                        left -= 1;
                    }
                }
                Some(d)
            }
        }
    }

    /// The instant a period that starts at `start` ends: the end of its last
    /// day in time zone `tz` (the first instant of the next local day), in UTC.
    pub fn due(&self, start: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let local_start = start.with_timezone(&tz).date_naive();
        end_of_day(self.end_date(local_start)?, tz)
    }
}

/// First instant after `date` in `tz`, in UTC (handles a DST gap at midnight).
pub(crate) fn end_of_day(date: NaiveDate, tz: Tz) -> Option<DateTime<Utc>> {
    let next = date.succ_opt()?;
    (0..3)
        .find_map(|h| {
            tz.from_local_datetime(&next.and_hms_opt(h, 0, 0)?)
                .earliest()
        })
        .map(|t| t.with_timezone(&Utc))
}

/// When a data-subject request is due.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DsrDeadline {
    /// the regime whose rules apply
    pub regime: String,
    /// the time zone the days were counted in
    pub time_zone: String,
    /// receipt must be confirmed by then (CCPA), if the regime requires it
    pub confirm_receipt_by: Option<DateTime<Utc>>,
    /// the answer is due by then (exclusive: the first instant after the last day)
    pub due: DateTime<Utc>,
    /// the latest date with the extension, if the regime allows one
    pub extended_due: Option<DateTime<Utc>>,
    /// legal sources of the periods used
    pub articles: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn months_clamp_to_the_end_of_a_shorter_month() {
        assert_eq!(
            Period::Months(1).end_date(date(2025, 3, 25)),
            Some(date(2025, 4, 25))
        );
        assert_eq!(
            Period::Months(1).end_date(date(2025, 1, 31)),
            Some(date(2025, 2, 28))
        );
        assert_eq!(
            Period::Months(1).end_date(date(2024, 1, 31)),
            Some(date(2024, 2, 29))
        );
        assert_eq!(
            Period::Years(1).end_date(date(2024, 2, 29)),
            Some(date(2025, 2, 28))
        );
    }

    #[test]
    fn business_days_skip_weekends() {
        // Friday 2025-11-21 + 10 business days = Friday 2025-12-05
        assert_eq!(
            Period::BusinessDays(10).end_date(date(2025, 11, 21)),
            Some(date(2025, 12, 5))
        );
        // Saturday start: the first business day is Monday
        assert_eq!(
            Period::BusinessDays(1).end_date(date(2025, 11, 22)),
            Some(date(2025, 11, 24))
        );
        assert_eq!(
            Period::Days(45).end_date(date(2025, 1, 1)),
            Some(date(2025, 2, 15))
        );
    }

    #[test]
    fn due_is_counted_in_the_local_time_zone() {
        // 23:30 UTC on 31 Jan is already 1 Feb in Berlin: due at the end of 1 Mar Berlin time
        let received = Utc.with_ymd_and_hms(2025, 1, 31, 23, 30, 0).unwrap();
        let due = Period::Months(1)
            .due(received, chrono_tz::Europe::Berlin)
            .unwrap();
        assert_eq!(due, Utc.with_ymd_and_hms(2025, 3, 1, 23, 0, 0).unwrap());
        // the same instant in Los Angeles is still 31 Jan: one month ends 28 Feb
        let due = Period::Months(1)
            .due(received, chrono_tz::America::Los_Angeles)
            .unwrap();
        assert_eq!(due, Utc.with_ymd_and_hms(2025, 3, 1, 8, 0, 0).unwrap());
    }
}
