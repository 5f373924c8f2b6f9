//! The config file: TOML read into one value per top-level key, each
//! turned into command-line words for its flag.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Arg;
use toml::de::{DeTable, DeValue};

use super::{kind, long, switch_words, word, Kind, Origin, SettingsError};

/// A config-file value, with what TOML says of its type.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
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
    pub(super) fn words(&self, arg: &Arg, origin: &Origin) -> Result<Vec<String>, SettingsError> {
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
pub(super) struct Entry {
    /// As written (`max_message_size` or `max-message-size`).
    key: String,
    line: usize,
    pub(super) value: Value,
}

/// A parsed config file: its top-level keys, by flag name.
#[derive(Debug)]
pub(super) struct ConfigFile {
    path: PathBuf,
    pub(super) entries: BTreeMap<String, Entry>,
}

impl ConfigFile {
    pub(super) fn read(path: &Path) -> Result<Self, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            SettingsError::File(format!("cannot read config file {}: {e}", path.display()))
        })?;
        Self::parse(path, &text)
    }

    pub(super) fn parse(path: &Path, text: &str) -> Result<Self, SettingsError> {
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let table = DeTable::parse(text).map_err(|e| {
            let line = e.span().map_or(1, |s| line_of(s.start));
            let reason = text
                .lines()
                .nth(line - 1)
                .and_then(unquoted_string_hint)
                .unwrap_or_else(|| format!("invalid TOML: {}", e.message().trim_end()));
            SettingsError::File(format!("{}:{line}: {reason}", path.display()))
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

    pub(super) fn origin(&self, entry: &Entry) -> Origin {
        Origin::File {
            path: self.path.clone(),
            line: entry.line,
            key: entry.key.clone(),
        }
    }

    /// Refuses the first key (by line) that is not a settings flag.
    pub(super) fn check_keys(&self, args: &[&Arg]) -> Result<(), SettingsError> {
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

/// For a line like `host = 127.0.0.1`, which TOML rejects because a string
/// needs quotes, the hint that says so: `strings need quotes: host =
/// "127.0.0.1"`. `None` when quoting would not make the line valid.
fn unquoted_string_hint(line: &str) -> Option<String> {
    let (key, value) = line.split_once('=')?;
    // An unquoted value cannot hold `#`: what follows it is a comment.
    let value = value.split_once('#').map_or(value, |(v, _)| v);
    let (key, value) = (key.trim(), value.trim());
    let quoted = value.starts_with(['"', '\'', '[', '{']);
    if key.is_empty() || value.is_empty() || quoted {
        return None;
    }
    let fixed = format!("{key} = {}", toml::Value::String(value.to_owned()));
    DeTable::parse(&fixed)
        .is_ok()
        .then(|| format!("strings need quotes: {fixed}"))
}
