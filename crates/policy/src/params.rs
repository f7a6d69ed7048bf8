//! Legal parameters as data: the shapes of the TOML files in `policies/` and
//! the validated values the engine exposes.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::error::PolicyLoadError;
use crate::source::SourceFile;

/// A value together with the article of law (or policy decision) it comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cited<T> {
    /// the value
    pub value: T,
    /// where it comes from, e.g. "Art. 12(3)"
    pub article: String,
}

/// A legal period: "1 month", "45 days", "10 business days", "10 years".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    /// calendar days
    Days(u32),
    /// business days (Monday to Friday; public holidays are the caller's concern)
    BusinessDays(u32),
    /// calendar months (same day of month, clamped to the month's end)
    Months(u32),
    /// calendar years
    Years(u32),
}

/// A period string that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid period {0:?}: expected \"N days\", \"N business days\", \"N months\" or \"N years\""
)]
pub struct PeriodError(pub String);

impl FromStr for Period {
    type Err = PeriodError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || PeriodError(s.to_owned());
        let mut words = s.split_whitespace();
        let n: u32 = words.next().ok_or_else(err)?.parse().map_err(|_| err())?;
        let unit: Vec<&str> = words.collect();
        let singular = n == 1;
        match (unit.as_slice(), singular) {
            (["day"], true) | (["days"], false) => Ok(Self::Days(n)),
            (["business", "day"], true) | (["business", "days"], false) => {
                Ok(Self::BusinessDays(n))
            }
            (["month"], true) | (["months"], false) => Ok(Self::Months(n)),
            (["year"], true) | (["years"], false) => Ok(Self::Years(n)),
            _ => Err(err()),
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (n, unit) = match *self {
            Self::Days(n) => (n, "day"),
            Self::BusinessDays(n) => (n, "business day"),
            Self::Months(n) => (n, "month"),
            Self::Years(n) => (n, "year"),
        };
        write!(f, "{n} {unit}{}", if n == 1 { "" } else { "s" })
    }
}

impl Serialize for Period {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Data-subject request deadlines of a regime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DsrParams {
    /// time to answer a request
    pub deadline: Cited<Period>,
    /// how much longer it may take when extended
    pub extension: Option<Cited<Period>>,
    /// time to confirm receipt of a request
    pub receipt_confirmation: Option<Cited<Period>>,
}

/// Age thresholds of a regime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChildParams {
    /// under this age, consent must come from the holder of parental responsibility
    pub guardian_age: Cited<u8>,
    /// under this age, sale/share purposes need opt-in (CCPA); 0 where unused
    pub opt_in_age: Cited<u8>,
}

/// Consent prompting periods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsentParams {
    /// how long to wait before asking again after a refusal
    pub reprompt_after_refusal: Cited<Period>,
    /// how long a consent stays valid before it is asked again
    pub validity: Cited<Period>,
}

/// Countries where adequacy covers only recipients certified under a framework.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Framework {
    /// ISO country codes
    pub countries: Vec<String>,
    /// the mechanism name proving certification, e.g. "dpf"
    pub mechanism: String,
    /// legal source
    pub article: String,
}

/// Cross-border transfer rules of a regime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransferParams {
    /// countries data flows to freely (EEA for GDPR, CN for PIPL)
    pub home: Cited<Vec<String>>,
    /// countries with an adequacy decision
    pub adequate: Cited<Vec<String>>,
    /// adequacy limited to certified recipients (EU-U.S. DPF)
    pub framework: Option<Framework>,
    /// mechanisms accepted without adequacy (SCCs, IDTA, standard contract, ...)
    pub mechanisms: Cited<Vec<String>>,
    /// numeric thresholds (PIPL assessment thresholds)
    pub thresholds: BTreeMap<String, Cited<u64>>,
}

/// One regime's legal parameters (a file in `policies/regimes/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Regime {
    /// "GDPR", "UK_GDPR", "CCPA", "PIPL", "LGPD"
    pub id: String,
    /// full name
    pub name: String,
    /// DSR deadlines
    pub dsr: DsrParams,
    /// ages
    pub children: ChildParams,
    /// purposes that need prior consent
    pub opt_in: Cited<Vec<String>>,
    /// purposes allowed until the subject objects
    pub opt_out: Cited<Vec<String>>,
    /// purposes that are a sale or sharing (CCPA)
    pub sale_share: Cited<Vec<String>>,
    /// sensitive data categories
    pub sensitive: Cited<Vec<String>>,
    /// consent periods
    pub consent: ConsentParams,
    /// transfer rules
    pub transfers: TransferParams,
    /// retention per data category; key "default" applies to the rest
    pub retention: BTreeMap<String, Cited<Period>>,
}

/// A jurisdiction a subject can be in (an entry of `jurisdictions.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JurisdictionInfo {
    /// "EU-DE", "GB", "US-CA", ...
    pub code: String,
    /// the regime id
    pub regime: String,
    /// ISO 3166-1 alpha-2 country
    pub country: String,
    /// IANA time zone deadlines are computed in
    pub time_zone: String,
    /// digital-consent age, after member-state overrides
    pub guardian_age: Cited<u8>,
}

/// A destination platform (an entry of `destinations.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DestinationInfo {
    /// key, e.g. "meta"
    pub key: String,
    /// legal entity and product
    pub name: String,
    /// ISO country where it processes the data
    pub region: String,
    /// transfer mechanisms in place with it
    pub mechanisms: Vec<String>,
}

// ---- raw TOML shapes -------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCited<T> {
    pub(crate) value: Spanned<T>,
    pub(crate) article: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRegime {
    pub(crate) id: Spanned<String>,
    pub(crate) name: String,
    pub(crate) dsr: RawDsr,
    pub(crate) children: RawChildren,
    pub(crate) purposes: RawPurposes,
    pub(crate) sensitive: RawSensitive,
    pub(crate) consent: RawConsent,
    pub(crate) transfers: RawTransfers,
    pub(crate) retention: BTreeMap<String, RawCited<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDsr {
    pub(crate) deadline: RawCited<String>,
    pub(crate) extension: Option<RawCited<String>>,
    pub(crate) receipt_confirmation: Option<RawCited<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawChildren {
    pub(crate) guardian_age: RawCited<u8>,
    pub(crate) opt_in_age: RawCited<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPurposes {
    pub(crate) opt_in: RawCited<Vec<Spanned<String>>>,
    pub(crate) opt_out: RawCited<Vec<Spanned<String>>>,
    pub(crate) sale_share: RawCited<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSensitive {
    pub(crate) categories: RawCited<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConsent {
    pub(crate) reprompt_after_refusal: RawCited<String>,
    pub(crate) validity: RawCited<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFramework {
    pub(crate) value: Vec<Spanned<String>>,
    pub(crate) mechanism: Spanned<String>,
    pub(crate) article: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTransfers {
    pub(crate) home: RawCited<Vec<Spanned<String>>>,
    pub(crate) adequate: RawCited<Vec<Spanned<String>>>,
    pub(crate) framework: Option<RawFramework>,
    pub(crate) mechanisms: RawCited<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(crate) thresholds: BTreeMap<String, RawCited<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPurposesFile {
    pub(crate) purposes: BTreeMap<Spanned<String>, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCategoriesFile {
    pub(crate) data_categories: BTreeMap<Spanned<String>, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTcfEntry {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) purposes: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) data_categories: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTcfFile {
    pub(crate) purposes: BTreeMap<Spanned<String>, RawTcfEntry>,
    pub(crate) special_purposes: BTreeMap<Spanned<String>, RawTcfEntry>,
    pub(crate) special_features: BTreeMap<Spanned<String>, RawTcfEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGppEntry {
    #[serde(default)]
    pub(crate) purposes: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) data_categories: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGppFile {
    pub(crate) usnat: BTreeMap<String, RawGppEntry>,
    pub(crate) usca: BTreeMap<String, RawGppEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJurisdiction {
    pub(crate) regime: Spanned<String>,
    pub(crate) country: Spanned<String>,
    pub(crate) time_zone: Spanned<String>,
    pub(crate) guardian_age: Option<RawCited<u8>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJurisdictionsFile {
    pub(crate) jurisdictions: BTreeMap<Spanned<String>, RawJurisdiction>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDestination {
    pub(crate) name: String,
    pub(crate) region: Spanned<String>,
    pub(crate) mechanisms: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDestinationsFile {
    pub(crate) destinations: BTreeMap<Spanned<String>, RawDestination>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFieldDefaults {
    pub(crate) event: Spanned<String>,
    #[serde(rename = "trait")]
    pub(crate) trait_: Spanned<String>,
    pub(crate) context: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFieldsFile {
    pub(crate) default: RawFieldDefaults,
    pub(crate) event: BTreeMap<String, Spanned<String>>,
    #[serde(rename = "trait")]
    pub(crate) trait_: BTreeMap<String, Spanned<String>>,
    pub(crate) context: BTreeMap<String, Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawObligation {
    pub(crate) id: Spanned<String>,
    pub(crate) kind: Spanned<String>,
    pub(crate) actions: Vec<Spanned<String>>,
    pub(crate) categories: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) cross_border_only: bool,
    pub(crate) article: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawObligationsFile {
    pub(crate) obligation: Vec<RawObligation>,
}

/// Parses a TOML file into `T`, mapping errors to `file:line`.
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(
    file: &SourceFile,
) -> Result<T, PolicyLoadError> {
    toml::from_str(&file.text).map_err(|e| {
        let line = e.span().map_or(1, |s| file.line_of(s.start));
        PolicyLoadError::Toml {
            file: file.path.clone(),
            line,
            reason: e.message().trim().to_owned(),
        }
    })
}

/// Builds `file:line: reason` for a spanned value.
pub(crate) fn invalid_at<T>(
    file: &SourceFile,
    at: &Spanned<T>,
    reason: impl Into<String>,
) -> PolicyLoadError {
    PolicyLoadError::Invalid {
        file: file.path.clone(),
        line: file.line_of(at.span().start),
        reason: reason.into(),
    }
}

/// Checks the article is present and converts a cited value.
pub(crate) fn cited<T, U>(
    file: &SourceFile,
    raw: RawCited<T>,
    convert: impl FnOnce(Spanned<T>) -> Result<U, PolicyLoadError>,
) -> Result<Cited<U>, PolicyLoadError> {
    if raw.article.get_ref().trim().is_empty() {
        return Err(invalid_at(file, &raw.article, "article must not be empty"));
    }
    let article = raw.article.into_inner();
    Ok(Cited {
        value: convert(raw.value)?,
        article,
    })
}

/// Parses a spanned period string.
pub(crate) fn period(file: &SourceFile, s: Spanned<String>) -> Result<Period, PolicyLoadError> {
    s.get_ref()
        .parse::<Period>()
        .map_err(|e| invalid_at(file, &s, e.to_string()))
}

/// Whether `code` is an ISO 3166-1 alpha-2 shaped code (two ASCII capitals).
pub(crate) fn is_country_code(code: &str) -> bool {
    code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_parse_and_print() {
        assert_eq!("1 month".parse(), Ok(Period::Months(1)));
        assert_eq!("45 days".parse(), Ok(Period::Days(45)));
        assert_eq!("10 business days".parse(), Ok(Period::BusinessDays(10)));
        assert_eq!("10 years".parse(), Ok(Period::Years(10)));
        assert!("1 months".parse::<Period>().is_err());
        assert!("two days".parse::<Period>().is_err());
        assert!("3 fortnights".parse::<Period>().is_err());
        assert_eq!(Period::BusinessDays(10).to_string(), "10 business days");
        assert_eq!(Period::Months(1).to_string(), "1 month");
    }
}
