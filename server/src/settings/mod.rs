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
//!
//! Files: `file` (the TOML layer), `check` (`--check-config` and masking),
//! this module (the environment layer, precedence, per-value checks).
//!
//! **Why not clap's `env` or `figment`** (weighed for the restructuring):
//! - clap's `env` (even added to every argument at run time with
//!   `Command::mut_args`) would replace only the environment layer, about 30
//!   lines: the file layer needs these words anyway. Its errors name the
//!   flag, not the variable (`invalid value '-1' for '--max-connections'`),
//!   so a user who set `BROADCAST_MAX_CONNECTIONS=-1` is not told where to
//!   look.
//! - `figment` needs a serde struct beside the clap one (every setting
//!   declared twice, or clap's defaults and serde's fighting), and checks a
//!   file's values with serde instead of the flag's own parser: file and
//!   flag would disagree on what `host` or `rate_limit_action` accept, and
//!   the "possible values" hints would be lost.
//!
//! So the settings stay defined once, by clap; this module is the adapter.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

/// An environment variable is this prefix plus the flag in upper snake case.
const ENV_PREFIX: &str = "BROADCAST_";
/// The variable naming the config file when `--config` is not given.
pub(crate) const CONFIG_ENV: &str = "BROADCAST_CONFIG";
/// Ids of the `start` arguments that choose where settings come from and
/// what to do with them, rather than being settings themselves.
const NOT_SETTINGS: [&str; 2] = ["config", "check_config"];
/// Words in a flag name that mark its value as a secret, masked when shown.
const SECRET_WORDS: [&str; 4] = ["token", "secret", "password", "api-key"];
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
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SettingsError {
    /// A key or value is wrong: shown with the usage.
    #[error("{0}")]
    Flag(String),
    /// The file cannot be read, is not TOML, or names a file that cannot be
    /// read: one line.
    #[error("{0}")]
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

mod check;
mod file;

pub(crate) use check::check;
use check::shown;
use file::ConfigFile;

#[cfg(test)]
mod tests;
