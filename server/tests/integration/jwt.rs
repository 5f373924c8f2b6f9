//! `--jwt-secret`: HS256 JSON Web Tokens on upgrade, alone or beside
//! `--auth-token`.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio_tungstenite::tungstenite::Error as WsError;

use crate::util::{upgrade_with, Server};

const SECRET: &str = "jwt-test-secret";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token with `claims` signed with `secret` using `alg`.
pub(crate) fn token(alg: Algorithm, secret: &str, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A valid token: HS256, `SECRET`, expiring in an hour.
fn valid() -> String {
    token(
        Algorithm::HS256,
        SECRET,
        serde_json::json!({"sub": "alice", "exp": now() + 3600}),
    )
}

/// `{"alg":"none","typ":"JWT"}` . `{"sub":"mallory","exp":4102444800}` . (no signature)
const ALG_NONE: &str =
    "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJtYWxsb3J5IiwiZXhwIjo0MTAyNDQ0ODAwfQ.";

/// The upgrade's outcome: `Ok` or the refusal's status and
/// `WWW-Authenticate` header.
async fn upgrade(url: &str, bearer: Option<&str>) -> Result<(), (u16, Option<String>)> {
    let header = bearer.map(|t| format!("Bearer {t}"));
    let headers: Vec<_> = header
        .iter()
        .map(|h| ("Authorization", h.as_str()))
        .collect();
    match upgrade_with(url, &headers).await {
        Ok(_) => Ok(()),
        Err(WsError::Http(resp)) => Err((
            resp.status().as_u16(),
            resp.headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        )),
        Err(e) => panic!("upgrade of {url}: unexpected error {e}"),
    }
}

fn refused() -> Result<(), (u16, Option<String>)> {
    Err((401, Some("Bearer".to_owned())))
}

#[tokio::test]
async fn a_valid_jwt_upgrades_in_the_header_or_the_query() {
    let server = Server::start(&["--jwt-secret", SECRET]).await;
    let url = server.ws_url();
    assert_eq!(upgrade(&url, Some(&valid())).await, Ok(()));
    assert_eq!(
        upgrade(&format!("{url}?token={}", valid()), None).await,
        Ok(())
    );
}

#[tokio::test]
async fn bad_jwts_get_401_before_the_upgrade() {
    let server = Server::start(&["--jwt-secret", SECRET]).await;
    let url = server.ws_url();
    let t = now();
    let cases = [
        ("missing", None),
        (
            "expired",
            Some(token(
                Algorithm::HS256,
                SECRET,
                serde_json::json!({"exp": t - 3600}),
            )),
        ),
        (
            "wrong signature",
            Some(token(
                Algorithm::HS256,
                "another-secret",
                serde_json::json!({"exp": t + 3600}),
            )),
        ),
        ("alg none", Some(ALG_NONE.to_owned())),
        (
            "HS512, not HS256",
            Some(token(
                Algorithm::HS512,
                SECRET,
                serde_json::json!({"exp": t + 3600}),
            )),
        ),
        (
            "no exp",
            Some(token(
                Algorithm::HS256,
                SECRET,
                serde_json::json!({"sub": "a"}),
            )),
        ),
        (
            "not before an hour from now",
            Some(token(
                Algorithm::HS256,
                SECRET,
                serde_json::json!({"exp": t + 7200, "nbf": t + 3600}),
            )),
        ),
        ("not a JWT", Some("garbage".to_owned())),
    ];
    for (what, bearer) in cases {
        assert_eq!(upgrade(&url, bearer.as_deref()).await, refused(), "{what}");
    }
    assert_eq!(server.health_connections().await, 0);
}

#[tokio::test]
async fn with_a_shared_token_too_either_credential_is_accepted() {
    let server = Server::start(&["--jwt-secret", SECRET, "--auth-token", "s3cret"]).await;
    let url = server.ws_url();
    assert_eq!(upgrade(&url, Some(&valid())).await, Ok(()));
    assert_eq!(upgrade(&url, Some("s3cret")).await, Ok(()));
    assert_eq!(upgrade(&url, Some(SECRET)).await, refused());
    assert_eq!(upgrade(&url, None).await, refused());
}
