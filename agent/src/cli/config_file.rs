//! The config file (`--config FILE`, `POD_IDENTITY_CONFIG`): TOML whose keys are the
//! agent's long flag names, so every setting has one name in all three places.
//!
//! ```toml
//! agent-addr4 = "10.0.1.23"
//! cluster-name = "prod"
//! mode = "enforce"
//! max-service-qps = 5
//! token-cross-check = true
//! ```
//!
//! Precedence, highest first: command-line flags, environment variables, the file,
//! defaults. The file becomes `--key=value` arguments placed before the real ones
//! (later arguments win), and a key whose flag's environment variable is set is
//! left out (the environment wins). Unknown keys, wrong types and invalid values
//! are errors naming the key.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Why a config file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("reading the config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid TOML: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: unknown key `{key}`{}", suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default())]
    UnknownKey {
        path: PathBuf,
        key: String,
        suggestion: Option<String>,
    },
    #[error("{path}: key `{key}`: {message}")]
    BadValue {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// Keys that are not settings of the agent.
const NOT_SETTINGS: [&str; 3] = ["config", "help", "version"];

/// The `--config` value in `argv` (`--config FILE` or `--config=FILE`), else the
/// `POD_IDENTITY_CONFIG` environment variable.
pub fn config_path(argv: &[OsString], env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let mut it = argv.iter().skip(1);
    while let Some(a) = it.next() {
        let Some(s) = a.to_str() else { continue };
        if s == "--" {
            break;
        }
        if s == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = s.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    env("POD_IDENTITY_CONFIG").map(PathBuf::from)
}

/// The file's settings as `--key=value` arguments for `cmd` (the agent's command),
/// leaving out keys whose environment variable is set.
pub fn file_args(
    path: &Path,
    cmd: &clap::Command,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<OsString>, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    args_from_text(path, &text, cmd, env)
}

/// [`file_args`] for the file's text.
pub fn args_from_text(
    path: &Path,
    text: &str,
    cmd: &clap::Command,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<OsString>, ConfigFileError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| ConfigFileError::Parse {
        path: path.to_owned(),
        message: e.message().to_owned(),
    })?;
    let settings: Vec<&clap::Arg> = cmd
        .get_arguments()
        .filter(|a| a.get_long().is_some_and(|l| !NOT_SETTINGS.contains(&l)))
        .filter(|a| !a.is_hide_set())
        .collect();
    let mut out = Vec::new();
    for (key, value) in &table {
        let bad = |message: String| ConfigFileError::BadValue {
            path: path.to_owned(),
            key: key.clone(),
            message,
        };
        let Some(arg) = settings.iter().find(|a| a.get_long() == Some(key.as_str())) else {
            return Err(ConfigFileError::UnknownKey {
                path: path.to_owned(),
                key: key.clone(),
                suggestion: closest(key, settings.iter().filter_map(|a| a.get_long())),
            });
        };
        if arg
            .get_env()
            .and_then(|e| e.to_str())
            .is_some_and(|e| env(e).is_some())
        {
            continue;
        }
        let is_switch = matches!(arg.get_action(), clap::ArgAction::SetTrue);
        match value {
            toml::Value::Boolean(b) if is_switch => {
                if *b {
                    out.push(OsString::from(format!("--{key}")));
                }
            }
            _ if is_switch => return Err(bad("must be true or false".into())),
            toml::Value::String(s) => out.push(OsString::from(format!("--{key}={s}"))),
            toml::Value::Integer(i) => out.push(OsString::from(format!("--{key}={i}"))),
            toml::Value::Float(f) => out.push(OsString::from(format!("--{key}={f}"))),
            toml::Value::Boolean(_) => {
                return Err(bad("is not a switch: give a value".into()));
            }
            other => {
                return Err(bad(format!(
                    "must be a string or a number, not {}",
                    other.type_str()
                )))
            }
        }
    }
    Ok(out)
}

/// The setting nearest to a misspelt key (edit distance at most 3).
fn closest<'a>(key: &str, names: impl Iterator<Item = &'a str>) -> Option<String> {
    names
        .map(|n| (distance(key, n), n))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, n)| n.to_owned())
}

/// Levenshtein distance.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests;
