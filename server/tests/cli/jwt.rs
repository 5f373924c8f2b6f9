//! The console client's `--token` carries a JSON Web Token to a server
//! started with `--jwt-secret`.

use crate::util::{next_text, raw_client, Cli, Pipe, Server};

fn jwt(secret: &str, exp_from_now: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": "console", "exp": now + exp_from_now}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn connect_token_carries_a_jwt() {
    let server = Server::start_with(0, &["--jwt-secret", "console-secret"]).await;
    let token = jwt("console-secret", 3600);
    let mut listener = raw_client(&format!("{}?token={token}", server.url())).await;
    let mut sender = Cli::spawn(&["--url", &server.url(), "--token", &token], true);
    server.wait_connections(2).await;
    sender.send_line("signed in").await;
    assert_eq!(next_text(&mut listener).await, "signed in");
    sender.close_stdin();
    let (st, lines) = sender.wait().await;
    assert_eq!(st.code(), Some(0), "{lines:?}");
    assert!(
        lines.iter().all(|(_, l)| !l.contains(&token)),
        "the token is never printed: {lines:?}"
    );

    // An expired token is refused with 401, explained in one line.
    let expired = jwt("console-secret", -3600);
    let mut refused = Cli::spawn(&["--url", &server.url(), "--token", &expired], false);
    let (st, lines) = refused.wait().await;
    assert_eq!(st.code(), Some(1), "{lines:?}");
    assert!(
        matches!(&lines[..], [(Pipe::Stderr, l)] if l.contains("HTTP 401")),
        "{lines:?}"
    );
}
