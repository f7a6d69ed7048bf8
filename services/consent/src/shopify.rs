//! Shopify's mandatory privacy webhooks on the HTTP listener: `customers/redact` starts an
//! erasure, `customers/data_request` an access request, `shop/redact` an erasure of every
//! subject the consent room knows in the shop's workspace.
//!
//! One endpoint, `POST /webhooks/shopify/privacy`, for the three compliance topics (the
//! topic comes in `X-Shopify-Topic`, as with one `compliance_topics` URI in the app's
//! configuration). Every request is authenticated first: `X-Shopify-Hmac-Sha256` must be
//! the base64 HMAC-SHA256 of the raw body under the app's client secret, compared in
//! constant time; anything else is answered 401 before the body is parsed. Shopify retries
//! deliveries: the webhook id (`X-Shopify-Webhook-Id`) is the request's idempotency key.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::Utc;
use meridian_vault::IdentifierKind;
use serde::Deserialize;

use crate::dsr::{RequestKind, SubmitRequest};
use crate::error::ConsentError;
use crate::room::{ConsentRoom, IdKind, SubjectId, SubjectQuery};

/// The path Shopify delivers the compliance topics to.
pub const PRIVACY_WEBHOOK_PATH: &str = "/webhooks/shopify/privacy";

/// Which workspace a shop belongs to, and the jurisdiction its requests' deadlines are
/// counted in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShopBinding {
    pub workspace: String,
    pub jurisdiction: String,
}

/// Parses `shop.myshopify.com=workspace:JURISDICTION,…` (the `shopify_shops` setting).
pub fn parse_shop_bindings(text: &str) -> Result<HashMap<String, ShopBinding>, String> {
    let mut out = HashMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (shop, rest) = item
            .split_once('=')
            .ok_or_else(|| format!("'{item}' is not shop_domain=workspace:JURISDICTION"))?;
        let (workspace, jurisdiction) = rest
            .split_once(':')
            .ok_or_else(|| format!("'{item}' is not shop_domain=workspace:JURISDICTION"))?;
        let (shop, workspace, jurisdiction) = (shop.trim(), workspace.trim(), jurisdiction.trim());
        if shop.is_empty() || workspace.is_empty() || jurisdiction.is_empty() {
            return Err(format!("'{item}' has an empty part"));
        }
        if meridian_policy::Jurisdiction::parse(jurisdiction).is_err() {
            return Err(format!(
                "'{jurisdiction}' is not a jurisdiction (EU-FR, US-CA, BR, …)"
            ));
        }
        out.insert(
            shop.to_ascii_lowercase(),
            ShopBinding {
                workspace: workspace.to_owned(),
                jurisdiction: jurisdiction.to_owned(),
            },
        );
    }
    Ok(out)
}

/// The webhook receiver's state.
pub struct ShopifyPrivacyWebhooks {
    room: ConsentRoom,
    key: ring::hmac::Key,
    shops: HashMap<String, ShopBinding>,
}

impl std::fmt::Debug for ShopifyPrivacyWebhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShopifyPrivacyWebhooks")
            .field("shops", &self.shops.len())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
struct Customer {
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    phone: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CustomerPayload {
    shop_domain: String,
    customer: Customer,
}

#[derive(Debug, Deserialize)]
struct ShopPayload {
    shop_domain: String,
}

/// Whether `hmac_b64` is the base64 HMAC-SHA256 of `body` under `key` (constant time).
fn authentic(key: &ring::hmac::Key, body: &[u8], hmac_b64: Option<&str>) -> bool {
    let Some(tag) = hmac_b64.and_then(|h| B64.decode(h.trim()).ok()) else {
        return false;
    };
    ring::hmac::verify(key, body, &tag).is_ok()
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn id_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        _ => None,
    }
}

impl ShopifyPrivacyWebhooks {
    pub fn new(
        room: ConsentRoom,
        client_secret: &[u8],
        shops: HashMap<String, ShopBinding>,
    ) -> Self {
        ShopifyPrivacyWebhooks {
            room,
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, client_secret),
            shops,
        }
    }

    /// The routes to merge into the HTTP listener.
    pub fn router(self) -> Router {
        Router::new()
            .route(PRIVACY_WEBHOOK_PATH, post(receive))
            .with_state(Arc::new(self))
    }

    /// The customer's identifiers that normalize (Shopify sends what the shop has; a phone
    /// without a country code, say, cannot be matched and is left out).
    fn identifiers(customer: &Customer) -> SubjectQuery {
        let mut q = SubjectQuery::default();
        if let Some(id) = customer.id.as_ref().and_then(id_text) {
            q.identifiers.push(SubjectId {
                kind: IdKind::Scoped("storefront.shopify".into()),
                value: id,
                default_region: None,
            });
        }
        if let Some(email) = customer.email.as_deref().filter(|e| !e.trim().is_empty())
            && meridian_vault::normalize(IdentifierKind::Email, email, None).is_ok()
        {
            q.identifiers.push(SubjectId {
                kind: IdKind::Email,
                value: email.to_owned(),
                default_region: None,
            });
        }
        if let Some(phone) = customer.phone.as_deref().filter(|p| !p.trim().is_empty())
            && meridian_vault::normalize(IdentifierKind::Phone, phone, None).is_ok()
        {
            q.identifiers.push(SubjectId {
                kind: IdKind::Phone,
                value: phone.to_owned(),
                default_region: None,
            });
        }
        q
    }

    async fn customer_request(
        &self,
        kind: RequestKind,
        body: &[u8],
        webhook_id: Option<&str>,
    ) -> Response {
        let Ok(payload) = serde_json::from_slice::<CustomerPayload>(body) else {
            return reply(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": "not a Shopify customer privacy payload"}),
            );
        };
        let Some(shop) = self.shops.get(&payload.shop_domain.to_ascii_lowercase()) else {
            return reply(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "shop_domain is not bound to a workspace"}),
            );
        };
        let subject = Self::identifiers(&payload.customer);
        if subject.identifiers.is_empty() {
            return reply(
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({"error": "customer carries no usable identifier"}),
            );
        }
        let req = SubmitRequest {
            kind,
            subject,
            jurisdiction: shop.jurisdiction.clone(),
            corrections: None,
            idempotency_key: webhook_id.map(|id| format!("shopify:{id}")),
        };
        match self
            .room
            .submit_request(&shop.workspace, req, Utc::now())
            .await
        {
            Ok(r) => reply(
                StatusCode::OK,
                serde_json::json!({"request_id": r.request_id, "status": r.status.as_str()}),
            ),
            Err(e) => failure(e),
        }
    }

    async fn shop_redact(&self, body: &[u8]) -> Response {
        let Ok(payload) = serde_json::from_slice::<ShopPayload>(body) else {
            return reply(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": "not a Shopify shop/redact payload"}),
            );
        };
        let Some(shop) = self.shops.get(&payload.shop_domain.to_ascii_lowercase()) else {
            return reply(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "shop_domain is not bound to a workspace"}),
            );
        };
        match self
            .room
            .erase_every_subject(&shop.workspace, &shop.jurisdiction, "shopify-shop-redact")
            .await
        {
            Ok(n) => reply(StatusCode::OK, serde_json::json!({"erasures_started": n})),
            Err(e) => failure(e),
        }
    }
}

fn failure(e: ConsentError) -> Response {
    match e {
        ConsentError::Invalid(_) => reply(
            StatusCode::UNPROCESSABLE_ENTITY,
            serde_json::json!({"error": e.to_string()}),
        ),
        other => {
            tracing::error!(error = %other, "shopify privacy webhook failed");
            // Shopify retries a non-2xx delivery
            reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({"error": "internal"}),
            )
        }
    }
}

async fn receive(
    State(hooks): State<Arc<ShopifyPrivacyWebhooks>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if !authentic(&hooks.key, &body, header("x-shopify-hmac-sha256")) {
        tracing::warn!("shopify privacy webhook refused: bad or missing HMAC");
        return reply(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"error": "X-Shopify-Hmac-Sha256 does not verify"}),
        );
    }
    let webhook_id = header("x-shopify-webhook-id");
    match header("x-shopify-topic") {
        Some("customers/redact") => {
            hooks
                .customer_request(RequestKind::Erasure, &body, webhook_id)
                .await
        }
        Some("customers/data_request") => {
            hooks
                .customer_request(RequestKind::Access, &body, webhook_id)
                .await
        }
        Some("shop/redact") => hooks.shop_redact(&body).await,
        _ => reply(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "X-Shopify-Topic must be customers/redact, customers/data_request or shop/redact"}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_is_checked_over_the_raw_body() {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"secret");
        let body = br#"{"shop_domain":"a.myshopify.com"}"#;
        let good = B64.encode(ring::hmac::sign(&key, body).as_ref());
        assert!(authentic(&key, body, Some(&good)));
        assert!(!authentic(
            &key,
            b"{\"shop_domain\":\"b.myshopify.com\"}",
            Some(&good)
        ));
        assert!(!authentic(&key, body, None));
        assert!(!authentic(&key, body, Some("not base64!")));
        let other = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"other");
        assert!(!authentic(&other, body, Some(&good)));
    }

    #[test]
    fn shop_bindings_parse_and_refuse_garbage() {
        let b = parse_shop_bindings("Acme.myshopify.com=acme:EU-FR, b.myshopify.com=bee:US-CA")
            .unwrap();
        assert_eq!(b["acme.myshopify.com"].workspace, "acme");
        assert_eq!(b["b.myshopify.com"].jurisdiction, "US-CA");
        assert!(parse_shop_bindings("acme").is_err());
        assert!(parse_shop_bindings("a=b").is_err());
        assert!(parse_shop_bindings("a=b:Atlantis").is_err());
        assert!(parse_shop_bindings("").unwrap().is_empty());
    }
}
