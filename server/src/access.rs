//! Who may upgrade: the Origin allow-list (against cross-site WebSocket
//! hijacking) and the optional shared-secret token. Both are checked before
//! the upgrade, so a refused client never holds a WebSocket connection.

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

/// Whether the request carries `expected` as `Authorization: Bearer <token>`
/// or as the `token` query parameter. Compared in constant time.
pub(crate) fn token_ok(
    expected: &str,
    authorization: Option<&str>,
    query_token: Option<&str>,
) -> bool {
    let bearer = authorization.and_then(|h| {
        let (scheme, rest) = h.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    bearer.is_some_and(|t| same(t.as_bytes(), expected.as_bytes()))
        || query_token.is_some_and(|t| same(t.as_bytes(), expected.as_bytes()))
}

/// Equality whose time does not depend on where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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

    #[test]
    fn tokens() {
        assert!(token_ok("s3cret", Some("Bearer s3cret"), None));
        assert!(token_ok("s3cret", Some("bearer  s3cret "), None));
        assert!(token_ok("s3cret", None, Some("s3cret")));
        assert!(!token_ok("s3cret", None, None));
        assert!(!token_ok("s3cret", Some("Bearer s3crex"), Some("nope")));
        assert!(!token_ok("s3cret", Some("Basic s3cret"), None));
        assert!(!token_ok("s3cret", None, Some("s3cre")));
    }
}
