//! The license rules: what a validation decides, which status changes are
//! possible, and how a new license takes its plan's defaults. Plain functions,
//! unit-tested without storage or sockets; every backend calls these.

use chrono::{DateTime, Duration, Utc};
use keysmith_core::{Code, Status};

use crate::store::{EventType, StoreError};

/// The status a license has at `now`: an active license whose expiry has
/// passed is expired even before the sweep writes it.
pub fn effective_status(
    status: Status,
    expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Status {
    match (status, expires_at) {
        (Status::Active, Some(t)) if t <= now => Status::Expired,
        _ => status,
    }
}

/// One kind of seat (domains or machines) as the validation sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seats {
    /// The request's domain (fingerprint) already holds a seat.
    pub held: bool,
    /// Seats taken now.
    pub taken: u64,
    /// `None`: unlimited.
    pub max: Option<u32>,
}

impl Seats {
    fn has_room(self) -> bool {
        self.held || self.max.is_none_or(|max| self.taken < u64::from(max))
    }
}

/// What a validation of an existing license decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub code: Code,
    pub take_domain_seat: bool,
    pub take_machine_seat: bool,
}

impl Decision {
    /// Whether the validation changes more than the history: it takes a
    /// seat, or is the first valid one of a license not `activated` yet.
    /// One that does not can be decided on a snapshot with no lock: it
    /// takes nothing another validation could race it for.
    pub fn writes(&self, activated: bool) -> bool {
        self.take_domain_seat || self.take_machine_seat || self.activates(activated)
    }

    /// Whether this is the first valid validation of a license not yet
    /// `activated`: it activates the license.
    pub fn activates(&self, activated: bool) -> bool {
        self.code == Code::Valid && !activated
    }
}

/// Decides a validation. `domain` / `machine` are `None` when the request
/// named none. Seats are taken only when the whole answer is `VALID`.
pub fn decide(status: Status, domain: Option<Seats>, machine: Option<Seats>) -> Decision {
    let refuse = |code| Decision {
        code,
        take_domain_seat: false,
        take_machine_seat: false,
    };
    match status {
        Status::Revoked => return refuse(Code::LicenseRevoked),
        Status::Suspended => return refuse(Code::LicenseSuspended),
        Status::Expired => return refuse(Code::LicenseExpired),
        Status::Active => {}
    }
    if domain.is_some_and(|d| !d.has_room()) {
        return refuse(Code::DomainLimitReached);
    }
    if machine.is_some_and(|m| !m.has_room()) {
        return refuse(Code::MachineLimitReached);
    }
    Decision {
        code: Code::Valid,
        take_domain_seat: domain.is_some_and(|d| !d.held),
        take_machine_seat: machine.is_some_and(|m| !m.held),
    }
}

/// The status after an update, and the event the change fires.
///
/// `requested` is the `status` the update sent, if any; `expires_at` is the
/// expiry after the update. Revocation is final; `expired` and `revoked`
/// cannot be asked for through an update.
pub fn transition(
    current: Status,
    requested: Option<Status>,
    expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(Status, Option<EventType>), StoreError> {
    let past_expiry = expires_at.is_some_and(|t| t <= now);
    let next = match (current, requested) {
        (_, Some(Status::Expired | Status::Revoked)) => return Err(StoreError::Invalid {
            code: "INVALID_STATUS",
            message:
                "status can be set to \"active\" or \"suspended\"; DELETE the license to revoke it"
                    .into(),
        }),
        (Status::Revoked, Some(_)) => {
            return Err(StoreError::Conflict {
                code: "LICENSE_REVOKED",
                message: "the license is revoked; revocation is final".into(),
            })
        }
        (Status::Revoked, None) => Status::Revoked,
        (_, Some(Status::Suspended)) => Status::Suspended,
        (Status::Suspended, None) => Status::Suspended,
        (_, Some(Status::Active)) | (Status::Active | Status::Expired, None) => {
            if past_expiry {
                if requested == Some(Status::Active) && current != Status::Active {
                    return Err(StoreError::Conflict {
                        code: "LICENSE_EXPIRED",
                        message: "the license has expired; send a later expires_at to reinstate it"
                            .into(),
                    });
                }
                Status::Expired
            } else {
                Status::Active
            }
        }
    };
    let event = (next != current).then_some(match next {
        Status::Active => EventType::Reinstated,
        Status::Suspended => EventType::Suspended,
        Status::Expired => EventType::Expired,
        Status::Revoked => EventType::Revoked,
    });
    Ok((next, event))
}

/// The expiry of a new license: the one asked for, else the plan's duration
/// from now, else none (perpetual).
pub fn default_expiry(
    requested: Option<Option<DateTime<Utc>>>,
    duration_days: Option<u32>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    match requested {
        Some(explicit) => explicit,
        None => duration_days.map(|d| now + Duration::days(i64::from(d))),
    }
}

/// How long a validation answer may be trusted offline (SPEC §5): the grace
/// for a valid answer, capped by the license's expiry; nothing for an invalid one.
pub fn token_exp(valid: bool, iat: i64, grace_days: u32, expires_at: Option<DateTime<Utc>>) -> i64 {
    if !valid {
        return iat;
    }
    let grace = iat.saturating_add(i64::from(grace_days) * 86_400);
    expires_at.map_or(grace, |t| grace.min(t.timestamp()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seats(held: bool, taken: u64, max: Option<u32>) -> Option<Seats> {
        Some(Seats { held, taken, max })
    }

    #[test]
    fn status_comes_before_seats() {
        for (status, code) in [
            (Status::Revoked, Code::LicenseRevoked),
            (Status::Suspended, Code::LicenseSuspended),
            (Status::Expired, Code::LicenseExpired),
        ] {
            let d = decide(status, seats(false, 0, Some(1)), None);
            assert_eq!(
                d,
                Decision {
                    code,
                    take_domain_seat: false,
                    take_machine_seat: false
                }
            );
        }
    }

    #[test]
    fn seats_are_taken_below_the_limit_only() {
        assert!(decide(Status::Active, seats(false, 2, Some(3)), None).take_domain_seat);
        assert_eq!(
            decide(Status::Active, seats(false, 3, Some(3)), None).code,
            Code::DomainLimitReached
        );
        let held = decide(Status::Active, seats(true, 3, Some(3)), None);
        assert_eq!((held.code, held.take_domain_seat), (Code::Valid, false));
        assert!(decide(Status::Active, seats(false, 1_000, None), None).take_domain_seat);
        assert_eq!(
            decide(Status::Active, None, seats(false, 0, Some(0))).code,
            Code::MachineLimitReached
        );
    }

    #[test]
    fn a_full_machine_limit_takes_no_domain_seat() {
        let d = decide(
            Status::Active,
            seats(false, 0, Some(3)),
            seats(false, 1, Some(1)),
        );
        assert_eq!(
            d,
            Decision {
                code: Code::MachineLimitReached,
                take_domain_seat: false,
                take_machine_seat: false
            }
        );
    }

    #[test]
    fn expiry_makes_active_expired() {
        let now = Utc::now();
        assert_eq!(
            effective_status(Status::Active, Some(now), now),
            Status::Expired
        );
        assert_eq!(
            effective_status(Status::Active, Some(now + Duration::seconds(1)), now),
            Status::Active
        );
        assert_eq!(
            effective_status(Status::Suspended, Some(now), now),
            Status::Suspended
        );
    }

    #[test]
    fn transitions() {
        let now = Utc::now();
        let future = Some(now + Duration::days(1));
        let past = Some(now - Duration::days(1));
        let ok = |cur, req, exp| transition(cur, req, exp, now).unwrap();
        assert_eq!(
            ok(Status::Active, Some(Status::Suspended), future),
            (Status::Suspended, Some(EventType::Suspended))
        );
        assert_eq!(
            ok(Status::Suspended, Some(Status::Active), future),
            (Status::Active, Some(EventType::Reinstated))
        );
        assert_eq!(
            ok(Status::Expired, None, future),
            (Status::Active, Some(EventType::Reinstated))
        );
        assert_eq!(
            ok(Status::Expired, None, None),
            (Status::Active, Some(EventType::Reinstated))
        );
        assert_eq!(
            ok(Status::Active, None, past),
            (Status::Expired, Some(EventType::Expired))
        );
        assert_eq!(
            ok(Status::Active, Some(Status::Active), future),
            (Status::Active, None)
        );
        assert_eq!(ok(Status::Revoked, None, future), (Status::Revoked, None));
        assert!(matches!(
            transition(Status::Revoked, Some(Status::Active), future, now),
            Err(StoreError::Conflict { .. })
        ));
        assert!(matches!(
            transition(Status::Revoked, Some(Status::Suspended), future, now),
            Err(StoreError::Conflict { .. })
        ));
        assert!(matches!(
            transition(Status::Expired, Some(Status::Active), past, now),
            Err(StoreError::Conflict { .. })
        ));
        assert!(matches!(
            transition(Status::Active, Some(Status::Revoked), future, now),
            Err(StoreError::Invalid { .. })
        ));
    }

    #[test]
    fn token_exp_is_grace_capped_by_expiry() {
        let iat = 1_000_000;
        assert_eq!(token_exp(true, iat, 7, None), iat + 7 * 86_400);
        let soon = crate::store::from_unix(iat + 3_600);
        assert_eq!(token_exp(true, iat, 7, Some(soon)), iat + 3_600);
        assert_eq!(token_exp(false, iat, 7, None), iat);
    }
}
