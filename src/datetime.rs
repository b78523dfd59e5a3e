//! UTC calendar formatting for mail headers and mbox `From ` lines, without
//! pulling in a date crate for two formats.

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// A moment broken into UTC calendar fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: usize,
    pub day: i64,
    pub hour: i64,
    pub minute: i64,
    pub second: i64,
    weekday: usize,
}

impl Civil {
    /// From Unix seconds (H. Hinnant's days-to-civil algorithm).
    pub fn from_unix(secs: i64) -> Civil {
        let days = secs.div_euclid(86400);
        let sod = secs.rem_euclid(86400);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        Civil {
            year: yoe + era * 400 + i64::from(month <= 2),
            month: month as usize,
            day,
            hour: sod / 3600,
            minute: sod % 3600 / 60,
            second: sod % 60,
            weekday: days.rem_euclid(7) as usize,
        }
    }

    /// `Thu Nov 26 04:55:21 2026` (C's asctime, as mbox `From ` lines use).
    pub fn asctime(&self) -> String {
        format!(
            "{} {} {:>2} {:02}:{:02}:{:02} {}",
            DAYS[self.weekday],
            MONTHS[self.month - 1],
            self.day,
            self.hour,
            self.minute,
            self.second,
            self.year
        )
    }

    /// `Thu, 26 Nov 2026 04:55:21 +0000` (RFC 5322 date-time).
    pub fn rfc5322(&self) -> String {
        format!(
            "{}, {} {} {} {:02}:{:02}:{:02} +0000",
            DAYS[self.weekday],
            self.day,
            MONTHS[self.month - 1],
            self.year,
            self.hour,
            self.minute,
            self.second
        )
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_moments() {
        // 2026-11-26 04:55:21 UTC
        let c = Civil::from_unix(1_795_668_921);
        assert_eq!(c.asctime(), "Thu Nov 26 04:55:21 2026");
        assert_eq!(c.rfc5322(), "Thu, 26 Nov 2026 04:55:21 +0000");
        assert_eq!(Civil::from_unix(0).asctime(), "Thu Jan  1 00:00:00 1970");
        // A leap day.
        assert_eq!(
            Civil::from_unix(951_782_400).rfc5322(),
            "Tue, 29 Feb 2000 00:00:00 +0000"
        );
    }
}
