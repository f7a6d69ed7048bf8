//! Per-platform normalization of customer data before hashing.
//!
//! Each platform matches on the SHA-256 of *its own* normal form, so one value gives a
//! different hash per platform. The rules followed, and where they come from:
//!
//! - **Meta** — the official `facebook-business` SDK (PyPI), `CustomAudienceMixin.format_params`
//!   with a multi-key schema and `is_raw=True` (`adobjects/helpers/customaudiencemixin.py`):
//!   strip `" \t\r\n\0\x0B."` from both ends, lowercase, then per key (`normalize_key`):
//!   `EMAIL` as is, `PHONE` digits only, `FN`/`LN`/`CT`/`ST` ASCII letters only, `ZIP` up to
//!   the first `-`, `COUNTRY` the first two ASCII letters. `oracle/` runs that SDK on
//!   thousands of generated values and `tests/oracle.rs` compares hash by hash. Meta asks for
//!   phone numbers with their country code; the SDK does not add it, so with a default region
//!   a national number (no `+`/`00`) is first formatted to E.164 with `phonenumber`.
//! - **Google Ads Customer Match** — the documented rules ("Normalize and hash user-provided
//!   data", Google Ads API guides, and the `normalize_and_hash*` helpers of Google's examples):
//!   trim, lowercase; for `gmail.com`/`googlemail.com` remove every `.` before the `@`; phone
//!   numbers in E.164 (`+` and country code). Country and postal code travel unhashed in
//!   `addressInfo` ([`wire_plain`]).
//! - **TikTok** — "List of supported IDs and formats for a customer file" (TikTok Ads help):
//!   email lowercase with the `+tag` removed up to the `@`; phone digits only with the country
//!   code and no `+` or leading zeros. TikTok audiences match on email and phone only; other
//!   fields are rejected.
//!
//! A value the platform would reject normalizes to `None` (never to an empty hash).

use std::fmt;
use std::str::FromStr;

/// An ad platform whose normal form we follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Platform {
    Meta,
    Google,
    TikTok,
}

impl Platform {
    pub const ALL: [Platform; 3] = [Platform::Meta, Platform::Google, Platform::TikTok];

    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Meta => "meta",
            Platform::Google => "google",
            Platform::TikTok => "tiktok",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that names no platform or field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} `{word}` (expected one of: {expected})")]
pub struct UnknownWord {
    pub kind: &'static str,
    pub word: String,
    pub expected: &'static str,
}

impl FromStr for Platform {
    type Err = UnknownWord;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "meta" | "facebook" => Ok(Platform::Meta),
            "google" | "google_ads" => Ok(Platform::Google),
            "tiktok" => Ok(Platform::TikTok),
            _ => Err(UnknownWord {
                kind: "platform",
                word: s.to_owned(),
                expected: "meta, google, tiktok",
            }),
        }
    }
}

/// A customer-data field the platforms match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    Email,
    Phone,
    FirstName,
    LastName,
    City,
    State,
    Zip,
    Country,
}

impl Field {
    pub const ALL: [Field; 8] = [
        Field::Email,
        Field::Phone,
        Field::FirstName,
        Field::LastName,
        Field::City,
        Field::State,
        Field::Zip,
        Field::Country,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Field::Email => "email",
            Field::Phone => "phone",
            Field::FirstName => "first_name",
            Field::LastName => "last_name",
            Field::City => "city",
            Field::State => "state",
            Field::Zip => "zip",
            Field::Country => "country",
        }
    }

    /// Meta's multi-key schema name (`payload.schema`).
    pub fn meta_schema(self) -> &'static str {
        match self {
            Field::Email => "EMAIL",
            Field::Phone => "PHONE",
            Field::FirstName => "FN",
            Field::LastName => "LN",
            Field::City => "CT",
            Field::State => "ST",
            Field::Zip => "ZIP",
            Field::Country => "COUNTRY",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Field {
    type Err = UnknownWord;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Field::ALL
            .into_iter()
            .find(|f| f.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownWord {
                kind: "field",
                word: s.to_owned(),
                expected: "email, phone, first_name, last_name, city, state, zip, country",
            })
    }
}

/// Normalizes `value` the way `platform` does before hashing `field`; `None` when the
/// platform would reject it. `default_region` (ISO 3166-1 alpha-2) lets national phone
/// numbers be completed with their country code.
pub fn normalize(
    platform: Platform,
    field: Field,
    value: &str,
    default_region: Option<&str>,
) -> Option<String> {
    let normalized = match platform {
        Platform::Meta => meta(field, value, default_region),
        Platform::Google => google(field, value, default_region),
        Platform::TikTok => tiktok(field, value, default_region),
    }?;
    (!normalized.is_empty()).then_some(normalized)
}

/// Whether `value` travels unhashed on `platform` (Google's `addressInfo.countryCode` and
/// `postalCode`), and in which form.
pub fn wire_plain(
    platform: Platform,
    field: Field,
    value: &str,
    default_region: Option<&str>,
) -> Option<String> {
    match (platform, field) {
        (Platform::Google, Field::Country) => {
            google(field, value, default_region).map(|c| c.to_ascii_uppercase())
        }
        (Platform::Google, Field::Zip) => google(field, value, default_region),
        _ => None,
    }
}

/// Python's `str.isspace`: Unicode White_Space plus the information separators
/// U+001C..U+001F (bidi class B/S), which `str.strip()` also removes.
fn py_is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn py_strip(value: &str) -> &str {
    value.trim_matches(py_is_space)
}

/// The characters `format_params` strips from both ends of every key.
fn meta_strip(value: &str) -> &str {
    value.trim_matches([' ', '\t', '\r', '\n', '\0', '\u{0B}', '.'])
}

fn ascii_letters(value: &str) -> String {
    value.chars().filter(char::is_ascii_alphabetic).collect()
}

fn ascii_digits(value: &str) -> String {
    value.chars().filter(char::is_ascii_digit).collect()
}

fn meta(field: Field, value: &str, default_region: Option<&str>) -> Option<String> {
    let key = meta_strip(value).to_lowercase();
    Some(match field {
        Field::Email => key,
        Field::Phone => {
            let national = !(key.starts_with('+') || key.starts_with("00"));
            match default_region.filter(|_| national) {
                Some(region) => match e164(&key, Some(region)) {
                    Some(number) => ascii_digits(&number),
                    None => ascii_digits(&key),
                },
                None => ascii_digits(&key),
            }
        }
        Field::FirstName | Field::LastName | Field::City | Field::State => ascii_letters(&key),
        Field::Zip => key.split('-').next().unwrap_or_default().to_owned(),
        Field::Country => ascii_letters(&key).chars().take(2).collect(),
    })
}

fn google(field: Field, value: &str, default_region: Option<&str>) -> Option<String> {
    let key = py_strip(value).to_lowercase();
    match field {
        Field::Email => {
            let (local, domain) = key.split_once('@')?;
            if local.is_empty() || domain.is_empty() {
                return None;
            }
            if domain == "gmail.com" || domain == "googlemail.com" {
                Some(format!("{}@{domain}", local.replace('.', "")))
            } else {
                Some(key)
            }
        }
        Field::Phone => e164(py_strip(value), default_region),
        Field::Country => {
            (key.len() == 2 && key.bytes().all(|b| b.is_ascii_lowercase())).then_some(key)
        }
        Field::FirstName | Field::LastName | Field::City | Field::State | Field::Zip => Some(key),
    }
}

fn tiktok(field: Field, value: &str, default_region: Option<&str>) -> Option<String> {
    match field {
        Field::Email => {
            let key = py_strip(value).to_lowercase();
            let (local, domain) = key.split_once('@')?;
            let local = local.split('+').next().unwrap_or_default();
            if local.is_empty() || domain.is_empty() {
                return None;
            }
            Some(format!("{local}@{domain}"))
        }
        Field::Phone => e164(py_strip(value), default_region).map(|n| ascii_digits(&n)),
        _ => None,
    }
}

/// E.164 (`+4915112345678`) of a valid number, national ones read in `default_region`.
///
/// Parsing is `phonenumber`'s; validity is checked here the way libphonenumber does it
/// (the national number must match a number type's pattern *in full*, where `phonenumber`
/// 0.3 accepts a prefix match), and a national prefix written after the country code
/// (`+1 1 650 …`) is dropped as libphonenumber drops it. `tests/oracle.rs` compares with the
/// Python libphonenumber.
pub fn e164(raw: &str, default_region: Option<&str>) -> Option<String> {
    let region = match default_region.map(str::trim).filter(|r| !r.is_empty()) {
        Some(r) => Some(
            r.to_ascii_uppercase()
                .parse::<phonenumber::country::Id>()
                .ok()?,
        ),
        None => None,
    };
    // libphonenumber's extractPossibleNumber: the number starts at the first `+` or digit.
    let raw =
        raw.trim_start_matches(|c: char| !(c == '+' || c == '\u{ff0b}' || c.is_ascii_digit()));
    // An international prefix (`00`, `011`, `00 55`…) becomes `+`: the default region's
    // own prefix pattern when there is one, `00` otherwise.
    let owned;
    let raw = match international_rest(raw, default_region) {
        Some(rest) => {
            owned = format!("+{rest}");
            owned.as_str()
        }
        None => raw,
    };
    let number = phonenumber::parse(region, raw).ok()?;
    let code = number.code().value();
    let national = if raw.starts_with(['+', '\u{ff0b}']) {
        // Written internationally: the national number is every digit after the country
        // code as written, leading zeros included (up to an extension), as libphonenumber
        // keeps them; `phonenumber` may drop them.
        let digits: String = raw
            .split(|c: char| c.is_alphabetic() || c == '#')
            .next()
            .unwrap_or_default()
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        digits.strip_prefix(code.to_string().as_str())?.to_owned()
    } else {
        // Leading zeros kept (Italian numbers): they are part of the national number.
        format!(
            "{}{}",
            "0".repeat(usize::from(number.national().zeros())),
            number.national().value()
        )
    };
    let national = if strictly_valid(code, &national) {
        national
    } else {
        let stripped = strip_national_prefix(code, &national)?;
        strictly_valid(code, &stripped).then_some(stripped)?
    };
    Some(format!("+{code}{national}"))
}

fn international_rest(raw: &str, default_region: Option<&str>) -> Option<String> {
    let body = raw.split(|c: char| c.is_alphabetic() || c == '#').next()?;
    let digits: String = body.chars().filter(char::is_ascii_digit).collect();
    if !raw.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let idd_len = match default_region.map(str::trim).filter(|r| !r.is_empty()) {
        Some(region) => {
            let meta =
                phonenumber::metadata::DATABASE.by_id(region.to_ascii_uppercase().as_str())?;
            let idd = meta.international_prefix()?;
            let found = idd.find(&digits).filter(|m| m.start() == 0)?;
            found.end()
        }
        None => digits.starts_with("00").then_some(2)?,
    };
    let rest = &digits[idd_len..];
    // libphonenumber: a country code never starts with 0.
    (!rest.is_empty() && !rest.starts_with('0')).then(|| format!("{rest}{}", &raw[body.len()..]))
}

fn strip_national_prefix(code: u16, national: &str) -> Option<String> {
    let regions = phonenumber::metadata::DATABASE.by_code(&code)?;
    let prefix = regions.iter().find_map(|m| m.national_prefix())?;
    national
        .strip_prefix(prefix)
        .filter(|rest| !rest.is_empty())
        .map(str::to_owned)
}

fn strictly_valid(code: u16, national: &str) -> bool {
    use phonenumber::Type;
    let Some(regions) = phonenumber::metadata::DATABASE.by_code(&code) else {
        return false;
    };
    let types = [
        Type::FixedLine,
        Type::Mobile,
        Type::TollFree,
        Type::PremiumRate,
        Type::SharedCost,
        Type::PersonalNumber,
        Type::Voip,
        Type::Pager,
        Type::Uan,
        Type::Voicemail,
    ];
    regions.iter().any(|meta| {
        let descriptors = meta.descriptors();
        full_match(descriptors.general(), national)
            && types
                .iter()
                .filter_map(|t| descriptors.get(*t))
                .any(|d| full_match(d, national))
    })
}

fn full_match(descriptor: &phonenumber::metadata::Descriptor, value: &str) -> bool {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static ANCHORED: OnceLock<Mutex<HashMap<String, Option<regex::Regex>>>> = OnceLock::new();
    let lengths = descriptor.possible_length();
    if !lengths.is_empty() && !lengths.contains(&(value.len() as u16)) {
        return false;
    }
    // The metadata's patterns are written in extended syntax (whitespace for layout).
    let pattern = descriptor.national_number().as_str();
    let mut cache = ANCHORED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    cache
        .entry(pattern.to_owned())
        .or_insert_with(|| regex::Regex::new(&format!("^(?x:{pattern})$")).ok())
        .as_ref()
        .is_some_and(|re| re.is_match(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: Platform, f: Field, v: &str) -> Option<String> {
        normalize(p, f, v, None)
    }

    #[test]
    fn meta_follows_the_sdk_rules() {
        assert_eq!(
            n(Platform::Meta, Field::Email, "  John.Doe+ads@Example.COM. ").as_deref(),
            Some("john.doe+ads@example.com")
        );
        assert_eq!(
            n(Platform::Meta, Field::Phone, "+1 (650) 555-1212").as_deref(),
            Some("16505551212")
        );
        assert_eq!(
            n(Platform::Meta, Field::FirstName, "José").as_deref(),
            Some("jos")
        );
        assert_eq!(
            n(Platform::Meta, Field::Zip, "94025-1234").as_deref(),
            Some("94025")
        );
        assert_eq!(
            n(Platform::Meta, Field::Country, " U.S.A ").as_deref(),
            Some("us")
        );
        assert_eq!(n(Platform::Meta, Field::City, "123"), None);
        assert_eq!(
            normalize(Platform::Meta, Field::Phone, "030 1234567", Some("DE")).as_deref(),
            Some("49301234567")
        );
    }

    #[test]
    fn google_follows_the_documented_rules() {
        assert_eq!(
            n(Platform::Google, Field::Email, " Jane.Doe@GMail.com ").as_deref(),
            Some("janedoe@gmail.com")
        );
        assert_eq!(
            n(Platform::Google, Field::Email, "jane.doe@example.com").as_deref(),
            Some("jane.doe@example.com")
        );
        assert_eq!(n(Platform::Google, Field::Email, "no-at-sign"), None);
        assert_eq!(
            normalize(Platform::Google, Field::Phone, "(650) 253-0000", Some("US")).as_deref(),
            Some("+16502530000")
        );
        assert_eq!(n(Platform::Google, Field::Phone, "650 253 0000"), None);
        assert_eq!(
            wire_plain(Platform::Google, Field::Country, " de ", None).as_deref(),
            Some("DE")
        );
    }

    #[test]
    fn tiktok_drops_plus_tags_and_the_plus_sign() {
        assert_eq!(
            n(Platform::TikTok, Field::Email, "First-Last+promo@Gmail.com").as_deref(),
            Some("first-last@gmail.com")
        );
        assert_eq!(
            normalize(Platform::TikTok, Field::Phone, "(657) 777-0000", Some("US")).as_deref(),
            Some("16577770000")
        );
        assert_eq!(n(Platform::TikTok, Field::City, "Paris"), None);
    }
}
