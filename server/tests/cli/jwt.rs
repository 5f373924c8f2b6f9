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

/// A token whose `channels` claim leaves out one of the `--channel`s: the
/// server refuses that subscribe, and without a terminal the client stops.
#[tokio::test]
async fn a_channel_the_token_does_not_grant_ends_a_listener_with_exit_1() {
    let server = Server::start_with(0, &["--jwt-secret", "console-secret"]).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": "console", "exp": now + 3600, "channels": ["a"]}),
        &jsonwebtoken::EncodingKey::from_secret(b"console-secret"),
    )
    .unwrap();
    let url = server.url();
    let args = ["--url", &url, "--token", &token, "-l"];
    let mut cli = Cli::spawn(
        &[&args[..], &["--channel", "a", "--channel", "b"]].concat(),
        false,
    );
    cli.expect_contains(Pipe::Stderr, "joined #a (1 online)")
        .await;
    cli.expect(Pipe::Stderr, "the refusal", |l| {
        l == r#"! forbidden: your token does not allow channel "b""#
    })
    .await;
    let (st, rest) = cli.wait().await;
    assert_eq!(st.code(), Some(1), "{rest:?}");
    assert_eq!(
        rest.last(),
        Some(&(Pipe::Stderr, "error: cannot join #b (forbidden)".to_owned()))
    );
}
