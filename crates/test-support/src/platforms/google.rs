//! Fake of Google Ads API Customer Match through `OfflineUserDataJobService` (REST):
//! `POST /{version}/customers/{cid}/offlineUserDataJobs:create`, then
//! `…/offlineUserDataJobs/{job}:addOperations` and `…/offlineUserDataJobs/{job}:run`.
//! Checks `Authorization: Bearer`, `developer-token`, the job type and user list, the
//! consent fields (`adUserData`, `adPersonalization`), `userIdentifiers` (`hashedEmail`,
//! `hashedPhoneNumber`, `addressInfo`), at most 20 identifiers per `UserData` and 100,000
//! per request. Errors use Google's JSON error shape (`{"error": {"code", "message",
//! "status", "details": [GoogleAdsFailure]}}`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use serde_json::{Value, json};

use super::{Failure, FailureQueue, Running, is_sha256_hex, json_response, lock, serve};

pub const MAX_IDENTIFIERS_PER_REQUEST: usize = 100_000;
pub const MAX_IDENTIFIERS_PER_USER: usize = 20;

#[derive(Debug, Default)]
struct Job {
    user_list: String,
    consent: (String, String),
    operations: Vec<(bool, String)>,
    ran: bool,
}

#[derive(Debug)]
struct Inner {
    token: String,
    developer_token: String,
    jobs: Mutex<HashMap<String, Job>>,
    /// User list resource name → identifiers (canonical JSON of one `userIdentifiers` entry).
    lists: Mutex<HashMap<String, HashSet<String>>>,
    /// (user list, identifier) of every `remove` operation a job ran, repeats included.
    removed: Mutex<Vec<(String, String)>>,
    failures: FailureQueue,
}

/// A fake Google Ads API.
#[derive(Debug, Clone)]
pub struct GoogleAdsFake {
    inner: Arc<Inner>,
}

impl GoogleAdsFake {
    pub fn new(token: &str, developer_token: &str) -> Self {
        GoogleAdsFake {
            inner: Arc::new(Inner {
                token: token.to_owned(),
                developer_token: developer_token.to_owned(),
                jobs: Mutex::default(),
                lists: Mutex::default(),
                removed: Mutex::default(),
                failures: FailureQueue::default(),
            }),
        }
    }

    pub async fn start(&self) -> std::io::Result<Running> {
        let router = Router::new()
            .route("/{version}/customers/{cid}/{method}", post(create))
            .route(
                "/{version}/customers/{cid}/offlineUserDataJobs/{job}",
                post(job_action),
            )
            .with_state(self.clone());
        serve(router).await
    }

    pub fn fail_next(&self, failure: Failure, times: usize) {
        self.inner.failures.push(failure, times);
    }

    /// Every request fails with `failure` until [`GoogleAdsFake::recover`].
    pub fn fail_until_recovered(&self, failure: Failure) {
        self.inner.failures.set_outage(Some(failure));
    }

    /// Ends an outage started by [`GoogleAdsFake::fail_until_recovered`].
    pub fn recover(&self) {
        self.inner.failures.set_outage(None);
    }

    /// Every identifier a ran job's `remove` operations took out of the user list, in order
    /// (canonical JSON, as [`GoogleAdsFake::members`]): one removed twice appears twice
    /// (removing what the list no longer holds changes nothing).
    pub fn removed(&self, user_list: &str) -> Vec<String> {
        lock(&self.inner.removed)
            .iter()
            .filter(|(l, _)| l == user_list)
            .map(|(_, id)| id.clone())
            .collect()
    }

    /// Identifiers the user list holds after the jobs that ran: each one `userIdentifiers`
    /// entry as canonical JSON (`{"hashedEmail":"…"}`).
    pub fn members(&self, user_list: &str) -> HashSet<String> {
        lock(&self.inner.lists)
            .get(user_list)
            .cloned()
            .unwrap_or_default()
    }

    /// Consent (`adUserData`, `adPersonalization`) of every job created.
    pub fn job_consents(&self) -> Vec<(String, String)> {
        lock(&self.inner.jobs)
            .values()
            .map(|j| j.consent.clone())
            .collect()
    }
}

fn google_error(status: StatusCode, grpc: &str, error_code: Value, message: &str) -> Response {
    json_response(
        status,
        &json!({"error": {
            "code": status.as_u16(),
            "message": message,
            "status": grpc,
            "details": [{
                "@type": "type.googleapis.com/google.ads.googleads.v21.errors.GoogleAdsFailure",
                "errors": [{"errorCode": error_code, "message": message}],
                "requestId": "fake-request",
            }],
        }}),
    )
}

fn invalid(message: &str) -> Response {
    google_error(
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        json!({"fieldError": "INVALID_VALUE"}),
        message,
    )
}

fn not_found(message: &str) -> Response {
    google_error(StatusCode::NOT_FOUND, "NOT_FOUND", json!({}), message)
}

fn check(fake: &GoogleAdsFake, headers: &HeaderMap) -> Option<Response> {
    match fake.inner.failures.next() {
        Some(Failure::Throttle {
            retry_after_seconds,
        }) => {
            let mut r = google_error(
                StatusCode::TOO_MANY_REQUESTS,
                "RESOURCE_EXHAUSTED",
                json!({"quotaError": "RESOURCE_EXHAUSTED"}),
                "Too many requests. Retry in some time.",
            );
            if let Ok(v) = retry_after_seconds.to_string().parse() {
                r.headers_mut().insert("retry-after", v);
            }
            return Some(r);
        }
        Some(Failure::Unavailable) => {
            return Some(google_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                json!({"internalError": "TRANSIENT_ERROR"}),
                "The service is currently unavailable.",
            ));
        }
        None => {}
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    if header("authorization").strip_prefix("Bearer ") != Some(fake.inner.token.as_str()) {
        return Some(google_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            json!({"authenticationError": "OAUTH_TOKEN_INVALID"}),
            "Request is missing required authentication credential.",
        ));
    }
    if header("developer-token") != fake.inner.developer_token {
        return Some(google_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            json!({"authenticationError": "DEVELOPER_TOKEN_INVALID"}),
            "The developer token is not valid.",
        ));
    }
    None
}

async fn create(
    State(fake): State<GoogleAdsFake>,
    Path((_version, cid, method)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = check(&fake, &headers) {
        return r;
    }
    if method != "offlineUserDataJobs:create" {
        return not_found("Unknown method");
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return invalid("Invalid JSON payload received.");
    };
    let job = &body["job"];
    if job["type"] != "CUSTOMER_MATCH_USER_LIST" {
        return invalid("job.type must be CUSTOMER_MATCH_USER_LIST");
    }
    let meta = &job["customerMatchUserListMetadata"];
    let Some(user_list) = meta["userList"].as_str() else {
        return invalid("customerMatchUserListMetadata.userList is required");
    };
    if !user_list.starts_with(&format!("customers/{cid}/userLists/")) {
        return invalid("userList must belong to the customer");
    }
    let consent = |key: &str| {
        meta["consent"][key]
            .as_str()
            .filter(|v| matches!(*v, "GRANTED" | "DENIED"))
            .map(str::to_owned)
    };
    let (Some(ad_user_data), Some(ad_personalization)) =
        (consent("adUserData"), consent("adPersonalization"))
    else {
        return invalid(
            "consent.adUserData and consent.adPersonalization must be GRANTED or DENIED",
        );
    };
    let mut jobs = lock(&fake.inner.jobs);
    let id = format!("{}", 1000 + jobs.len());
    jobs.insert(
        id.clone(),
        Job {
            user_list: user_list.to_owned(),
            consent: (ad_user_data, ad_personalization),
            ..Job::default()
        },
    );
    json_response(
        StatusCode::OK,
        &json!({"resourceName": format!("customers/{cid}/offlineUserDataJobs/{id}")}),
    )
}

fn valid_identifier(identifier: &Value) -> bool {
    let Some(object) = identifier.as_object() else {
        return false;
    };
    if object.len() != 1 {
        return false;
    }
    let hashed = |v: &Value| v.as_str().is_some_and(is_sha256_hex);
    match object.iter().next() {
        Some((key, value)) if key == "hashedEmail" || key == "hashedPhoneNumber" => hashed(value),
        Some((key, value)) if key == "addressInfo" => {
            hashed(&value["hashedFirstName"])
                && hashed(&value["hashedLastName"])
                && value["countryCode"]
                    .as_str()
                    .is_some_and(|c| c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()))
                && value["postalCode"].as_str().is_some_and(|p| !p.is_empty())
        }
        _ => false,
    }
}

fn add_operations(job: &mut Job, body: &[u8]) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        return invalid("Invalid JSON payload received.");
    };
    let Some(operations) = body["operations"].as_array() else {
        return invalid("operations is required");
    };
    let mut identifiers = 0;
    let mut staged = Vec::new();
    for operation in operations {
        let (remove, data) = match (operation.get("create"), operation.get("remove")) {
            (Some(d), None) => (false, d),
            (None, Some(d)) => (true, d),
            _ => return invalid("each operation is exactly one of create or remove"),
        };
        let Some(ids) = data["userIdentifiers"].as_array() else {
            return invalid("userIdentifiers is required");
        };
        if ids.is_empty() || ids.len() > MAX_IDENTIFIERS_PER_USER {
            return google_error(
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                json!({"offlineUserDataJobError": "TOO_MANY_USER_IDENTIFIERS"}),
                "Too many user identifiers in one UserData",
            );
        }
        for id in ids {
            if !valid_identifier(id) {
                return google_error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_ARGUMENT",
                    json!({"offlineUserDataJobError": "INVALID_SHA256_FORMAT"}),
                    "The SHA256 encoded value is malformed.",
                );
            }
            staged.push((remove, id.to_string()));
        }
        identifiers += ids.len();
    }
    if identifiers > MAX_IDENTIFIERS_PER_REQUEST {
        return google_error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            json!({"requestError": "REQUEST_TOO_LARGE"}),
            "Too many identifiers in the request",
        );
    }
    job.operations.extend(staged);
    json_response(StatusCode::OK, &json!({}))
}

async fn job_action(
    State(fake): State<GoogleAdsFake>,
    Path((_version, cid, job_action)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = check(&fake, &headers) {
        return r;
    }
    let Some((job_id, action)) = job_action.split_once(':') else {
        return not_found("Unknown method");
    };
    let mut jobs = lock(&fake.inner.jobs);
    let Some(job) = jobs.get_mut(job_id) else {
        return google_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            json!({"offlineUserDataJobError": "INVALID_JOB"}),
            "Job not found",
        );
    };
    if job.ran {
        return invalid("The job is no longer PENDING");
    }
    match action {
        "addOperations" => add_operations(job, &body),
        "run" => {
            job.ran = true;
            let mut lists = lock(&fake.inner.lists);
            let list = lists.entry(job.user_list.clone()).or_default();
            let mut removed = lock(&fake.inner.removed);
            for (remove, id) in job.operations.drain(..) {
                if remove {
                    list.remove(&id);
                    removed.push((job.user_list.clone(), id));
                } else {
                    list.insert(id);
                }
            }
            json_response(
                StatusCode::OK,
                &json!({"name": format!("customers/{cid}/operations/{job_id}"), "done": true}),
            )
        }
        _ => not_found("Unknown method"),
    }
}
