//! Blind indexes: identifiers normalized per kind, then HMAC-SHA256 under the workspace's
//! blind-index key. Only blind indexes are stored for lookup; the plaintext never is.
//!
//! Normalization:
//! - email: trim, lowercase (Unicode-aware); must have a non-empty local part and domain.
//! - phone: E.164 via `phonenumber` (a maintained libphonenumber port), using the default
//!   region (ISO 3166 alpha-2) from context for national numbers; invalid numbers are rejected.
//!   Extensions are not part of E.164 and are dropped.
//! - device id: trim, lowercase.
//! - customer id: per source. The source name is trimmed and lowercased and becomes part of
//!   the index (the same id from two sources never collides); the value is trimmed and kept
//!   case-sensitive, except for known sources (`shopify`: `gid://shopify/Customer/123` ≡ `123`).
//!
//! The HMAC input is `kind tag ‖ 0x00 ‖ normalized value`, so equal strings of different kinds
//! produce unrelated indexes.

use std::sync::Arc;

use ring::hmac;
use zeroize::Zeroizing;

use crate::error::{Result, VaultError};

/// What an identifier is; selects its normalization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentifierKind<'a> {
    /// An email address.
    Email,
    /// A phone number.
    Phone,
    /// A device or advertising id.
    DeviceId,
    /// A customer id issued by `source` (a storefront, a CRM, ...).
    CustomerId {
        /// The issuing system, e.g. `shopify`.
        source: &'a str,
    },
}

impl IdentifierKind<'_> {
    /// A short name for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            IdentifierKind::Email => "email",
            IdentifierKind::Phone => "phone",
            IdentifierKind::DeviceId => "device_id",
            IdentifierKind::CustomerId { .. } => "customer_id",
        }
    }
}

/// HMAC-SHA256 of a normalized identifier under the workspace's blind-index key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlindIndex(pub [u8; 32]);

impl BlindIndex {
    /// The 32 bytes, as stored.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// From stored bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(BlindIndex)
    }
}

impl std::fmt::Debug for BlindIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlindIndex({})", self.to_hex())
    }
}

impl std::fmt::Display for BlindIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

fn invalid(kind: &IdentifierKind<'_>, reason: &'static str) -> VaultError {
    VaultError::InvalidIdentifier {
        kind: kind.name(),
        reason,
    }
}

fn lower(s: &str) -> String {
    if s.is_ascii() {
        s.to_ascii_lowercase()
    } else {
        s.to_lowercase()
    }
}

/// Normalizes an identifier of `kind`. `default_region` (ISO 3166 alpha-2, e.g. `FR`) is used
/// for phone numbers written without a country code. The result is zeroized on drop.
pub fn normalize(
    kind: IdentifierKind<'_>,
    raw: &str,
    default_region: Option<&str>,
) -> Result<Zeroizing<String>> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(invalid(&kind, "empty"));
    }
    let normalized = match kind {
        IdentifierKind::Email => {
            let email = lower(trimmed);
            match email.rsplit_once('@') {
                Some((local, domain)) if !local.is_empty() && !domain.is_empty() => {}
                _ => return Err(invalid(&kind, "not an email address")),
            }
            if email.chars().any(char::is_whitespace) {
                return Err(invalid(&kind, "contains whitespace"));
            }
            email
        }
        IdentifierKind::Phone => normalize_phone(&kind, trimmed, default_region)?,
        IdentifierKind::DeviceId => lower(trimmed),
        IdentifierKind::CustomerId { source } => {
            let source = lower(source.trim());
            if source.is_empty()
                || !source
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            {
                return Err(invalid(
                    &kind,
                    "source must be a non-empty name of [a-z0-9_.-]",
                ));
            }
            let value = match source.as_str() {
                "shopify" => trimmed
                    .strip_prefix("gid://shopify/Customer/")
                    .unwrap_or(trimmed),
                _ => trimmed,
            };
            if value.is_empty() {
                return Err(invalid(&kind, "empty"));
            }
            format!("{source}\u{0}{value}")
        }
    };
    Ok(Zeroizing::new(normalized))
}

fn normalize_phone(
    kind: &IdentifierKind<'_>,
    raw: &str,
    default_region: Option<&str>,
) -> Result<String> {
    let region = match default_region.map(str::trim).filter(|r| !r.is_empty()) {
        Some(r) => Some(
            r.to_ascii_uppercase()
                .parse::<phonenumber::country::Id>()
                .map_err(|_| invalid(kind, "unknown default region"))?,
        ),
        None => None,
    };
    let number =
        phonenumber::parse(region, raw).map_err(|_| invalid(kind, "not a phone number"))?;
    if !phonenumber::is_valid(&number) {
        return Err(invalid(kind, "not a valid phone number"));
    }
    Ok(number.format().mode(phonenumber::Mode::E164).to_string())
}

fn tag(kind: &IdentifierKind<'_>) -> &'static [u8] {
    match kind {
        IdentifierKind::Email => b"email",
        IdentifierKind::Phone => b"phone",
        IdentifierKind::DeviceId => b"device",
        IdentifierKind::CustomerId { .. } => b"customer",
    }
}

/// A workspace's blind-index key, ready to index synchronously (get it once with
/// [`crate::Vault::blind_indexer`] for batch work).
#[derive(Clone)]
pub struct BlindIndexer {
    pub(crate) key: Arc<hmac::Key>,
}

impl std::fmt::Debug for BlindIndexer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlindIndexer(..)")
    }
}

impl BlindIndexer {
    pub(crate) fn from_key_bytes(bytes: &[u8]) -> Self {
        BlindIndexer {
            key: Arc::new(hmac::Key::new(hmac::HMAC_SHA256, bytes)),
        }
    }

    /// Normalizes `raw` as `kind` and returns its blind index.
    pub fn index(
        &self,
        kind: IdentifierKind<'_>,
        raw: &str,
        default_region: Option<&str>,
    ) -> Result<BlindIndex> {
        let normalized = normalize(kind, raw, default_region)?;
        Ok(self.index_normalized(kind, &normalized))
    }

    /// The blind index of an already normalized value (see [`normalize`]).
    pub fn index_normalized(&self, kind: IdentifierKind<'_>, normalized: &str) -> BlindIndex {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(tag(&kind));
        ctx.update(&[0]);
        ctx.update(normalized.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        BlindIndex(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(kind: IdentifierKind<'_>, raw: &str, region: Option<&str>) -> Result<String> {
        normalize(kind, raw, region).map(|z| z.to_string())
    }

    #[test]
    fn email_is_trimmed_and_lowercased() {
        assert_eq!(
            n(IdentifierKind::Email, "  Ana.Lima@Example.COM \n", None).unwrap(),
            "ana.lima@example.com"
        );
        assert_eq!(
            n(IdentifierKind::Email, "ÉLODIE@exemple.fr", None).unwrap(),
            "élodie@exemple.fr"
        );
        for bad in [
            "",
            "   ",
            "no-at-sign",
            "@example.com",
            "ana@",
            "a b@example.com",
        ] {
            assert!(
                matches!(
                    n(IdentifierKind::Email, bad, None),
                    Err(VaultError::InvalidIdentifier { kind: "email", .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn phone_is_e164_with_default_region() {
        assert_eq!(
            n(IdentifierKind::Phone, "06 12 34 56 78", Some("FR")).unwrap(),
            "+33612345678"
        );
        assert_eq!(
            n(IdentifierKind::Phone, "+33 6 12 34 56 78", None).unwrap(),
            "+33612345678"
        );
        assert_eq!(
            n(IdentifierKind::Phone, "+33 6.12-34-56-78", Some("US")).unwrap(),
            "+33612345678"
        );
        assert_eq!(
            n(IdentifierKind::Phone, "(202) 456-1111", Some("us")).unwrap(),
            "+12024561111"
        );
        assert_eq!(
            n(IdentifierKind::Phone, "030 1234567", Some("DE")).unwrap(),
            "+49301234567"
        );
        // Without a region a national number is ambiguous.
        assert!(n(IdentifierKind::Phone, "06 12 34 56 78", None).is_err());
        assert!(n(IdentifierKind::Phone, "12", Some("FR")).is_err());
        assert!(n(IdentifierKind::Phone, "not a phone", Some("FR")).is_err());
        assert!(matches!(
            n(IdentifierKind::Phone, "0612345678", Some("XX")),
            Err(VaultError::InvalidIdentifier {
                reason: "unknown default region",
                ..
            })
        ));
    }

    #[test]
    fn device_and_customer_ids() {
        assert_eq!(
            n(IdentifierKind::DeviceId, " AB12-CD ", None).unwrap(),
            "ab12-cd"
        );
        let shopify = IdentifierKind::CustomerId {
            source: " Shopify ",
        };
        assert_eq!(
            n(shopify, "gid://shopify/Customer/12345", None).unwrap(),
            "shopify\u{0}12345"
        );
        assert_eq!(n(shopify, " 12345 ", None).unwrap(), "shopify\u{0}12345");
        let crm = IdentifierKind::CustomerId { source: "crm" };
        assert_eq!(
            n(crm, "AbC-9", None).unwrap(),
            "crm\u{0}AbC-9",
            "customer ids keep their case"
        );
        assert!(n(IdentifierKind::CustomerId { source: "" }, "1", None).is_err());
        assert!(n(IdentifierKind::CustomerId { source: "a b" }, "1", None).is_err());
    }

    #[test]
    fn indexes_are_keyed_normalized_and_kind_separated() {
        let a = BlindIndexer::from_key_bytes(&[1; 32]);
        let b = BlindIndexer::from_key_bytes(&[2; 32]);
        let e1 = a
            .index(IdentifierKind::Email, "Ana@Example.com", None)
            .unwrap();
        let e2 = a
            .index(IdentifierKind::Email, " ana@example.com", None)
            .unwrap();
        assert_eq!(e1, e2);
        assert_ne!(
            e1,
            b.index(IdentifierKind::Email, "ana@example.com", None)
                .unwrap()
        );
        assert_ne!(
            a.index_normalized(IdentifierKind::DeviceId, "x@y"),
            a.index_normalized(IdentifierKind::Email, "x@y")
        );
        let crm = a
            .index(IdentifierKind::CustomerId { source: "crm" }, "1", None)
            .unwrap();
        let pos = a
            .index(IdentifierKind::CustomerId { source: "pos" }, "1", None)
            .unwrap();
        assert_ne!(crm, pos);
        // Known HMAC-SHA256 value: tag "email", 0x00, "a@b" under key [1; 32], computed independently.
        let expected = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &[1; 32]), b"email\0a@b");
        assert_eq!(
            a.index(IdentifierKind::Email, "A@B", None)
                .unwrap()
                .as_bytes()
                .as_slice(),
            expected.as_ref()
        );
    }

    proptest! {
        #[test]
        fn normalization_never_panics(raw in "\\PC{0,40}", region in "[A-Za-z]{0,3}") {
            for kind in [IdentifierKind::Email, IdentifierKind::Phone, IdentifierKind::DeviceId, IdentifierKind::CustomerId { source: "crm" }] {
                let _ = normalize(kind, &raw, Some(&region));
            }
        }

        #[test]
        fn phone_rfc3966_like_inputs_never_panic(raw in "(tel:)?[+0-9;=a-z\\-é]{0,30}") {
            let _ = normalize(IdentifierKind::Phone, &raw, Some("FR"));
        }
    }
}
