//! Where to connect: the WebSocket URL built from `--host`/`--port` or
//! `--url`, plus the `name` query parameter of `broadcast.v1`.

use protocol::v1::{encode_query_value, validate_name, NameError, NAME_PARAM};

/// The server to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The URL as shown to the user (without the `name` parameter).
    pub(crate) display: String,
    /// The URL actually requested (with `?name=...` when a name was given).
    pub(crate) request: String,
    /// The display name asked for, validated and trimmed.
    pub(crate) name: Option<String>,
}

/// A flag value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TargetError {
    /// `--url` with another scheme.
    #[error("--url must start with ws:// or wss:// (got {0:?})")]
    Scheme(String),
    /// `--url` without a host.
    #[error("--url has no host: {0:?}")]
    NoHost(String),
    /// `--url` that is not a valid URL.
    #[error("--url is not a valid URL: {0:?}")]
    BadUrl(String),
    /// `--host` that is empty or looks like a URL.
    #[error("--host must be a host name or address (use --url for a full URL), got {0:?}")]
    BadHost(String),
    /// `--name` refused by the same rule the server applies.
    #[error("invalid --name: {0}")]
    Name(NameError),
}

/// Builds the target from the flags. `url` wins over `host`/`port` (clap
/// already refuses both together). A `--url` without a path gets
/// [`protocol::WS_PATH`]; any other path is kept as given.
pub(crate) fn build(
    host: &str,
    port: u16,
    url: Option<&str>,
    name: Option<&str>,
) -> Result<Target, TargetError> {
    let name = name
        .map(|n| validate_name(n).map_err(TargetError::Name))
        .transpose()?;
    let display = match url {
        Some(url) => normalize_url(url)?,
        None => host_port_url(host, port)?,
    };
    let request = match &name {
        Some(n) => {
            let sep = if display.contains('?') { '&' } else { '?' };
            format!("{display}{sep}{NAME_PARAM}={}", encode_query_value(n))
        }
        None => display.clone(),
    };
    Ok(Target {
        display,
        request,
        name,
    })
}

impl Target {
    /// The target of channel `channel` (a valid name) for a server without
    /// `broadcast.v2`: `/ws` becomes `/ws/NAME`; another path (a proxy's,
    /// or one that names a channel already) gets `channel=NAME` in its
    /// query. Names need no escaping in either place.
    pub(crate) fn in_channel(&self, channel: &str) -> Target {
        Target {
            display: url_in_channel(&self.display, channel),
            request: url_in_channel(&self.request, channel),
            name: self.name.clone(),
        }
    }
}

fn url_in_channel(url: &str, channel: &str) -> String {
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url, None),
    };
    let after_scheme = path.find("://").map_or(0, |i| i + 3);
    let has_ws_path = path[after_scheme..]
        .find('/')
        .is_some_and(|i| &path[after_scheme + i..] == protocol::WS_PATH);
    match (has_ws_path, query) {
        (true, None) => format!("{path}/{channel}"),
        (true, Some(q)) => format!("{path}/{channel}?{q}"),
        (false, None) => format!("{path}?{}={channel}", protocol::channel::PARAM),
        (false, Some(q)) => format!("{path}?{q}&{}={channel}", protocol::channel::PARAM),
    }
}

fn host_port_url(host: &str, port: u16) -> Result<String, TargetError> {
    let bad = host.is_empty()
        || host.contains(['/', '?', '#', '@', ' '])
        || (host.starts_with('[') != host.ends_with(']'));
    if bad {
        return Err(TargetError::BadHost(host.to_owned()));
    }
    // An IPv6 literal needs brackets in a URL.
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let url = format!("ws://{host}:{port}{}", protocol::WS_PATH);
    check_parses(&url).map_err(|_| TargetError::BadHost(host))?;
    Ok(url)
}

fn normalize_url(url: &str) -> Result<String, TargetError> {
    let url = url.trim();
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(TargetError::Scheme(url.to_owned()));
    };
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "ws" && scheme != "wss" {
        return Err(TargetError::Scheme(url.to_owned()));
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    if authority.is_empty() || authority.ends_with(':') {
        return Err(TargetError::NoHost(url.to_owned()));
    }
    let bad_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.contains(']') && p.parse::<u16>().is_err());
    if tail.starts_with('#') || bad_port {
        return Err(TargetError::BadUrl(url.to_owned()));
    }
    let tail = if tail.starts_with('/') {
        tail.to_owned()
    } else {
        // No path (maybe a query): use the server's endpoint.
        format!("{}{tail}", protocol::WS_PATH)
    };
    let out = format!("{scheme}://{authority}{tail}");
    check_parses(&out).map_err(|_| TargetError::BadUrl(url.to_owned()))?;
    Ok(out)
}

fn check_parses(url: &str) -> Result<(), ()> {
    let uri: tokio_tungstenite::tungstenite::http::Uri = url.parse().map_err(|_| ())?;
    match uri.host() {
        Some(h) if !h.is_empty() => Ok(()),
        _ => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(host: &str, port: u16, name: Option<&str>) -> (String, String) {
        let t = build(host, port, None, name).unwrap();
        (t.display, t.request)
    }

    #[test]
    fn host_and_port() {
        assert_eq!(
            url("localhost", 8080, None),
            (
                "ws://localhost:8080/ws".into(),
                "ws://localhost:8080/ws".into()
            )
        );
        assert_eq!(url("::1", 9, None).0, "ws://[::1]:9/ws");
        assert_eq!(url("[::1]", 9, None).0, "ws://[::1]:9/ws");
        assert_eq!(url("10.0.0.1", 1, None).0, "ws://10.0.0.1:1/ws");
    }

    #[test]
    fn name_goes_in_the_query_percent_encoded() {
        let t = build("h", 1, None, Some("  Zoë & co ")).unwrap();
        assert_eq!(t.display, "ws://h:1/ws");
        assert_eq!(t.request, "ws://h:1/ws?name=Zo%C3%AB%20%26%20co");
        assert_eq!(t.name.as_deref(), Some("Zoë & co"));
        let t = build("h", 1, Some("wss://h/chat?room=1"), Some("al")).unwrap();
        assert_eq!(t.request, "wss://h/chat?room=1&name=al");
    }

    #[test]
    fn url_gets_the_default_path_only_when_it_has_none() {
        let u = |s: &str| build("x", 1, Some(s), None).map(|t| t.display);
        assert_eq!(
            u("ws://example.com:9000"),
            Ok("ws://example.com:9000/ws".into())
        );
        assert_eq!(u("WSS://example.com"), Ok("wss://example.com/ws".into()));
        assert_eq!(u("ws://example.com/"), Ok("ws://example.com/".into()));
        assert_eq!(
            u("ws://example.com/chat"),
            Ok("ws://example.com/chat".into())
        );
        assert_eq!(u("ws://h?x=1"), Ok("ws://h/ws?x=1".into()));
    }

    #[test]
    fn channel_urls() {
        let t = build("h", 1, None, Some("al"))
            .unwrap()
            .in_channel("team/a");
        assert_eq!(t.display, "ws://h:1/ws/team/a");
        assert_eq!(t.request, "ws://h:1/ws/team/a?name=al");
        let u = |url: &str| url_in_channel(url, "a");
        assert_eq!(u("wss://h/ws?token=x"), "wss://h/ws/a?token=x");
        assert_eq!(u("ws://h/chat"), "ws://h/chat?channel=a");
        assert_eq!(u("ws://h/"), "ws://h/?channel=a");
        assert_eq!(u("ws://h/ws/b?x=1"), "ws://h/ws/b?x=1&channel=a");
        assert_eq!(u("ws://ws/x"), "ws://ws/x?channel=a");
    }

    #[test]
    fn bad_values_are_refused() {
        let u = |s: &str| build("x", 1, Some(s), None);
        assert!(matches!(u("http://h/ws"), Err(TargetError::Scheme(_))));
        assert!(matches!(u("h:8080"), Err(TargetError::Scheme(_))));
        assert!(matches!(u("ws:///ws"), Err(TargetError::NoHost(_))));
        assert!(matches!(u("ws://h:/ws"), Err(TargetError::NoHost(_))));
        assert!(matches!(u("ws://h:99999/ws"), Err(TargetError::BadUrl(_))));
        assert!(matches!(
            build("", 1, None, None),
            Err(TargetError::BadHost(_))
        ));
        assert!(matches!(
            build("ws://h", 1, None, None),
            Err(TargetError::BadHost(_))
        ));
        assert!(matches!(
            build("h", 1, None, Some(" ")),
            Err(TargetError::Name(NameError::Empty))
        ));
        assert!(matches!(
            build("h", 1, None, Some("a\u{1b}b")),
            Err(TargetError::Name(NameError::NotPrintable))
        ));
    }
}
