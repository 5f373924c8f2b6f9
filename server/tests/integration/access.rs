//! Who may upgrade: the Origin check and the optional token.

use tokio_tungstenite::tungstenite::Error as WsError;

use crate::util::{metric, upgrade_with, Server};

/// Tries an upgrade of `url` with extra headers; `Ok(())` when it succeeds,
/// the refusal's HTTP status otherwise.
async fn try_upgrade(url: &str, headers: &[(&'static str, &str)]) -> Result<(), u16> {
    match upgrade_with(url, headers).await {
        Ok(_) => Ok(()),
        Err(WsError::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("upgrade of {url}: unexpected error {e}"),
    }
}

#[tokio::test]
async fn cross_site_origins_are_refused_by_default() {
    let server = Server::start(&[]).await;
    let url = server.ws_url();
    let own = format!("http://{}", server.addr());
    assert_eq!(
        try_upgrade(&url, &[]).await,
        Ok(()),
        "no Origin: not a browser"
    );
    assert_eq!(
        try_upgrade(&url, &[("Origin", &own)]).await,
        Ok(()),
        "page from this server"
    );
    assert_eq!(
        try_upgrade(&url, &[("Origin", "http://evil.example")]).await,
        Err(403)
    );
    assert_eq!(try_upgrade(&url, &[("Origin", "null")]).await, Err(403));
    assert_eq!(refused(&server, "origin").await, 2.0);
}

/// `broadcast_upgrades_refused_total{reason}` from `/metrics`.
async fn refused(server: &Server, reason: &str) -> f64 {
    metric(
        &server.metrics().await,
        "broadcast_upgrades_refused_total",
        &format!("reason=\"{reason}\""),
    )
}

#[tokio::test]
async fn an_allow_list_admits_only_its_origins() {
    let server = Server::start(&[
        "--allowed-origin",
        "https://app.example",
        "-allowed-origin",
        "https://other.example",
    ])
    .await;
    let url = server.ws_url();
    assert_eq!(
        try_upgrade(&url, &[("Origin", "https://app.example")]).await,
        Ok(())
    );
    assert_eq!(
        try_upgrade(&url, &[("Origin", "https://other.example")]).await,
        Ok(())
    );
    assert_eq!(
        try_upgrade(&url, &[("Origin", "https://evil.example")]).await,
        Err(403)
    );
    assert_eq!(try_upgrade(&url, &[]).await, Ok(()));
}

#[tokio::test]
async fn a_token_is_required_when_configured() {
    let server = Server::start(&["--auth-token", "s3cret"]).await;
    let url = server.ws_url();
    assert_eq!(try_upgrade(&url, &[]).await, Err(401));
    assert_eq!(
        try_upgrade(&format!("{url}?token=wrong"), &[]).await,
        Err(401)
    );
    assert_eq!(
        try_upgrade(&url, &[("Authorization", "Bearer wrong")]).await,
        Err(401)
    );
    assert_eq!(
        try_upgrade(&format!("{url}?token=s3cret"), &[]).await,
        Ok(())
    );
    assert_eq!(
        try_upgrade(&url, &[("Authorization", "Bearer s3cret")]).await,
        Ok(())
    );
    // Plain HTTP stays open (health checks need no token).
    assert_eq!(server.http_get("/healthz").await.status, 200);
    assert_eq!(refused(&server, "unauthorized").await, 3.0);
    assert_eq!(refused(&server, "origin").await, 0.0);
}
