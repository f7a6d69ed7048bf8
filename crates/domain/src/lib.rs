//! Domain types shared by every room: the identity of a workspace, the region
//! its data lives in, time zones, and the scopes an API key can carry.
//!
//! Each type validates on construction, so a value of it is always well formed.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A value that failed validation, with the reason in words a caller can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct InvalidValue {
    pub reason: String,
}

impl InvalidValue {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

/// Whether `value` is a lowercase token: `a-z`, `0-9` and inner `-`, within `max` bytes.
fn is_token(value: &str, max: usize) -> bool {
    !value.is_empty()
        && value.len() <= max
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-')
}

/// A tenant. Every row of every table carries one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WorkspaceId(String);

impl WorkspaceId {
    pub const MAX_LEN: usize = 63;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for WorkspaceId {
    type Err = InvalidValue;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if is_token(value, Self::MAX_LEN) {
            Ok(Self(value.to_owned()))
        } else {
            Err(InvalidValue::new(format!(
                "workspace id must be 1 to {} characters of a-z, 0-9 and inner '-'",
                Self::MAX_LEN
            )))
        }
    }
}

impl TryFrom<String> for WorkspaceId {
    type Error = InvalidValue;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<WorkspaceId> for String {
    fn from(id: WorkspaceId) -> Self {
        id.0
    }
}

impl fmt::Display for WorkspaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A data-residency region: one database and one stream cluster serve it
/// (`eu`, `us`, `uk`, `br`, `cn`). Operators name their regions.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Region(String);

impl Region {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Region {
    type Err = InvalidValue;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if is_token(value, 16) {
            Ok(Self(value.to_owned()))
        } else {
            Err(InvalidValue::new(
                "region must be 1 to 16 characters of a-z, 0-9 and inner '-' (e.g. eu, us)",
            ))
        }
    }
}

impl TryFrom<String> for Region {
    type Error = InvalidValue;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<Region> for String {
    fn from(region: Region) -> Self {
        region.0
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An IANA time zone (`Europe/Paris`), in which deadlines and schedules are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TimeZone(chrono_tz::Tz);

impl TimeZone {
    pub fn tz(self) -> chrono_tz::Tz {
        self.0
    }
}

impl FromStr for TimeZone {
    type Err = InvalidValue;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        value.parse::<chrono_tz::Tz>().map(Self).map_err(|_| {
            InvalidValue::new(format!(
                "'{value}' is not an IANA time zone (e.g. Europe/Paris, America/Los_Angeles, UTC)"
            ))
        })
    }
}

impl TryFrom<String> for TimeZone {
    type Error = InvalidValue;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<TimeZone> for String {
    fn from(zone: TimeZone) -> Self {
        zone.0.name().to_owned()
    }
}

impl fmt::Display for TimeZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name())
    }
}

/// What an API key may do. `Admin` may do everything in its workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Send events (IngestService, the Segment-compatible HTTP API).
    Ingest,
    /// Record and read consent (ConsentService).
    Consent,
    /// File and follow data-subject requests (DsrService).
    Dsr,
    /// Segments, destinations and syncs (AudienceService).
    Audience,
    /// Everything, including profiles (IdentityService).
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::Ingest,
        Scope::Consent,
        Scope::Dsr,
        Scope::Audience,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Consent => "consent",
            Scope::Dsr => "dsr",
            Scope::Audience => "audience",
            Scope::Admin => "admin",
        }
    }
}

impl FromStr for Scope {
    type Err = InvalidValue;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == value)
            .ok_or_else(|| {
                InvalidValue::new(format!(
                    "unknown scope '{value}' (expected ingest, consent, dsr, audience or admin)"
                ))
            })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The scopes of one API key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scopes(Vec<Scope>);

impl Scopes {
    pub fn new(mut scopes: Vec<Scope>) -> Self {
        scopes.sort();
        scopes.dedup();
        Self(scopes)
    }

    /// Whether these scopes allow `needed`: the scope itself, or admin.
    pub fn allows(&self, needed: Scope) -> bool {
        self.0.contains(&needed) || self.0.contains(&Scope::Admin)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = Scope> + '_ {
        self.0.iter().copied()
    }
}

impl FromStr for Scopes {
    type Err = InvalidValue;
    /// Parses a comma-separated list: `ingest,consent`.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let scopes = value
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<Scope>, _>>()?;
        if scopes.is_empty() {
            return Err(InvalidValue::new(
                "at least one scope is needed (ingest, consent, dsr, audience, admin)",
            ));
        }
        Ok(Self::new(scopes))
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|scope| scope.as_str()).collect();
        f.write_str(&names.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_ids_are_lowercase_tokens() {
        assert!("acme-eu".parse::<WorkspaceId>().is_ok());
        for bad in [
            "",
            "Acme",
            "acme eu",
            "-acme",
            "acme-",
            "a/b",
            &"a".repeat(64),
        ] {
            assert!(bad.parse::<WorkspaceId>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn scopes_parse_dedupe_and_admin_allows_everything() {
        let scopes: Scopes = "consent, ingest,consent".parse().unwrap();
        assert_eq!(scopes.to_string(), "ingest,consent");
        assert!(scopes.allows(Scope::Ingest));
        assert!(!scopes.allows(Scope::Audience));
        let admin: Scopes = "admin".parse().unwrap();
        assert!(Scope::ALL.into_iter().all(|scope| admin.allows(scope)));
    }

    #[test]
    fn bad_scope_lists_are_refused_with_the_culprit_named() {
        let err = "ingest,root".parse::<Scopes>().unwrap_err();
        assert!(err.reason.contains("'root'"), "{err}");
        assert!(" , ".parse::<Scopes>().is_err());
    }

    #[test]
    fn time_zones_are_iana_names() {
        let zone: TimeZone = "Europe/Paris".parse().unwrap();
        assert_eq!(zone.to_string(), "Europe/Paris");
        assert!("Mars/Olympus".parse::<TimeZone>().is_err());
    }
}
