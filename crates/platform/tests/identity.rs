//! Token verification against a stand-in OpenID Connect issuer (a local HTTP server serving
//! a discovery document and a JWKS, whose keys the tests rotate), service tokens signed by
//! each service's own key, and the development tokens of the dev profile (README,
//! "Identity").

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use base64::Engine as _;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde_json::{Value, json};
use sspm_platform::config::{DEV_SIGNING_KEY, Profile, ServiceKind, SspmConfig};
use sspm_platform::identity::{
    PrincipalKind, ServiceIdentity, TokenError, TokenMinter, TokenVerifier, dev_service_key_pair,
};
use tonic::Code;

const AUDIENCE: &str = "platform-api";

// ---------------------------------------------------------------------------------------
// The stand-in identity provider
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct IdpState {
    base: String,
    keys: Mutex<Vec<Jwk>>,
    down: AtomicBool,
    jwks_fetches: AtomicU64,
}

/// An OIDC issuer on loopback: `/.well-known/openid-configuration` names `/jwks`, which
/// serves the keys last published; both answer 503 while it is down.
struct Idp {
    state: Arc<IdpState>,
}

async fn discovery(State(s): State<Arc<IdpState>>) -> impl IntoResponse {
    if s.down.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain")],
            String::new(),
        );
    }
    let doc = json!({
        "issuer": s.base,
        "jwks_uri": format!("{}/jwks", s.base),
        "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        doc.to_string(),
    )
}

async fn jwks(State(s): State<Arc<IdpState>>) -> impl IntoResponse {
    if s.down.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain")],
            String::new(),
        );
    }
    s.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    let keys = s.keys.lock().unwrap().clone();
    // A real provider also publishes keys SSPM must skip: an encryption key and a
    // symmetric one.
    let mut published: Vec<Value> = keys.iter().map(|k| serde_json::to_value(k).unwrap()).collect();
    published.push(json!({"kty": "oct", "kid": "shared", "k": "c2VjcmV0"}));
    published.push(json!({"kty": "RSA", "use": "enc", "kid": "enc-1", "n": "sXch", "e": "AQAB"}));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "keys": published }).to_string(),
    )
}

impl Idp {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let state = Arc::new(IdpState {
            base: format!("http://{addr}"),
            ..IdpState::default()
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { state }
    }

    fn base(&self) -> &str {
        &self.state.base
    }

    /// Publishes exactly these keys (a rotation replaces the set).
    fn publish(&self, signers: &[&Signer]) {
        *self.state.keys.lock().unwrap() = signers.iter().map(|s| s.jwk.clone()).collect();
    }

    fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    fn fetches(&self) -> u64 {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }
}

/// A signing key of the provider (or of an attacker).
struct Signer {
    kid: String,
    alg: Algorithm,
    private: EncodingKey,
    public_pem: String,
    jwk: Jwk,
}

impl Signer {
    fn new(kid: &str, alg: Algorithm, private: EncodingKey, public_pem: String) -> Self {
        let public = match alg {
            Algorithm::ES256 => DecodingKey::from_ec_pem(public_pem.as_bytes()),
            Algorithm::EdDSA => DecodingKey::from_ed_pem(public_pem.as_bytes()),
            _ => DecodingKey::from_rsa_pem(public_pem.as_bytes()),
        }
        .unwrap();
        let mut jwk = Jwk::from_decoding_key(&public, Some(alg)).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        Self {
            kid: kid.to_owned(),
            alg,
            private,
            public_pem,
            jwk,
        }
    }

    fn rsa(kid: &str) -> Self {
        use rsa::pkcs1::EncodeRsaPrivateKey as _;
        use rsa::pkcs8::{EncodePublicKey as _, LineEnding};
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let private = EncodingKey::from_rsa_der(key.to_pkcs1_der().unwrap().as_bytes());
        let public_pem = key.to_public_key().to_public_key_pem(LineEnding::LF).unwrap();
        Self::new(kid, Algorithm::RS256, private, public_pem)
    }

    fn ec(kid: &str) -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let private = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
        Self::new(kid, Algorithm::ES256, private, key.public_key_pem())
    }

    fn ed(kid: &str) -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let private = EncodingKey::from_ed_pem(key.serialize_pem().as_bytes()).unwrap();
        Self::new(kid, Algorithm::EdDSA, private, key.public_key_pem())
    }

    /// A token with these claims, signed by this key and naming it as `kid`.
    fn sign(&self, claims: &Value) -> String {
        self.sign_as(self.alg, claims)
    }

    fn sign_as(&self, alg: Algorithm, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.private).unwrap()
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn claims(iss: &str, sub: &str) -> Value {
    json!({ "iss": iss, "aud": AUDIENCE, "sub": sub, "iat": now(), "exp": now() + 300 })
}

/// The dev profile, with users' tokens from `idp`.
fn config(idp: &Idp) -> SspmConfig {
    let mut cfg = SspmConfig::default();
    cfg.auth.users.issuer_url = idp.base().to_owned();
    cfg.auth.users.audience = AUDIENCE.to_owned();
    cfg.auth.users.min_refresh_interval_seconds = 1;
    cfg
}

fn invalid(result: Result<impl std::fmt::Debug, TokenError>, what: &str) -> String {
    match result {
        Err(TokenError::Invalid(why)) => why,
        other => panic!("{what}: expected the token to be refused as invalid, got {other:?}"),
    }
}

/// Past the verifier's minimum interval between two fetches of the keys.
async fn past_refresh_interval() {
    tokio::time::sleep(Duration::from_millis(1_100)).await;
}

// ---------------------------------------------------------------------------------------
// User tokens of the identity provider
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn provider_tokens_of_each_algorithm_are_accepted_and_rotations_followed() {
    let idp = Idp::start().await;
    let (rsa, ec, ed) = (Signer::rsa("rsa-1"), Signer::ec("ec-1"), Signer::ed("ed-1"));
    idp.publish(&[&rsa, &ec, &ed]);
    let verifier = TokenVerifier::new(&config(&idp)).unwrap();

    for (signer, user) in [
        (&rsa, "rep@example.com"),
        (&ec, "ops@example.com"),
        (&ed, "admin@example.com"),
    ] {
        let principal = verifier.verify(&signer.sign(&claims(idp.base(), user))).await.unwrap();
        assert_eq!(principal.id.as_str(), user, "{:?}", signer.alg);
        assert_eq!(principal.kind, PrincipalKind::User);
        assert_eq!(principal.service(), None);
    }

    // The provider rotates in a new key: a token naming it is verified once the verifier
    // has fetched the set again, which the unknown kid itself triggers.
    let next = Signer::rsa("rsa-2");
    let early = next.sign(&claims(idp.base(), "rep@example.com"));
    let why = invalid(verifier.verify(&early).await, "a key not yet published");
    assert!(why.contains("does not publish"), "{why}");
    idp.publish(&[&rsa, &next]);
    past_refresh_interval().await;
    assert_eq!(verifier.verify(&early).await.unwrap().id.as_str(), "rep@example.com");
    // Both keys are valid at once during the rotation.
    assert!(
        verifier
            .verify(&rsa.sign(&claims(idp.base(), "rep@example.com")))
            .await
            .is_ok()
    );

    // The old key retired: once the set is fetched again, its tokens are refused.
    idp.publish(&[&next]);
    past_refresh_interval().await;
    let unknown = Signer::rsa("rsa-3").sign(&claims(idp.base(), "rep@example.com"));
    assert!(verifier.verify(&unknown).await.is_err());
    let why = invalid(
        verifier.verify(&rsa.sign(&claims(idp.base(), "rep@example.com"))).await,
        "a retired key",
    );
    assert!(why.contains("does not publish"), "{why}");
}

#[tokio::test]
async fn tokens_the_provider_did_not_sign_are_refused() {
    let idp = Idp::start().await;
    let rsa = Signer::rsa("rsa-1");
    let ec = Signer::ec("ec-1");
    idp.publish(&[&rsa, &ec]);
    let good = claims(idp.base(), "rep@example.com");

    for profile in [Profile::Dev, Profile::Production] {
        let mut cfg = config(&idp);
        cfg.profile = profile;
        if profile == Profile::Production {
            cfg.auth.service_keys_dir = Some(service_keys_dir().keep());
        }
        let verifier = TokenVerifier::new(&cfg).unwrap();
        assert!(verifier.verify(&rsa.sign(&good)).await.is_ok(), "{profile:?}");

        // Another key under the provider's kid.
        let forged = Signer::rsa("rsa-1").sign(&good);
        let why = invalid(verifier.verify(&forged).await, "another key");
        assert!(why.contains("signature"), "{why}");

        // The algorithm switched to HS256 with the provider's public key as the secret.
        let confused = jsonwebtoken::encode(
            &Header {
                kid: Some("rsa-1".into()),
                ..Header::new(Algorithm::HS256)
            },
            &good,
            &EncodingKey::from_secret(rsa.public_pem.as_bytes()).unwrap(),
        )
        .unwrap();
        invalid(verifier.verify(&confused).await, "RS256 switched to HS256");

        // An ES256 header on the RSA key's kid, and PS256 (not in auth.users.algorithms).
        assert!(verifier.verify(&ec.sign(&good)).await.is_ok(), "the ES256 key itself");
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("rsa-1".into());
        let wrong_family = jsonwebtoken::encode(&header, &good, &ec.private).unwrap();
        let why = invalid(verifier.verify(&wrong_family).await, "ES256 on an RSA key");
        assert!(why.contains("algorithm"), "{why}");
        let why = invalid(verifier.verify(&rsa.sign_as(Algorithm::PS256, &good)).await, "PS256");
        assert!(why.contains("auth.users.algorithms"), "{why}");

        // `alg: none`, unsigned.
        let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let unsigned = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&good));
        invalid(verifier.verify(&unsigned).await, "alg none");

        // Wrong issuer, wrong audience, expired, no subject.
        let mut c = good.clone();
        c["iss"] = json!("https://evil.example");
        assert!(invalid(verifier.verify(&rsa.sign(&c)).await, "issuer").contains("issuer"));
        let mut c = good.clone();
        c["aud"] = json!("another-api");
        assert!(invalid(verifier.verify(&rsa.sign(&c)).await, "audience").contains("audience"));
        let mut c = good.clone();
        c["iat"] = json!(now() - 900);
        c["exp"] = json!(now() - 600);
        assert_eq!(verifier.verify(&rsa.sign(&c)).await.unwrap_err(), TokenError::Expired);
        let mut c = good.clone();
        c.as_object_mut().unwrap().remove("sub");
        assert!(invalid(verifier.verify(&rsa.sign(&c)).await, "no sub").contains("sub"));

        // A user token cannot claim to be a service, by kind or by name.
        let mut c = good.clone();
        c["kind"] = json!("service");
        invalid(verifier.verify(&rsa.sign(&c)).await, "kind service");
        let why = invalid(
            verifier.verify(&rsa.sign(&claims(idp.base(), "svc-approval"))).await,
            "svc- subject",
        );
        assert!(why.contains("service"), "{why}");
    }
}

#[tokio::test]
async fn the_subject_claim_maps_provider_users_to_sspm_principals() {
    let idp = Idp::start().await;
    let key = Signer::ed("ed-1");
    idp.publish(&[&key]);
    let mut cfg = config(&idp);
    cfg.auth.users.subject_claim = "email".into();
    let verifier = TokenVerifier::new(&cfg).unwrap();

    let mut c = claims(idp.base(), "00u1a2b3c4");
    c["email"] = json!("rep@example.com");
    assert_eq!(
        verifier.verify(&key.sign(&c)).await.unwrap().id.as_str(),
        "rep@example.com"
    );
    let why = invalid(
        verifier.verify(&key.sign(&claims(idp.base(), "00u1a2b3c4"))).await,
        "no email",
    );
    assert!(why.contains("email"), "{why}");
}

#[tokio::test]
async fn unknown_kids_fetch_the_keys_at_most_once_per_interval() {
    let idp = Idp::start().await;
    let key = Signer::ec("ec-1");
    idp.publish(&[&key]);
    let mut cfg = config(&idp);
    cfg.auth.users.min_refresh_interval_seconds = 60;
    let verifier = TokenVerifier::new(&cfg).unwrap();
    assert!(
        verifier
            .verify(&key.sign(&claims(idp.base(), "rep@example.com")))
            .await
            .is_ok()
    );
    let before = idp.fetches();
    assert!(before >= 1);

    // A caller inventing key ids cannot make SSPM hammer the provider.
    let attacker = Signer::ec("ec-1");
    for i in 0..50 {
        let mut c = claims(idp.base(), "rep@example.com");
        c["jti"] = json!(i);
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(format!("invented-{i}"));
        let token = jsonwebtoken::encode(&header, &c, &attacker.private).unwrap();
        assert!(verifier.verify(&token).await.is_err());
    }
    assert!(
        idp.fetches() <= before + 1,
        "{} fetches after 50 unknown kids",
        idp.fetches() - before
    );
    assert_eq!(verifier.provider().unwrap().fetches(), idp.fetches());
}

#[tokio::test]
async fn an_unreachable_provider_refuses_as_unavailable_and_keeps_the_keys_it_fetched() {
    let idp = Idp::start().await;
    let key = Signer::rsa("rsa-1");
    idp.publish(&[&key]);
    let good = key.sign(&claims(idp.base(), "rep@example.com"));

    // A verifier that never reached the provider can neither accept nor refuse: UNAVAILABLE.
    idp.set_down(true);
    let cold = TokenVerifier::new(&config(&idp)).unwrap();
    let err = cold.verify(&good).await.unwrap_err();
    assert!(matches!(err, TokenError::KeysUnavailable(_)), "{err:?}");
    assert_eq!(tonic::Status::from(err).code(), Code::Unavailable);

    // Nor does a provider nobody listens on.
    let mut nowhere = config(&idp);
    nowhere.auth.users.issuer_url = "http://127.0.0.1:9".into();
    let err = TokenVerifier::new(&nowhere).unwrap().verify(&good).await.unwrap_err();
    assert!(matches!(err, TokenError::KeysUnavailable(_)), "{err:?}");

    // Keys fetched before the provider went down keep working; unknown keys stay refused.
    idp.set_down(false);
    let warm = TokenVerifier::new(&config(&idp)).unwrap();
    assert!(warm.verify(&good).await.is_ok());
    idp.set_down(true);
    past_refresh_interval().await;
    let stranger = Signer::rsa("rsa-2").sign(&claims(idp.base(), "rep@example.com"));
    invalid(
        warm.verify(&stranger).await,
        "an unknown key while the provider is down",
    );
    assert_eq!(warm.verify(&good).await.unwrap().id.as_str(), "rep@example.com");
}

#[tokio::test]
async fn a_jwks_file_is_read_again_when_a_token_names_a_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let write = |keys: &[&Signer]| {
        let doc = json!({ "keys": keys.iter().map(|k| serde_json::to_value(&k.jwk).unwrap()).collect::<Vec<_>>() });
        std::fs::write(&path, doc.to_string()).unwrap();
    };
    let (old, new) = (Signer::ed("2026-11"), Signer::ed("2026-12"));
    write(&[&old]);
    let mut cfg = SspmConfig::default();
    cfg.auth.users.jwks_file = Some(path.clone());
    cfg.auth.users.issuer = "https://idp.example.com".into();
    cfg.auth.users.audience = AUDIENCE.into();
    cfg.auth.users.min_refresh_interval_seconds = 1;
    let verifier = TokenVerifier::new(&cfg).unwrap();
    let c = claims("https://idp.example.com", "rep@example.com");
    assert!(verifier.verify(&old.sign(&c)).await.is_ok());
    assert!(verifier.verify(&new.sign(&c)).await.is_err());

    write(&[&old, &new]);
    past_refresh_interval().await;
    assert!(verifier.verify(&new.sign(&c)).await.is_ok());
}

// ---------------------------------------------------------------------------------------
// Service tokens
// ---------------------------------------------------------------------------------------

fn service_claims(sub: &str, kind: &str) -> Value {
    let auth = SspmConfig::default().auth;
    json!({ "iss": auth.issuer, "aud": auth.audience, "sub": sub, "kind": kind, "iat": now(), "exp": now() + 300 })
}

fn eddsa(kid: &str, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

#[tokio::test]
async fn a_service_token_verifies_only_with_its_own_services_key() {
    let cfg = SspmConfig::default();
    let verifier = TokenVerifier::new(&cfg).unwrap();
    for kind in ServiceKind::ALL {
        let principal = verifier
            .verify(&ServiceIdentity::new(kind, &cfg).unwrap().token())
            .await
            .unwrap();
        assert_eq!(principal.service(), Some(kind));
        assert_eq!(principal.id.as_str(), format!("svc-{}", kind.name()));
        assert!(principal.is_service());
    }

    // The request service's key cannot sign for the approval service...
    let (request_key, _) = dev_service_key_pair(DEV_SIGNING_KEY, ServiceKind::Request);
    let posing = ServiceIdentity::with_key(ServiceKind::Approval, request_key.clone(), &cfg).token();
    let why = invalid(verifier.verify(&posing).await, "another service's key");
    assert!(why.contains("signature"), "{why}");
    // ...nor name it as the subject of its own token...
    let why = invalid(
        verifier
            .verify(&eddsa(
                "svc-request",
                &service_claims("svc-approval", "service"),
                &request_key,
            ))
            .await,
        "sub naming another service",
    );
    assert!(why.contains("another principal"), "{why}");
    // ...nor mint a user token.
    invalid(
        verifier
            .verify(&eddsa(
                "svc-request",
                &service_claims("rep@example.com", "user"),
                &request_key,
            ))
            .await,
        "a user token signed by a service",
    );
    invalid(
        verifier
            .verify(&eddsa("ops", &service_claims("rep@example.com", "user"), &request_key))
            .await,
        "a service key passed off as the provider's",
    );

    // A service SSPM does not have, and a service token not signed with EdDSA.
    let why = invalid(
        verifier
            .verify(&eddsa(
                "svc-billing",
                &service_claims("svc-billing", "service"),
                &request_key,
            ))
            .await,
        "unknown service",
    );
    assert!(why.contains("not an SSPM service"), "{why}");
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("svc-request".into());
    let hmac = jsonwebtoken::encode(
        &header,
        &service_claims("svc-request", "service"),
        &EncodingKey::from_secret(DEV_SIGNING_KEY.as_bytes()).unwrap(),
    )
    .unwrap();
    invalid(verifier.verify(&hmac).await, "an HS256 service token");

    // The development key cannot mint a service token either.
    let dev = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &service_claims("svc-request", "service"),
        &EncodingKey::from_secret(DEV_SIGNING_KEY.as_bytes()).unwrap(),
    )
    .unwrap();
    invalid(verifier.verify(&dev).await, "a development token claiming a service");
}

/// Verified service tokens are kept (their signature is not checked again at each internal
/// call), but never past their `exp`, and only the exact token that verified.
#[tokio::test]
async fn a_verified_service_token_is_reused_until_it_expires_and_no_longer() {
    let mut cfg = SspmConfig::default();
    cfg.auth.clock_leeway_seconds = 0;
    let verifier = TokenVerifier::new(&cfg).unwrap();
    let (key, _) = dev_service_key_pair(DEV_SIGNING_KEY, ServiceKind::Request);
    let mut claims = service_claims("svc-request", "service");
    claims["exp"] = json!(now() + 2);
    let token = eddsa("svc-request", &claims, &key);
    for _ in 0..3 {
        let p = verifier.verify(&token).await.unwrap();
        assert_eq!(p.service(), Some(ServiceKind::Request));
    }
    // The same claims with one signature byte changed: not the token that verified.
    let (head, sig) = token.rsplit_once('.').unwrap();
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    let tampered = format!("{head}.{flipped}{}", &sig[1..]);
    invalid(verifier.verify(&tampered).await, "a tampered copy of a verified token");
    while now() <= claims["exp"].as_u64().unwrap() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(verifier.verify(&token).await.unwrap_err(), TokenError::Expired);
    assert_eq!(verifier.verify(&token).await.unwrap_err(), TokenError::Expired);
}

/// A directory with all four services' key pairs, as `sspm keys` writes it.
fn service_keys_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for kind in ServiceKind::ALL {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        std::fs::write(dir.path().join(format!("{}.key.pem", kind.name())), key.serialize_pem()).unwrap();
        std::fs::write(
            dir.path().join(format!("{}.pub.pem", kind.name())),
            key.public_key_pem(),
        )
        .unwrap();
    }
    dir
}

#[tokio::test]
async fn production_takes_service_keys_from_their_directory_and_mints_no_development_token() {
    let idp = Idp::start().await;
    let keys = service_keys_dir();
    let mut cfg = config(&idp);
    cfg.profile = Profile::Production;
    cfg.auth.service_keys_dir = Some(keys.path().to_owned());
    let verifier = TokenVerifier::new(&cfg).unwrap();
    let approval = ServiceIdentity::new(ServiceKind::Approval, &cfg).unwrap();
    assert_eq!(
        verifier.verify(&approval.token()).await.unwrap().service(),
        Some(ServiceKind::Approval)
    );
    // The derived development pairs are not these.
    let (dev_private, _) = dev_service_key_pair(DEV_SIGNING_KEY, ServiceKind::Approval);
    let dev = ServiceIdentity::with_key(ServiceKind::Approval, dev_private, &cfg).token();
    invalid(verifier.verify(&dev).await, "a development service key in production");

    // No development user tokens in production.
    assert!(!TokenMinter::new(&cfg).available());
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &service_claims("rep@example.com", "user"),
        &EncodingKey::from_secret(DEV_SIGNING_KEY.as_bytes()).unwrap(),
    )
    .unwrap();
    let why = invalid(verifier.verify(&hs).await, "HS256 in production");
    assert!(why.contains("development"), "{why}");

    // A process holding only the request service's private key cannot be another service.
    let only_request = tempfile::tempdir().unwrap();
    for kind in ServiceKind::ALL {
        let name = format!("{}.pub.pem", kind.name());
        std::fs::copy(keys.path().join(&name), only_request.path().join(&name)).unwrap();
    }
    std::fs::copy(
        keys.path().join("request.key.pem"),
        only_request.path().join("request.key.pem"),
    )
    .unwrap();
    cfg.auth.service_keys_dir = Some(only_request.path().to_owned());
    assert!(ServiceIdentity::new(ServiceKind::Request, &cfg).is_ok());
    let err = ServiceIdentity::new(ServiceKind::Ticketing, &cfg)
        .unwrap_err()
        .to_string();
    assert!(err.contains("ticketing.key.pem"), "{err}");

    // A private key that does not match its public key, or a missing public key, stops start-up.
    std::fs::copy(
        keys.path().join("approval.key.pem"),
        only_request.path().join("request.key.pem"),
    )
    .unwrap();
    let err = TokenVerifier::new(&cfg).unwrap_err().to_string();
    assert!(err.contains("matches none of its public keys"), "{err}");
    std::fs::remove_file(only_request.path().join("request.key.pem")).unwrap();
    std::fs::remove_file(only_request.path().join("ticketing.pub.pem")).unwrap();
    let err = TokenVerifier::new(&cfg).unwrap_err().to_string();
    assert!(err.contains("ticketing.pub.pem"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Development tokens (dev profile)
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn development_tokens_are_checked_like_any_other() {
    let mut cfg = SspmConfig::default();
    cfg.auth.previous_keys = vec!["an-earlier-development-key-of-enough-length".into()];
    let verifier = TokenVerifier::new(&cfg).unwrap();
    let minter = TokenMinter::new(&cfg);
    assert!(minter.available());
    let rep = sspm_rules::PrincipalId::parse("rep@example.com").unwrap();
    let principal = verifier.verify(&minter.mint(&rep, 300)).await.unwrap();
    assert_eq!(
        (principal.id.as_str(), principal.kind),
        ("rep@example.com", PrincipalKind::User)
    );

    let sign = |claims: &Value, key: &str| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(key.as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let base = service_claims("rep@example.com", "user");
    // A previous key still verifies (rotation of the development key).
    assert!(verifier.verify(&sign(&base, &cfg.auth.previous_keys[0])).await.is_ok());
    assert!(
        verifier
            .verify(&sign(&base, "some-other-key-entirely-of-enough-length"))
            .await
            .is_err()
    );

    let mut c = base.clone();
    c["nbf"] = json!(now() + 3_600);
    assert!(invalid(verifier.verify(&sign(&c, DEV_SIGNING_KEY)).await, "nbf").contains("nbf"));
    let mut c = base.clone();
    c["iat"] = json!(now() + 3_600);
    c["exp"] = json!(now() + 3_900);
    assert!(invalid(verifier.verify(&sign(&c, DEV_SIGNING_KEY)).await, "iat").contains("iat"));
    let mut c = base.clone();
    c["exp"] = json!(now() + cfg.auth.max_token_lifetime_seconds + 600);
    assert!(invalid(verifier.verify(&sign(&c, DEV_SIGNING_KEY)).await, "lifetime").contains("lifetime"));
    let mut c = base.clone();
    c.as_object_mut().unwrap().remove("iat");
    c["exp"] = json!(now() - 3_600);
    assert_eq!(
        verifier.verify(&sign(&c, DEV_SIGNING_KEY)).await.unwrap_err(),
        TokenError::Expired
    );
    let err = verifier.verify("not.a.token").await.unwrap_err();
    assert!(matches!(err, TokenError::Invalid(_)), "{err:?}");
}

#[tokio::test]
async fn a_service_key_rotates_with_the_new_public_key_beside_the_old() {
    let idp = Idp::start().await;
    let keys = service_keys_dir();
    let mut cfg = config(&idp);
    cfg.profile = Profile::Production;
    cfg.auth.service_keys_dir = Some(keys.path().to_owned());
    let old_token = ServiceIdentity::new(ServiceKind::Request, &cfg).unwrap().token();
    let new = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let new_private = EncodingKey::from_ed_pem(new.serialize_pem().as_bytes()).unwrap();
    let new_token = ServiceIdentity::with_key(ServiceKind::Request, new_private, &cfg).token();
    invalid(
        TokenVerifier::new(&cfg).unwrap().verify(&new_token).await,
        "a new key not yet distributed",
    );

    // Step 1: the new public key beside the old one: both verify.
    std::fs::write(keys.path().join("request.next.pub.pem"), new.public_key_pem()).unwrap();
    let both = TokenVerifier::new(&cfg).unwrap();
    assert!(both.verify(&old_token).await.is_ok());
    assert!(both.verify(&new_token).await.is_ok());
    // ...but it is the request service's key only.
    let posing = ServiceIdentity::with_key(
        ServiceKind::Approval,
        EncodingKey::from_ed_pem(new.serialize_pem().as_bytes()).unwrap(),
        &cfg,
    );
    invalid(
        both.verify(&posing.token()).await,
        "the request service's new key used by another",
    );

    // Step 2: the service signs with the new private key (it matches one of its public keys).
    std::fs::write(keys.path().join("request.key.pem"), new.serialize_pem()).unwrap();
    assert!(ServiceIdentity::new(ServiceKind::Request, &cfg).is_ok());

    // Step 3: the old public key retired: its tokens are refused.
    std::fs::rename(
        keys.path().join("request.next.pub.pem"),
        keys.path().join("request.pub.pem"),
    )
    .unwrap();
    let after = TokenVerifier::new(&cfg).unwrap();
    assert!(after.verify(&new_token).await.is_ok());
    invalid(after.verify(&old_token).await, "the retired key");

    // A rotation file with a broken key stops start-up, naming it.
    std::fs::write(keys.path().join("ticketing.old.pub.pem"), "not a key").unwrap();
    let err = TokenVerifier::new(&cfg).unwrap_err().to_string();
    assert!(err.contains("ticketing.old.pub.pem"), "{err}");
}
