//! The Salesforce REST API, as the ticketing service uses it: cases opened idempotently by
//! an upsert on an external-id field that holds SSPM's request id, their `CaseNumber` read
//! back, comments (`CaseComment`), status changes and closing.
//!
//! Every call has a deadline (`timeout_ms`). A `401 INVALID_SESSION_ID` signs in again and
//! retries once; `REQUEST_LIMIT_EXCEEDED`, 5xx answers and network errors are retried with
//! exponential backoff and jitter, up to `max_attempts`. A call that is not idempotent (a
//! new comment) is retried only where the org cannot have carried it out (the connection was
//! refused, the limit was hit, 503); otherwise the error says it may have been done
//! (`maybe_done` of [`SalesforceError::Unavailable`]) and the caller checks before trying again.
//! Salesforce's error bodies (`[{"errorCode", "message", "fields"}]`) become
//! [`SalesforceError::Refused`], mapped to a gRPC status by [`SalesforceError::status`].
//! Tokens and secrets are never logged.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backon::{BackoffBuilder, ExponentialBuilder};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sspm_platform::config::SalesforceConfig;
use tokio::sync::Mutex;

/// How a call to the org failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SalesforceError {
    /// The org could not be reached, did not answer in time, or kept answering with its
    /// request limit or a server error through every attempt. Try again later.
    #[error("Salesforce is unavailable: {message}")]
    Unavailable {
        /// What happened last.
        message: String,
        /// The call may have been carried out (its answer was lost): check before repeating
        /// a call that is not idempotent.
        maybe_done: bool,
    },
    /// Signing in was refused: the connected app, its credentials or the integration user
    /// need fixing.
    #[error("Salesforce refused to sign in: {0}")]
    SignIn(String),
    /// The org refused the request itself.
    #[error("Salesforce refused to {what}: {code}: {message}{}", fields_suffix(.fields))]
    Refused {
        /// What SSPM asked for.
        what: String,
        /// The HTTP status.
        http_status: u16,
        /// Salesforce's `errorCode`.
        code: String,
        /// Salesforce's `message`.
        message: String,
        /// Salesforce's `fields`.
        fields: Vec<String>,
    },
}

fn fields_suffix(fields: &[String]) -> String {
    if fields.is_empty() {
        String::new()
    } else {
        format!(" (fields: {})", fields.join(", "))
    }
}

impl SalesforceError {
    /// The gRPC status a caller of the ticketing service sees: UNAVAILABLE when trying again
    /// later may work (the org is down, busy, or SSPM cannot sign in until an operator fixes
    /// its credentials), NOT_FOUND for a case the org no longer has, FAILED_PRECONDITION
    /// when the org refuses what SSPM sends (its fields, picklists or validation rules do
    /// not match the configuration).
    pub fn status(&self) -> tonic::Status {
        match self {
            SalesforceError::Unavailable { .. } | SalesforceError::SignIn(_) => {
                tonic::Status::unavailable(format!("ticketing backend: {self}"))
            }
            SalesforceError::Refused { code, .. } if code == "NOT_FOUND" || code == "ENTITY_IS_DELETED" => {
                tonic::Status::not_found(format!("ticketing backend: {self}"))
            }
            SalesforceError::Refused { .. } => tonic::Status::failed_precondition(format!("ticketing backend: {self}")),
        }
    }
}

/// A case in the org.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgCase {
    /// The record id (`500…`).
    pub id: String,
    /// Its `CaseNumber`.
    pub case_number: String,
    /// Whether this call created it (false: it existed, from an earlier attempt).
    pub created: bool,
}

/// What a new case says.
#[derive(Debug, Clone)]
pub struct CaseFields {
    /// `Subject`.
    pub subject: String,
    /// `Description`.
    pub description: String,
}

#[derive(Clone)]
struct Session {
    token: String,
    instance_url: String,
}

/// A client of one org.
#[derive(Clone)]
pub struct Salesforce {
    http: reqwest::Client,
    cfg: Arc<SalesforceConfig>,
    key: Option<Arc<jsonwebtoken::EncodingKey>>,
    session: Arc<Mutex<Option<Session>>>,
}

impl std::fmt::Debug for Salesforce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Salesforce")
            .field("login_url", &self.cfg.login_url)
            .finish_non_exhaustive()
    }
}

/// JWT bearer assertions are valid this long (Salesforce accepts at most 3 minutes).
const ASSERTION_SECONDS: u64 = 180;

impl Salesforce {
    /// A client for the org `cfg` names (validated by `SspmConfig`). Reads the JWT bearer
    /// key, if that flow is configured; nothing is sent until the first call.
    pub fn new(cfg: SalesforceConfig) -> Result<Self, String> {
        let key = match (&cfg.auth_flow, &cfg.private_key_path) {
            (sspm_platform::config::SalesforceAuthFlow::JwtBearer, Some(path)) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("ticketing.salesforce.private_key_path {}: {e}", path.display()))?;
                let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).map_err(|e| {
                    format!(
                        "ticketing.salesforce.private_key_path {}: not an RSA private key in PEM: {e}",
                        path.display()
                    )
                })?;
                Some(Arc::new(key))
            }
            _ => None,
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &cfg.ca_path {
            let certs = sspm_platform::tls::load_certificates(path)
                .map_err(|e| format!("ticketing.salesforce.ca_path: {e:#}"))?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("ticketing.salesforce.ca_path {}: {e}", path.display()))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS for Salesforce: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .connect_timeout(Duration::from_millis(cfg.timeout_ms.min(5_000)))
            .user_agent(concat!("sspm-ticketing/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("HTTP client for Salesforce: {e}"))?;
        Ok(Self {
            http,
            cfg: Arc::new(cfg),
            key,
            session: Arc::new(Mutex::new(None)),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SalesforceConfig {
        &self.cfg
    }

    /// Opens the case of `request_id`, or finds the one an earlier attempt opened (an upsert
    /// on the external-id field), and reads its `CaseNumber`.
    pub async fn open_case(&self, request_id: &str, fields: &CaseFields) -> Result<OrgCase, SalesforceError> {
        let body = json!({
            "Subject": fields.subject,
            "Description": fields.description,
            "Origin": self.cfg.origin,
            "Status": self.cfg.statuses.new,
        });
        let path = format!(
            "/sobjects/Case/{}/{}",
            self.cfg.external_id_field,
            encode_segment(request_id)
        );
        let (status, answer) = self
            .call("open a case", Method::PATCH, &path, Some(&body), true)
            .await?;
        // 201 created, 200 updated (API 46.0 and later answer with the id); older versions
        // answer an update with 204 and no body: read the id by the external id.
        let (id, created) = match text(&answer, "id") {
            Some(id) => (
                id.to_owned(),
                answer
                    .as_ref()
                    .and_then(|a| a.get("created"))
                    .and_then(Value::as_bool)
                    .unwrap_or(status == StatusCode::CREATED),
            ),
            None => {
                let found = self
                    .call("read a case", Method::GET, &format!("{path}?fields=Id"), None, true)
                    .await?
                    .1;
                let id = text(&found, "Id").ok_or_else(|| unexpected("open a case", "no case id after the upsert"))?;
                (id.to_owned(), false)
            }
        };
        let case_number = self.case_number(&id).await?;
        Ok(OrgCase {
            id,
            case_number,
            created,
        })
    }

    /// The `CaseNumber` of the case `id`.
    pub async fn case_number(&self, id: &str) -> Result<String, SalesforceError> {
        let path = format!("/sobjects/Case/{}?fields=CaseNumber", encode_segment(id));
        let (_, answer) = self.call("read a case", Method::GET, &path, None, true).await?;
        text(&answer, "CaseNumber")
            .map(str::to_owned)
            .ok_or_else(|| unexpected("read a case", "the case has no CaseNumber"))
    }

    /// Adds a private comment to the case `id`; the new comment's id. Not idempotent: see
    /// `maybe_done` of [`SalesforceError::Unavailable`] and [`Salesforce::comment_bodies`].
    pub async fn add_comment(&self, id: &str, body: &str) -> Result<String, SalesforceError> {
        let comment = json!({ "ParentId": id, "CommentBody": body, "IsPublished": false });
        let (_, answer) = self
            .call(
                "comment on a case",
                Method::POST,
                "/sobjects/CaseComment",
                Some(&comment),
                false,
            )
            .await?;
        text(&answer, "id")
            .map(str::to_owned)
            .ok_or_else(|| unexpected("comment on a case", "no comment id in the answer"))
    }

    /// The bodies of the comments on the case `id` (to tell whether a comment whose answer
    /// was lost was added).
    pub async fn comment_bodies(&self, id: &str) -> Result<Vec<String>, SalesforceError> {
        let path = format!("/sobjects/Case/{}/CaseComments", encode_segment(id));
        let (_, answer) = self
            .call("read a case's comments", Method::GET, &path, None, true)
            .await?;
        Ok(answer
            .as_ref()
            .and_then(|a| a.get("records"))
            .and_then(Value::as_array)
            .map(|records| {
                records
                    .iter()
                    .filter_map(|r| r.get("CommentBody").and_then(Value::as_str).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Sets the `Status` of the case `id` to `status` (a picklist value).
    pub async fn set_status(&self, id: &str, status: &str) -> Result<(), SalesforceError> {
        self.update(id, "update a case's status", json!({ "Status": status }))
            .await
    }

    /// Closes the case `id`. The resolution goes into `resolution_field` when one is
    /// configured; otherwise the caller adds it as a comment.
    pub async fn close(&self, id: &str, resolution: &str) -> Result<(), SalesforceError> {
        let mut fields = json!({ "Status": self.cfg.statuses.closed });
        if !self.cfg.resolution_field.is_empty() {
            fields[self.cfg.resolution_field.as_str()] = json!(resolution);
        }
        self.update(id, "close a case", fields).await
    }

    async fn update(&self, id: &str, what: &str, fields: Value) -> Result<(), SalesforceError> {
        let path = format!("/sobjects/Case/{}", encode_segment(id));
        self.call(what, Method::PATCH, &path, Some(&fields), true)
            .await
            .map(|_| ())
    }

    /// One REST call under `/services/data/vNN.N`, with sign-in, its one retry on an expired
    /// session, and retries of what may pass later. The answer's status and JSON body.
    async fn call(
        &self,
        what: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        idempotent: bool,
    ) -> Result<(StatusCode, Option<Value>), SalesforceError> {
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.cfg.retry_initial_ms))
            .with_max_delay(Duration::from_millis(self.cfg.retry_max_ms))
            .with_max_times(self.cfg.max_attempts.saturating_sub(1) as usize)
            .with_jitter()
            .build();
        let mut signed_in_again = false;
        loop {
            let (retry, failure) = match self.attempt(what, &method, path, body, idempotent).await {
                Ok(answer) => return Ok(answer),
                Err(Attempt::SessionExpired(token)) if !signed_in_again => {
                    signed_in_again = true;
                    self.forget(&token).await;
                    continue;
                }
                Err(Attempt::SessionExpired(_)) => (
                    false,
                    SalesforceError::SignIn("the new session was refused too (INVALID_SESSION_ID)".to_owned()),
                ),
                Err(Attempt::Failed { retry, error }) => (retry, error),
            };
            match delays.next() {
                Some(delay) if retry => {
                    tracing::warn!(what, error = %failure, retry_in_ms = delay.as_millis(), "Salesforce call failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                _ => return Err(failure),
            }
        }
    }

    async fn attempt(
        &self,
        what: &str,
        method: &Method,
        path: &str,
        body: Option<&Value>,
        idempotent: bool,
    ) -> Result<(StatusCode, Option<Value>), Attempt> {
        let session = self.session().await?;
        let url = format!("{}/services/data/v{}{path}", session.instance_url, self.cfg.api_version);
        let mut request = self.http.request(method.clone(), url).bearer_auth(&session.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let answer = match request.send().await {
            Ok(answer) => answer,
            Err(e) => {
                // A refused connection never reached the org; a timeout may have.
                let maybe_done = !e.is_connect();
                return Err(Attempt::Failed {
                    retry: idempotent || !maybe_done,
                    error: SalesforceError::Unavailable {
                        message: format!("{what}: {}", describe(&e)),
                        maybe_done: maybe_done && !idempotent,
                    },
                });
            }
        };
        let status = answer.status();
        let bytes = answer.bytes().await.map_err(|e| Attempt::Failed {
            retry: idempotent,
            error: SalesforceError::Unavailable {
                message: format!("{what}: reading the answer: {}", describe(&e)),
                maybe_done: !idempotent,
            },
        })?;
        tracing::debug!(%method, path, status = status.as_u16(), "Salesforce call");
        if status.is_success() {
            let json = if bytes.is_empty() {
                None
            } else {
                Some(serde_json::from_slice(&bytes).map_err(|e| Attempt::Failed {
                    retry: false,
                    error: unexpected(what, &format!("an answer that is not JSON: {e}")),
                })?)
            };
            return Ok((status, json));
        }
        let (code, message, fields) = first_error(&bytes);
        if status == StatusCode::UNAUTHORIZED && code == "INVALID_SESSION_ID" {
            return Err(Attempt::SessionExpired(session.token));
        }
        let limit = status == StatusCode::FORBIDDEN && code == "REQUEST_LIMIT_EXCEEDED";
        if limit || status.is_server_error() {
            // The limit and 503 mean the org did not carry the call out; other server
            // errors may come after it did.
            let not_done = limit || status == StatusCode::SERVICE_UNAVAILABLE;
            return Err(Attempt::Failed {
                retry: idempotent || not_done,
                error: SalesforceError::Unavailable {
                    message: format!("{what}: HTTP {}: {code}: {message}", status.as_u16()),
                    maybe_done: !idempotent && !not_done,
                },
            });
        }
        Err(Attempt::Failed {
            retry: false,
            error: SalesforceError::Refused {
                what: what.to_owned(),
                http_status: status.as_u16(),
                code,
                message,
                fields,
            },
        })
    }

    /// The current session, signing in when there is none. One sign-in at a time: callers
    /// that find none wait for it.
    async fn session(&self) -> Result<Session, Attempt> {
        let mut current = self.session.lock().await;
        if let Some(s) = current.as_ref() {
            return Ok(s.clone());
        }
        let s = self.sign_in().await?;
        *current = Some(s.clone());
        Ok(s)
    }

    /// Drops the session whose token the org refused (unless another call replaced it).
    async fn forget(&self, token: &str) {
        let mut current = self.session.lock().await;
        if current.as_ref().is_some_and(|s| s.token == token) {
            *current = None;
        }
    }

    async fn sign_in(&self) -> Result<Session, Attempt> {
        use sspm_platform::config::SalesforceAuthFlow;
        let cfg = &self.cfg;
        let form: Vec<(&str, String)> = match cfg.auth_flow {
            SalesforceAuthFlow::ClientCredentials => vec![
                ("grant_type", "client_credentials".to_owned()),
                ("client_id", cfg.client_id.clone()),
                ("client_secret", cfg.client_secret.clone()),
            ],
            SalesforceAuthFlow::JwtBearer => vec![
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer".to_owned()),
                ("assertion", self.assertion()?),
            ],
        };
        let url = format!("{}/services/oauth2/token", cfg.login_url.trim_end_matches('/'));
        let unavailable = |message: String| Attempt::Failed {
            retry: true,
            error: SalesforceError::Unavailable {
                message,
                maybe_done: false,
            },
        };
        let answer = self
            .http
            .post(url)
            .form(&form)
            .send()
            .await
            .map_err(|e| unavailable(format!("signing in: {}", describe(&e))))?;
        let status = answer.status();
        let bytes = answer
            .bytes()
            .await
            .map_err(|e| unavailable(format!("signing in: {}", describe(&e))))?;
        if status.is_server_error() {
            return Err(unavailable(format!("signing in: HTTP {}", status.as_u16())));
        }
        let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            // OAuth errors: {"error": "invalid_client", "error_description": "..."}
            let error = json.get("error").and_then(Value::as_str).unwrap_or("unknown_error");
            let description = json
                .get("error_description")
                .and_then(Value::as_str)
                .unwrap_or_default();
            return Err(Attempt::Failed {
                retry: false,
                error: SalesforceError::SignIn(format!("HTTP {}: {error}: {description}", status.as_u16())),
            });
        }
        let field = |name: &str| json.get(name).and_then(Value::as_str).map(str::to_owned);
        match (field("access_token"), field("instance_url")) {
            (Some(token), Some(instance_url)) => Ok(Session {
                token,
                instance_url: instance_url.trim_end_matches('/').to_owned(),
            }),
            _ => Err(Attempt::Failed {
                retry: false,
                error: SalesforceError::SignIn("the token answer lacks access_token or instance_url".to_owned()),
            }),
        }
    }

    /// The JWT bearer assertion: issued by the connected app for the integration user, to
    /// the login URL, valid for three minutes, signed RS256.
    fn assertion(&self) -> Result<String, Attempt> {
        let key = self.key.as_ref().ok_or_else(|| Attempt::Failed {
            retry: false,
            error: SalesforceError::SignIn("no private key for the jwt_bearer flow".to_owned()),
        })?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = json!({
            "iss": self.cfg.client_id,
            "sub": self.cfg.username,
            "aud": self.cfg.login_url.trim_end_matches('/'),
            "exp": now + ASSERTION_SECONDS,
        });
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256), &claims, key).map_err(|e| {
            Attempt::Failed {
                retry: false,
                error: SalesforceError::SignIn(format!("signing the JWT assertion: {e}")),
            }
        })
    }
}

/// How one attempt ended, when not with an answer.
enum Attempt {
    /// The org refused this session's token.
    SessionExpired(String),
    /// Another failure; whether trying again may help.
    Failed { retry: bool, error: SalesforceError },
}

/// A text field of a JSON answer.
fn text<'a>(answer: &'a Option<Value>, name: &str) -> Option<&'a str> {
    answer.as_ref()?.get(name)?.as_str()
}

fn unexpected(what: &str, message: &str) -> SalesforceError {
    SalesforceError::Refused {
        what: what.to_owned(),
        http_status: 200,
        code: "UNEXPECTED_ANSWER".to_owned(),
        message: message.to_owned(),
        fields: vec![],
    }
}

/// The first entry of Salesforce's error body `[{"errorCode", "message", "fields"}]`, or
/// what can be said of a body that is not one.
fn first_error(body: &[u8]) -> (String, String, Vec<String>) {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let first = parsed.as_ref().and_then(|v| match v {
        Value::Array(errors) => errors.first(),
        other => Some(other),
    });
    match first {
        Some(e) if e.get("errorCode").is_some() => (
            e.get("errorCode")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            e.get("message").and_then(Value::as_str).unwrap_or_default().to_owned(),
            e.get("fields")
                .and_then(Value::as_array)
                .map(|f| f.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                .unwrap_or_default(),
        ),
        _ => {
            let text: String = String::from_utf8_lossy(body).chars().take(200).collect();
            ("UNKNOWN".to_owned(), text, vec![])
        }
    }
}

/// A reqwest error without the URL (which holds nothing secret, but is long).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "network error"
    };
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {detail}")
    }
}

/// A path segment: request ids and record ids are plain, but nothing is left to chance.
fn encode_segment(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use sspm_platform::config::SalesforceAuthFlow;

    use super::*;
    use crate::fake_salesforce::{FakeSalesforce, Fault, Recorded};

    const FIELD: &str = "SSPM_Request_Id__c";

    async fn org() -> FakeSalesforce {
        FakeSalesforce::start("key", "s3cret", FIELD, &["Resolution__c"]).await
    }

    fn fields() -> CaseFields {
        CaseFields {
            subject: "Port change for bu-league: concurrent 100 -> 110".to_owned(),
            description: "Self-service port change request r-1".to_owned(),
        }
    }

    fn calls(requests: &[Recorded]) -> Vec<String> {
        requests.iter().map(|r| format!("{} {}", r.method, r.path)).collect()
    }

    /// The exact requests of opening a case: a token by client credentials, the upsert on
    /// the external-id field, the read of CaseNumber; a second open finds the same case.
    #[tokio::test]
    async fn opening_a_case_is_an_upsert_by_request_id_then_a_read_of_its_number() {
        let org = org().await;
        let sf = Salesforce::new(org.config()).unwrap();
        let case = sf.open_case("r-1", &fields()).await.unwrap();
        assert_eq!(case.case_number, "00001001");
        assert!(case.created);
        let requests = org.requests();
        assert_eq!(
            calls(&requests),
            [
                "POST /services/oauth2/token",
                "PATCH /services/data/v62.0/sobjects/Case/SSPM_Request_Id__c/r-1",
                &format!("GET /services/data/v62.0/sobjects/Case/{}?fields=CaseNumber", case.id),
            ]
        );
        assert_eq!(
            requests[0].body,
            Some(json!({ "grant_type": "client_credentials", "client_id": "key", "client_secret": "s3cret" }))
        );
        assert_eq!(
            requests[1].body,
            Some(json!({
                "Subject": "Port change for bu-league: concurrent 100 -> 110",
                "Description": "Self-service port change request r-1",
                "Origin": "Web",
                "Status": "New",
            }))
        );
        assert_eq!(requests[1].token.as_deref(), Some("00Dfake!token1"));

        let again = sf.open_case("r-1", &fields()).await.unwrap();
        assert_eq!(
            (again.id.as_str(), again.case_number.as_str(), again.created),
            (case.id.as_str(), "00001001", false)
        );
        assert_eq!(org.cases().len(), 1, "one case, however often it is opened");
        assert_eq!(org.tokens_issued(), 1, "the session is reused");
    }

    #[tokio::test]
    async fn comments_status_and_closing_with_a_resolution_field() {
        let org = org().await;
        let mut cfg = org.config();
        cfg.resolution_field = "Resolution__c".to_owned();
        let sf = Salesforce::new(cfg).unwrap();
        let case = sf.open_case("r-2", &fields()).await.unwrap();
        org.clear_requests();
        sf.add_comment(&case.id, "Sent to Network Operations").await.unwrap();
        sf.set_status(&case.id, "Escalated").await.unwrap();
        sf.close(&case.id, "Approved by netops@sspm.example").await.unwrap();
        let requests = org.requests();
        let path = format!("/services/data/v62.0/sobjects/Case/{}", case.id);
        assert_eq!(
            calls(&requests),
            [
                "POST /services/data/v62.0/sobjects/CaseComment".to_owned(),
                format!("PATCH {path}"),
                format!("PATCH {path}"),
            ]
        );
        assert_eq!(
            requests[0].body,
            Some(json!({ "ParentId": case.id, "CommentBody": "Sent to Network Operations", "IsPublished": false }))
        );
        assert_eq!(requests[1].body, Some(json!({ "Status": "Escalated" })));
        assert_eq!(
            requests[2].body,
            Some(json!({ "Status": "Closed", "Resolution__c": "Approved by netops@sspm.example" }))
        );
        let stored = &org.cases()[0];
        assert_eq!(stored.fields["Status"], "Closed");
        assert_eq!(stored.comments, ["Sent to Network Operations"]);
        assert_eq!(
            sf.comment_bodies(&case.id).await.unwrap(),
            ["Sent to Network Operations"]
        );
    }

    #[tokio::test]
    async fn an_expired_session_signs_in_again_and_retries_once() {
        let org = org().await;
        let sf = Salesforce::new(org.config()).unwrap();
        let case = sf.open_case("r-3", &fields()).await.unwrap();
        org.fail_next([Fault::ExpireSessions]);
        org.clear_requests();
        sf.set_status(&case.id, "Working").await.unwrap();
        assert_eq!(
            calls(&org.requests()),
            [
                format!("PATCH /services/data/v62.0/sobjects/Case/{}", case.id),
                "POST /services/oauth2/token".to_owned(),
                format!("PATCH /services/data/v62.0/sobjects/Case/{}", case.id),
            ]
        );
        assert_eq!(org.tokens_issued(), 2);
        // A session refused right after signing in again is not retried forever.
        org.fail_next([Fault::ExpireSessions, Fault::ExpireSessions]);
        let err = sf.set_status(&case.id, "Working").await.unwrap_err();
        assert!(matches!(err, SalesforceError::SignIn(_)), "{err:?}");
        assert_eq!(err.status().code(), tonic::Code::Unavailable);
    }

    #[tokio::test]
    async fn a_503_burst_and_the_request_limit_are_waited_out() {
        let org = org().await;
        let sf = Salesforce::new(org.config()).unwrap();
        org.fail_next([
            Fault::Error(503, "SERVER_UNAVAILABLE"),
            Fault::Error(503, "SERVER_UNAVAILABLE"),
            Fault::Error(403, "REQUEST_LIMIT_EXCEEDED"),
        ]);
        let case = sf.open_case("r-4", &fields()).await.unwrap();
        assert_eq!(org.cases().len(), 1);
        // A comment is retried after the limit (the org did nothing) ...
        org.fail_next([Fault::Error(403, "REQUEST_LIMIT_EXCEEDED")]);
        sf.add_comment(&case.id, "once").await.unwrap();
        assert_eq!(org.cases()[0].comments, ["once"]);
        // ... but not after a 500, which may come after the comment was added.
        org.fail_next([Fault::Error(500, "UNKNOWN_EXCEPTION")]);
        let err = sf.add_comment(&case.id, "maybe").await.unwrap_err();
        assert!(
            matches!(err, SalesforceError::Unavailable { maybe_done: true, .. }),
            "{err:?}"
        );
        // More failures than attempts: unavailable, nothing left half done.
        org.fail_next((0..4).map(|_| Fault::Error(503, "SERVER_UNAVAILABLE")));
        let err = sf.set_status(&case.id, "Working").await.unwrap_err();
        assert!(
            matches!(&err, SalesforceError::Unavailable { maybe_done: false, message } if message.contains("HTTP 503")),
            "{err:?}"
        );
        assert_eq!(err.status().code(), tonic::Code::Unavailable);
    }

    #[tokio::test]
    async fn salesforce_error_bodies_become_clear_statuses() {
        let org = org().await;
        let mut cfg = org.config();
        cfg.statuses.waiting_on_customer = "Waiting on Customer".to_owned();
        let sf = Salesforce::new(cfg).unwrap();
        let case = sf.open_case("r-5", &fields()).await.unwrap();
        let err = sf.set_status(&case.id, "Waiting on Customer").await.unwrap_err();
        assert_eq!(
            err,
            SalesforceError::Refused {
                what: "update a case's status".to_owned(),
                http_status: 400,
                code: "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST".to_owned(),
                message: "Status: bad value for restricted picklist field: Waiting on Customer".to_owned(),
                fields: vec!["Status".to_owned()],
            }
        );
        let status = err.status();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(status.message().contains("(fields: Status)"), "{}", status.message());
        let err = sf.set_status("500nosuchcase", "Working").await.unwrap_err();
        assert_eq!(err.status().code(), tonic::Code::NotFound);
        // A misnamed external-id field is the org's configuration, not a missing case.
        let mut cfg = org.config();
        cfg.external_id_field = "Wrong__c".to_owned();
        let err = Salesforce::new(cfg)
            .unwrap()
            .open_case("r-6", &fields())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("Provided external ID field does not exist"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn refused_credentials_and_slow_answers() {
        let org = org().await;
        let mut cfg = org.config();
        cfg.client_secret = "wrong".to_owned();
        let err = Salesforce::new(cfg).unwrap().case_number("500x").await.unwrap_err();
        assert_eq!(
            err,
            SalesforceError::SignIn("HTTP 400: invalid_client: invalid client credentials".to_owned())
        );
        assert_eq!(org.tokens_issued(), 0);

        let mut cfg = org.config();
        cfg.timeout_ms = 200;
        cfg.max_attempts = 1;
        let sf = Salesforce::new(cfg).unwrap();
        let case = sf.open_case("r-7", &fields()).await.unwrap();
        org.fail_next([Fault::Slow(Duration::from_secs(2))]);
        let started = std::time::Instant::now();
        let err = sf.add_comment(&case.id, "late").await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        assert!(
            matches!(&err, SalesforceError::Unavailable { maybe_done: true, message } if message.contains("timed out")),
            "{err:?}"
        );
    }

    /// The JWT bearer key may be PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1 (`BEGIN RSA PRIVATE
    /// KEY`); anything else is refused with the path.
    #[test]
    fn the_jwt_key_is_pkcs8_or_pkcs1_pem() {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::pkcs8::{EncodePrivateKey, LineEnding};
        let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cfg = |pem: &[u8]| {
            let path = dir.path().join("key.pem");
            std::fs::write(&path, pem).unwrap();
            SalesforceConfig {
                auth_flow: SalesforceAuthFlow::JwtBearer,
                client_id: "key".to_owned(),
                username: "integration@acme.example".to_owned(),
                private_key_path: Some(path),
                ..SalesforceConfig::default()
            }
        };
        Salesforce::new(cfg(private.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes())).unwrap();
        Salesforce::new(cfg(private.to_pkcs1_pem(LineEnding::LF).unwrap().as_bytes())).unwrap();
        let err = Salesforce::new(cfg(b"-----BEGIN CERTIFICATE-----\nMII=\n-----END CERTIFICATE-----\n")).unwrap_err();
        assert!(err.contains("not an RSA private key in PEM"), "{err}");
    }

    /// An extra CA (a TLS-inspecting proxy's) is read at start; a file without a
    /// certificate is refused with its path.
    #[test]
    fn an_extra_ca_is_read_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("proxy-ca.pem");
        let cert = rcgen::generate_simple_self_signed(vec!["proxy.example".to_owned()]).unwrap();
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        let cfg = |path: &std::path::Path| SalesforceConfig {
            client_id: "key".to_owned(),
            client_secret: "s3cret".to_owned(),
            ca_path: Some(path.to_owned()),
            ..SalesforceConfig::default()
        };
        Salesforce::new(cfg(&ca)).unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = Salesforce::new(cfg(&empty)).unwrap_err();
        assert!(
            err.starts_with("ticketing.salesforce.ca_path: ") && err.contains("empty.pem"),
            "{err}"
        );
        let err = Salesforce::new(cfg(&dir.path().join("missing.pem"))).unwrap_err();
        assert!(err.contains("missing.pem"), "{err}");
    }

    #[tokio::test]
    async fn the_jwt_bearer_flow_signs_an_assertion_for_the_integration_user() {
        use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
        let org = org().await;
        let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let public_pem = private.to_public_key().to_public_key_pem(LineEnding::LF).unwrap();
        org.accept_jwt(public_pem.as_bytes(), "integration@acme.example");
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("sspm-salesforce.pem");
        std::fs::write(&key_path, private.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes()).unwrap();
        let mut cfg = org.config();
        cfg.auth_flow = SalesforceAuthFlow::JwtBearer;
        cfg.client_secret.clear();
        cfg.username = "integration@acme.example".to_owned();
        cfg.private_key_path = Some(key_path);
        let case = Salesforce::new(cfg.clone())
            .unwrap()
            .open_case("r-8", &fields())
            .await
            .unwrap();
        assert!(case.created);
        let token_request = &org.requests()[0];
        assert_eq!(
            token_request.body.as_ref().unwrap()["grant_type"],
            "urn:ietf:params:oauth:grant-type:jwt-bearer"
        );
        // Another user's assertion is refused by the org.
        cfg.username = "someone@acme.example".to_owned();
        let err = Salesforce::new(cfg).unwrap().case_number(&case.id).await.unwrap_err();
        assert!(
            matches!(&err, SalesforceError::SignIn(m) if m.contains("invalid_grant")),
            "{err:?}"
        );
    }
}
