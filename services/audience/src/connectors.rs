//! A destination's connector, built from its stored settings and the credentials read at
//! send time, and what one member looks like on its wire ([`Payload`]): the hashes in the
//! connector's schema, or the storefront's customer id for Shopify tags.
//!
//! The payload is what the membership ledger seals, so a removal sends exactly what the
//! add sent, whatever the member's identifiers have become since.

use std::sync::Arc;

use meridian_destinations::connector::{ConnectorError, Direction, MemberRow, SyncOutcome};
use meridian_destinations::google::{GoogleAdsConfig, GoogleConsent, GoogleCustomerMatch};
use meridian_destinations::meta::{MAX_ROWS_PER_REQUEST, MetaConfig, MetaCustomAudience};
use meridian_destinations::shopify::{ShopifyConfig, ShopifyCustomer, ShopifyTags};
use meridian_destinations::tiktok::{TikTokAudience, TikTokConfig};
use meridian_destinations::transport::Transport;
use meridian_destinations::webhook::{FileDrop, FileFormat, Webhook, WebhookConfig};
use meridian_destinations::{Field, Platform, Sha256Hex, hash_field};
use serde_json::{Value, json};

use crate::destination::{Credentials, DestinationRow, PlatformKind};
use crate::error::AudienceError;

/// The identifiers every hashed connector matches on, in this order.
const SCHEMA: [Field; 2] = [Field::Email, Field::Phone];

/// One identifier of a member, in clear: only ever normalized and hashed here (Shopify:
/// the storefront's customer id). `Debug` prints the kind only.
#[derive(Clone, PartialEq, Eq)]
pub struct MemberIdentifier {
    /// `email`, `phone`, `storefront_customer_id`, …
    pub kind: String,
    /// The issuer, for storefront customer ids.
    pub source: String,
    pub value: String,
}

impl std::fmt::Debug for MemberIdentifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberIdentifier")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// A member as one destination receives them.
#[derive(Clone, PartialEq, Eq)]
pub enum Payload {
    /// SHA-256 of the platform's normal form, per [`SCHEMA`] position.
    Hashes(Vec<Option<Sha256Hex>>),
    /// `gid://shopify/Customer/<n>`.
    Customer(String),
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Payload(..)")
    }
}

impl Payload {
    /// The JSON the ledger seals.
    pub fn to_bytes(&self) -> Vec<u8> {
        let value = match self {
            Payload::Hashes(values) => json!({
                "hashes": values
                    .iter()
                    .map(|v| v.map_or(Value::Null, |h| Value::String(h.as_str().to_owned())))
                    .collect::<Vec<_>>(),
            }),
            Payload::Customer(gid) => json!({ "customer_gid": gid }),
        };
        value.to_string().into_bytes()
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let value: Value = serde_json::from_slice(bytes).ok()?;
        if let Some(gid) = value["customer_gid"].as_str() {
            return Some(Payload::Customer(gid.to_owned()));
        }
        let hashes = value["hashes"].as_array()?;
        hashes
            .iter()
            .map(|h| match h {
                Value::Null => Some(None),
                Value::String(s) => Sha256Hex::parse(s).map(Some),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .map(Payload::Hashes)
    }

    /// The hashes as hex, for checks and the access bundle.
    pub fn hashes(&self) -> Vec<String> {
        match self {
            Payload::Hashes(values) => values
                .iter()
                .flatten()
                .map(|h| h.as_str().to_owned())
                .collect(),
            Payload::Customer(_) => Vec::new(),
        }
    }
}

#[derive(Debug)]
enum Wire {
    Meta(MetaCustomAudience),
    Google(GoogleCustomerMatch),
    TikTok(TikTokAudience),
    Shopify(ShopifyTags, String),
    Webhook(Webhook),
    File(FileDrop),
}

/// A destination's connector, ready to send.
#[derive(Debug)]
pub struct Connector {
    wire: Wire,
}

fn setting(destination: &DestinationRow, name: &'static str) -> Result<String, AudienceError> {
    destination
        .settings
        .get(name)
        .cloned()
        .ok_or(AudienceError::Corrupt("destination settings"))
}

fn connector_error(e: ConnectorError) -> AudienceError {
    AudienceError::Connector(e.to_string())
}

impl Connector {
    /// Builds the connector of `destination`, reading its credentials now.
    pub fn build(
        destination: &DestinationRow,
        credentials: &Credentials,
        transport: Arc<Transport>,
    ) -> Result<Self, AudienceError> {
        let secret = |role: &str| -> Result<String, AudienceError> {
            let name = destination
                .credential_names
                .get(role)
                .ok_or(AudienceError::Credential("a credential role has no name"))?;
            credentials.read(name)
        };
        let wire = match destination.platform {
            PlatformKind::Meta => Wire::Meta(
                MetaCustomAudience::new(
                    MetaConfig {
                        base_url: setting(destination, "base_url")?,
                        api_version: setting(destination, "api_version")?,
                        audience_id: setting(destination, "audience_id")?,
                        access_token: secret("access_token")?,
                        schema: SCHEMA.to_vec(),
                        batch_size: MAX_ROWS_PER_REQUEST,
                        concurrency: 4,
                    },
                    transport,
                )
                .map_err(connector_error)?,
            ),
            PlatformKind::GoogleAds => Wire::Google(
                GoogleCustomerMatch::new(
                    GoogleAdsConfig {
                        base_url: setting(destination, "base_url")?,
                        api_version: setting(destination, "api_version")?,
                        customer_id: setting(destination, "customer_id")?,
                        user_list_id: setting(destination, "user_list_id")?,
                        access_token: secret("access_token")?,
                        developer_token: secret("developer_token")?,
                        login_customer_id: Some(setting(destination, "login_customer_id")?)
                            .filter(|l| !l.is_empty()),
                        schema: SCHEMA.to_vec(),
                    },
                    transport,
                )
                .map_err(connector_error)?,
            ),
            PlatformKind::TikTok => Wire::TikTok(
                TikTokAudience::new(
                    TikTokConfig {
                        base_url: setting(destination, "base_url")?,
                        advertiser_id: setting(destination, "advertiser_id")?,
                        audience_id: setting(destination, "audience_id")?,
                        access_token: secret("access_token")?,
                        schema: SCHEMA.to_vec(),
                    },
                    transport,
                )
                .map_err(connector_error)?,
            ),
            PlatformKind::Shopify => Wire::Shopify(
                ShopifyTags::new(
                    ShopifyConfig {
                        base_url: setting(destination, "base_url")?,
                        api_version: setting(destination, "api_version")?,
                        access_token: secret("access_token")?,
                        tag: setting(destination, "tag")?,
                    },
                    transport,
                )
                .map_err(connector_error)?,
                setting(destination, "storefront")?,
            ),
            PlatformKind::Webhook => Wire::Webhook(
                Webhook::new(
                    WebhookConfig {
                        url: setting(destination, "url")?,
                        secret: secret("secret")?.into_bytes(),
                        schema: SCHEMA.to_vec(),
                    },
                    transport,
                )
                .map_err(connector_error)?,
            ),
            PlatformKind::File => Wire::File(FileDrop {
                directory: setting(destination, "directory")?.into(),
                prefix: setting(destination, "prefix")?,
                format: if setting(destination, "format")? == "ndjson" {
                    FileFormat::Ndjson
                } else {
                    FileFormat::Csv
                },
                schema: SCHEMA.to_vec(),
            }),
        };
        Ok(Connector { wire })
    }

    /// The member as this destination receives them; `None` when they have no identifier
    /// the platform matches on.
    pub fn payload(
        &self,
        identifiers: &[MemberIdentifier],
        default_region: Option<&str>,
    ) -> Option<Payload> {
        let platform = match &self.wire {
            Wire::Shopify(_, storefront) => {
                let ids = || {
                    identifiers
                        .iter()
                        .filter(|i| i.kind == "storefront_customer_id" && !i.value.is_empty())
                };
                let id = ids()
                    .find(|i| &i.source == storefront)
                    .or_else(|| ids().next())?;
                let gid = if id.value.starts_with("gid://shopify/Customer/") {
                    id.value.clone()
                } else if id.value.bytes().all(|b| b.is_ascii_digit()) {
                    format!("gid://shopify/Customer/{}", id.value)
                } else {
                    return None;
                };
                return Some(Payload::Customer(gid));
            }
            Wire::Google(_) => Platform::Google,
            Wire::TikTok(_) => Platform::TikTok,
            Wire::Meta(_) | Wire::Webhook(_) | Wire::File(_) => Platform::Meta,
        };
        // The first value of each kind that the platform accepts.
        let values: Vec<Option<Sha256Hex>> = SCHEMA
            .iter()
            .map(|field| {
                identifiers
                    .iter()
                    .filter(|i| i.kind == field.as_str())
                    .find_map(|i| hash_field(platform, *field, &i.value, default_region))
            })
            .collect();
        values
            .iter()
            .any(Option::is_some)
            .then_some(Payload::Hashes(values))
    }

    /// Sends `members` (Meridian's reference, payload) in one direction. `session` numbers
    /// the upload (Meta's session id, webhook idempotency keys, file names).
    pub async fn send(
        &self,
        direction: Direction,
        members: &[(String, Payload)],
        session: u64,
    ) -> Result<SyncOutcome, AudienceError> {
        if members.is_empty() {
            return Ok(SyncOutcome::default());
        }
        let rows = || -> Vec<MemberRow> {
            members
                .iter()
                .filter_map(|(member, payload)| match payload {
                    Payload::Hashes(values) => Some(MemberRow {
                        member: member.clone(),
                        values: values.clone(),
                    }),
                    Payload::Customer(_) => None,
                })
                .collect()
        };
        let outcome = match &self.wire {
            Wire::Meta(meta) => meta.sync(direction, rows().into(), session).await,
            Wire::Google(google) => {
                // Only members whose consent allows ad use are ever sent.
                let consent = GoogleConsent {
                    ad_user_data: true,
                    ad_personalization: true,
                };
                google.sync(direction, &rows(), consent).await
            }
            Wire::TikTok(tiktok) => tiktok.sync(direction, &rows()).await,
            Wire::Shopify(shopify, _) => {
                let customers: Vec<ShopifyCustomer> = members
                    .iter()
                    .filter_map(|(member, payload)| match payload {
                        Payload::Customer(gid) => Some(ShopifyCustomer {
                            member: member.clone(),
                            customer_gid: gid.clone(),
                        }),
                        Payload::Hashes(_) => None,
                    })
                    .collect();
                shopify.sync(direction, &customers).await
            }
            Wire::Webhook(webhook) => {
                webhook
                    .sync(direction, &rows(), session, chrono::Utc::now().timestamp())
                    .await
            }
            Wire::File(drop) => {
                let rows = rows();
                let drop = drop.clone();
                let count = rows.len() as u64;
                let written =
                    tokio::task::spawn_blocking(move || drop.write(direction, &rows, session))
                        .await
                        .map_err(|e| AudienceError::Connector(format!("file task: {e}")))?;
                match written {
                    Ok(_) => Ok(SyncOutcome {
                        accepted: count,
                        ..SyncOutcome::default()
                    }),
                    Err(e) => Err(ConnectorError::Task(format!("file drop: {}", e.kind()))),
                }
            }
        };
        outcome.map_err(connector_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_through_their_sealed_form() {
        let hashes = Payload::Hashes(vec![Some(Sha256Hex::of(b"a@b.c")), None]);
        assert_eq!(
            Payload::from_bytes(&hashes.to_bytes()),
            Some(hashes.clone())
        );
        assert_eq!(hashes.hashes().len(), 1);
        let customer = Payload::Customer("gid://shopify/Customer/42".into());
        assert_eq!(Payload::from_bytes(&customer.to_bytes()), Some(customer));
        assert_eq!(Payload::from_bytes(b"{\"hashes\": [\"XYZ\"]}"), None);
    }
}
