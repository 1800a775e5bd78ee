//! Wire types of the HTTP API shared by server and SDK (SPEC §3).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The outcome code of a validation. The first group is what the server
/// answers; `OfflineGraceExpired` and `ClockTampered` are decided by the SDK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Code {
    Valid,
    KeyMalformed,
    LicenseNotFound,
    LicenseSuspended,
    LicenseRevoked,
    LicenseExpired,
    DomainLimitReached,
    MachineLimitReached,
    RateLimited,
    InvalidDomain,
    BadRequest,
    /// SDK only: offline, and the cached answer is past its `exp`.
    OfflineGraceExpired,
    /// SDK only: the system clock was set back.
    ClockTampered,
}

impl Code {
    /// Every code, in declaration order.
    pub const ALL: [Code; 13] = [
        Code::Valid,
        Code::KeyMalformed,
        Code::LicenseNotFound,
        Code::LicenseSuspended,
        Code::LicenseRevoked,
        Code::LicenseExpired,
        Code::DomainLimitReached,
        Code::MachineLimitReached,
        Code::RateLimited,
        Code::InvalidDomain,
        Code::BadRequest,
        Code::OfflineGraceExpired,
        Code::ClockTampered,
    ];

    /// The code as written on the wire, e.g. `"LICENSE_EXPIRED"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Valid => "VALID",
            Code::KeyMalformed => "KEY_MALFORMED",
            Code::LicenseNotFound => "LICENSE_NOT_FOUND",
            Code::LicenseSuspended => "LICENSE_SUSPENDED",
            Code::LicenseRevoked => "LICENSE_REVOKED",
            Code::LicenseExpired => "LICENSE_EXPIRED",
            Code::DomainLimitReached => "DOMAIN_LIMIT_REACHED",
            Code::MachineLimitReached => "MACHINE_LIMIT_REACHED",
            Code::RateLimited => "RATE_LIMITED",
            Code::InvalidDomain => "INVALID_DOMAIN",
            Code::BadRequest => "BAD_REQUEST",
            Code::OfflineGraceExpired => "OFFLINE_GRACE_EXPIRED",
            Code::ClockTampered => "CLOCK_TAMPERED",
        }
    }

    /// Parses the wire form.
    pub fn parse(s: &str) -> Option<Code> {
        Code::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// A decided answer about an existing or missing license: the server
    /// signs these (SPEC §3).
    pub fn is_signed(self) -> bool {
        matches!(
            self,
            Code::Valid
                | Code::LicenseNotFound
                | Code::LicenseSuspended
                | Code::LicenseRevoked
                | Code::LicenseExpired
                | Code::DomainLimitReached
                | Code::MachineLimitReached
        )
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A license's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Active,
    Suspended,
    Expired,
    Revoked,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Suspended => "suspended",
            Status::Expired => "expired",
            Status::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        [
            Status::Active,
            Status::Suspended,
            Status::Expired,
            Status::Revoked,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// `POST /api/v1/validate` request. Only `key` is required.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ValidateRequest {
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

/// The longest nonce the server echoes.
pub const MAX_NONCE_LEN: usize = 128;

/// The license part of a validation answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LicenseSummary {
    pub id: String,
    pub status: Status,
    pub plan: String,
    #[serde(with = "crate::time::opt_rfc3339")]
    pub expires_at: Option<DateTime<Utc>>,
    pub features: Vec<String>,
}

/// `POST /api/v1/validate` answer; every answer has this shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ValidateResponse {
    pub valid: bool,
    pub code: Code,
    /// Same as `code` when `valid` is false (the guide's shape).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Code>,
    /// A human explanation for 4xx answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default)]
    pub license: Option<LicenseSummary>,
    #[serde(default)]
    pub nonce: Option<String>,
    #[serde(default)]
    pub token: Option<String>,
}

impl ValidateResponse {
    /// This answer's JSON, with `token`, when given, as its token in place
    /// of `self.token`. The server's way to write an answer: with
    /// `self.token` `None`, the token is written in as it is instead of
    /// going through serde_json's escaping, which looks at every byte of
    /// its ~600, and the buffer is sized once. `token` must be a compact
    /// JWS, as `TokenSigner::sign` makes them: base64url and dots, which
    /// JSON never escapes (debug builds check). The bytes are serde_json's
    /// for the whole answer (a unit test holds them to it).
    pub fn to_json_with(&self, token: Option<&str>) -> Vec<u8> {
        /// Room for an answer without its token (a license summary with a
        /// few features).
        const CAPACITY: usize = 512;
        if token.is_some() && self.token.is_some() {
            let unsigned = ValidateResponse {
                token: None,
                ..self.clone()
            };
            return unsigned.to_json_with(token);
        }
        let mut json = Vec::with_capacity(CAPACITY + token.map_or(0, str::len));
        serde_json::to_writer(&mut json, self).expect("an answer serialises");
        if let Some(token) = token {
            debug_assert!(token.bytes().all(is_token_byte), "{token:?}");
            // `token` is the last field, here `"token":null`: the token
            // takes the null's place.
            debug_assert!(json.ends_with(b"\"token\":null}"));
            json.truncate(json.len() - b"null}".len());
            json.push(b'"');
            json.extend_from_slice(token.as_bytes());
            json.extend_from_slice(b"\"}");
        }
        json
    }
}

/// A byte a compact JWS may hold: base64url or the `.` between its parts.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

/// The license object of the management API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct License {
    pub id: String,
    pub key: String,
    pub status: Status,
    pub plan: String,
    pub customer_email: String,
    pub max_domains: Option<u32>,
    pub domains: Vec<String>,
    pub max_machines: Option<u32>,
    pub machines: Vec<String>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    #[serde(with = "crate::time::rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "crate::time::rfc3339")]
    pub updated_at: DateTime<Utc>,
    #[serde(with = "crate::time::opt_rfc3339")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(with = "crate::time::opt_rfc3339")]
    pub last_validated_at: Option<DateTime<Utc>>,
    pub validation_count: u64,
}

/// A plan: features, default limits, duration and offline grace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub name: String,
    pub features: Vec<String>,
    pub max_domains: Option<u32>,
    pub max_machines: Option<u32>,
    pub duration_days: Option<u32>,
    pub offline_grace_days: u32,
}

/// The offline grace of a plan that sets none.
pub const DEFAULT_OFFLINE_GRACE_DAYS: u32 = 7;

/// One page of a list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub next_cursor: Option<String>,
}

/// The error body of management routes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The token written in by hand gives the bytes serde_json gives for
    /// the whole answer, escapes of the other fields included.
    #[test]
    fn an_answer_with_its_token_is_the_json_of_the_whole_answer() {
        let token = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJsaWNfMSJ9.c2ln-_0";
        let answer = ValidateResponse {
            valid: true,
            code: Code::Valid,
            error: None,
            message: None,
            license: Some(LicenseSummary {
                id: "lic_1".into(),
                status: Status::Active,
                plan: "pro \"β\"\n".into(),
                expires_at: None,
                features: vec!["export".into(), "a\\b".into()],
            }),
            nonce: Some("n\u{1}".into()),
            token: None,
        };
        let whole = ValidateResponse {
            token: Some(token.into()),
            ..answer.clone()
        };
        // The server's case (no token yet) and one whose token is replaced.
        let signed = ValidateResponse {
            token: Some("x.y.z".into()),
            ..answer.clone()
        };
        for base in [answer, signed] {
            assert_eq!(
                String::from_utf8(base.to_json_with(Some(token))).unwrap(),
                serde_json::to_string(&whole).unwrap()
            );
            assert_eq!(base.to_json_with(None), serde_json::to_vec(&base).unwrap());
        }
    }

    #[test]
    fn code_strings_round_trip_through_serde() {
        for code in Code::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(Code::parse(code.as_str()), Some(code));
        }
    }
}
