//! Destinations: where a segment is sent (platform, its settings, the region where the
//! recipient processes the data, the transfer mechanism in place) and the credentials it
//! needs, referenced by name only.
//!
//! Credentials never enter the database: a destination names, per role (`access_token`,
//! `developer_token`, `secret`), a file in the credentials directory
//! (`MERIDIAN_DESTINATION_CREDENTIALS_DIR`, the Kubernetes Secret
//! `meridian-destinations-<region>` mounted at `/etc/meridian/destinations`), read at send
//! time so a rotated Secret takes effect on the next sync.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use meridian_policy::{Action, PolicyEngine, Question, QuestionError};

use crate::error::AudienceError;

/// The platforms a destination can be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlatformKind {
    Meta,
    GoogleAds,
    TikTok,
    Shopify,
    Webhook,
    File,
}

/// A setting a platform reads: its name, and its default when it has one.
struct SettingSpec {
    name: &'static str,
    default: Option<&'static str>,
    check: fn(&str) -> bool,
}

fn digits(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_digit())
}

fn word(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

fn http_url(s: &str) -> bool {
    url::Url::parse(s).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https") && u.host_str().is_some() && u.query().is_none()
    })
}

fn meta_version(s: &str) -> bool {
    s.strip_prefix('v')
        .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
}

fn shopify_version(s: &str) -> bool {
    s.len() == 7
        && s.bytes().enumerate().all(|(i, b)| {
            if i == 4 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        })
}

fn tag(s: &str) -> bool {
    !s.trim().is_empty() && s.len() <= 255 && !s.contains(',')
}

fn absolute_dir(s: &str) -> bool {
    s.starts_with('/') && !s.split('/').any(|part| part == "..")
}

fn file_format(s: &str) -> bool {
    matches!(s, "csv" | "ndjson")
}

fn any(_: &str) -> bool {
    true
}

impl PlatformKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PlatformKind::Meta => "meta",
            PlatformKind::GoogleAds => "google_ads",
            PlatformKind::TikTok => "tiktok",
            PlatformKind::Shopify => "shopify",
            PlatformKind::Webhook => "webhook",
            PlatformKind::File => "file",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            PlatformKind::Meta,
            PlatformKind::GoogleAds,
            PlatformKind::TikTok,
            PlatformKind::Shopify,
            PlatformKind::Webhook,
            PlatformKind::File,
        ]
        .into_iter()
        .find(|p| p.as_str() == text)
    }

    /// The platform's key in `policies/destinations.toml`; webhooks and files are judged
    /// by their region and mechanism alone.
    pub fn policy_key(self) -> Option<&'static str> {
        match self {
            PlatformKind::Meta => Some("meta"),
            PlatformKind::GoogleAds => Some("google"),
            PlatformKind::TikTok => Some("tiktok"),
            PlatformKind::Shopify => Some("shopify"),
            PlatformKind::Webhook | PlatformKind::File => None,
        }
    }

    /// The smallest audience the platform matches and serves (Meta: 100 matched people;
    /// Google Customer Match: 1,000 active members; TikTok: 1,000). A destination may ask
    /// for more, or for fewer where the platform itself enforces its floor; 0 means this.
    pub fn minimum_audience(self) -> u32 {
        match self {
            PlatformKind::Meta => 100,
            PlatformKind::GoogleAds | PlatformKind::TikTok => 1_000,
            PlatformKind::Shopify | PlatformKind::Webhook | PlatformKind::File => 1,
        }
    }

    fn settings(self) -> Vec<SettingSpec> {
        const fn s(
            name: &'static str,
            default: Option<&'static str>,
            check: fn(&str) -> bool,
        ) -> SettingSpec {
            SettingSpec {
                name,
                default,
                check,
            }
        }
        match self {
            PlatformKind::Meta => vec![
                s("base_url", Some("https://graph.facebook.com"), http_url),
                s("api_version", Some("v21.0"), meta_version),
                s("audience_id", None, digits),
            ],
            PlatformKind::GoogleAds => vec![
                s(
                    "base_url",
                    Some("https://googleads.googleapis.com"),
                    http_url,
                ),
                s("api_version", Some("v18"), meta_version),
                s("customer_id", None, digits),
                s("user_list_id", None, digits),
                s("login_customer_id", Some(""), |v| v.is_empty() || digits(v)),
            ],
            PlatformKind::TikTok => vec![
                s(
                    "base_url",
                    Some("https://business-api.tiktok.com"),
                    http_url,
                ),
                s("advertiser_id", None, digits),
                s("audience_id", None, word),
            ],
            PlatformKind::Shopify => vec![
                s("base_url", None, http_url),
                s("api_version", Some("2025-01"), shopify_version),
                s("tag", None, tag),
                // The storefront whose customer ids the tags go to (identity's
                // `storefront_customer_id` source).
                s("storefront", Some("shopify"), word),
            ],
            PlatformKind::Webhook => vec![s("url", None, http_url), s("prefix", Some(""), any)],
            PlatformKind::File => vec![
                s("directory", None, absolute_dir),
                s("format", Some("csv"), file_format),
                s("prefix", Some("meridian"), word),
            ],
        }
    }

    /// Credential roles the platform needs.
    pub fn credential_roles(self) -> &'static [&'static str] {
        match self {
            PlatformKind::Meta | PlatformKind::TikTok | PlatformKind::Shopify => &["access_token"],
            PlatformKind::GoogleAds => &["access_token", "developer_token"],
            PlatformKind::Webhook => &["secret"],
            PlatformKind::File => &[],
        }
    }
}

/// A destination as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationRow {
    pub destination_id: String,
    pub name: String,
    pub platform: PlatformKind,
    /// ISO 3166-1 alpha-2 country where the recipient processes the data.
    pub region: String,
    /// Empty: the mechanisms `policies/destinations.toml` lists for the platform.
    pub transfer_mechanism: String,
    /// Every setting of the platform, defaults filled in.
    pub settings: BTreeMap<String, String>,
    /// Credential role → credential (file) name.
    pub credential_names: BTreeMap<String, String>,
    pub min_audience_size: u32,
    pub created_at: DateTime<Utc>,
}

/// What a caller asks for.
#[derive(Debug, Clone, Default)]
pub struct DestinationInput {
    pub name: String,
    pub platform: Option<PlatformKind>,
    pub region: String,
    pub transfer_mechanism: String,
    pub settings: BTreeMap<String, String>,
    /// Role → credential name (never a secret value).
    pub credentials: BTreeMap<String, String>,
    pub min_audience_size: u32,
}

/// A credential name: a file name in the credentials directory, as a Kubernetes Secret key
/// can be (`[-._a-zA-Z0-9]+`), not hidden.
fn credential_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

/// Reads credentials by name from the credentials directory.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    dir: Option<PathBuf>,
}

impl Credentials {
    pub fn new(dir: Option<PathBuf>) -> Self {
        Credentials { dir }
    }

    fn path(&self, name: &str) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        credential_name_ok(name).then(|| dir.join(name))
    }

    /// Whether a credential of that name is there.
    pub fn exists(&self, name: &str) -> bool {
        self.path(name).is_some_and(|p| p.is_file())
    }

    /// The credential's value, without the trailing newline a Secret file may carry.
    pub fn read(&self, name: &str) -> Result<String, AudienceError> {
        let path = self.path(name).ok_or(AudienceError::Credential(
            "no credentials directory configured",
        ))?;
        let text = std::fs::read_to_string(path)
            .map_err(|_| AudienceError::Credential("a credential file cannot be read"))?;
        let value = text.trim_end_matches(['\n', '\r']).to_owned();
        if value.is_empty() {
            return Err(AudienceError::Credential("a credential file is empty"));
        }
        Ok(value)
    }
}

/// Validates a destination request into the row to store (a new id, defaults filled in).
pub fn validate(
    input: DestinationInput,
    policies: &PolicyEngine,
    credentials: &Credentials,
    now: DateTime<Utc>,
) -> Result<DestinationRow, AudienceError> {
    if input.name.trim().is_empty() || input.name.len() > 200 {
        return Err(AudienceError::invalid(
            "name",
            "must be 1 to 200 bytes, not blank",
        ));
    }
    let platform = input.platform.ok_or_else(|| {
        AudienceError::invalid(
            "platform",
            "must be one of META, GOOGLE_ADS, TIKTOK, SHOPIFY, WEBHOOK, FILE",
        )
    })?;
    let region = if input.region.is_empty() {
        platform
            .policy_key()
            .and_then(|key| policies.destinations().get(key))
            .map(|info| info.region.clone())
            .ok_or_else(|| {
                AudienceError::invalid(
                    "region",
                    "is required: the ISO 3166-1 alpha-2 country where the recipient processes the data",
                )
            })?
    } else {
        input.region.clone()
    };
    // The policy engine knows the regions and mechanisms: ask it a question with them and
    // keep only its verdict on the names.
    let purpose = "marketing.advertising.third_party.targeted";
    let jurisdiction = policies
        .jurisdictions()
        .first()
        .map(|j| j.code.clone())
        .unwrap_or_default();
    let mechanisms: Vec<&str> = if input.transfer_mechanism.is_empty() {
        Vec::new()
    } else {
        vec![input.transfer_mechanism.as_str()]
    };
    let question = Question::new(Action::Export, &jurisdiction, purpose)
        .with_destination_region(&region)
        .with_transfer_mechanisms(&mechanisms);
    match policies.resolve(&question) {
        Err(QuestionError::InvalidRegion(_)) => {
            return Err(AudienceError::invalid(
                "region",
                "must be an ISO 3166-1 alpha-2 code in capitals (US, IE)",
            ));
        }
        Err(QuestionError::UnknownMechanism(_)) => {
            return Err(AudienceError::invalid(
                "transfer_mechanism",
                "is not a transfer mechanism the policies know (dpf, scc, idta, bcr, ...)",
            ));
        }
        _ => {}
    }
    let specs = platform.settings();
    for key in input.settings.keys() {
        if !specs.iter().any(|s| s.name == key) {
            let known: Vec<&str> = specs.iter().map(|s| s.name).collect();
            return Err(AudienceError::invalid(
                format!("settings.{key}"),
                format!(
                    "is not a setting of {}; known: {}",
                    platform.as_str(),
                    known.join(", ")
                ),
            ));
        }
    }
    let mut settings = BTreeMap::new();
    for spec in &specs {
        let value = match (input.settings.get(spec.name), spec.default) {
            (Some(v), _) => v.clone(),
            (None, Some(d)) => d.to_owned(),
            (None, None) => {
                return Err(AudienceError::invalid(
                    format!("settings.{}", spec.name),
                    format!("is required for {}", platform.as_str()),
                ));
            }
        };
        if value.len() > 2048 || !(spec.check)(&value) {
            return Err(AudienceError::invalid(
                format!("settings.{}", spec.name),
                "is not a valid value",
            ));
        }
        settings.insert(spec.name.to_owned(), value);
    }
    let roles = platform.credential_roles();
    for (role, name) in &input.credentials {
        let field = format!("credentials.{role}");
        if !roles.contains(&role.as_str()) {
            return Err(AudienceError::invalid(
                field,
                format!(
                    "is not a credential of {} (needs: {})",
                    platform.as_str(),
                    roles.join(", ")
                ),
            ));
        }
        if !credential_name_ok(name) {
            return Err(AudienceError::invalid(
                field,
                "must name a credential file ([-._a-zA-Z0-9]+), never hold the secret itself",
            ));
        }
        if !credentials.exists(name) {
            return Err(AudienceError::invalid(
                field,
                "names no file in the credentials directory (MERIDIAN_DESTINATION_CREDENTIALS_DIR)",
            ));
        }
    }
    if let Some(missing) = roles.iter().find(|r| !input.credentials.contains_key(**r)) {
        return Err(AudienceError::invalid(
            format!("credentials.{missing}"),
            format!("is required for {}", platform.as_str()),
        ));
    }
    if input.min_audience_size > 10_000_000 {
        return Err(AudienceError::invalid(
            "min_audience_size",
            "must be at most 10,000,000",
        ));
    }
    Ok(DestinationRow {
        destination_id: uuid::Uuid::now_v7().to_string(),
        name: input.name,
        platform,
        region,
        transfer_mechanism: input.transfer_mechanism,
        settings,
        credential_names: input.credentials,
        min_audience_size: if input.min_audience_size == 0 {
            platform.minimum_audience()
        } else {
            input.min_audience_size
        },
        // Stored to the microsecond.
        created_at: chrono::SubsecRound::trunc_subsecs(now, 6),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setting_checks() {
        assert!(meta_version("v21.0"));
        assert!(!meta_version("21.0"));
        assert!(shopify_version("2025-01"));
        assert!(!shopify_version("2025_01"));
        assert!(http_url("http://127.0.0.1:9/x"));
        assert!(!http_url("ftp://x"));
        assert!(credential_name_ok("meta-access-token"));
        assert!(!credential_name_ok("../etc/passwd"));
        assert!(!credential_name_ok(".hidden"));
        assert!(absolute_dir("/var/exports"));
        assert!(!absolute_dir("/var/../etc"));
    }
}
