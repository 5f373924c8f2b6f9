//! The settings layers' tests: files, environment, precedence, messages
//! and `--check-config` output, through clap's real `start` command.

use super::check::toml_value;
use super::*;
use clap::CommandFactory;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};

fn start_cmd() -> Command {
    let mut cmd = crate::Cli::command();
    cmd.build();
    cmd.find_subcommand("start").unwrap().clone()
}

/// Writes `text` to a fresh temporary file.
fn temp_file(text: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "bs-settings-{}-{}.toml",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, text).unwrap();
    path
}

/// What `main` does: the command line `start ARGS` (plus `--config`
/// for `file`), then `env` and the file, then the full parse. Returns
/// the final `start` matches and the layers.
fn resolve(
    args: &[&str],
    env: &[(&str, &str)],
    file: Option<&str>,
) -> Result<(ArgMatches, Layers), SettingsError> {
    let path = file.map(temp_file);
    let mut argv: Vec<OsString> = vec!["broadcast-server".into(), "start".into()];
    argv.extend(args.iter().map(OsString::from));
    if let Some(p) = &path {
        argv.push("--config".into());
        argv.push(p.into());
    }
    let mut cmd = crate::Cli::command();
    let matches = cmd.try_get_matches_from_mut(&argv).unwrap();
    let env: BTreeMap<String, OsString> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), OsString::from(v)))
        .collect();
    let layers = gather(
        &start_cmd(),
        matches.subcommand_matches("start").unwrap(),
        &|var| env.get(var).cloned(),
    );
    if let Some(p) = &path {
        std::fs::remove_file(p).unwrap();
    }
    let layers = layers?;
    argv.extend(layers.words.iter().cloned());
    let matches = cmd
        .try_get_matches_from_mut(&argv)
        .unwrap_or_else(|e| panic!("full parse of {argv:?}: {e}"));
    Ok((matches.subcommand_matches("start").unwrap().clone(), layers))
}

fn raw(m: &ArgMatches, id: &str) -> Vec<String> {
    m.get_raw(id)
        .into_iter()
        .flatten()
        .map(|v| v.to_string_lossy().into_owned())
        .collect()
}

/// A value `arg` accepts that is not its default (`true` for a switch).
fn sample(start: &Command, arg: &Arg) -> String {
    if kind(arg) == Kind::Switch {
        return "true".to_owned();
    }
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    let possible: Vec<String> = arg
        .get_possible_values()
        .iter()
        .map(|p| p.get_name().to_owned())
        .collect();
    let candidates = if possible.is_empty() {
        ["7", "127.0.0.2:9", "127.0.0.2", "sample-value"]
            .map(str::to_owned)
            .to_vec()
    } else {
        possible
    };
    candidates
        .into_iter()
        .find(|c| {
            !defaults.contains(c)
                && check_value(start, arg, &word(arg, c), &Origin::Default).is_ok()
        })
        .unwrap_or_else(|| {
            panic!(
                "no sample value for --{}: add one this flag accepts",
                long(arg)
            )
        })
}

/// Every `start` flag, whoever added it, is read from the file and from
/// the environment (all at once, so flags that need each other are
/// satisfied).
#[test]
fn every_start_flag_is_reachable_from_file_and_env() {
    let start = start_cmd();
    let args: Vec<&Arg> = settings_args(&start).collect();
    assert!(args.len() >= 17, "only {} settings", args.len());
    let samples: Vec<(&Arg, String)> = args.iter().map(|a| (*a, sample(&start, a))).collect();

    let mut file = String::new();
    for (arg, value) in &samples {
        let value = match kind(arg) {
            Kind::Switch => value.clone(),
            Kind::Repeated => format!("[{}]", toml_value(value)),
            Kind::Single => toml_value(value),
        };
        let _ = writeln!(file, "{} = {value}", long(arg));
    }
    let from_file = resolve(&[], &[], Some(&file)).unwrap();
    let env: Vec<(String, String)> = samples
        .iter()
        .map(|(arg, value)| (env_name(arg), value.clone()))
        .collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let from_env = resolve(&[], &env, None).unwrap();
    for (i, (arg, value)) in samples.iter().enumerate() {
        let id = arg.get_id().as_str();
        for (place, (m, layers)) in [("file", &from_file), ("env", &from_env)] {
            assert_eq!(
                raw(m, id),
                std::slice::from_ref(value),
                "--{} from the {place}",
                long(arg)
            );
            let origin = &layers.origins[id];
            let right = match origin {
                Origin::File { line, .. } => place == "file" && *line == i + 1,
                Origin::Env(var) => place == "env" && *var == env_name(arg),
                _ => false,
            };
            assert!(right, "--{} from the {place}: {origin:?}", long(arg));
        }
    }
}

#[test]
fn flag_beats_env_beats_file_beats_default() {
    let file = Some("port = 1\nidle-timeout = 11\nmax-backlog = 111\n");
    let env = [("BROADCAST_PORT", "2"), ("BROADCAST_IDLE_TIMEOUT", "22")];
    let (m, layers) = resolve(&["--port", "3"], &env, file).unwrap();
    assert_eq!(raw(&m, "port"), ["3"]);
    assert_eq!(raw(&m, "idle_timeout"), ["22"]);
    assert_eq!(raw(&m, "max_backlog"), ["111"]);
    assert_eq!(raw(&m, "max_message_size"), ["65536"]);
    assert!(!layers.origins.contains_key("port"));
    let (m, _) = resolve(&[], &env, file).unwrap();
    assert_eq!(raw(&m, "port"), ["2"]);
    // A repeatable flag is taken whole from one place.
    let file = Some("allowed-origin = [\"https://file\"]\n");
    let env = [("BROADCAST_ALLOWED_ORIGIN", "https://a, https://b,")];
    let (m, _) = resolve(&[], &env, file).unwrap();
    assert_eq!(raw(&m, "allowed_origins"), ["https://a", "https://b"]);
    let (m, _) = resolve(&["--allowed-origin", "https://cli"], &env, file).unwrap();
    assert_eq!(raw(&m, "allowed_origins"), ["https://cli"]);
    // A switch the env turns off stays off, whatever the file says.
    let (m, _) = resolve(&[], &[("BROADCAST_ECHO", "off")], Some("echo = true\n")).unwrap();
    assert_eq!(raw(&m, "echo"), ["false"]);
    // BROADCAST_CONFIG names the file when --config does not.
    let path = temp_file("max-message-rate = 5\n");
    let path_text = path.to_string_lossy().into_owned();
    let (m, _) = resolve(&[], &[(CONFIG_ENV, &path_text)], None).unwrap();
    assert_eq!(raw(&m, "max_message_rate"), ["5"]);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn underscores_and_numbers_of_any_radix_are_accepted() {
    let (m, _) = resolve(&[], &[], Some("max_message_size = 0x400\necho = false\n")).unwrap();
    assert_eq!(raw(&m, "max_message_size"), ["1024"]);
    assert_eq!(raw(&m, "echo"), ["false"]);
}

/// The message of a refused file, with the temporary path replaced by `FILE`.
fn file_error(text: &str) -> SettingsError {
    let path = temp_file(text);
    let mut argv: Vec<OsString> = vec!["broadcast-server".into(), "start".into()];
    argv.extend(["--config".into(), path.clone().into_os_string()]);
    let matches = crate::Cli::command().try_get_matches_from(&argv).unwrap();
    let err = gather(
        &start_cmd(),
        matches.subcommand_matches("start").unwrap(),
        &|_| None,
    )
    .unwrap_err();
    std::fs::remove_file(&path).unwrap();
    let p = path.to_string_lossy().into_owned();
    match err {
        SettingsError::Flag(m) => SettingsError::Flag(m.replace(&p, "FILE")),
        SettingsError::File(m) => SettingsError::File(m.replace(&p, "FILE")),
    }
}

#[test]
fn errors_name_the_file_line_and_key() {
    use SettingsError::{File, Flag};
    let flag = |s: &str| Flag(s.to_owned());
    assert_eq!(
        file_error("# comment\nhost = \"::1\"\nport = \"abc\"\n"),
        flag("FILE:3: key \"port\": invalid value \"abc\": invalid digit found in string")
    );
    assert_eq!(
        file_error("\nprot = 1\n"),
        flag("FILE:2: unknown key \"prot\" (did you mean \"port\"?); the keys are the long flag names of 'start' (see --help)")
    );
    assert_eq!(
        file_error("echo = \"yes\"\n"),
        flag("FILE:1: key \"echo\": expected true or false, found a string")
    );
    assert_eq!(
        file_error("port = [1, 2]\n"),
        flag("FILE:1: key \"port\": expected one value (this flag is not repeatable), found an array")
    );
    assert_eq!(
        file_error("auth-token = \"\"\nmax-backlog = 1\n"),
        flag("FILE:1: key \"auth-token\": invalid value \"\": a value is required for '--auth-token <TOKEN>' but none was supplied")
    );
    assert_eq!(
        file_error("port = 1\nmax_backlog = 2\nmax-backlog = 3\n"),
        flag("FILE:3: key \"max-backlog\": set twice (also as \"max_backlog\" on line 2)")
    );
    assert_eq!(
        file_error("port = 1\n\nhost = \n"),
        File(
            "FILE:3: invalid TOML: string values must be quoted, expected literal string"
                .to_owned()
        )
    );
    // A string without quotes: the error says what to write instead.
    assert_eq!(
        file_error("port = 1\nhost = 127.0.0.1\n"),
        File("FILE:2: strings need quotes: host = \"127.0.0.1\"".to_owned())
    );
    assert_eq!(
        file_error("log-format = json # the default is text\n"),
        File("FILE:1: strings need quotes: log-format = \"json\"".to_owned())
    );
    let Flag(secret) = file_error("log-format = \"xml\"\n") else {
        panic!("a bad value is a flag error")
    };
    assert!(secret.ends_with("possible values: text, json"), "{secret}");
}

#[test]
fn unknown_keys_suggest_a_flag_at_most_two_edits_away() {
    let hint = |key: &str| match file_error(&format!("{key} = 1\n")) {
        SettingsError::Flag(m) => m
            .split_once("(did you mean \"")
            .map(|(_, rest)| rest.split('"').next().unwrap().to_owned()),
        other => panic!("{other:?}"),
    };
    // One edit (a dropped letter), two (a swap), and none closer than three.
    assert_eq!(hint("max-mesage-size").as_deref(), Some("max-message-size"));
    assert_eq!(hint("prot").as_deref(), Some("port"));
    assert_eq!(hint("wrokers").as_deref(), Some("workers"));
    assert_eq!(hint("colour"), None);
}

/// What `--check-config` prints reads back, in a TOML file, as the
/// same value: quotes, backslashes and control characters included.
#[test]
fn toml_values_read_back_as_written() {
    for v in [
        "9000",
        "-1",
        "007",
        "1e3",
        "::1",
        "a\"b",
        "back\\slash",
        "tab\tnew\nline",
        "'",
        "é\u{7f}",
    ] {
        let doc = format!("k = {}", toml_value(v));
        let table: toml::Table = doc.parse().unwrap_or_else(|e| panic!("{doc}: {e}"));
        let read = match &table["k"] {
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::String(s) => s.clone(),
            other => panic!("{doc}: {other:?}"),
        };
        assert_eq!(read, v, "{doc}");
    }
    assert_eq!(toml_value("9000"), "9000");
    assert_eq!(toml_value("https://a.example"), "\"https://a.example\"");
}

#[test]
fn env_errors_name_the_variable() {
    let err = resolve(&[], &[("BROADCAST_ECHO", "maybe")], None).unwrap_err();
    assert_eq!(
        err,
        SettingsError::Flag(
            "environment variable BROADCAST_ECHO: invalid value \"maybe\": expected true or false"
                .to_owned()
        )
    );
    let err = resolve(&[], &[("BROADCAST_MAX_CONNECTIONS", "-1")], None).unwrap_err();
    assert!(
        matches!(&err, SettingsError::Flag(m) if m.starts_with("environment variable BROADCAST_MAX_CONNECTIONS: invalid value \"-1\": ")),
        "{err:?}"
    );
    // A bad value is refused even where a higher layer overrides it.
    let err = resolve(&["--port", "1"], &[("BROADCAST_PORT", "x")], None).unwrap_err();
    assert!(
        matches!(&err, SettingsError::Flag(m) if m.starts_with("environment variable BROADCAST_PORT: ")),
        "{err:?}"
    );
    let err = resolve(
        &["--port", "1"],
        &[("BROADCAST_PORT", "2")],
        Some("port = \"x\"\n"),
    );
    assert!(
        matches!(&err, Err(SettingsError::Flag(m)) if m.contains(": key \"port\": invalid value \"x\"")),
        "{err:?}"
    );
    // Variables that are no flag are not ours to refuse (the build uses some).
    assert!(resolve(&[], &[("BROADCAST_SKIP_WASM", "1")], None).is_ok());
    assert!(matches!(
        resolve(&[], &[(CONFIG_ENV, "/nonexistent/bs.toml")], None),
        Err(SettingsError::File(m)) if m.starts_with("cannot read config file /nonexistent/bs.toml: ")
    ));
}

#[test]
fn check_config_shows_origins_and_masks_secrets() {
    let (m, layers) = resolve(
        &["--port", "9"],
        &[("BROADCAST_JWT_SECRET", "hush")],
        Some("auth-token = \"s3cret\"\necho = true\n"),
    )
    .unwrap();
    let report = check(&start_cmd(), &m, &layers).unwrap();
    assert!(
        !report.contains("s3cret") && !report.contains("hush"),
        "{report}"
    );
    let line = |key: &str| {
        report
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no {key} in {report}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(line("port ="), "port = 9 # command line");
    assert_eq!(
        line("jwt-secret ="),
        "jwt-secret = \"********\" # environment BROADCAST_JWT_SECRET"
    );
    assert!(line("auth-token =").starts_with("auth-token = \"********\" # "));
    assert!(line("echo =").starts_with("echo = true # ") && line("echo =").ends_with(":2"));
    assert_eq!(line("host ="), "host = \"0.0.0.0\" # default");
    assert_eq!(line("# workers"), "# workers (not set) # default");
}

/// A flag whose value is a file (as --tls-cert will be) is checked.
#[test]
fn check_config_requires_named_files_to_be_readable() {
    let start = Command::new("start").arg(
        Arg::new("cert")
            .long("cert")
            .value_parser(clap::value_parser!(PathBuf)),
    );
    let readable = temp_file("x");
    for (path, ok) in [
        (readable.clone(), true),
        (PathBuf::from("/nonexistent/cert.pem"), false),
        (std::env::temp_dir(), false),
    ] {
        let m = start
            .clone()
            .try_get_matches_from([
                OsString::from("start"),
                "--cert".into(),
                path.clone().into(),
            ])
            .unwrap();
        let result = check(&start, &m, &Layers::default());
        assert_eq!(result.is_ok(), ok, "{path:?}: {result:?}");
        if let Err(SettingsError::File(m)) = result {
            assert!(m.starts_with("--cert: cannot read "), "{m}");
        }
    }
    std::fs::remove_file(readable).unwrap();
}

#[test]
fn a_refused_combination_names_where_its_flags_came_from() {
    let start = Command::new("start")
        .arg(Arg::new("cert").long("cert").requires("key"))
        .arg(Arg::new("key").long("key"))
        .arg(Arg::new("certs").long("certs"));
    let e = start
        .clone()
        .try_get_matches_from(["start", "--cert=x"])
        .unwrap_err();
    let mut layers = Layers::default();
    layers
        .origins
        .insert("cert".into(), Origin::Env("BROADCAST_CERT".into()));
    layers
        .origins
        .insert("certs".into(), Origin::Env("BROADCAST_CERTS".into()));
    assert_eq!(
        layers.note_for(&start, &e).as_deref(),
        Some("note: --cert was set by environment variable BROADCAST_CERT")
    );
}

#[test]
fn urls_lose_their_password_when_shown() {
    let start = start_cmd();
    let port = start
        .get_arguments()
        .find(|a| a.get_id() == "port")
        .unwrap();
    assert_eq!(
        shown(port, "redis://:pw@h:6379/0"),
        "redis://:********@h:6379/0"
    );
    assert_eq!(shown(port, "redis://u:pw@h"), "redis://u:********@h");
    assert_eq!(shown(port, "redis://h/x@y"), "redis://h/x@y");
    assert_eq!(shown(port, "9000"), "9000");
}

#[test]
fn history_limits_come_from_flags_file_and_env_and_are_checked() {
    let (m, _) = resolve(&[], &[], None).unwrap();
    assert_eq!(raw(&m, "history_size"), ["100"]);
    assert_eq!(raw(&m, "history_ttl"), ["300"]);
    assert_eq!(raw(&m, "history_memory"), [(64u64 << 20).to_string()]);
    let file = Some("history-size = 0\nhistory-ttl = 60\nhistory-memory = 4096\n");
    let env = [("BROADCAST_HISTORY_TTL", "30")];
    let (m, _) = resolve(&["--history-memory", "8192"], &env, file).unwrap();
    assert_eq!(raw(&m, "history_size"), ["0"]);
    assert_eq!(raw(&m, "history_ttl"), ["30"]);
    assert_eq!(raw(&m, "history_memory"), ["8192"]);
    // A TTL or a budget of 0 means nothing: refused (size 0 turns history off).
    for bad in [
        ["--history-ttl", "0"],
        ["--history-memory", "0"],
        ["--history-size", "-1"],
        ["--history-size", "1000001"],
    ] {
        let mut argv = vec!["broadcast-server", "start"];
        argv.extend(bad);
        assert!(
            crate::Cli::command().try_get_matches_from(&argv).is_err(),
            "{bad:?}"
        );
    }
}
