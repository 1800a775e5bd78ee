//! Time formats of the API: RFC 3339 UTC strings with whole seconds.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};

/// Formats `t` as the API writes times: `2027-03-06T00:00:00Z`.
pub fn format_rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Parses an RFC 3339 time with any offset into UTC.
pub fn parse_rfc3339(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
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
