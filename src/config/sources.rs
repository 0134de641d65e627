//! Where each of `eventflowd`'s settings comes from: its flag, an `EVENTFLOW_<KEY>`
//! environment variable, the `--config` TOML file, or its default. They are merged here and
//! nowhere else, in that order of precedence: flag, then environment, then file, then
//! default.
//!
//! The settings are the long flags of the command itself (a [`clap::Command`]), so a flag
//! added to the broker is a key of the file and an environment variable with no code of its
//! own. A key is the flag's name in snake_case (`--max-queued-bytes` is `max_queued_bytes`,
//! the way Redpanda's configuration spells its properties); its variable is the key in upper
//! case after `EVENTFLOW_`. A value from the file or the environment goes through the flag's
//! own parser, so it fails with the flag's own message, prefixed with where it came from.
//! The merged values then become one argument list that the command parses again: what the
//! broker runs with took exactly the path a flag takes.

use std::any::TypeId;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

/// The prefix of every setting's environment variable.
pub const ENV_PREFIX: &str = "EVENTFLOW_";

/// Variables with the prefix that are not settings, and so are not warned about: the
/// `--config` file's path, the storage engine's sync journal (a test hook), the CLI's
/// bootstrap address, login and TLS files, the tests' switch that makes a missing Kafka
/// client a failure, and the bootstrap superuser's password (a secret, never a flag).
pub const OTHER_VARIABLES: &[&str] = &[
    "EVENTFLOW_CONFIG",
    crate::storage::SYNC_JOURNAL_ENV,
    "EVENTFLOW_BOOTSTRAP",
    "EVENTFLOW_SASL_USER",
    "EVENTFLOW_SASL_PASSWORD",
    "EVENTFLOW_SASL_MECHANISM",
    "EVENTFLOW_TLS_CA",
    "EVENTFLOW_TLS_CLIENT_CERT",
    "EVENTFLOW_TLS_CLIENT_KEY",
    "EVENTFLOW_REQUIRE_KAFKA_CLIENTS",
    "EVENTFLOW_BOOTSTRAP_SUPERUSER_PASSWORD",
];

/// Prefixes of variables that are not settings either: the bench harness's.
pub const OTHER_VARIABLE_PREFIXES: &[&str] = &["EVENTFLOW_BENCH_"];

/// How a setting takes its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A flag without a value (`--no-pin`): a boolean in the file, `true`/`false`/`1`/`0`
    /// in the environment.
    Switch,
    /// A flag with one value; `integer` when the flag parses a number (an integer in the
    /// file), else text (a string in the file).
    Value {
        /// Whether the flag's value is a number.
        integer: bool,
    },
    /// A flag given once per value: an array in the file, comma-separated in the
    /// environment.
    List {
        /// Whether each value is a number.
        integer: bool,
    },
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The flag's default (or, for a flag without one, what the broker derives).
    Default,
    /// A key of the `--config` file.
    File {
        /// The file's path as given.
        path: String,
        /// The key's line, from 1.
        line: usize,
    },
    /// An environment variable (its name).
    Env(String),
    /// The command line.
    Flag,
}

impl Origin {
    /// Precedence: the higher wins.
    fn rank(&self) -> u8 {
        match self {
            Origin::Default => 0,
            Origin::File { .. } => 1,
            Origin::Env(_) => 2,
            Origin::Flag => 3,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File { path, line } => write!(f, "{path} line {line}"),
            Origin::Env(var) => f.write_str(var),
            Origin::Flag => f.write_str("flag"),
        }
    }
}

/// One setting and the value it ends up with.
#[derive(Debug, Clone)]
pub struct Setting {
    /// The key in the file: the long flag in snake_case.
    pub key: String,
    /// The long flag, without its dashes.
    pub long: String,
    id: String,
    /// How it takes its value.
    pub kind: Kind,
    /// Where its value came from.
    pub origin: Origin,
    /// Its value as the flag's text: one `true`/`false` for a switch, one per value for a
    /// list; empty for a default the flag does not state (the broker derives it).
    pub values: Vec<String>,
    /// When a setting this one conflicts with came from a source of higher precedence, that
    /// setting's key and origin: this one is then left out.
    pub overridden_by: Option<(String, Origin)>,
}

impl Setting {
    /// The environment variable that sets it.
    pub fn env_var(&self) -> String {
        env_var(&self.key)
    }

    /// Where its value came from, for an error message: the flag for a flag or a default,
    /// else the file's line and key, or the variable.
    pub fn describe(&self) -> String {
        match &self.origin {
            Origin::Default | Origin::Flag => format!("--{}", self.long),
            Origin::File { path, line } => format!("{path} line {line}, key `{}`", self.key),
            Origin::Env(var) => var.clone(),
        }
    }

    /// Whether it asks for something: a switch that is on, or a value not left at its
    /// default.
    fn active(&self) -> bool {
        if self.overridden_by.is_some() {
            return false;
        }
        match self.kind {
            Kind::Switch => self.values.first().is_some_and(|v| v == "true"),
            Kind::Value { .. } | Kind::List { .. } => self.origin != Origin::Default,
        }
    }
}

/// The `--config` file's text and its path as the user gave it.
#[derive(Debug, Clone, Copy)]
pub struct FileText<'a> {
    /// The path, as given (error messages and `--print-config` name it).
    pub path: &'a str,
    /// Its contents.
    pub text: &'a str,
}

/// A variable with the prefix that is no setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownVariable {
    /// Its name.
    pub name: String,
    /// The setting's variable it probably meant, if one is close.
    pub suggestion: Option<String>,
}

/// What went wrong with the file or a variable. Each message names the file's line and key,
/// or the variable.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The file is not TOML.
    #[error("{path} line {line}{key}: TOML syntax error: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// The line the parser stopped at.
        line: usize,
        /// `, key `…`` when that line starts with a key, else empty.
        key: String,
        /// The parser's message.
        message: String,
    },
    /// A key that is no setting.
    #[error(
        "{path} line {line}: unknown key `{key}`{hint}; the keys are eventflowd's long flags \
         in snake_case (eventflowd --help)"
    )]
    UnknownKey {
        /// The file.
        path: String,
        /// The key's line.
        line: usize,
        /// The key.
        key: String,
        /// ` (did you mean `…`?)` or empty.
        hint: String,
    },
    /// A value of the wrong TOML type.
    #[error("{at}: expected {expected}, found {found}")]
    WrongType {
        /// The file's line and key, or the variable.
        at: String,
        /// What the setting takes.
        expected: &'static str,
        /// What was there.
        found: String,
    },
    /// A value the flag's parser refuses (its message), or a switch's variable that is no
    /// boolean.
    #[error("{at}: {message}")]
    BadValue {
        /// The file's line and key, or the variable.
        at: String,
        /// The flag's parser's message.
        message: String,
    },
    /// Two settings that exclude each other, from sources of the same precedence.
    #[error("{first} cannot be used with {second}")]
    Conflict {
        /// One, described.
        first: String,
        /// The other, described.
        second: String,
    },
}

/// Every setting of a command, each with its value and where that came from.
#[derive(Debug, Clone)]
pub struct Layered {
    program: String,
    settings: Vec<Setting>,
    unknown_env: Vec<UnknownVariable>,
}

/// The environment variable of a key.
pub fn env_var(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.to_ascii_uppercase())
}

/// Merges the command line `cli` (parsed by `cmd`), the environment `env` and the
/// `--config` file into one value per setting: the one place where precedence is decided.
/// `not_settings` names the ids of value flags that are not settings (`config` itself,
/// `print_config`); help and version are never settings.
pub fn resolve(
    cmd: &Command,
    cli: &ArgMatches,
    env: impl IntoIterator<Item = (OsString, OsString)>,
    file: Option<FileText<'_>>,
    not_settings: &[&str],
) -> Result<Layered, SourceError> {
    let mut settings = settings_of(cmd, not_settings);
    let env: BTreeMap<String, OsString> = env
        .into_iter()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value)))
        .filter(|(name, _)| name.starts_with(ENV_PREFIX))
        .collect();
    let mut in_file = match file {
        Some(file) => read_file(file, &settings)?,
        None => BTreeMap::new(),
    };
    for setting in &mut settings {
        // Every source's value is read and checked, also one that a source of higher
        // precedence hides: a bad file is refused even when flags override its mistakes.
        let var = setting.env_var();
        let mut candidates = Vec::new();
        if let Some((line, value)) = in_file.remove(&setting.key) {
            let mut candidate = setting.clone();
            candidate.origin = Origin::File {
                path: file.map(|f| f.path.to_string()).unwrap_or_default(),
                line,
            };
            candidate.values = values_from_file(&candidate, &value)?;
            candidates.push(candidate);
        }
        if let Some(raw) = env.get(&var).filter(|v| !v.is_empty()) {
            let raw = raw.to_str().ok_or_else(|| SourceError::BadValue {
                at: var.clone(),
                message: "not valid UTF-8".into(),
            })?;
            let mut candidate = setting.clone();
            candidate.values = values_from_env(setting.kind, &var, raw)?;
            candidate.origin = Origin::Env(var);
            candidates.push(candidate);
        }
        for candidate in &candidates {
            check_with_flag_parser(cmd, candidate)?;
        }
        if cli.value_source(&setting.id) == Some(ValueSource::CommandLine) {
            setting.origin = Origin::Flag;
            setting.values = match setting.kind {
                Kind::Switch => vec!["true".into()],
                Kind::Value { .. } | Kind::List { .. } => cli
                    .get_raw(&setting.id)
                    .into_iter()
                    .flatten()
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect(),
            };
        } else if let Some(winner) = candidates.pop() {
            *setting = winner;
        }
    }
    settle_conflicts(cmd, &mut settings)?;
    let unknown_env = env
        .keys()
        .filter(|name| !settings.iter().any(|s| &s.env_var() == *name))
        .filter(|name| !OTHER_VARIABLES.contains(&name.as_str()))
        .filter(|name| !OTHER_VARIABLE_PREFIXES.iter().any(|p| name.starts_with(p)))
        .map(|name| UnknownVariable {
            name: name.clone(),
            suggestion: nearest_key(&name[ENV_PREFIX.len()..], &settings).map(env_var),
        })
        .collect();
    Ok(Layered {
        program: cmd.get_name().to_string(),
        settings,
        unknown_env,
    })
}

impl Layered {
    /// Every setting, in the command's order.
    pub fn settings(&self) -> &[Setting] {
        &self.settings
    }

    /// The setting with this key.
    pub fn get(&self, key: &str) -> Option<&Setting> {
        self.settings.iter().find(|s| s.key == key)
    }

    /// Variables with the prefix that are neither settings nor one of
    /// [`OTHER_VARIABLES`]: the caller warns about them.
    pub fn unknown_env(&self) -> &[UnknownVariable] {
        &self.unknown_env
    }

    /// The merged settings as a command line, for the command to parse again: every
    /// setting not left at its default, as `--flag=value` (or `--switch`).
    pub fn argv(&self) -> Vec<String> {
        let mut argv = vec![self.program.clone()];
        for s in &self.settings {
            if s.origin == Origin::Default || s.overridden_by.is_some() {
                continue;
            }
            match s.kind {
                Kind::Switch if s.active() => argv.push(format!("--{}", s.long)),
                Kind::Switch => {}
                Kind::Value { .. } | Kind::List { .. } => {
                    argv.extend(s.values.iter().map(|v| format!("--{}={v}", s.long)));
                }
            }
        }
        argv
    }

    /// `message` about the settings `keys`, prefixed with where those that came from the
    /// file or the environment came from (a flag's message already names the flag).
    pub fn blame(&self, keys: &[&str], message: impl fmt::Display) -> String {
        let at: Vec<String> = keys
            .iter()
            .filter_map(|k| self.get(k))
            .filter(|s| matches!(s.origin, Origin::File { .. } | Origin::Env(_)))
            .map(Setting::describe)
            .collect();
        if at.is_empty() {
            message.to_string()
        } else {
            format!("{}: {message}", at.join(", "))
        }
    }

    /// The effective configuration as TOML that [`resolve`] reads back, each value with a
    /// comment saying where it came from. `derived` gives the value the broker derived for
    /// a default its flag does not state (`None`: no value).
    pub fn to_toml(&self, derived: impl Fn(&str) -> Option<String>) -> String {
        let mut out = format!(
            "# {} --print-config: the effective configuration. Each value says where it came \
             from;\n# precedence: flag > environment ({ENV_PREFIX}<KEY>) > --config file > \
             default.\n",
            self.program
        );
        for s in &self.settings {
            let line = if let Some((winner, origin)) = &s.overridden_by {
                format!(
                    "# {} = {}  # from {}, overridden by {winner} from {origin}",
                    s.key,
                    toml_value(s.kind, &s.values),
                    s.origin
                )
            } else if s.values.is_empty() {
                match derived(&s.key) {
                    Some(value) => {
                        format!("{} = {}  # default", s.key, toml_value(s.kind, &[value]))
                    }
                    None => format!("# {} is not set  # default", s.key),
                }
            } else {
                let from = match s.origin {
                    Origin::Default => "default".to_string(),
                    _ => format!("from {}", s.origin),
                };
                format!("{} = {}  # {from}", s.key, toml_value(s.kind, &s.values))
            };
            out.push_str(&line);
            out.push('\n');
        }
        out
    }
}

/// The settings of `cmd`, each at its default.
fn settings_of(cmd: &Command, not_settings: &[&str]) -> Vec<Setting> {
    cmd.get_arguments()
        .filter(|arg| !not_settings.contains(&arg.get_id().as_str()))
        .filter_map(|arg| {
            let long = arg.get_long()?;
            let kind = match arg.get_action() {
                ArgAction::SetTrue => Kind::Switch,
                ArgAction::Set => Kind::Value {
                    integer: is_integer(arg),
                },
                ArgAction::Append => Kind::List {
                    integer: is_integer(arg),
                },
                _ => return None,
            };
            let values = match kind {
                Kind::Switch => vec!["false".to_string()],
                Kind::Value { .. } | Kind::List { .. } => arg
                    .get_default_values()
                    .iter()
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect(),
            };
            Some(Setting {
                key: long.replace('-', "_"),
                long: long.to_string(),
                id: arg.get_id().to_string(),
                kind,
                origin: Origin::Default,
                values,
                overridden_by: None,
            })
        })
        .collect()
}

fn is_integer(arg: &Arg) -> bool {
    let parsed = arg.get_value_parser().type_id();
    [
        TypeId::of::<u8>(),
        TypeId::of::<u16>(),
        TypeId::of::<u32>(),
        TypeId::of::<u64>(),
        TypeId::of::<usize>(),
        TypeId::of::<i8>(),
        TypeId::of::<i16>(),
        TypeId::of::<i32>(),
        TypeId::of::<i64>(),
        TypeId::of::<isize>(),
    ]
    .iter()
    .any(|t| parsed == *t)
}

/// Parses the file into its keys, each with its line; refuses keys that are no setting.
fn read_file(
    file: FileText<'_>,
    settings: &[Setting],
) -> Result<BTreeMap<String, (usize, toml::Value)>, SourceError> {
    let mut table: toml::Table = toml::from_str(file.text).map_err(|e| syntax_error(file, &e))?;
    // The same text once more, for where each key is.
    let spans: BTreeMap<toml::Spanned<String>, serde::de::IgnoredAny> =
        toml::from_str(file.text).map_err(|e| syntax_error(file, &e))?;
    let mut keys: Vec<_> = spans.into_keys().collect();
    keys.sort_by_key(|k| k.span().start);
    let mut out = BTreeMap::new();
    for key in keys {
        let line = line_of(file.text, key.span().start);
        let key = key.into_inner();
        let Some(value) = table.remove(&key) else {
            continue;
        };
        if !settings.iter().any(|s| s.key == key) {
            // A dotted key (`retention.ms = 1`) is a table in TOML: suggest from its path.
            let spelled = match &value {
                toml::Value::Table(t) if t.len() == 1 => {
                    format!("{key}.{}", t.keys().next().map_or("", String::as_str))
                }
                _ => key.clone(),
            };
            let hint = match nearest_key(&spelled, settings) {
                Some(k) => format!(" (did you mean `{k}`?)"),
                None if value.is_table() => " (the file has no sections: every key is at the top \
                                             level)"
                    .to_string(),
                None => String::new(),
            };
            return Err(SourceError::UnknownKey {
                path: file.path.to_string(),
                line,
                key: spelled,
                hint,
            });
        }
        out.insert(key, (line, value));
    }
    Ok(out)
}

fn syntax_error(file: FileText<'_>, e: &toml::de::Error) -> SourceError {
    let start = e.span().map_or(0, |s| s.start);
    let line = line_of(file.text, start);
    let key = file
        .text
        .lines()
        .nth(line - 1)
        .and_then(|l| l.split_once('='))
        .map(|(k, _)| k.trim())
        .filter(|k| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        })
        .map(|k| format!(", key `{k}`"))
        .unwrap_or_default();
    SourceError::Syntax {
        path: file.path.to_string(),
        line,
        key,
        message: e
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// The line (from 1) of byte `at`.
fn line_of(text: &str, at: usize) -> usize {
    text.get(..at).unwrap_or(text).matches('\n').count() + 1
}

fn values_from_env(kind: Kind, var: &str, raw: &str) -> Result<Vec<String>, SourceError> {
    Ok(match kind {
        Kind::Switch => match raw {
            "true" | "1" => vec!["true".into()],
            "false" | "0" => vec!["false".into()],
            _ => {
                return Err(SourceError::BadValue {
                    at: var.to_string(),
                    message: format!("expected true, false, 1 or 0, not `{raw}`"),
                })
            }
        },
        Kind::Value { .. } => vec![raw.to_string()],
        Kind::List { .. } => raw.split(',').map(|v| v.trim().to_string()).collect(),
    })
}

fn values_from_file(setting: &Setting, value: &toml::Value) -> Result<Vec<String>, SourceError> {
    let wrong = |expected| SourceError::WrongType {
        at: setting.describe(),
        expected,
        found: format!("{} {}", article(value.type_str()), value.type_str()),
    };
    let scalar = |v: &toml::Value, integer: bool| match v {
        toml::Value::Integer(i) => Ok(i.to_string()),
        // A number past TOML's 64-bit signed range can only be written as a string.
        toml::Value::String(s) => Ok(s.clone()),
        _ => Err(wrong(if integer { "an integer" } else { "a string" })),
    };
    match setting.kind {
        Kind::Switch => match value {
            toml::Value::Boolean(b) => Ok(vec![b.to_string()]),
            _ => Err(wrong("true or false")),
        },
        Kind::Value { integer } => Ok(vec![scalar(value, integer)?]),
        Kind::List { integer } => match value {
            toml::Value::Array(items) => items.iter().map(|v| scalar(v, integer)).collect(),
            _ => Err(wrong("an array")),
        },
    }
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// Runs each value from the file or the environment through its flag's parser, as if given
/// on the command line alone: the flag's own message on failure.
fn check_with_flag_parser(cmd: &Command, setting: &Setting) -> Result<(), SourceError> {
    if matches!(setting.origin, Origin::Default | Origin::Flag) || setting.kind == Kind::Switch {
        return Ok(());
    }
    for value in &setting.values {
        let argv = [
            cmd.get_name().to_string(),
            format!("--{}={value}", setting.long),
        ];
        if let Err(e) = cmd.clone().try_get_matches_from(argv) {
            return Err(SourceError::BadValue {
                at: setting.describe(),
                message: clap_message(&e),
            });
        }
    }
    Ok(())
}

/// A clap error's message without its `error: ` prefix and usage lines.
pub fn clap_message(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

/// Settings that exclude each other (`--no-kafka`, `--kafka-listen`): the one from the
/// source of higher precedence wins and the other is left out; from sources of the same
/// precedence, they are an error (on the command line, clap already refused them).
fn settle_conflicts(cmd: &Command, settings: &mut [Setting]) -> Result<(), SourceError> {
    for i in 0..settings.len() {
        for j in i + 1..settings.len() {
            if !settings[i].active() || !settings[j].active() {
                continue;
            }
            let conflicts = |a: &Setting, b: &Setting| {
                cmd.get_arguments()
                    .find(|arg| arg.get_id().as_str() == a.id)
                    .is_some_and(|arg| {
                        cmd.get_arg_conflicts_with(arg)
                            .iter()
                            .any(|c| c.get_id().as_str() == b.id)
                    })
            };
            if !conflicts(&settings[i], &settings[j]) && !conflicts(&settings[j], &settings[i]) {
                continue;
            }
            let (winner, loser) = match settings[i].origin.rank().cmp(&settings[j].origin.rank()) {
                std::cmp::Ordering::Equal => {
                    return Err(SourceError::Conflict {
                        first: settings[i].describe(),
                        second: settings[j].describe(),
                    })
                }
                std::cmp::Ordering::Greater => (i, j),
                std::cmp::Ordering::Less => (j, i),
            };
            let by = (
                settings[winner].key.clone(),
                settings[winner].origin.clone(),
            );
            settings[loser].overridden_by = Some(by);
        }
    }
    Ok(())
}

/// A setting's key close to `spelled` (a misspelt key or a variable without its prefix).
fn nearest_key<'a>(spelled: &str, settings: &'a [Setting]) -> Option<&'a str> {
    let normal = spelled.to_ascii_lowercase().replace(['-', '.'], "_");
    settings
        .iter()
        .map(|s| (edit_distance(&normal, &s.key), s.key.as_str()))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| k)
}

/// Levenshtein distance over bytes (keys are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != cb))
                .min(above + 1)
                .min(row[j] + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

/// A value as TOML: a number bare when it is one, text quoted, a list as an array.
fn toml_value(kind: Kind, values: &[String]) -> String {
    let scalar = |v: &String, integer: bool| match v.parse::<i64>() {
        Ok(n) if integer => n.to_string(),
        _ => toml::Value::String(v.clone()).to_string(),
    };
    match kind {
        Kind::Switch => values.first().cloned().unwrap_or_else(|| "false".into()),
        Kind::Value { integer } => values
            .first()
            .map_or_else(String::new, |v| scalar(v, integer)),
        Kind::List { integer } => format!(
            "[{}]",
            values
                .iter()
                .map(|v| scalar(v, integer))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Arg;

    /// A command shaped like the broker's: a switch, a number, a text, a repeated flag and
    /// two flags that exclude each other.
    fn command() -> Command {
        Command::new("broker")
            .arg(Arg::new("config").long("config"))
            .arg(Arg::new("no_pin").long("no-pin").action(ArgAction::SetTrue))
            .arg(
                Arg::new("max_queued_bytes")
                    .long("max-queued-bytes")
                    .value_parser(clap::value_parser!(u64))
                    .default_value("100"),
            )
            .arg(Arg::new("fsync").long("fsync").default_value("always"))
            .arg(
                Arg::new("peer")
                    .long("peer")
                    .action(ArgAction::Append)
                    .value_parser(clap::value_parser!(u16)),
            )
            .arg(Arg::new("kafka_listen").long("kafka-listen"))
            .arg(
                Arg::new("no_kafka")
                    .long("no-kafka")
                    .action(ArgAction::SetTrue)
                    .conflicts_with("kafka_listen"),
            )
    }

    fn layered(
        flags: &[&str],
        env: &[(&str, &str)],
        file: Option<&str>,
    ) -> Result<Layered, SourceError> {
        let cmd = command();
        let mut argv = vec!["broker"];
        argv.extend(flags);
        let cli = cmd.clone().try_get_matches_from(argv).unwrap();
        let env = env
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let file = file.map(|text| FileText {
            path: "broker.toml",
            text,
        });
        resolve(&cmd, &cli, env, file, &["config"])
    }

    fn value(l: &Layered, key: &str) -> (Vec<String>, Origin) {
        let s = l.get(key).unwrap();
        (s.values.clone(), s.origin.clone())
    }

    fn file_at(line: usize) -> Origin {
        Origin::File {
            path: "broker.toml".into(),
            line,
        }
    }

    #[test]
    fn flag_beats_environment_beats_file_beats_default() {
        let file = "fsync = \"never\"\nmax_queued_bytes = 200\nno_pin = true\n";
        let l = layered(&[], &[], Some(file)).unwrap();
        assert_eq!(value(&l, "fsync"), (vec!["never".into()], file_at(1)));
        assert_eq!(
            value(&l, "max_queued_bytes"),
            (vec!["200".into()], file_at(2))
        );
        assert_eq!(value(&l, "no_pin"), (vec!["true".into()], file_at(3)));

        let env = [("EVENTFLOW_FSYNC", "interval=5"), ("EVENTFLOW_NO_PIN", "0")];
        let l = layered(&[], &env, Some(file)).unwrap();
        let from_env = |v: &str| Origin::Env(v.into());
        assert_eq!(
            value(&l, "fsync"),
            (vec!["interval=5".into()], from_env("EVENTFLOW_FSYNC"))
        );
        assert_eq!(
            value(&l, "no_pin"),
            (vec!["false".into()], from_env("EVENTFLOW_NO_PIN"))
        );
        assert_eq!(value(&l, "max_queued_bytes").1, file_at(2));

        let l = layered(&["--fsync", "always"], &env, Some(file)).unwrap();
        assert_eq!(value(&l, "fsync"), (vec!["always".into()], Origin::Flag));
        assert_eq!(
            l.argv(),
            ["broker", "--max-queued-bytes=200", "--fsync=always"]
        );

        let l = layered(&[], &[], None).unwrap();
        assert_eq!(
            value(&l, "max_queued_bytes"),
            (vec!["100".into()], Origin::Default)
        );
        assert_eq!(l.argv(), ["broker"]);
    }

    #[test]
    fn an_empty_variable_is_unset() {
        let l = layered(&[], &[("EVENTFLOW_FSYNC", "")], Some("fsync = \"never\"")).unwrap();
        assert_eq!(value(&l, "fsync").1, file_at(1));
    }

    #[test]
    fn lists_are_arrays_in_the_file_and_commas_in_the_environment() {
        let l = layered(&[], &[], Some("peer = [1, 2]")).unwrap();
        assert_eq!(l.argv(), ["broker", "--peer=1", "--peer=2"]);
        let l = layered(&[], &[("EVENTFLOW_PEER", "3, 4")], None).unwrap();
        assert_eq!(l.argv(), ["broker", "--peer=3", "--peer=4"]);
        let l = layered(&["--peer", "5", "--peer", "6"], &[], Some("peer = [1]")).unwrap();
        assert_eq!(
            value(&l, "peer"),
            (vec!["5".into(), "6".into()], Origin::Flag)
        );
        let e = layered(&[], &[], Some("peer = 1")).unwrap_err().to_string();
        assert_eq!(
            e,
            "broker.toml line 1, key `peer`: expected an array, found an integer"
        );
        let e = layered(&[], &[], Some("peer = [1, 99999]"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("broker.toml line 1, key `peer`: invalid value '99999'"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_carry_the_flags_own_message_and_their_source() {
        let cmd = command();
        let flag_error = cmd
            .try_get_matches_from(["broker", "--max-queued-bytes", "lots"])
            .unwrap_err();
        let flag_message = clap_message(&flag_error);
        assert!(flag_message.contains("invalid digit"), "{flag_message}");
        let e = layered(&[], &[], Some("\nmax_queued_bytes = \"lots\""))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!("broker.toml line 2, key `max_queued_bytes`: {flag_message}")
        );
        let e = layered(&[], &[("EVENTFLOW_MAX_QUEUED_BYTES", "lots")], None)
            .unwrap_err()
            .to_string();
        assert_eq!(e, format!("EVENTFLOW_MAX_QUEUED_BYTES: {flag_message}"));
        // A bad file is refused even where a flag overrides it.
        assert!(layered(
            &["--max-queued-bytes", "5"],
            &[],
            Some("max_queued_bytes = \"lots\"")
        )
        .is_err());
    }

    #[test]
    fn bad_files_name_the_line_and_the_key() {
        let err = |text: &str| layered(&[], &[], Some(text)).unwrap_err().to_string();
        assert_eq!(
            err("fsync = \"never\"\n\nmax_queue_bytes = 1\n"),
            "broker.toml line 3: unknown key `max_queue_bytes` (did you mean \
             `max_queued_bytes`?); the keys are eventflowd's long flags in snake_case \
             (eventflowd --help)"
        );
        assert!(err("max-queued-bytes = 1").contains("did you mean `max_queued_bytes`?"));
        assert!(err("x = 1\nmax.queued.bytes = 1").contains("line 1: unknown key `x`"));
        assert_eq!(
            err("no_pin = \"yes\""),
            "broker.toml line 1, key `no_pin`: expected true or false, found a string"
        );
        assert_eq!(
            err("fsync = \"never\"\nmax_queued_bytes = 1.5"),
            "broker.toml line 2, key `max_queued_bytes`: expected an integer, found a float"
        );
        let syntax = err("fsync = \"never\"\nmax_queued_bytes = = 3\n");
        assert!(
            syntax.starts_with("broker.toml line 2, key `max_queued_bytes`: TOML syntax error"),
            "{syntax}"
        );
        let section = err("[broker]\nfsync = \"never\"");
        assert!(
            section.contains("every key is at the top level"),
            "{section}"
        );
    }

    #[test]
    fn conflicts_go_to_the_higher_source_or_are_refused() {
        let l = layered(
            &["--kafka-listen", "127.0.0.1:1"],
            &[],
            Some("no_kafka = true"),
        )
        .unwrap();
        assert_eq!(
            l.get("no_kafka").unwrap().overridden_by,
            Some(("kafka_listen".into(), Origin::Flag))
        );
        assert_eq!(l.argv(), ["broker", "--kafka-listen=127.0.0.1:1"]);
        let e = layered(
            &[],
            &[],
            Some("no_kafka = true\nkafka_listen = \"127.0.0.1:1\""),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "broker.toml line 2, key `kafka_listen` cannot be used with broker.toml line 1, \
             key `no_kafka`"
        );
        // A switch that is off asks for nothing.
        assert!(layered(
            &[],
            &[],
            Some("no_kafka = false\nkafka_listen = \"127.0.0.1:1\"")
        )
        .is_ok());
    }

    #[test]
    fn unknown_variables_are_reported_but_the_projects_others_are_not() {
        let env = [
            ("EVENTFLOW_MAX_QUEUE_BYTES", "1"),
            ("EVENTFLOW_SYNC_JOURNAL", "/tmp/j"),
            ("EVENTFLOW_REQUIRE_KAFKA_CLIENTS", "1"),
            ("EVENTFLOW_BENCH_NO_TSC", "1"),
            ("EVENTFLOW_BOOTSTRAP", "127.0.0.1:9292"),
            ("EVENTFLOW_CONFIG", "broker.toml"),
            ("OTHER", "1"),
        ];
        let l = layered(&[], &env, None).unwrap();
        assert_eq!(
            l.unknown_env(),
            [UnknownVariable {
                name: "EVENTFLOW_MAX_QUEUE_BYTES".into(),
                suggestion: Some("EVENTFLOW_MAX_QUEUED_BYTES".into()),
            }]
        );
    }

    #[test]
    fn printed_toml_reads_back_to_the_same_values() {
        let file = "fsync = \"interval=5\"\npeer = [1, 2]\nno_kafka = true\n";
        let env = [("EVENTFLOW_MAX_QUEUED_BYTES", "300")];
        let l = layered(&["--no-pin"], &env, Some(file)).unwrap();
        // With no_kafka on, the broker derives no Kafka listener.
        let printed = l.to_toml(|_| None);
        assert!(
            printed.contains("no_pin = true  # from flag\n"),
            "{printed}"
        );
        assert!(printed.contains("max_queued_bytes = 300  # from EVENTFLOW_MAX_QUEUED_BYTES\n"));
        assert!(printed.contains("fsync = \"interval=5\"  # from broker.toml line 1\n"));
        assert!(printed.contains("peer = [1, 2]  # from broker.toml line 2\n"));
        assert!(printed.contains("# kafka_listen is not set  # default\n"));
        let back = layered(&[], &[], Some(&printed)).unwrap();
        for s in l.settings() {
            let again = back.get(&s.key).unwrap();
            if s.values.is_empty() {
                continue;
            }
            assert_eq!(again.values, s.values, "{}", s.key);
        }
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("cores", "cores"), 0);
        assert_eq!(edit_distance("coers", "cores"), 2);
        assert_eq!(edit_distance("max_queue_bytes", "max_queued_bytes"), 1);
    }
}
