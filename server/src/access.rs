//! Who may upgrade: the Origin allow-list (against cross-site WebSocket
//! hijacking) and the optional credentials: a shared-secret token and/or an
//! HS256 JSON Web Token. All are checked before the upgrade, so a refused
//! client never holds a WebSocket connection.

use subtle::ConstantTimeEq as _;

use crate::config::Config;

/// Clock skew allowed when checking a JWT's `exp` and `nbf`, in seconds.
pub(crate) const JWT_LEEWAY_SECS: u64 = 30;

/// Whether a request with `origin` (the `Origin` header, if any) and `host`
/// (the `Host` header) may upgrade.
///
/// - No `Origin`: not a browser (browsers always send it on WebSocket
///   upgrades): allowed.
/// - With an allow-list: the origin must be listed (ASCII case-insensitive),
///   or the list contains `*`.
/// - Without one (the default): the origin's host and port must be the
///   request's `Host`, i.e. the page came from this server.
pub(crate) fn origin_allowed(allowed: &[String], origin: Option<&str>, host: Option<&str>) -> bool {
    let Some(origin) = origin.map(str::trim) else {
        return true;
    };
    if !allowed.is_empty() {
        return allowed
            .iter()
            .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin));
    }
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .or_else(|| origin.strip_prefix("HTTP://"))
        .or_else(|| origin.strip_prefix("HTTPS://"));
    match (authority, host) {
        (Some(authority), Some(host)) => {
            !authority.is_empty() && authority.eq_ignore_ascii_case(host.trim())
        }
        _ => false,
    }
}

/// Whether a request with these credentials (the `Authorization` header
/// and the `token` query parameter) may upgrade: always when neither
/// `--auth-token` nor `--jwt-secret` is set; otherwise when either
/// credential that is set is presented, as `Authorization: Bearer <token>`
/// or as the query parameter.
pub(crate) fn authorized(
    config: &Config,
    authorization: Option<&str>,
    query_token: Option<&str>,
) -> bool {
    if config.auth_token.is_none() && config.jwt_secret.is_none() {
        return true;
    }
    let bearer = authorization.and_then(|h| {
        let (scheme, rest) = h.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    let mut presented = bearer.into_iter().chain(query_token);
    presented.any(|t| {
        config
            .auth_token
            .as_deref()
            .is_some_and(|expected| same(t.as_bytes(), expected.as_bytes()))
            || config
                .jwt_secret
                .as_deref()
                .is_some_and(|secret| jwt_ok(secret, t))
    })
}

/// Whether `token` is a JWT signed with HS256 and `secret` (any other
/// algorithm, `none` included, is refused), with an `exp` claim not yet
/// past and an `nbf`, if any, already reached, both within
/// [`JWT_LEEWAY_SECS`]. The signature check is constant-time (HMAC verify).
fn jwt_ok(secret: &str, token: &str) -> bool {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = JWT_LEEWAY_SECS;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp"]);
    let key = DecodingKey::from_secret(secret.as_bytes());
    match jsonwebtoken::decode::<serde::de::IgnoredAny>(token, &key, &validation) {
        Ok(_) => true,
        Err(e) => {
            tracing::trace!(cause = %e, "JWT refused");
            false
        }
    }
}

/// Equality whose time does not depend on where the inputs differ (only
/// on their lengths): `subtle`'s constant-time comparison.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_allows_same_host_and_non_browsers() {
        let none: &[String] = &[];
        assert!(origin_allowed(none, None, Some("example.com:8080")));
        assert!(origin_allowed(
            none,
            Some("http://example.com:8080"),
            Some("example.com:8080")
        ));
        assert!(origin_allowed(
            none,
            Some("https://Example.com"),
            Some("example.com")
        ));
        assert!(!origin_allowed(
            none,
            Some("http://evil.example"),
            Some("example.com")
        ));
        assert!(!origin_allowed(
            none,
            Some("http://example.com:9999"),
            Some("example.com:8080")
        ));
        assert!(!origin_allowed(none, Some("null"), Some("example.com")));
        assert!(!origin_allowed(none, Some("http://example.com"), None));
    }

    #[test]
    fn allow_list_replaces_the_default() {
        let list = vec!["https://app.example".to_owned()];
        assert!(origin_allowed(
            &list,
            Some("https://APP.example"),
            Some("api.example")
        ));
        assert!(!origin_allowed(
            &list,
            Some("https://api.example"),
            Some("api.example")
        ));
        assert!(origin_allowed(&list, None, Some("api.example")));
        assert!(origin_allowed(
            &["*".to_owned()],
            Some("http://anything"),
            None
        ));
    }

    fn with(auth_token: Option<&str>, jwt_secret: Option<&str>) -> Config {
        Config {
            auth_token: auth_token.map(str::to_owned),
            jwt_secret: jwt_secret.map(str::to_owned),
            ..Config::default()
        }
    }

    #[test]
    fn tokens() {
        let c = with(Some("s3cret"), None);
        assert!(authorized(&c, Some("Bearer s3cret"), None));
        assert!(authorized(&c, Some("bearer  s3cret "), None));
        assert!(authorized(&c, None, Some("s3cret")));
        assert!(!authorized(&c, None, None));
        assert!(!authorized(&c, Some("Bearer s3crex"), Some("nope")));
        assert!(!authorized(&c, Some("Basic s3cret"), None));
        assert!(!authorized(&c, None, Some("s3cre")));
        assert!(!authorized(&c, None, Some("s3crets")));
        assert!(!authorized(&c, None, Some("")));
        assert!(authorized(&with(None, None), None, None));
    }

    fn jwt(secret: &str, claims: &str) -> String {
        let claims: serde_json::Value = serde_json::from_str(claims).unwrap();
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn jwts() {
        let c = with(None, Some("k3y"));
        let t = now();
        let valid = jwt("k3y", &format!(r#"{{"sub":"a","exp":{}}}"#, t + 60));
        assert!(authorized(&c, Some(&format!("Bearer {valid}")), None));
        assert!(authorized(&c, None, Some(&valid)));
        assert!(!authorized(&c, None, None));
        // Within the leeway still passes; past it, refused.
        let just = jwt("k3y", &format!(r#"{{"exp":{}}}"#, t - 5));
        assert!(authorized(&c, None, Some(&just)));
        let expired = jwt("k3y", &format!(r#"{{"exp":{}}}"#, t - 2 * JWT_LEEWAY_SECS));
        assert!(!authorized(&c, None, Some(&expired)));
        let no_exp = jwt("k3y", r#"{"sub":"a"}"#);
        assert!(!authorized(&c, None, Some(&no_exp)));
        let not_yet = jwt(
            "k3y",
            &format!(r#"{{"exp":{},"nbf":{}}}"#, t + 3600, t + 600),
        );
        assert!(!authorized(&c, None, Some(&not_yet)));
        let other_key = jwt("other", &format!(r#"{{"exp":{}}}"#, t + 60));
        assert!(!authorized(&c, None, Some(&other_key)));
        // Both set: either credential works.
        let both = with(Some("s3cret"), Some("k3y"));
        assert!(authorized(&both, None, Some("s3cret")));
        assert!(authorized(&both, Some(&format!("Bearer {valid}")), None));
        assert!(!authorized(&both, None, Some("k3y")));
    }
}
