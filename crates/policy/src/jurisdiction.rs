//! Jurisdiction codes: `EU-DE`, `GB`, `US-CA`, `CN`, `BR`, ...

use std::fmt;

/// A syntactically valid jurisdiction code, normalised to upper case.
///
/// Forms: `CC` (ISO 3166-1 alpha-2 country), `EU-CC` (EEA member state),
/// `CC-SUB` (ISO 3166-2 subdivision, 1 to 3 letters or digits). Which regime a
/// jurisdiction falls under is policy data: see
/// [`PolicyEngine::jurisdiction`](crate::PolicyEngine::jurisdiction).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Jurisdiction(String);

/// A string that is not a jurisdiction code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid jurisdiction {0:?}: expected a code such as EU-DE, GB, US-CA, CN or BR")]
pub struct JurisdictionError(pub String);

impl Jurisdiction {
    /// Parses and normalises a code (`eu-de` → `EU-DE`; `DE` stays `DE`).
    pub fn parse(s: &str) -> Result<Self, JurisdictionError> {
        let code = s.trim().to_ascii_uppercase();
        let err = || JurisdictionError(s.to_owned());
        let mut parts = code.split('-');
        let first = parts.next().ok_or_else(err)?;
        let second = parts.next();
        if parts.next().is_some()
            || first.len() != 2
            || !first.bytes().all(|b| b.is_ascii_uppercase())
        {
            return Err(err());
        }
        if let Some(sub) = second {
            let ok = (1..=3).contains(&sub.len()) && sub.bytes().all(|b| b.is_ascii_alphanumeric());
            if !ok
                || (first == "EU"
                    && !(sub.len() == 2 && sub.bytes().all(|b| b.is_ascii_uppercase())))
            {
                return Err(err());
            }
        } else if first == "EU" {
            return Err(err());
        }
        Ok(Self(code))
    }

    /// The normalised code.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The ISO 3166-1 alpha-2 country: `EU-DE` → `DE`, `US-CA` → `US`, `GB` → `GB`.
    pub fn country(&self) -> &str {
        match self.0.strip_prefix("EU-") {
            Some(member) => member,
            None => &self.0[..2],
        }
    }
}

impl fmt::Display for Jurisdiction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Jurisdiction {
    type Err = JurisdictionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises_codes() {
        let cases = [
            ("EU-DE", "EU-DE", "DE"),
            ("eu-fr", "EU-FR", "FR"),
            ("GB", "GB", "GB"),
            (" us-ca ", "US-CA", "US"),
            ("CN", "CN", "CN"),
            ("BR", "BR", "BR"),
        ];
        for (input, code, country) in cases {
            let j = Jurisdiction::parse(input).unwrap();
            assert_eq!(j.as_str(), code, "{input}");
            assert_eq!(j.country(), country, "{input}");
        }
    }

    #[test]
    fn rejects_malformed_codes() {
        for bad in [
            "",
            "E",
            "EU",
            "GBR",
            "EU-D",
            "EU-12",
            "US-CA-X",
            "U1",
            "US-TOOLONG",
            "US-",
        ] {
            assert!(
                Jurisdiction::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }
}
