//! Settings from a config file (`--config`) and `BROADCAST_*` variables,
//! their precedence, the errors they produce, and `--check-config`.

use crate::util::*;

/// Against a server started with `--echo` (from wherever): a message of
/// exactly `limit` bytes comes back to its sender; one byte more closes the
/// connection with 1009.
async fn assert_echo_and_size_limit(server: &Server, limit: usize) {
    let mut raw = RawClient::connect(server).await;
    let at_limit = vec![b'a'; limit];
    raw.send_raw(&masked(OP_TEXT, &at_limit)).await;
    let echoed = raw.read_frame().await;
    assert_eq!(
        (echoed.opcode, echoed.payload.len()),
        (OP_TEXT, limit),
        "echo of {limit} bytes"
    );
    raw.send_raw_lenient(&masked(OP_TEXT, &vec![b'b'; limit + 1]))
        .await;
    assert_eq!(raw.expect_close(1009).await, "message too big");
}

#[tokio::test]
async fn a_config_file_is_applied() {
    let file = TempFile::new(
        "applied.toml",
        "# keys are the long flag names\necho = true\nmax_message_size = 100\n",
    );
    let server = Server::start(&["--config", file.path()]).await;
    assert_echo_and_size_limit(&server, 100).await;
}

#[tokio::test]
async fn environment_variables_are_applied() {
    let server = Server::start_env(
        &["start", "--host", "127.0.0.1"],
        &[
            ("BROADCAST_PORT", "0"),
            ("BROADCAST_ECHO", "true"),
            ("BROADCAST_MAX_MESSAGE_SIZE", "200"),
        ],
    )
    .await;
    assert_echo_and_size_limit(&server, 200).await;
}

#[tokio::test]
async fn a_flag_beats_the_environment_which_beats_the_file() {
    let file = TempFile::new("precedence.toml", "echo = true\nmax-message-size = 100\n");
    let env = [("BROADCAST_MAX_MESSAGE_SIZE", "200")];
    let base = ["start", "--host", "127.0.0.1", "--port", "0"];
    let mut with_flag = base.to_vec();
    with_flag.extend(["--config", file.path(), "--max-message-size", "300"]);
    let server = Server::start_env(&with_flag, &env).await;
    assert_echo_and_size_limit(&server, 300).await;

    let mut without_flag = base.to_vec();
    without_flag.extend(["--config", file.path()]);
    let server = Server::start_env(&without_flag, &env).await;
    assert_echo_and_size_limit(&server, 200).await;

    // BROADCAST_CONFIG names the file when --config does not.
    let server = Server::start_env(&base, &[("BROADCAST_CONFIG", file.path())]).await;
    assert_echo_and_size_limit(&server, 100).await;
}

/// Runs `start --config FILE` with `text` as the file and expects exit 2
/// and exactly one error line (`error: FILE:...`, the temporary path
/// replaced by `FILE`), returned with the rest of stderr.
async fn refused_config(text: &str) -> (String, String) {
    let file = TempFile::new("refused.toml", text);
    let run = run_start(&["--config", file.path()], &[]).await;
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    assert_eq!(run.stdout, "", "nothing on stdout: {run:?}");
    let stderr = run.stderr.replace(file.path(), "FILE");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    (errors[0].to_owned(), stderr)
}

#[tokio::test]
async fn a_bad_value_is_refused_with_the_file_line_and_key() {
    let (error, stderr) = refused_config("echo = true\n\nport = \"abc\"\n").await;
    assert_eq!(
        error,
        "error: FILE:3: key \"port\": invalid value \"abc\": invalid digit found in string"
    );
    assert!(stderr.contains("Usage: broadcast-server start"), "{stderr}");
    let (error, _) = refused_config("max-message-rate = 10\necho = \"yes\"\n").await;
    assert_eq!(
        error,
        "error: FILE:2: key \"echo\": expected true or false, found a string"
    );
}

#[tokio::test]
async fn an_unknown_key_is_refused() {
    let (error, stderr) = refused_config("port = 0\nmax-mesage-size = 10\n").await;
    assert!(
        error.starts_with(
            "error: FILE:2: unknown key \"max-mesage-size\" (did you mean \"max-message-size\"?)"
        ),
        "{error}"
    );
    assert!(stderr.contains("Usage:"), "{stderr}");
}

#[tokio::test]
async fn a_toml_syntax_error_is_refused_with_its_line() {
    let (error, stderr) = refused_config("port = 0\necho = true\nhost = \"127.0.0.1\n").await;
    assert!(
        error.starts_with("error: FILE:3: invalid TOML: "),
        "{error}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    // A string without quotes (what a new user writes first) says so.
    let (error, stderr) = refused_config("port = 0\necho = true\nhost = 127.0.0.1\n").await;
    assert_eq!(
        error,
        "error: FILE:3: strings need quotes: host = \"127.0.0.1\""
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
}

#[tokio::test]
async fn a_missing_config_file_is_one_line() {
    let run = run_to_exit(&["start", "--config", "/nonexistent/bs.toml"], &[]).await;
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    assert_eq!(
        run.stderr.lines().collect::<Vec<_>>(),
        ["error: cannot read config file /nonexistent/bs.toml: No such file or directory (os error 2)"]
    );
}

#[tokio::test]
async fn a_bad_environment_variable_is_named() {
    let run = run_start(&[], &[("BROADCAST_MAX_MESSAGE_RATE", "lots")]).await;
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    assert!(
        run.stderr.starts_with(
            "error: environment variable BROADCAST_MAX_MESSAGE_RATE: invalid value \"lots\": "
        ),
        "{run:?}"
    );
}

#[tokio::test]
async fn check_config_prints_the_settings_without_binding() {
    // The port is taken: a server would fail to bind it, the check does not try.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let file = TempFile::new(
        "check.toml",
        "auth-token = \"s3cret-token\"\nmax-backlog = 4096\nallowed-origin = [\"https://a.example\"]\n",
    );
    let run = run_to_exit(
        &[
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--config",
            file.path(),
            "--check-config",
        ],
        &[("BROADCAST_IDLE_TIMEOUT", "7")],
    )
    .await;
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    assert!(!run.stdout.contains("listening"), "{run:?}");
    assert!(
        !run.stdout.contains("s3cret-token"),
        "secret shown: {run:?}"
    );
    let setting = |key: &str| -> String {
        let line = run
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} in {}", run.stdout));
        line.split_whitespace().collect::<Vec<_>>().join(" ")
    };
    assert_eq!(setting("port"), format!("port = {port} # command line"));
    assert_eq!(
        setting("idle-timeout"),
        "idle-timeout = 7 # environment BROADCAST_IDLE_TIMEOUT"
    );
    assert_eq!(
        setting("max-backlog"),
        format!("max-backlog = 4096 # {}:2", file.path())
    );
    assert_eq!(
        setting("auth-token"),
        format!("auth-token = \"********\" # {}:1", file.path())
    );
    assert_eq!(
        setting("allowed-origin"),
        format!(
            "allowed-origin = [\"https://a.example\"] # {}:3",
            file.path()
        )
    );
    assert_eq!(setting("echo"), "echo = false # default");

    // An invalid configuration: exit 2 with the same message as `start`.
    let bad = TempFile::new("check-bad.toml", "workers = 0\n");
    let run = run_to_exit(&["start", "--config", bad.path(), "--check-config"], &[]).await;
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    assert!(
        run.stderr.starts_with(&format!(
            "error: {}:1: key \"workers\": invalid value \"0\": ",
            bad.path()
        )),
        "{run:?}"
    );
    drop(taken);
}
