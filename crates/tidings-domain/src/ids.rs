//! Identifiers (SPEC §1).
//!
//! IDs that Tidings mints (`EVT`, `WHK`, `DLV`, `AUD`, `KEY`) carry a deployment-wide
//! sequence number: the store allocates it, this module only renders and parses it. IDs that
//! the platform supplies (`ORG-`, `WS-`, actor and subject IDs) are validated newtypes: a value
//! of one of these types is always well-formed.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a string is not a valid identifier. The message is meant for an API client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct IdError(pub String);

/// The prefixes of the IDs Tidings mints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdPrefix {
    Event,
    Webhook,
    Delivery,
    Audit,
    Key,
}

impl IdPrefix {
    pub const fn as_str(self) -> &'static str {
        match self {
            IdPrefix::Event => "EVT",
            IdPrefix::Webhook => "WHK",
            IdPrefix::Delivery => "DLV",
            IdPrefix::Audit => "AUD",
            IdPrefix::Key => "KEY",
        }
    }
}

/// Parses `PREFIX-YY-NNNNNN` into (year, number). The number has at least six digits.
fn parse_minted(prefix: &str, s: &str) -> Option<(u8, u64)> {
    let rest = s.strip_prefix(prefix)?.strip_prefix('-')?;
    let (yy, num) = rest.split_once('-')?;
    if yy.len() != 2 || !yy.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if num.len() < 6 || num.len() > 19 || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // A wider number never has a leading zero beyond the six-digit padding, so each number
    // has exactly one spelling.
    if num.len() > 6 && num.starts_with('0') {
        return None;
    }
    Some((yy.parse().ok()?, num.parse().ok()?))
}

macro_rules! minted_id {
    ($(#[$doc:meta])* $name:ident, $prefix:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name {
            /// Two-digit UTC year of creation.
            pub year: u8,
            /// Deployment-wide sequence number; increases with creation order.
            pub number: u64,
        }

        impl $name {
            pub const PREFIX: IdPrefix = $prefix;

            pub fn new(year: u8, number: u64) -> Self {
                Self { year, number }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}-{:02}-{:06}", Self::PREFIX.as_str(), self.year, self.number)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                parse_minted(Self::PREFIX.as_str(), s)
                    .map(|(year, number)| Self { year, number })
                    .ok_or_else(|| {
                        IdError(format!(
                            "`{}` is not a valid ID: expected {}-YY-NNNNNN",
                            truncate_for_message(s),
                            Self::PREFIX.as_str()
                        ))
                    })
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

minted_id!(
    /// `EVT-YY-NNNNNN`
    EventId,
    IdPrefix::Event
);
minted_id!(
    /// `KEY-YY-NNNNNN`
    KeyId,
    IdPrefix::Key
);
minted_id!(
    /// `WHK-YY-NNNNNN`
    WebhookId,
    IdPrefix::Webhook
);
minted_id!(
    /// `DLV-YY-NNNNNN`
    DeliveryId,
    IdPrefix::Delivery
);
minted_id!(
    /// `AUD-YY-NNNNNN`
    AuditId,
    IdPrefix::Audit
);

/// Keeps error messages short when a client sends a huge value.
pub fn truncate_for_message(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{head}…")
    }
}

/// `^PREFIX-[0-9]{2}-[0-9]{6,}$`, the pattern SPEC §1 gives for platform-supplied IDs.
fn is_platform_id(prefix: &str, s: &str) -> bool {
    s.strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('-'))
        .and_then(|r| r.split_once('-'))
        .is_some_and(|(yy, num)| {
            yy.len() == 2
                && yy.bytes().all(|b| b.is_ascii_digit())
                && (6..=32).contains(&num.len())
                && num.bytes().all(|b| b.is_ascii_digit())
        })
}

macro_rules! platform_id {
    ($(#[$doc:meta])* $name:ident, $prefix:expr, $what:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                if is_platform_id($prefix, s) {
                    Ok(Self(s.to_string()))
                } else {
                    Err(IdError(format!(
                        "`{}` is not a valid {}: expected {}-YY-NNNNNN",
                        truncate_for_message(s),
                        $what,
                        $prefix
                    )))
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

platform_id!(
    /// An organization, `ORG-YY-NNNNNN`, supplied by the platform.
    OrgId,
    "ORG",
    "organization ID"
);
platform_id!(
    /// A workspace, `WS-YY-NNNNNN`, supplied by the platform. Belongs to one organization.
    WorkspaceId,
    "WS",
    "workspace ID"
);

/// An actor or subject ID, or a subject type: 1–64 characters of `[A-Za-z0-9_.:-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Token(String);

impl Token {
    pub const MAX_LEN: usize = 64;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Token {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        if s.is_empty() {
            return Err(IdError("must not be empty".into()));
        }
        if s.len() > Self::MAX_LEN {
            return Err(IdError(format!(
                "must be at most {} characters, got {}",
                Self::MAX_LEN,
                s.len()
            )));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')))
        {
            return Err(IdError(format!(
                "`{}` contains {c:?}; only letters, digits and _ . : - are allowed",
                truncate_for_message(s)
            )));
        }
        Ok(Self(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_ids_round_trip_and_pad_to_six_digits() {
        let id = EventId::new(26, 44912);
        assert_eq!(id.to_string(), "EVT-26-044912");
        assert_eq!("EVT-26-044912".parse::<EventId>().unwrap(), id);
        let wide = EventId::new(26, 12_345_678);
        assert_eq!(wide.to_string(), "EVT-26-12345678");
        assert_eq!(wide.to_string().parse::<EventId>().unwrap(), wide);
    }

    #[test]
    fn minted_ids_reject_malformed_input() {
        for bad in [
            "",
            "EVT-26-04491",
            "EVT-6-044912",
            "evt-26-044912",
            "WHK-26-044912",
            "EVT-26-0449x2",
            "EVT-26-0000044912",
            "EVT-26-044912-",
            "EVT-26-99999999999999999999",
        ] {
            assert!(bad.parse::<EventId>().is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn platform_ids_follow_the_spec_pattern() {
        assert!("ORG-26-090500".parse::<OrgId>().is_ok());
        assert!("ORG-26-0905001".parse::<OrgId>().is_ok());
        assert!("WS-26-000021".parse::<WorkspaceId>().is_ok());
        assert!("ORG-26-09050".parse::<OrgId>().is_err());
        assert!("WS-26-000021".parse::<OrgId>().is_err());
        assert!("ORG-2026-090500".parse::<OrgId>().is_err());
    }

    #[test]
    fn tokens_limit_length_and_charset() {
        assert!("USR-26-000044".parse::<Token>().is_ok());
        assert!("a:b.c_d-e".parse::<Token>().is_ok());
        assert!("".parse::<Token>().is_err());
        assert!("a b".parse::<Token>().is_err());
        assert!("x".repeat(64).parse::<Token>().is_ok());
        assert!("x".repeat(65).parse::<Token>().is_err());
    }
}
