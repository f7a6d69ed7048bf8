//! Fake of the Shopify Admin GraphQL API for customer tags: `POST
//! /admin/api/{version}/graphql.json`, header `X-Shopify-Access-Token`, `tagsAdd` /
//! `tagsRemove` mutations (`id: ID!` a `gid://shopify/Customer/<n>`, `tags: [String!]!`),
//! several per request under aliases. Cost-based throttling like Shopify's leaky bucket:
//! each mutation costs 10 points; a request needing more than is available gets
//! `{"errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}]}` and every
//! answer carries `extensions.cost.throttleStatus`.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use serde_json::{Map, Value, json};

use super::{Failure, FailureQueue, Running, json_response, lock, serve};

pub const MUTATION_COST: f64 = 10.0;

#[derive(Debug)]
struct Bucket {
    maximum: f64,
    available: f64,
    restore_rate: f64,
    at: Instant,
}

#[derive(Debug)]
struct Inner {
    token: String,
    tags: Mutex<HashMap<String, BTreeSet<String>>>,
    bucket: Mutex<Bucket>,
    failures: FailureQueue,
}

#[derive(Debug, Clone)]
pub struct ShopifyFake {
    inner: Arc<Inner>,
}

impl ShopifyFake {
    /// `bucket` points, restored at `restore_rate` per second (Shopify: 1000 and 50 on
    /// standard plans).
    pub fn new(token: &str, bucket: f64, restore_rate: f64) -> Self {
        ShopifyFake {
            inner: Arc::new(Inner {
                token: token.to_owned(),
                tags: Mutex::default(),
                bucket: Mutex::new(Bucket {
                    maximum: bucket,
                    available: bucket,
                    restore_rate,
                    at: Instant::now(),
                }),
                failures: FailureQueue::default(),
            }),
        }
    }

    pub async fn start(&self) -> std::io::Result<Running> {
        let router = Router::new()
            .route("/admin/api/{version}/graphql.json", post(graphql))
            .with_state(self.clone());
        serve(router).await
    }

    pub fn fail_next(&self, failure: Failure, times: usize) {
        self.inner.failures.push(failure, times);
    }

    /// Tags of a customer (`gid://shopify/Customer/<n>`).
    pub fn tags(&self, customer_gid: &str) -> BTreeSet<String> {
        lock(&self.inner.tags)
            .get(customer_gid)
            .cloned()
            .unwrap_or_default()
    }
}

fn errors(message: &str, code: &str) -> Value {
    json!({"errors": [{"message": message, "extensions": {"code": code}}]})
}

/// `alias: tagsAdd(id: $var, tags: $tags)` occurrences, strictly in that shape.
fn mutations(query: &str) -> Option<Vec<(String, bool, String)>> {
    let body = query.trim().strip_prefix("mutation")?;
    let open = body.find('{')?;
    let mut found = Vec::new();
    for part in body[open + 1..]
        .split('}')
        .map(str::trim)
        .filter(|p| p.contains('('))
    {
        let (alias, call) = part.split_once(':')?;
        let call = call.trim();
        let (name, rest) = call.split_once('(')?;
        let add = match name.trim() {
            "tagsAdd" => true,
            "tagsRemove" => false,
            _ => return None,
        };
        let rest = rest.trim().strip_prefix("id: $")?;
        let (var, rest) = rest.split_once(',')?;
        if !rest.trim().starts_with("tags: $tags)") {
            return None;
        }
        found.push((
            alias.trim().trim_start_matches('{').trim().to_owned(),
            add,
            var.trim().to_owned(),
        ));
    }
    (!found.is_empty()).then_some(found)
}

async fn graphql(
    State(fake): State<ShopifyFake>,
    Path(version): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match fake.inner.failures.next() {
        Some(Failure::Throttle {
            retry_after_seconds,
        }) => {
            let mut r = json_response(
                StatusCode::TOO_MANY_REQUESTS,
                &json!({"errors": "Exceeded 2 calls per second for api client. Reduce request rates to resume uninterrupted service."}),
            );
            if let Ok(v) = retry_after_seconds.to_string().parse() {
                r.headers_mut().insert("retry-after", v);
            }
            return r;
        }
        Some(Failure::Unavailable) => {
            return json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"errors": "Service Unavailable"}),
            );
        }
        None => {}
    }
    let version_ok = version.len() == 7
        && version.as_bytes()[4] == b'-'
        && version.bytes().filter(u8::is_ascii_digit).count() == 6;
    if !version_ok {
        return json_response(StatusCode::NOT_FOUND, &json!({"errors": "Not Found"}));
    }
    let token = headers
        .get("x-shopify-access-token")
        .and_then(|v| v.to_str().ok());
    if token != Some(fake.inner.token.as_str()) {
        return json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"errors": "[API] Invalid API key or access token (unrecognized login or wrong password)"}),
        );
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &errors("Invalid JSON", "BAD_REQUEST"),
        );
    };
    let Some(found) = request["query"].as_str().and_then(mutations) else {
        return json_response(
            StatusCode::OK,
            &errors(
                "Parse error: expected tagsAdd/tagsRemove mutations",
                "GRAPHQL_PARSE_FAILED",
            ),
        );
    };
    let variables = &request["variables"];
    let tags: Option<Vec<String>> = variables["tags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().filter(|t| !t.is_empty()).map(str::to_owned))
                .collect()
        })
        .filter(|t: &Vec<String>| {
            !t.is_empty() && t.len() == variables["tags"].as_array().map_or(0, Vec::len)
        });
    let Some(tags) = tags else {
        return json_response(
            StatusCode::OK,
            &errors(
                "Variable $tags of type [String!]! was provided invalid value",
                "INVALID_VARIABLE",
            ),
        );
    };
    let requested = MUTATION_COST * found.len() as f64;
    let cost = {
        let mut bucket = lock(&fake.inner.bucket);
        let now = Instant::now();
        bucket.available = (bucket.available
            + now.duration_since(bucket.at).as_secs_f64() * bucket.restore_rate)
            .min(bucket.maximum);
        bucket.at = now;
        let throttled = requested > bucket.available;
        if !throttled {
            bucket.available -= requested;
        }
        (
            throttled,
            json!({
                "requestedQueryCost": requested,
                "actualQueryCost": if throttled { Value::Null } else { json!(requested) },
                "throttleStatus": {
                    "maximumAvailable": bucket.maximum,
                    "currentlyAvailable": bucket.available,
                    "restoreRate": bucket.restore_rate,
                },
            }),
        )
    };
    if cost.0 {
        let mut answer = errors("Throttled", "THROTTLED");
        answer["extensions"] = json!({"cost": cost.1});
        return json_response(StatusCode::OK, &answer);
    }
    let mut data = Map::new();
    let mut all = lock(&fake.inner.tags);
    for (alias, add, var) in found {
        let id = variables[var.as_str()].as_str().unwrap_or_default();
        let valid = id
            .strip_prefix("gid://shopify/Customer/")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !valid {
            data.insert(alias, json!({"node": null, "userErrors": [{"field": ["id"], "message": "Invalid global id"}]}));
            continue;
        }
        let set = all.entry(id.to_owned()).or_default();
        for tag in &tags {
            if add {
                set.insert(tag.clone());
            } else {
                set.remove(tag);
            }
        }
        data.insert(alias, json!({"node": {"id": id}, "userErrors": []}));
    }
    json_response(
        StatusCode::OK,
        &json!({"data": data, "extensions": {"cost": cost.1}}),
    )
}
