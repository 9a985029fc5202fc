//! The ticketing service's case backend: its own database (the default) or a Salesforce org.

use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, invalid};

/// Where the ticketing service keeps the cases.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TicketingConfig {
    /// `local` (cases and their numbers in the ticketing service's own database) or
    /// `salesforce` (cases in a Salesforce org, mirrored in that database).
    pub backend: TicketingBackend,
    /// The org, when `backend = "salesforce"`.
    pub salesforce: SalesforceConfig,
}

/// See [`TicketingConfig::backend`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketingBackend {
    /// The ticketing service's own database.
    #[default]
    Local,
    /// A Salesforce org, through its REST API.
    Salesforce,
}

/// How the integration user signs in (OAuth 2.0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SalesforceAuthFlow {
    /// Client credentials: the connected app's consumer key and secret; the app runs as its
    /// configured integration user. `login_url` must be the org's My Domain URL.
    #[default]
    ClientCredentials,
    /// JWT bearer: an assertion for `username`, signed (RS256) with the private key whose
    /// certificate is uploaded to the connected app.
    JwtBearer,
}

/// A Salesforce org and how to reach it. Secrets may come from the environment
/// (`SSPM__TICKETING__SALESFORCE__CLIENT_SECRET`) and are never printed.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SalesforceConfig {
    /// Where tokens come from: `https://login.salesforce.com`, `https://test.salesforce.com`
    /// or the org's My Domain URL (required for client credentials).
    pub login_url: String,
    /// REST API version, e.g. `62.0`.
    #[serde(deserialize_with = "api_version")]
    pub api_version: String,
    /// `client_credentials` or `jwt_bearer`.
    pub auth_flow: SalesforceAuthFlow,
    /// The connected app's consumer key.
    pub client_id: String,
    /// The connected app's consumer secret (client credentials).
    pub client_secret: String,
    /// The integration user (JWT bearer).
    pub username: String,
    /// The PEM private key the JWT assertion is signed with (JWT bearer).
    pub private_key_path: Option<PathBuf>,
    /// CA certificates (PEM) trusted for the org's TLS besides the public Web PKI roots: the
    /// CA of a TLS-inspecting egress proxy. `HTTPS_PROXY` / `NO_PROXY` choose the proxy.
    pub ca_path: Option<PathBuf>,
    /// The external-id field on Case that holds SSPM's request id: a unique, external-id
    /// text field created for SSPM, e.g. `SSPM_Request_Id__c`.
    pub external_id_field: String,
    /// A Case field that receives the resolution when a case is closed; when empty, the
    /// resolution is added as a comment.
    pub resolution_field: String,
    /// `Origin` of the cases SSPM opens.
    pub origin: String,
    /// Case `Status` values for SSPM's statuses (the org's picklist values).
    pub statuses: SalesforceStatuses,
    /// Deadline of each HTTP call, in milliseconds.
    pub timeout_ms: u64,
    /// Attempts of a call that meets `REQUEST_LIMIT_EXCEEDED`, a 5xx or a network error.
    pub max_attempts: u32,
    /// First delay between attempts, in milliseconds; doubles, with jitter, up to `retry_max_ms`.
    pub retry_initial_ms: u64,
    /// Longest delay between attempts, in milliseconds.
    pub retry_max_ms: u64,
}

impl std::fmt::Debug for SalesforceConfig {
    // Never print secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SalesforceConfig")
            .field("login_url", &self.login_url)
            .field("api_version", &self.api_version)
            .field("auth_flow", &self.auth_flow)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("username", &self.username)
            .field("private_key_path", &self.private_key_path)
            .field("ca_path", &self.ca_path)
            .field("external_id_field", &self.external_id_field)
            .field("resolution_field", &self.resolution_field)
            .field("origin", &self.origin)
            .field("statuses", &self.statuses)
            .field("timeout_ms", &self.timeout_ms)
            .field("max_attempts", &self.max_attempts)
            .field("retry_initial_ms", &self.retry_initial_ms)
            .field("retry_max_ms", &self.retry_max_ms)
            .finish()
    }
}

impl Default for SalesforceConfig {
    fn default() -> Self {
        Self {
            login_url: "https://login.salesforce.com".to_owned(),
            api_version: "62.0".to_owned(),
            auth_flow: SalesforceAuthFlow::default(),
            client_id: String::new(),
            client_secret: String::new(),
            username: String::new(),
            private_key_path: None,
            ca_path: None,
            external_id_field: "SSPM_Request_Id__c".to_owned(),
            resolution_field: String::new(),
            origin: "Web".to_owned(),
            statuses: SalesforceStatuses::default(),
            timeout_ms: 10_000,
            max_attempts: 5,
            retry_initial_ms: 500,
            retry_max_ms: 30_000,
        }
    }
}

/// The org's Case `Status` picklist values for SSPM's case statuses. The defaults are the
/// values of a new org (which has no "waiting on customer" status).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SalesforceStatuses {
    /// NEW.
    pub new: String,
    /// WORKING.
    pub working: String,
    /// WAITING_ON_CUSTOMER.
    pub waiting_on_customer: String,
    /// ESCALATED.
    pub escalated: String,
    /// CLOSED.
    pub closed: String,
}

impl Default for SalesforceStatuses {
    fn default() -> Self {
        Self {
            new: "New".to_owned(),
            working: "Working".to_owned(),
            waiting_on_customer: "Working".to_owned(),
            escalated: "Escalated".to_owned(),
            closed: "Closed".to_owned(),
        }
    }
}

impl TicketingConfig {
    /// Checks the Salesforce settings when that backend is chosen.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.backend != TicketingBackend::Salesforce {
            return Ok(());
        }
        let sf = &self.salesforce;
        let key = |k: &str| format!("ticketing.salesforce.{k}");
        if !secure_or_loopback(&sf.login_url) {
            return Err(invalid(
                &key("login_url"),
                "must be an https:// URL (http:// only to a loopback address, for tests)",
            ));
        }
        let version_ok = sf.api_version.split_once('.').is_some_and(|(major, minor)| {
            !major.is_empty() && major.len() <= 3 && major.bytes().all(|b| b.is_ascii_digit()) && minor == "0"
        });
        if !version_ok {
            return Err(invalid(&key("api_version"), "must look like 62.0"));
        }
        if sf.client_id.trim().is_empty() {
            return Err(invalid(
                &key("client_id"),
                "the connected app's consumer key is required",
            ));
        }
        match sf.auth_flow {
            SalesforceAuthFlow::ClientCredentials if sf.client_secret.is_empty() => {
                return Err(invalid(
                    &key("client_secret"),
                    "required by the client_credentials flow (e.g. SSPM__TICKETING__SALESFORCE__CLIENT_SECRET)",
                ));
            }
            SalesforceAuthFlow::JwtBearer if sf.username.trim().is_empty() || sf.private_key_path.is_none() => {
                return Err(invalid(
                    &key("auth_flow"),
                    "jwt_bearer needs username and private_key_path",
                ));
            }
            _ => {}
        }
        if !is_custom_field(&sf.external_id_field) {
            return Err(invalid(
                &key("external_id_field"),
                "must be the API name of a custom field, e.g. SSPM_Request_Id__c",
            ));
        }
        if !sf.resolution_field.is_empty() && !is_custom_field(&sf.resolution_field) {
            return Err(invalid(
                &key("resolution_field"),
                "must be empty or the API name of a custom field, e.g. Resolution__c",
            ));
        }
        let s = &sf.statuses;
        if [&s.new, &s.working, &s.waiting_on_customer, &s.escalated, &s.closed]
            .iter()
            .any(|v| v.trim().is_empty())
        {
            return Err(invalid(&key("statuses"), "every status needs a picklist value"));
        }
        if sf.timeout_ms == 0
            || sf.max_attempts == 0
            || sf.retry_initial_ms == 0
            || sf.retry_max_ms < sf.retry_initial_ms
        {
            return Err(invalid(
                "ticketing.salesforce",
                "timeout_ms, max_attempts and retry_initial_ms must be positive, retry_max_ms at least retry_initial_ms",
            ));
        }
        Ok(())
    }
}

/// An API version as written, or as the environment's number parsing made it (`62.0`
/// arrives as the number 62).
fn api_version<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Whole(u64),
        Number(f64),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::Text(s) => s,
        Raw::Whole(n) => format!("{n}.0"),
        Raw::Number(n) => format!("{n:.1}"),
    })
}

/// `https://…`, or `http://` to a loopback address (a local stand-in in tests).
fn secure_or_loopback(url: &str) -> bool {
    if url.starts_with("https://") && url.len() > "https://".len() {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

/// A custom field's API name: letters, digits and single underscores, ending in `__c`.
fn is_custom_field(name: &str) -> bool {
    name.strip_suffix("__c").is_some_and(|stem| {
        stem.starts_with(|c: char| c.is_ascii_alphabetic())
            && stem.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !stem.contains("__")
            && !stem.ends_with('_')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn salesforce() -> TicketingConfig {
        TicketingConfig {
            backend: TicketingBackend::Salesforce,
            salesforce: SalesforceConfig {
                client_id: "key".to_owned(),
                client_secret: "secret".to_owned(),
                ..SalesforceConfig::default()
            },
        }
    }

    #[test]
    fn the_local_backend_needs_nothing_and_salesforce_needs_its_credentials() {
        TicketingConfig::default().validate().unwrap();
        salesforce().validate().unwrap();
        let mut c = salesforce();
        c.salesforce.client_secret.clear();
        assert!(c.validate().unwrap_err().to_string().contains("client_secret"));
        let mut c = salesforce();
        c.salesforce.auth_flow = SalesforceAuthFlow::JwtBearer;
        assert!(c.validate().unwrap_err().to_string().contains("jwt_bearer"));
        c.salesforce.username = "integration@example.com".to_owned();
        c.salesforce.private_key_path = Some("key.pem".into());
        c.validate().unwrap();
    }

    #[test]
    fn urls_versions_and_field_names_are_checked() {
        for (url, ok) in [
            ("https://acme.my.salesforce.com", true),
            ("http://127.0.0.1:8080", true),
            ("http://localhost", true),
            ("http://acme.my.salesforce.com", false),
            ("ftp://x", false),
            ("https://", false),
        ] {
            let mut c = salesforce();
            c.salesforce.login_url = url.to_owned();
            assert_eq!(c.validate().is_ok(), ok, "{url}");
        }
        for (v, ok) in [("62.0", true), ("v62.0", false), ("62", false), ("62.1", false)] {
            let mut c = salesforce();
            c.salesforce.api_version = v.to_owned();
            assert_eq!(c.validate().is_ok(), ok, "{v}");
        }
        for (f, ok) in [
            ("SSPM_Request_Id__c", true),
            ("Request__c", true),
            ("Subject", false),
            ("ns__Field__c", false),
            ("_x__c", false),
            ("x'--__c", false),
        ] {
            let mut c = salesforce();
            c.salesforce.external_id_field = f.to_owned();
            assert_eq!(c.validate().is_ok(), ok, "{f}");
        }
    }

    #[test]
    fn the_environment_selects_and_configures_salesforce() {
        use crate::SspmConfig;
        let env =
            |pairs: &[(&str, &str)]| Some(pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect());
        let cfg = SspmConfig::load_from(
            None,
            env(&[
                ("SSPM__TICKETING__BACKEND", "salesforce"),
                (
                    "SSPM__TICKETING__SALESFORCE__LOGIN_URL",
                    "https://acme.my.salesforce.com",
                ),
                ("SSPM__TICKETING__SALESFORCE__API_VERSION", "61.0"),
                ("SSPM__TICKETING__SALESFORCE__CLIENT_ID", "key"),
                ("SSPM__TICKETING__SALESFORCE__CLIENT_SECRET", "s3cret"),
                (
                    "SSPM__TICKETING__SALESFORCE__STATUSES__WAITING_ON_CUSTOMER",
                    "Waiting on Customer",
                ),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.ticketing.backend, TicketingBackend::Salesforce);
        let sf = &cfg.ticketing.salesforce;
        assert_eq!(sf.api_version, "61.0");
        assert_eq!(sf.client_secret, "s3cret");
        assert_eq!(sf.statuses.waiting_on_customer, "Waiting on Customer");
        assert_eq!(sf.statuses.closed, "Closed");
        assert!(!format!("{cfg:?}").contains("s3cret"));

        let err = SspmConfig::load_from(None, env(&[("SSPM__TICKETING__BACKEND", "salesforce")])).unwrap_err();
        assert!(err.to_string().contains("ticketing.salesforce.client_id"), "{err}");
        let err = SspmConfig::load_from(None, env(&[("SSPM__TICKETING__BACKEND", "zendesk")])).unwrap_err();
        assert!(err.to_string().contains("zendesk"), "{err}");
    }

    #[test]
    fn the_secret_is_never_printed() {
        let printed = format!("{:?}", salesforce());
        assert!(!printed.contains("secret\""), "{printed}");
        assert!(printed.contains("<redacted>"));
    }
}
