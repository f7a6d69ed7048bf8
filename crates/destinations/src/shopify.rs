//! Shopify customer tags through the Admin GraphQL API (`tagsAdd` / `tagsRemove`), so the
//! storefront can act on segment membership. `POST /admin/api/{version}/graphql.json` with
//! `X-Shopify-Access-Token`; several mutations per request under aliases sharing one
//! `$tags` variable. Shopify's cost-based throttling: a `THROTTLED` answer carries
//! `extensions.cost.throttleStatus` (`currentlyAvailable`, `restoreRate`), and we wait for
//! the bucket to refill enough for the request before trying again.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use serde_json::{Map, Value, json};

use crate::connector::{ConnectorError, Direction, SyncOutcome};
use crate::transport::Transport;

/// Mutations per request: 25 × 10 points stays well inside a 1000-point bucket.
pub const CUSTOMERS_PER_REQUEST: usize = 25;
const COST_PER_MUTATION: f64 = 10.0;
const MAX_THROTTLED_RETRIES: u32 = 10;

#[derive(Clone)]
pub struct ShopifyConfig {
    /// `https://{shop}.myshopify.com`.
    pub base_url: String,
    /// `2025-01`.
    pub api_version: String,
    pub access_token: String,
    /// The tag that marks segment membership (`meridian:carted-not-bought`).
    pub tag: String,
}

impl std::fmt::Debug for ShopifyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShopifyConfig")
            .field("base_url", &self.base_url)
            .field("api_version", &self.api_version)
            .field("tag", &self.tag)
            .finish_non_exhaustive()
    }
}

/// A member as Shopify knows them: Meridian's reference and the customer's global id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShopifyCustomer {
    pub member: String,
    /// `gid://shopify/Customer/<n>`.
    pub customer_gid: String,
}

#[derive(Debug, Clone)]
pub struct ShopifyTags {
    config: Arc<ShopifyConfig>,
    transport: Arc<Transport>,
}

impl ShopifyTags {
    pub fn new(config: ShopifyConfig, transport: Arc<Transport>) -> Result<Self, ConnectorError> {
        if config.tag.trim().is_empty() || config.tag.len() > 255 {
            return Err(ConnectorError::Setting("tag"));
        }
        if config.access_token.is_empty() {
            return Err(ConnectorError::Setting("access_token"));
        }
        if config.api_version.len() != 7 {
            return Err(ConnectorError::Setting("api_version"));
        }
        Ok(ShopifyTags {
            config: Arc::new(config),
            transport,
        })
    }

    pub async fn sync(
        &self,
        direction: Direction,
        customers: &[ShopifyCustomer],
    ) -> Result<SyncOutcome, ConnectorError> {
        let mut outcome = SyncOutcome::default();
        let url = format!(
            "{}/admin/api/{}/graphql.json",
            self.config.base_url.trim_end_matches('/'),
            self.config.api_version
        );
        let token = HeaderValue::from_str(&self.config.access_token)
            .map_err(|_| ConnectorError::Setting("access_token"))?;
        let headers = [(HeaderName::from_static("x-shopify-access-token"), token)];
        let mutation = match direction {
            Direction::Add => "tagsAdd",
            Direction::Remove => "tagsRemove",
        };
        for chunk in customers.chunks(CUSTOMERS_PER_REQUEST) {
            let mut declarations = String::from("$tags: [String!]!");
            let mut fields = String::new();
            let mut variables = Map::new();
            variables.insert("tags".into(), json!([self.config.tag]));
            for (i, customer) in chunk.iter().enumerate() {
                declarations.push_str(&format!(", $id{i}: ID!"));
                fields.push_str(&format!(
                    "  m{i}: {mutation}(id: $id{i}, tags: $tags) {{ node {{ id }} userErrors {{ field message }} }}\n"
                ));
                variables.insert(format!("id{i}"), json!(customer.customer_gid));
            }
            let body = json!({
                "query": format!("mutation MeridianSegmentTags({declarations}) {{\n{fields}}}"),
                "variables": variables,
            });
            let body = Bytes::from(body.to_string());
            let mut throttled = 0;
            let value = loop {
                let answer = self
                    .transport
                    .send(
                        Method::POST,
                        &url,
                        &headers,
                        "application/json",
                        body.clone(),
                    )
                    .await;
                let answer = match answer {
                    Ok(answer) => answer,
                    Err(error) => {
                        break Err(format!("shopify:{error}"));
                    }
                };
                outcome.requests += u64::from(answer.attempts);
                if answer.status == StatusCode::UNAUTHORIZED
                    || answer.status == StatusCode::FORBIDDEN
                {
                    return Err(ConnectorError::Unauthorized(format!(
                        "shopify: HTTP {}",
                        answer.status
                    )));
                }
                let value: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
                let code = value["errors"][0]["extensions"]["code"]
                    .as_str()
                    .unwrap_or_default();
                if code == "THROTTLED" && throttled < MAX_THROTTLED_RETRIES {
                    throttled += 1;
                    let status = &value["extensions"]["cost"]["throttleStatus"];
                    let available = status["currentlyAvailable"].as_f64().unwrap_or(0.0);
                    let rate = status["restoreRate"]
                        .as_f64()
                        .filter(|r| *r > 0.0)
                        .unwrap_or(50.0);
                    let needed = COST_PER_MUTATION * chunk.len() as f64 - available;
                    tokio::time::sleep(Duration::from_secs_f64((needed / rate).clamp(0.05, 30.0)))
                        .await;
                    continue;
                }
                if answer.status != StatusCode::OK || value.get("errors").is_some() {
                    break Err(format!(
                        "shopify:{}: {}",
                        if code.is_empty() {
                            answer.status.as_str()
                        } else {
                            code
                        },
                        value["errors"]
                    ));
                }
                break Ok(value);
            };
            match value {
                Ok(value) => {
                    for (i, customer) in chunk.iter().enumerate() {
                        let errors = &value["data"][format!("m{i}")]["userErrors"];
                        match errors.as_array().filter(|e| !e.is_empty()) {
                            None => outcome.accepted += 1,
                            Some(e) => {
                                outcome.failed.insert(
                                    customer.member.clone(),
                                    format!(
                                        "shopify:userError: {}",
                                        e[0]["message"].as_str().unwrap_or("")
                                    ),
                                );
                            }
                        }
                    }
                }
                Err(reason) => {
                    for customer in chunk {
                        outcome
                            .failed
                            .insert(customer.member.clone(), reason.clone());
                    }
                }
            }
        }
        Ok(outcome)
    }
}
