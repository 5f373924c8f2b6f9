//! Where the page connects: the WebSocket endpoint of the server that served
//! it (`ws:` for an `http:` page, `wss:` for `https:`, same host and port,
//! path [`protocol::WS_PATH`]), with the chosen name in the query.

use protocol::v1::{encode_query_value, NAME_PARAM};

/// The WebSocket URL for a page served from `page_protocol` (as in
/// `location.protocol`, e.g. `"https:"`) and `host` (as in `location.host`,
/// with the port if any), asking for display name `name`.
pub fn ws_url(page_protocol: &str, host: &str, name: &str) -> String {
    let scheme = if page_protocol.eq_ignore_ascii_case("https:") {
        "wss:"
    } else {
        "ws:"
    };
    format!(
        "{scheme}//{host}{path}?{NAME_PARAM}={value}",
        path = protocol::WS_PATH,
        value = encode_query_value(name)
    )
}

#[cfg(test)]
mod tests {
    use super::ws_url;

    #[test]
    fn follows_the_page() {
        assert_eq!(
            ws_url("http:", "localhost:8080", "alice"),
            "ws://localhost:8080/ws?name=alice"
        );
        assert_eq!(
            ws_url("https:", "chat.example.org", "bob"),
            "wss://chat.example.org/ws?name=bob"
        );
        assert_eq!(
            ws_url("HTTPS:", "[::1]:9000", "x"),
            "wss://[::1]:9000/ws?name=x"
        );
    }

    #[test]
    fn encodes_the_name() {
        let url = ws_url("http:", "h:1", "Zoë & <b>/?#=");
        assert_eq!(url, "ws://h:1/ws?name=Zo%C3%AB%20%26%20%3Cb%3E%2F%3F%23%3D");
        let query = url.split_once('?').unwrap().1;
        assert_eq!(
            protocol::v1::query_param(query, "name"),
            Some(Some("Zoë & <b>/?#=".into()))
        );
    }
}
