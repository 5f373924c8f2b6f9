//! Where `broadcast-server start` finds its settings besides the command
//! line: a TOML file (`--config FILE`, or `BROADCAST_CONFIG`) and
//! `BROADCAST_*` environment variables. Per flag, the command line beats the
//! environment, which beats the file, which beats the default.
//!
//! Nothing here names a flag: the settings are the arguments of clap's
//! `start` command, read at run time, so a flag added to `start` can be set
//! from the file and the environment with no code here. The values found
//! become command-line words (`--port=9000`) appended to the real ones, and
//! clap parses them like typed flags; each value is first checked on its
//! own, so that an error names the file line or the variable it came from.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};
use toml::de::{DeTable, DeValue};

/// An environment variable is this prefix plus the flag in upper snake case.
const ENV_PREFIX: &str = "BROADCAST_";
/// The variable naming the config file when `--config` is not given.
pub(crate) const CONFIG_ENV: &str = "BROADCAST_CONFIG";
/// Ids of the `start` arguments that choose where settings come from and
/// what to do with them, rather than being settings themselves.
const NOT_SETTINGS: [&str; 2] = ["config", "check_config"];
/// Words in a flag name that mark its value as a secret, masked when shown.
const SECRET_WORDS: [&str; 3] = ["token", "secret", "password"];
/// How a secret is shown (its length is not revealed).
const MASK: &str = "********";

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A flag on the command line.
    CommandLine,
    /// An environment variable.
    Env(String),
    /// A key of the config file, on this line.
    File {
        path: PathBuf,
        line: usize,
        key: String,
    },
    /// Nobody set it.
    Default,
}

impl fmt::Display for Origin {
    /// Written to open an error message: `/etc/bs.toml:3: key "port"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CommandLine => f.write_str("command line"),
            Self::Env(var) => write!(f, "environment variable {var}"),
            Self::File { path, line, key } => write!(f, "{}:{line}: key \"{key}\"", path.display()),
            Self::Default => f.write_str("default"),
        }
    }
}

/// Why the settings cannot be used. Either way the process exits with 2.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SettingsError {
    /// A key or value is wrong: shown with the usage.
    Flag(String),
    /// The file cannot be read, is not TOML, or names a file that cannot be
    /// read: one line.
    File(String),
}

/// How an argument takes its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A switch such as `--echo`: `true` or `false`.
    Switch,
    /// One value.
    Single,
    /// A repeatable flag such as `--allowed-origin`: a list of values.
    Repeated,
}

fn kind(arg: &Arg) -> Kind {
    if !arg.get_action().takes_values() {
        Kind::Switch
    } else if matches!(arg.get_action(), ArgAction::Append) {
        Kind::Repeated
    } else {
        Kind::Single
    }
}

/// The arguments of `start` that are settings: each with a long name, but
/// help, version and [`NOT_SETTINGS`].
pub(crate) fn settings_args(start: &Command) -> impl Iterator<Item = &Arg> {
    start.get_arguments().filter(|a| {
        a.get_long().is_some()
            && !matches!(
                a.get_action(),
                ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
            )
            && !NOT_SETTINGS.contains(&a.get_id().as_str())
    })
}

fn long(arg: &Arg) -> &str {
    arg.get_long().unwrap_or_default()
}

/// `BROADCAST_MAX_MESSAGE_SIZE` for `--max-message-size`.
pub(crate) fn env_name(arg: &Arg) -> String {
    format!(
        "{ENV_PREFIX}{}",
        long(arg).to_ascii_uppercase().replace('-', "_")
    )
}

fn is_secret(arg: &Arg) -> bool {
    SECRET_WORDS.iter().any(|w| long(arg).contains(w))
}

/// A value as it may be shown: secrets masked, and the password of a URL
/// such as `redis://:pw@host` too.
fn shown(arg: &Arg, value: &str) -> String {
    if is_secret(arg) && !value.is_empty() {
        return MASK.to_owned();
    }
    let Some((scheme, rest)) = value.split_once("://") else {
        return value.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => match rest[..at].split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:{MASK}{}", &rest[at..]),
            None => value.to_owned(),
        },
        None => value.to_owned(),
    }
}

/// The settings found in the environment and the file for the `start`
/// flags that the command line did not give.
#[derive(Debug, Default)]
pub(crate) struct Layers {
    /// Command-line words carrying those values, to append to the real ones.
    pub(crate) words: Vec<OsString>,
    /// Where each argument (by id) given a value here got it from.
    pub(crate) origins: BTreeMap<String, Origin>,
    /// The config file that was read, if any.
    pub(crate) file: Option<PathBuf>,
}

/// Reads the config file (the `config` argument of `cli`, else
/// [`CONFIG_ENV`]) and the environment (through `env`, so tests can supply
/// their own), and returns what they set for every settings argument of
/// `start` that `cli` did not get from the command line.
///
/// # Errors
/// An unreadable or malformed file, an unknown key, a value of the wrong
/// type or one the flag's parser refuses.
pub(crate) fn gather(
    start: &Command,
    cli: &ArgMatches,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Layers, SettingsError> {
    let path = match cli.try_get_one::<PathBuf>("config").ok().flatten() {
        Some(p) => Some(p.clone()),
        None => env(CONFIG_ENV).map(PathBuf::from),
    };
    let file = path.as_deref().map(ConfigFile::read).transpose()?;
    let args: Vec<&Arg> = settings_args(start).collect();
    if let Some(file) = &file {
        file.check_keys(&args)?;
    }
    let mut layers = Layers {
        file: path,
        ..Layers::default()
    };
    for arg in args {
        // Every value present is checked, even one a higher layer overrides:
        // a broken file is refused before it can bite once a flag is gone.
        let from_file = match file.as_ref() {
            Some(f) => match f.entries.get(long(arg)) {
                Some(entry) => {
                    let origin = f.origin(entry);
                    Some((entry.value.words(arg, &origin)?, origin))
                }
                None => None,
            },
            None => None,
        };
        let var = env_name(arg);
        let from_env = match env(&var) {
            Some(value) => {
                let origin = Origin::Env(var);
                Some((env_words(arg, value, &origin)?, origin))
            }
            None => None,
        };
        for (words, origin) in from_file.iter().chain(&from_env) {
            for word in words {
                check_value(start, arg, word, origin)?;
            }
        }
        let id = arg.get_id().as_str();
        if cli.value_source(id) == Some(ValueSource::CommandLine) {
            continue;
        }
        if let Some((words, origin)) = from_env.or(from_file) {
            layers.words.extend(words.into_iter().map(OsString::from));
            layers.origins.insert(id.to_owned(), origin);
        }
    }
    Ok(layers)
}

/// `--long=value`: with `=`, a value starting with `-` stays a value.
fn word(arg: &Arg, value: &str) -> String {
    format!("--{}={value}", long(arg))
}

/// The command-line words for an environment variable's value: a switch
/// takes `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`), a
/// repeatable flag a comma-separated list.
fn env_words(arg: &Arg, value: OsString, origin: &Origin) -> Result<Vec<String>, SettingsError> {
    let Ok(value) = value.into_string() else {
        return Err(SettingsError::Flag(format!("{origin}: not valid UTF-8")));
    };
    Ok(match kind(arg) {
        Kind::Switch => {
            let on = match value.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => true,
                "false" | "0" | "no" | "off" => false,
                _ => {
                    return Err(SettingsError::Flag(format!(
                        "{origin}: invalid value \"{}\": expected true or false",
                        shown(arg, &value)
                    )))
                }
            };
            switch_words(arg, on)
        }
        Kind::Single => vec![word(arg, &value)],
        Kind::Repeated => value
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(|v| word(arg, v))
            .collect(),
    })
}

fn switch_words(arg: &Arg, on: bool) -> Vec<String> {
    if on {
        vec![format!("--{}", long(arg))]
    } else {
        Vec::new()
    }
}

/// Parses `word` for `arg` alone with `start`'s own parser, so that a bad
/// value is reported with its origin. Errors that involve other flags
/// (conflicts, missing companions) are left to the full parse.
fn check_value(
    start: &Command,
    arg: &Arg,
    word: &str,
    origin: &Origin,
) -> Result<(), SettingsError> {
    let Err(e) = start.clone().try_get_matches_from([start.get_name(), word]) else {
        return Ok(());
    };
    let value_error = matches!(
        e.kind(),
        ErrorKind::InvalidValue
            | ErrorKind::ValueValidation
            | ErrorKind::InvalidUtf8
            | ErrorKind::TooManyValues
            | ErrorKind::TooFewValues
            | ErrorKind::WrongNumberOfValues
    );
    if !value_error {
        return Ok(());
    }
    let value = word.split_once('=').map_or("", |(_, v)| v);
    Err(SettingsError::Flag(format!(
        "{origin}: invalid value \"{}\": {}",
        shown(arg, value),
        reason(&e)
    )))
}

/// The why of a clap value error, without clap's framing.
fn reason(e: &clap::Error) -> String {
    if let Some(source) = std::error::Error::source(e) {
        return source.to_string();
    }
    if let Some(ContextValue::Strings(valid)) = e.get(ContextKind::ValidValue) {
        if !valid.is_empty() {
            return format!("possible values: {}", valid.join(", "));
        }
    }
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.trim_start_matches("error: ").to_owned()
}

/// A config-file value, with what TOML says of its type.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    /// A string, integer or float (with its TOML type, for messages):
    /// handed to the flag's parser as text.
    Scalar(String, &'static str),
    Bool(bool),
    Array(Vec<Value>),
    /// A table or a date-time: never a flag value.
    Other(&'static str),
}

impl Value {
    fn from_toml(value: &DeValue<'_>) -> Self {
        match value {
            DeValue::String(s) => Self::Scalar(s.to_string(), "a string"),
            DeValue::Integer(i) => Self::Scalar(
                i128::from_str_radix(i.as_str(), i.radix())
                    .map_or_else(|_| i.as_str().to_owned(), |n| n.to_string()),
                "an integer",
            ),
            DeValue::Float(x) => Self::Scalar(x.as_str().to_owned(), "a float"),
            DeValue::Boolean(b) => Self::Bool(*b),
            DeValue::Array(items) => {
                Self::Array(items.iter().map(|v| Self::from_toml(v.get_ref())).collect())
            }
            DeValue::Datetime(_) => Self::Other("a date-time"),
            DeValue::Table(_) => Self::Other("a table"),
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Self::Scalar(_, type_name) => type_name,
            Self::Bool(_) => "a boolean",
            Self::Array(_) => "an array",
            Self::Other(t) => t,
        }
    }

    /// The command-line words for this value of `arg`: a switch takes a
    /// boolean; a repeatable flag an array (or one value); any other flag
    /// one string, number or boolean, which its parser then checks.
    fn words(&self, arg: &Arg, origin: &Origin) -> Result<Vec<String>, SettingsError> {
        let wrong = |what: &str| {
            SettingsError::Flag(format!(
                "{origin}: expected {what}, found {}",
                self.type_name()
            ))
        };
        match (kind(arg), self) {
            (Kind::Switch, Self::Bool(on)) => Ok(switch_words(arg, *on)),
            (Kind::Switch, _) => Err(wrong("true or false")),
            (_, Self::Scalar(s, _)) => Ok(vec![word(arg, s)]),
            (_, Self::Bool(b)) => Ok(vec![word(arg, &b.to_string())]),
            (Kind::Repeated, Self::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Self::Scalar(s, _) => Ok(word(arg, s)),
                    Self::Bool(b) => Ok(word(arg, &b.to_string())),
                    other => Err(SettingsError::Flag(format!(
                        "{origin}: expected an array of strings or numbers, found {} in it",
                        other.type_name()
                    ))),
                })
                .collect(),
            (Kind::Single, Self::Array(_)) => Err(wrong("one value (this flag is not repeatable)")),
            (_, Self::Other(_)) => Err(wrong("a string, a number or a boolean")),
        }
    }
}

/// One `key = value` of the file.
#[derive(Debug)]
struct Entry {
    /// As written (`max_message_size` or `max-message-size`).
    key: String,
    line: usize,
    value: Value,
}

/// A parsed config file: its top-level keys, by flag name.
#[derive(Debug)]
struct ConfigFile {
    path: PathBuf,
    entries: BTreeMap<String, Entry>,
}

impl ConfigFile {
    fn read(path: &Path) -> Result<Self, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            SettingsError::File(format!("cannot read config file {}: {e}", path.display()))
        })?;
        Self::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<Self, SettingsError> {
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let table = DeTable::parse(text).map_err(|e| {
            let line = e.span().map_or(1, |s| line_of(s.start));
            SettingsError::File(format!(
                "{}:{line}: invalid TOML: {}",
                path.display(),
                e.message().trim_end()
            ))
        })?;
        let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
        // The table iterates in key order; errors should follow the file.
        let mut keys: Vec<_> = table.get_ref().iter().collect();
        keys.sort_by_key(|(key, _)| key.span().start);
        for (key, value) in keys {
            let written = key.get_ref().to_string();
            let line = line_of(key.span().start);
            let name = written.replace('_', "-");
            if let Some(first) = entries.get(&name) {
                return Err(SettingsError::Flag(format!(
                    "{}:{line}: key \"{written}\": set twice (also as \"{}\" on line {})",
                    path.display(),
                    first.key,
                    first.line
                )));
            }
            let value = Value::from_toml(value.get_ref());
            entries.insert(
                name,
                Entry {
                    key: written,
                    line,
                    value,
                },
            );
        }
        Ok(Self {
            path: path.to_owned(),
            entries,
        })
    }

    fn origin(&self, entry: &Entry) -> Origin {
        Origin::File {
            path: self.path.clone(),
            line: entry.line,
            key: entry.key.clone(),
        }
    }

    /// Refuses the first key (by line) that is not a settings flag.
    fn check_keys(&self, args: &[&Arg]) -> Result<(), SettingsError> {
        let mut unknown: Vec<(&String, &Entry)> = self
            .entries
            .iter()
            .filter(|(name, _)| !args.iter().any(|a| long(a) == name.as_str()))
            .collect();
        unknown.sort_by_key(|(_, e)| e.line);
        let Some((name, entry)) = unknown.first() else {
            return Ok(());
        };
        let hint = args
            .iter()
            .map(|a| long(a))
            .min_by_key(|known| strsim::levenshtein(name, known))
            .filter(|known| strsim::levenshtein(name, known) <= 2)
            .map(|known| format!(" (did you mean \"{known}\"?)"))
            .unwrap_or_default();
        Err(SettingsError::Flag(format!(
            "{}:{}: unknown key \"{}\"{hint}; the keys are the long flag names of 'start' (see --help)",
            self.path.display(),
            entry.line,
            entry.key
        )))
    }
}

impl Layers {
    /// Where each setting of the parsed `matches` came from.
    fn origin_of(&self, matches: &ArgMatches, id: &str) -> Option<Origin> {
        if let Some(origin) = self.origins.get(id) {
            return Some(origin.clone());
        }
        match matches.value_source(id)? {
            ValueSource::CommandLine => Some(Origin::CommandLine),
            _ => Some(Origin::Default),
        }
    }

    /// For an error of the full parse (flags that conflict or need each
    /// other), which of the flags it names (in the message or its usage
    /// line) came from the environment or the file, so the user knows where
    /// to look.
    pub(crate) fn note_for(&self, start: &Command, e: &clap::Error) -> Option<String> {
        let named = format!("{} ", e.render());
        let notes: Vec<String> = settings_args(start)
            .filter_map(|arg| {
                let origin = self.origins.get(arg.get_id().as_str())?;
                let flag = format!("--{}", long(arg));
                let mentioned = named.match_indices(&flag).any(|(i, _)| {
                    !named[i + flag.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '-')
                });
                mentioned.then(|| format!("note: {flag} was set by {origin}"))
            })
            .collect();
        (!notes.is_empty()).then(|| notes.join("\n"))
    }
}

/// Whether `arg` names a file (a path value, or a file name hint).
fn names_a_file(arg: &Arg) -> bool {
    arg.get_value_parser().type_id() == std::any::TypeId::of::<PathBuf>()
        || matches!(
            arg.get_value_hint(),
            clap::ValueHint::FilePath | clap::ValueHint::AnyPath
        )
}

/// `--check-config`: checks that every file a setting names can be read,
/// and returns the effective settings as a TOML document (usable as a
/// config file), each with where it came from; secrets are masked.
///
/// # Errors
/// A file named by a setting cannot be opened or is not a regular file.
pub(crate) fn check(
    start: &Command,
    matches: &ArgMatches,
    layers: &Layers,
) -> Result<String, SettingsError> {
    for arg in settings_args(start).filter(|a| names_a_file(a)) {
        let id = arg.get_id().as_str();
        let Some(values) = matches.get_raw(id) else {
            continue;
        };
        for value in values {
            let path = Path::new(value);
            let readable = std::fs::File::open(path).and_then(|f| {
                if f.metadata()?.is_file() {
                    Ok(())
                } else {
                    Err(std::io::Error::other("not a regular file"))
                }
            });
            if let Err(e) = readable {
                let origin = layers.origin_of(matches, id).unwrap_or(Origin::CommandLine);
                let place = match origin {
                    Origin::CommandLine => format!("--{}", long(arg)),
                    other => other.to_string(),
                };
                return Err(SettingsError::File(format!(
                    "{place}: cannot read {}: {e}",
                    path.display()
                )));
            }
        }
    }
    let mut out = String::from(
        "# broadcast-server start: the configuration is valid (nothing was bound).\n\
         # Effective settings (command line > environment > config file > default); secrets masked.\n",
    );
    let _ = writeln!(
        out,
        "# config file: {}\n",
        layers
            .file
            .as_ref()
            .map_or_else(|| "none".to_owned(), |p| p.display().to_string())
    );
    for arg in settings_args(start) {
        let id = arg.get_id().as_str();
        let values: Vec<String> = matches
            .get_raw(id)
            .into_iter()
            .flatten()
            .map(|v| shown(arg, &v.to_string_lossy()))
            .collect();
        let setting = match (kind(arg), values.as_slice()) {
            (Kind::Repeated, vs) => format!(
                "{} = [{}]",
                long(arg),
                vs.iter()
                    .map(|v| toml_value(v))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            (_, []) => format!("# {} (not set)", long(arg)),
            (Kind::Switch, [v, ..]) => format!("{} = {v}", long(arg)),
            (_, [v, ..]) => format!("{} = {}", long(arg), toml_value(v)),
        };
        let from = match layers.origin_of(matches, id) {
            Some(Origin::Env(var)) => format!("environment {var}"),
            Some(Origin::File { path, line, .. }) => format!("{}:{line}", path.display()),
            Some(Origin::CommandLine) => "command line".to_owned(),
            Some(Origin::Default) | None => "default".to_owned(),
        };
        let _ = writeln!(out, "{setting:<44} # {from}");
    }
    Ok(out)
}

/// A value as TOML: a bare integer when it reads back as the same integer,
/// else a string, written by the `toml` crate (which quotes and escapes it).
fn toml_value(v: &str) -> String {
    let value = match v.parse::<i64>() {
        Ok(n) if n.to_string() == v => toml::Value::Integer(n),
        _ => toml::Value::String(v.to_owned()),
    };
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
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
                "environment variable BROADCAST_ECHO: invalid value \"maybe\": expected true or false".to_owned()
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
}
