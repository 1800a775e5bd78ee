//! Time formats of the API: RFC 3339 UTC strings with whole seconds.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};

/// Formats `t` as the API writes times: `2027-03-06T00:00:00Z`.
pub fn format_rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Parses an RFC 3339 time with any offset into UTC; `None` also when UTC
/// puts it outside the years 0000 to 9999 (`9999-12-31T23:59:59-23:59`
/// is in year 10000 in UTC, which RFC 3339 cannot write back).
pub fn parse_rfc3339(s: &str) -> Option<DateTime<Utc>> {
    use chrono::Datelike;
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
        .filter(|t| (0..=9999).contains(&t.year()))
}

/// Unix seconds to UTC; `None` when out of chrono's range.
pub fn from_unix(secs: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_opt(secs, 0).single()
}

/// Serde helpers for `Option<DateTime<Utc>>` as an RFC 3339 string or null.
pub mod opt_rfc3339 {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&super::format_rfc3339(*t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => super::parse_rfc3339(&s).map(Some).ok_or_else(|| {
                serde::de::Error::custom("expected an RFC 3339 time such as 2027-03-06T00:00:00Z")
            }),
        }
    }
}

/// Serde helpers for `DateTime<Utc>` as an RFC 3339 string.
pub mod rfc3339 {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_rfc3339(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_rfc3339(&s).ok_or_else(|| {
            serde::de::Error::custom("expected an RFC 3339 time such as 2027-03-06T00:00:00Z")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_times_rfc_3339_can_write_back_are_read() {
        for (written, utc) in [
            ("2027-03-06T00:00:00Z", "2027-03-06T00:00:00Z"),
            ("2027-03-06T01:30:00+01:30", "2027-03-06T00:00:00Z"),
            ("9999-12-31T23:59:59Z", "9999-12-31T23:59:59Z"),
            ("0000-01-01T00:00:00Z", "0000-01-01T00:00:00Z"),
        ] {
            assert_eq!(
                parse_rfc3339(written).map(format_rfc3339).as_deref(),
                Some(utc)
            );
        }
        for out_of_range in ["9999-12-31T23:59:59-23:59", "0000-01-01T00:00:00+00:01"] {
            assert_eq!(parse_rfc3339(out_of_range), None, "{out_of_range}");
        }
    }
}
