//! `--check-config`: the effective settings, shown as a TOML document with
//! where each came from, secrets masked.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::{Arg, ArgMatches, Command};

use super::{is_secret, kind, long, settings_args, Kind, Layers, Origin, SettingsError, MASK};

/// A value as it may be shown: secrets masked, and the password of a URL
/// such as `redis://:pw@host` too.
pub(super) fn shown(arg: &Arg, value: &str) -> String {
    if is_secret(arg) && !value.is_empty() {
        return MASK.to_owned();
    }
    server::mask_url_password(value, MASK)
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
pub(super) fn toml_value(v: &str) -> String {
    let value = match v.parse::<i64>() {
        Ok(n) if n.to_string() == v => toml::Value::Integer(n),
        _ => toml::Value::String(v.to_owned()),
    };
    value.to_string()
}
