//! A local HTTP server that speaks the part of the Salesforce REST API the ticketing service
//! uses, as Salesforce documents it, for tests: the OAuth 2.0 token endpoint (client
//! credentials and JWT bearer), the Case upsert by external id, Case reads and updates,
//! `CaseComment` and a case's `CaseComments`, with Salesforce's error bodies
//! (`[{"errorCode", "message", "fields"}]`). It records every request, and plays faults on
//! the data API in order: an expired session (`401 INVALID_SESSION_ID`), any status with an
//! error body (a 503 burst, `REQUEST_LIMIT_EXCEEDED`), or an answer that comes too late.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// The Case fields the fake org has, besides the external-id and resolution fields it is
/// started with.
const CASE_FIELDS: [&str; 5] = ["Subject", "Description", "Origin", "Status", "CaseNumber"];
/// The org's restricted Status picklist.
const STATUSES: [&str; 4] = ["New", "Working", "Escalated", "Closed"];

/// One request as the fake received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The JSON body, or the form of a token request as a JSON object.
    pub body: Option<Value>,
    /// The bearer token, if any.
    pub token: Option<String>,
}

/// A fault played on the next data-API call (not the token endpoint).
#[derive(Debug, Clone)]
pub enum Fault {
    /// Every token issued so far stops working: `401 INVALID_SESSION_ID`.
    ExpireSessions,
    /// This status with a Salesforce error body of this code.
    Error(u16, &'static str),
    /// The call is carried out, but the answer waits this long.
    Slow(Duration),
}

/// A case in the fake org.
#[derive(Debug, Clone)]
pub struct FakeCase {
    /// Record id.
    pub id: String,
    /// Its fields, `CaseNumber` included.
    pub fields: Map<String, Value>,
    /// Its comments' bodies, oldest first.
    pub comments: Vec<String>,
}

#[derive(Default)]
struct State {
    client_id: String,
    client_secret: String,
    /// JWT bearer: the public key assertions are checked with, and the expected user.
    jwt: Option<(jsonwebtoken::DecodingKey, String)>,
    external_id_field: String,
    extra_fields: HashSet<String>,
    tokens: HashSet<String>,
    issued: u32,
    cases: Vec<FakeCase>,
    requests: Vec<Recorded>,
    faults: VecDeque<Fault>,
    /// An outage: every call, sign-in included, answers 503.
    down: bool,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("cases", &self.cases.len())
            .field("requests", &self.requests.len())
            .finish_non_exhaustive()
    }
}

/// A JSON answer (axum's `Json` needs a feature the services do not use).
struct Json(Value);

impl IntoResponse for Json {
    fn into_response(self) -> Response {
        (
            [(axum::http::header::CONTENT_TYPE, "application/json;charset=UTF-8")],
            self.0.to_string(),
        )
            .into_response()
    }
}

/// The running fake org.
#[derive(Debug)]
pub struct FakeSalesforce {
    /// `http://127.0.0.1:<port>`: both its login URL and its instance URL.
    pub url: String,
    state: Arc<Mutex<State>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeSalesforce {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeSalesforce {
    /// A fake org that accepts the client credentials `client_id` / `client_secret`, whose
    /// Case has the custom fields `external_id_field` (an external id) and `extra_fields`.
    pub async fn start(client_id: &str, client_secret: &str, external_id_field: &str, extra_fields: &[&str]) -> Self {
        let state = Arc::new(Mutex::new(State {
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            external_id_field: external_id_field.to_owned(),
            extra_fields: extra_fields.iter().map(|f| (*f).to_owned()).collect(),
            ..State::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let app = axum::Router::new().fallback({
            let state = state.clone();
            let base = url.clone();
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let (state, base) = (state.clone(), base.clone());
                async move { handle(&state, &base, method, uri, headers, body).await }
            }
        });
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, state, server }
    }

    /// Also accepts JWT bearer assertions for `username`, signed by the key whose public
    /// half is `public_pem`.
    pub fn accept_jwt(&self, public_pem: &[u8], username: &str) {
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(public_pem).expect("a public key in PEM");
        self.lock().jwt = Some((key, username.to_owned()));
    }

    /// Plays these faults on the next data-API calls, in order.
    pub fn fail_next(&self, faults: impl IntoIterator<Item = Fault>) {
        self.lock().faults.extend(faults);
    }

    /// A configuration of the ticketing service for this org: client credentials, and
    /// quick retries (10 to 40 ms) so that tests need not wait.
    pub fn config(&self) -> sspm_platform::config::SalesforceConfig {
        let s = self.lock();
        sspm_platform::config::SalesforceConfig {
            login_url: self.url.clone(),
            client_id: s.client_id.clone(),
            client_secret: s.client_secret.clone(),
            external_id_field: s.external_id_field.clone(),
            timeout_ms: 2_000,
            max_attempts: 4,
            retry_initial_ms: 10,
            retry_max_ms: 40,
            ..sspm_platform::config::SalesforceConfig::default()
        }
    }

    /// Starts (`true`) or ends an outage: while it lasts every call, sign-in included, is
    /// answered `503 SERVER_UNAVAILABLE` and carried out no further.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// Forgets the requests recorded so far.
    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    /// The cases, in the order they were created.
    pub fn cases(&self) -> Vec<FakeCase> {
        self.lock().cases.clone()
    }

    /// How many tokens were issued.
    pub fn tokens_issued(&self) -> u32 {
        self.lock().issued
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn errors(status: StatusCode, code: &str, message: &str, fields: &[&str]) -> Response {
    (
        status,
        Json(json!([{ "errorCode": code, "message": message, "fields": fields }])),
    )
        .into_response()
}

async fn handle(
    state: &Mutex<State>,
    base: &str,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let path = uri.path().to_owned();
    let form = path == "/services/oauth2/token";
    let recorded_body = if form {
        Some(Value::Object(
            parse_form(&body)
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect(),
        ))
    } else {
        serde_json::from_slice(&body).ok()
    };
    let (answer, delay) = {
        let mut s = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        s.requests.push(Recorded {
            method: method.to_string(),
            path: uri.path_and_query().map_or(path.clone(), ToString::to_string),
            body: recorded_body.clone(),
            token: token.clone(),
        });
        if s.down {
            (
                errors(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "SERVER_UNAVAILABLE",
                    "the org is down for maintenance",
                    &[],
                ),
                None,
            )
        } else if form {
            (token_endpoint(&mut s, base, recorded_body.unwrap_or_default()), None)
        } else {
            data_api(
                &mut s,
                &method,
                &path,
                uri.query().unwrap_or_default(),
                token,
                recorded_body,
            )
        }
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    answer
}

fn token_endpoint(s: &mut State, base: &str, form: Value) -> Response {
    let get = |k: &str| form.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
    let refused = |error: &str, description: &str| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": error, "error_description": description })),
        )
            .into_response()
    };
    match get("grant_type").as_str() {
        "client_credentials" => {
            if get("client_id") != s.client_id || get("client_secret") != s.client_secret {
                return refused("invalid_client", "invalid client credentials");
            }
        }
        "urn:ietf:params:oauth:grant-type:jwt-bearer" => {
            let Some((key, user)) = &s.jwt else {
                return refused("invalid_grant", "the JWT bearer flow is not enabled");
            };
            let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
            validation.set_audience(&[base]);
            validation.set_issuer(&[s.client_id.as_str()]);
            validation.sub = Some(user.clone());
            validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
            if let Err(e) = jsonwebtoken::decode::<Value>(&get("assertion"), key, &validation) {
                return refused("invalid_grant", &format!("invalid assertion: {e}"));
            }
        }
        other => return refused("unsupported_grant_type", &format!("grant type not supported: {other}")),
    }
    s.issued += 1;
    let token = format!("00Dfake!token{}", s.issued);
    s.tokens.insert(token.clone());
    Json(json!({
        "access_token": token,
        "instance_url": base,
        "id": format!("{base}/id/00Dfake/005fake"),
        "token_type": "Bearer",
        "issued_at": "1764700000000",
        "signature": "fake",
    }))
    .into_response()
}

fn data_api(
    s: &mut State,
    method: &Method,
    path: &str,
    query: &str,
    token: Option<String>,
    body: Option<Value>,
) -> (Response, Option<Duration>) {
    let mut delay = None;
    match s.faults.pop_front() {
        Some(Fault::ExpireSessions) => s.tokens.clear(),
        Some(Fault::Error(status, code)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (errors(status, code, "injected by the test", &[]), None);
        }
        Some(Fault::Slow(d)) => delay = Some(d),
        None => {}
    }
    if !token.is_some_and(|t| s.tokens.contains(&t)) {
        return (
            errors(
                StatusCode::UNAUTHORIZED,
                "INVALID_SESSION_ID",
                "Session expired or invalid",
                &[],
            ),
            delay,
        );
    }
    let Some(rest) = path
        .strip_prefix("/services/data/v")
        .and_then(|r| r.split_once('/'))
        .map(|(_, rest)| rest)
    else {
        return (
            errors(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "The requested resource does not exist",
                &[],
            ),
            delay,
        );
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let answer = match (method.as_str(), segments.as_slice()) {
        ("PATCH", ["sobjects", "Case", field, value]) => upsert(s, field, value, body),
        ("GET", ["sobjects", "Case", id, "CaseComments"]) => match s.cases.iter().find(|c| c.id == *id) {
            Some(c) => {
                let records: Vec<Value> = c
                    .comments
                    .iter()
                    .enumerate()
                    .map(|(i, b)| json!({ "attributes": { "type": "CaseComment" }, "Id": format!("00afake{i}"), "CommentBody": b }))
                    .collect();
                Json(json!({ "totalSize": records.len(), "done": true, "records": records })).into_response()
            }
            None => not_found(),
        },
        ("GET", ["sobjects", "Case", field, value]) => {
            let found = s
                .cases
                .iter()
                .find(|c| *field == s.external_id_field && c.fields.get(*field).and_then(Value::as_str) == Some(value));
            found.map_or_else(not_found, |c| read(c, query))
        }
        ("GET", ["sobjects", "Case", id]) => s
            .cases
            .iter()
            .find(|c| c.id == *id)
            .map_or_else(not_found, |c| read(c, query)),
        ("PATCH", ["sobjects", "Case", id]) => {
            let fields = match check_fields(s, body) {
                Ok(f) => f,
                Err(r) => return (r, delay),
            };
            match s.cases.iter_mut().find(|c| c.id == *id) {
                Some(c) => {
                    c.fields.extend(fields);
                    StatusCode::NO_CONTENT.into_response()
                }
                None => not_found(),
            }
        }
        ("POST", ["sobjects", "CaseComment"]) => {
            let body = body.unwrap_or_default();
            let parent = body.get("ParentId").and_then(Value::as_str).unwrap_or_default();
            let text = body.get("CommentBody").and_then(Value::as_str).unwrap_or_default();
            if parent.is_empty() {
                return (
                    errors(
                        StatusCode::BAD_REQUEST,
                        "REQUIRED_FIELD_MISSING",
                        "Required fields are missing: [ParentId]",
                        &["ParentId"],
                    ),
                    delay,
                );
            }
            if text.len() > 4000 {
                return (
                    errors(
                        StatusCode::BAD_REQUEST,
                        "STRING_TOO_LONG",
                        "Body: data value too large (max length=4000)",
                        &["CommentBody"],
                    ),
                    delay,
                );
            }
            match s.cases.iter_mut().find(|c| c.id == parent) {
                Some(c) => {
                    c.comments.push(text.to_owned());
                    let id = format!("00afake{}", c.comments.len());
                    (
                        StatusCode::CREATED,
                        Json(json!({ "id": id, "success": true, "errors": [] })),
                    )
                        .into_response()
                }
                None => errors(
                    StatusCode::BAD_REQUEST,
                    "FIELD_INTEGRITY_EXCEPTION",
                    "Parent ID: id value of incorrect type",
                    &["ParentId"],
                ),
            }
        }
        _ => not_found(),
    };
    (answer, delay)
}

fn not_found() -> Response {
    errors(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "The requested resource does not exist",
        &[],
    )
}

fn read(c: &FakeCase, query: &str) -> Response {
    let mut out = Map::new();
    out.insert("attributes".to_owned(), json!({ "type": "Case" }));
    out.insert("Id".to_owned(), json!(c.id));
    let wanted = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("fields="))
        .unwrap_or_default();
    for f in wanted.split(',').filter(|f| !f.is_empty() && *f != "Id") {
        out.insert(f.to_owned(), c.fields.get(f).cloned().unwrap_or(Value::Null));
    }
    Json(Value::Object(out)).into_response()
}

/// The fields of a write, checked as the org would: known fields, a valid Status.
fn check_fields(s: &State, body: Option<Value>) -> Result<Map<String, Value>, Response> {
    let Some(Value::Object(fields)) = body else {
        return Err(errors(
            StatusCode::BAD_REQUEST,
            "JSON_PARSER_ERROR",
            "The request body is not a JSON object",
            &[],
        ));
    };
    if let Some(unknown) = fields.keys().find(|k| {
        *k == "CaseNumber"
            || !(CASE_FIELDS.contains(&k.as_str()) || s.extra_fields.contains(*k) || **k == s.external_id_field)
    }) {
        return Err(errors(
            StatusCode::BAD_REQUEST,
            "INVALID_FIELD",
            &format!("No such column '{unknown}' on sobject of type Case"),
            &[unknown.as_str()],
        ));
    }
    if let Some(status) = fields.get("Status").and_then(Value::as_str)
        && !STATUSES.contains(&status)
    {
        return Err(errors(
            StatusCode::BAD_REQUEST,
            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
            &format!("Status: bad value for restricted picklist field: {status}"),
            &["Status"],
        ));
    }
    Ok(fields)
}

fn upsert(s: &mut State, field: &str, value: &str, body: Option<Value>) -> Response {
    if field != s.external_id_field {
        return errors(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("Provided external ID field does not exist or is not accessible: {field}"),
            &[],
        );
    }
    let fields = match check_fields(s, body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    if let Some(c) = s
        .cases
        .iter_mut()
        .find(|c| c.fields.get(field).and_then(Value::as_str) == Some(value))
    {
        c.fields.extend(fields);
        let id = c.id.clone();
        return Json(json!({ "id": id, "success": true, "errors": [], "created": false })).into_response();
    }
    let n = s.cases.len() + 1;
    let id = format!("500fake{n:011}");
    let mut all = fields;
    all.insert(field.to_owned(), json!(value));
    all.insert("CaseNumber".to_owned(), json!(format!("{:08}", 1000 + n)));
    s.cases.push(FakeCase {
        id: id.clone(),
        fields: all,
        comments: vec![],
    });
    (
        StatusCode::CREATED,
        Json(json!({ "id": id, "success": true, "errors": [], "created": true })),
    )
        .into_response()
}

/// `application/x-www-form-urlencoded`, decoded.
fn parse_form(body: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
