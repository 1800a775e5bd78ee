//! The answer to "may this app run with this key?".

use chrono::{DateTime, Utc};
use keysmith_core::token::Claims;
use keysmith_core::Code;
use serde::Serialize;

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The server answered this request just now.
    Online,
    /// The server could not be reached; the answer is the cached token of an
    /// earlier online validation (or a verdict about it:
    /// `OFFLINE_GRACE_EXPIRED`, `CLOCK_TAMPERED`).
    Cache,
    /// Decided on this machine without asking anyone: a key that fails the
    /// local check is `KEY_MALFORMED` before any request is sent.
    Local,
}

impl Source {
    /// `"online"`, `"cache"` or `"local"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Online => "online",
            Source::Cache => "cache",
            Source::Local => "local",
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer of a validation: valid or not, why, and what the license
/// grants.
///
/// Everything here comes from a token whose signature was verified against
/// the pinned public key and whose claims match the request — except
/// `KEY_MALFORMED` (decided locally, or by the server, which signs no answer
/// about a key it cannot read).
///
/// ```
/// # fn show(v: &keysmith::Validation) {
/// if v.valid {
///     println!("licensed: {:?}, SSO {}", v.plan, v.has_feature("sso"));
/// } else {
///     eprintln!("not licensed: {} ({})", v.code, v.message());
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Validation {
    /// Whether the app may run: true exactly when `code` is `VALID`.
    pub valid: bool,
    /// Why: `VALID`, `LICENSE_REVOKED`, `OFFLINE_GRACE_EXPIRED`, ….
    pub code: Code,
    /// Where the answer came from.
    pub source: Source,
    /// The license's plan, when the license exists.
    pub plan: Option<String>,
    /// The plan's features. Use [`has_feature`](Self::has_feature) to gate
    /// on them: it is false whenever the answer is not valid.
    pub features: Vec<String>,
    /// When the license itself expires; `None` for a perpetual license (or
    /// when there is no license).
    pub expires_at: Option<DateTime<Utc>>,
    /// Until when this answer may be trusted offline (the token's `exp`,
    /// shortened by the client's `offline_grace`); `None` for `KEY_MALFORMED`.
    pub offline_until: Option<DateTime<Utc>>,
    /// The verified claims of the token behind this answer; `None` for
    /// `KEY_MALFORMED`.
    pub claims: Option<Claims>,
}

impl Validation {
    /// A key that is not well-formed: decided without a token.
    pub(crate) fn malformed(source: Source) -> Validation {
        Validation {
            valid: false,
            code: Code::KeyMalformed,
            source,
            plan: None,
            features: Vec::new(),
            expires_at: None,
            offline_until: None,
            claims: None,
        }
    }

    /// The answer a verified token gives, with `code` possibly overridden
    /// by an SDK verdict (`OFFLINE_GRACE_EXPIRED`, `CLOCK_TAMPERED`).
    pub(crate) fn from_claims(
        claims: Claims,
        code: Code,
        source: Source,
        offline_until: i64,
    ) -> Validation {
        Validation {
            valid: code == Code::Valid,
            code,
            source,
            plan: claims.plan.clone(),
            features: claims.features.clone(),
            expires_at: claims
                .license_expires_at
                .as_deref()
                .and_then(keysmith_core::time::parse_rfc3339),
            offline_until: keysmith_core::time::from_unix(offline_until),
            claims: Some(claims),
        }
    }

    /// Whether the license is valid and its plan grants `feature`.
    ///
    /// False for any answer that is not valid, so gating a feature on this
    /// alone is safe.
    pub fn has_feature(&self, feature: &str) -> bool {
        self.valid && self.features.iter().any(|f| f == feature)
    }

    /// A sentence for a person about this answer, e.g. "the license has
    /// been revoked".
    pub fn message(&self) -> &'static str {
        // The offline window ended with the license's term, not the grace.
        if self.code == Code::OfflineGraceExpired
            && self.expires_at.is_some()
            && self.expires_at == self.offline_until
        {
            return "the license's term has ended, and the license server could not be \
                    reached to confirm a renewal";
        }
        describe(self.code)
    }
}

/// A sentence for a person about a code.
pub fn describe(code: Code) -> &'static str {
    match code {
        Code::Valid => "the license is valid",
        Code::KeyMalformed => "this is not a valid license key; check it for typos",
        Code::LicenseNotFound => "no license has this key",
        Code::LicenseSuspended => "the license is suspended",
        Code::LicenseRevoked => "the license has been revoked",
        Code::LicenseExpired => "the license has expired",
        Code::DomainLimitReached => "the license is in use on as many domains as it allows",
        Code::MachineLimitReached => "the license is in use on as many machines as it allows",
        Code::RateLimited => "too many validations; try again shortly",
        Code::InvalidDomain => "the domain is not a host name",
        Code::BadRequest => "the server could not read the request",
        Code::OfflineGraceExpired => {
            "the license server has been unreachable for longer than the offline grace allows"
        }
        Code::ClockTampered => "the system clock is earlier than a time this app has already seen",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keysmith_core::Status;

    fn claims() -> Claims {
        Claims {
            iss: "keysmith".into(),
            sub: Some("lic_1".into()),
            key_sha256: "00".repeat(32),
            valid: true,
            code: Code::Valid,
            status: Some(Status::Active),
            plan: Some("pro".into()),
            features: vec!["sso".into()],
            license_expires_at: Some("2027-03-06T00:00:00Z".into()),
            domain: None,
            fingerprint: None,
            nonce: None,
            iat: 1_800_000_000,
            exp: 1_800_604_800,
        }
    }

    #[test]
    fn features_are_granted_only_when_valid() {
        let valid = Validation::from_claims(claims(), Code::Valid, Source::Online, 1_800_604_800);
        assert!(valid.has_feature("sso"));
        assert!(!valid.has_feature("audit-log"));
        assert_eq!(
            valid
                .expires_at
                .map(keysmith_core::time::format_rfc3339)
                .as_deref(),
            Some("2027-03-06T00:00:00Z")
        );
        let expired = Validation::from_claims(
            claims(),
            Code::OfflineGraceExpired,
            Source::Cache,
            1_800_604_800,
        );
        assert!(!expired.valid);
        assert!(!expired.has_feature("sso"));
        assert_eq!(expired.plan.as_deref(), Some("pro"));
    }

    #[test]
    fn every_code_has_a_message() {
        for code in Code::ALL {
            assert!(!describe(code).is_empty());
        }
        assert_eq!(Source::Cache.to_string(), "cache");
    }
}
