//! Who may upgrade: the Origin allow-list (against cross-site WebSocket
//! hijacking) and the optional credentials: a shared-secret token and/or an
//! HS256 JSON Web Token. All are checked before the upgrade, so a refused
//! client never holds a WebSocket connection.

use protocol::channel::Pattern;
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

/// What a client's credentials let it do: which channels it may join and
/// publish to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Grant {
    /// `None`: every channel (no credentials needed, the shared token, or a
    /// JWT without a `channels` claim). Otherwise the JWT's patterns.
    channels: Option<Vec<Pattern>>,
    /// The client presented a credential (the server asks for one): it may
    /// then publish to the channels it allows without subscribing.
    explicit: bool,
}

impl Grant {
    /// What a presented credential allows.
    fn presented(channels: Option<Vec<Pattern>>) -> Self {
        Self {
            channels,
            explicit: true,
        }
    }

    /// Whether the client presented a credential.
    pub(crate) fn is_explicit(&self) -> bool {
        self.explicit
    }

    /// Whether channel `name` is allowed.
    pub(crate) fn allows(&self, name: &str) -> bool {
        self.channels
            .as_deref()
            .is_none_or(|patterns| protocol::channel::allowed(patterns, name))
    }
}

/// The `Bearer` token of an `Authorization` header.
pub(crate) fn bearer(authorization: Option<&str>) -> Option<&str> {
    let (scheme, rest) = authorization?.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// What a request with these credentials (the `Authorization` header and
/// the `token` query parameter) may do, or `None` if it may not upgrade:
/// everything when neither `--auth-token` nor `--jwt-secret` is set;
/// otherwise when either credential that is set is presented, as
/// `Authorization: Bearer <token>` or as the query parameter (a JWT's
/// `channels` claim then limits its channels).
pub(crate) fn authorized(
    config: &Config,
    authorization: Option<&str>,
    query_token: Option<&str>,
) -> Option<Grant> {
    if config.auth_token.is_none() && config.jwt_secret.is_none() {
        return Some(Grant::default());
    }
    let mut presented = bearer(authorization).into_iter().chain(query_token);
    presented.find_map(|t| {
        let shared = config
            .auth_token
            .as_deref()
            .is_some_and(|expected| same(t.as_bytes(), expected.as_bytes()));
        if shared {
            return Some(Grant::presented(None));
        }
        config
            .jwt_secret
            .as_deref()
            .and_then(|secret| jwt(secret, t))
    })
}

/// Whether an HTTP API request carries `--api-key` as its bearer token
/// (compared in constant time).
pub(crate) fn api_key_ok(config: &Config, authorization: Option<&str>) -> bool {
    match (config.api_key.as_deref(), bearer(authorization)) {
        (Some(key), Some(presented)) => same(presented.as_bytes(), key.as_bytes()),
        _ => false,
    }
}

/// The claims of ours in a JWT (the rest is checked by `jsonwebtoken`).
#[derive(Debug, serde::Deserialize)]
struct Claims {
    /// Channel names, or prefixes ending in `*`, this token may use.
    #[serde(default)]
    channels: Option<Vec<String>>,
}

/// The grant of `token` if it is a JWT signed with HS256 and `secret` (any
/// other algorithm, `none` included, is refused), with an `exp` claim not
/// yet past and an `nbf`, if any, already reached, both within
/// [`JWT_LEEWAY_SECS`], and a well-formed `channels` claim if it has one.
/// The signature check is constant-time (HMAC verify).
fn jwt(secret: &str, token: &str) -> Option<Grant> {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = JWT_LEEWAY_SECS;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp"]);
    let key = DecodingKey::from_secret(secret.as_bytes());
    let claims = match jsonwebtoken::decode::<Claims>(token, &key, &validation) {
        Ok(data) => data.claims,
        Err(e) => {
            tracing::trace!(cause = %e, "JWT refused");
            return None;
        }
    };
    let channels = match claims.channels {
        None => None,
        Some(list) => match list.iter().map(|p| Pattern::parse(p)).collect() {
            Ok(patterns) => Some(patterns),
            Err(e) => {
                tracing::debug!(cause = %e, "JWT refused: bad channels claim");
                return None;
            }
        },
    };
    Some(Grant::presented(channels))
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

    fn ok(config: &Config, authorization: Option<&str>, query_token: Option<&str>) -> bool {
        authorized(config, authorization, query_token).is_some()
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
        assert!(ok(&c, Some("Bearer s3cret"), None));
        assert!(ok(&c, Some("bearer  s3cret "), None));
        assert!(ok(&c, None, Some("s3cret")));
        assert!(!ok(&c, None, None));
        assert!(!ok(&c, Some("Bearer s3crex"), Some("nope")));
        assert!(!ok(&c, Some("Basic s3cret"), None));
        assert!(!ok(&c, None, Some("s3cre")));
        assert!(!ok(&c, None, Some("s3crets")));
        assert!(!ok(&c, None, Some("")));
        assert!(ok(&with(None, None), None, None));
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
        assert!(ok(&c, Some(&format!("Bearer {valid}")), None));
        assert!(ok(&c, None, Some(&valid)));
        assert!(!ok(&c, None, None));
        // Within the leeway still passes; past it, refused.
        let just = jwt("k3y", &format!(r#"{{"exp":{}}}"#, t - 5));
        assert!(ok(&c, None, Some(&just)));
        let expired = jwt("k3y", &format!(r#"{{"exp":{}}}"#, t - 2 * JWT_LEEWAY_SECS));
        assert!(!ok(&c, None, Some(&expired)));
        let no_exp = jwt("k3y", r#"{"sub":"a"}"#);
        assert!(!ok(&c, None, Some(&no_exp)));
        let not_yet = jwt(
            "k3y",
            &format!(r#"{{"exp":{},"nbf":{}}}"#, t + 3600, t + 600),
        );
        assert!(!ok(&c, None, Some(&not_yet)));
        let other_key = jwt("other", &format!(r#"{{"exp":{}}}"#, t + 60));
        assert!(!ok(&c, None, Some(&other_key)));
        // Both set: either credential works.
        let both = with(Some("s3cret"), Some("k3y"));
        assert!(ok(&both, None, Some("s3cret")));
        assert!(ok(&both, Some(&format!("Bearer {valid}")), None));
        assert!(!ok(&both, None, Some("k3y")));
    }

    #[test]
    fn a_channels_claim_limits_the_channels() {
        let c = with(Some("s3cret"), Some("k3y"));
        let exp = now() + 60;
        let grant = |claims: &str| authorized(&c, None, Some(&jwt("k3y", claims)));
        let limited = grant(&format!(r#"{{"exp":{exp},"channels":["news","team/*"]}}"#)).unwrap();
        assert!(limited.allows("news"));
        assert!(limited.allows("team/a"));
        assert!(!limited.allows("newsroom"));
        assert!(!limited.allows("default"));
        let all = grant(&format!(r#"{{"exp":{exp}}}"#)).unwrap();
        assert!(all.allows("anything"));
        let none = grant(&format!(r#"{{"exp":{exp},"channels":[]}}"#)).unwrap();
        assert!(!none.allows("default"));
        // A malformed claim refuses the token rather than guessing.
        assert!(grant(&format!(r#"{{"exp":{exp},"channels":["bad name"]}}"#)).is_none());
        assert!(grant(&format!(r#"{{"exp":{exp},"channels":"news"}}"#)).is_none());
        // The shared token allows every channel.
        assert!(authorized(&c, None, Some("s3cret")).unwrap().allows("x"));
    }

    #[test]
    fn the_api_key_is_a_bearer_token() {
        let c = Config {
            api_key: Some("k".repeat(20)),
            ..Config::default()
        };
        assert!(api_key_ok(&c, Some(&format!("Bearer {}", "k".repeat(20)))));
        assert!(!api_key_ok(&c, Some(&format!("Bearer {}", "k".repeat(19)))));
        assert!(!api_key_ok(&c, None));
        assert!(!api_key_ok(&Config::default(), Some("Bearer ")));
    }
}
