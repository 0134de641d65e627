//! The runner's config file (TOML): how to reach the broker, where the runner keeps its
//! state, and one `[[connector]]` table per connector.
//!
//! Every table refuses keys it does not know, and every error names the connector and the
//! key, so a typo is an error at start-up rather than a setting silently left at its
//! default. A connector table's `kind` picks the settings type its other keys are read
//! into (one type per kind, in the kind's module); adding a kind is one variant of
//! [`ConnectorSettings`] and its arms in `parse`, `build` and `kind`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use eventflow::auth::Mechanism;
use eventflow::client::consumer::ConsumerConfig;
use eventflow::client::producer::ProducerConfig;
use eventflow::client::{Client, ClientError, ClientTls, Credentials};
use serde::Deserialize;

use crate::connector::Connector;
use crate::{file_sink, file_source, mirror, postgres};

/// The file as written: the runner's keys, and the connector tables still raw (their
/// keys depend on their kind).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    bootstrap: Option<String>,
    #[serde(default = "default_request_timeout_ms")]
    request_timeout_ms: u64,
    state_dir: PathBuf,
    sasl_user: Option<String>,
    sasl_mechanism: Option<String>,
    sasl_password_file: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    #[serde(default)]
    connector: Vec<toml::Table>,
}

fn default_request_timeout_ms() -> u64 {
    30_000
}

/// A checked config: the broker's settings, the state directory, the connectors.
#[derive(Debug)]
pub struct RunnerConfig {
    /// How every connector reaches the broker.
    pub broker: BrokerSettings,
    /// Where the runner keeps its lock and each connector its state file.
    pub state_dir: PathBuf,
    /// The connectors, in the file's order.
    pub connectors: Vec<ConnectorConfig>,
}

/// One `[[connector]]` table.
#[derive(Debug)]
pub struct ConnectorConfig {
    /// Its name: in logs, in its state file's name, and the sink's default group.
    pub name: String,
    /// Its kind and the kind's settings.
    pub settings: ConnectorSettings,
}

/// The connector kinds and their settings.
#[derive(Debug)]
pub enum ConnectorSettings {
    /// `kind = "file-source"`.
    FileSource(file_source::FileSourceConfig),
    /// `kind = "file-sink"`.
    FileSink(file_sink::FileSinkConfig),
    /// `kind = "postgres-sink"`.
    PostgresSink(postgres::PostgresSinkConfig),
    /// `kind = "mirror"`.
    Mirror(mirror::MirrorConfig),
}

/// The kinds a `kind` key may name, for the error that names an unknown one.
pub const KINDS: &str = "file-source, file-sink, postgres-sink, mirror";

impl ConnectorSettings {
    /// Reads `table` (the connector's keys but `name` and `kind`) as the settings of
    /// `kind`, and checks their values.
    fn parse(kind: &str, table: toml::Table) -> anyhow::Result<ConnectorSettings> {
        fn read<T: serde::de::DeserializeOwned>(table: toml::Table) -> anyhow::Result<T> {
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                // Unknown and missing keys are named by the message, bad values by the path.
                let key = e.path().to_string();
                let message = e.inner().message();
                if key == "." || message.contains(&format!("`{key}`")) {
                    anyhow!("{message}")
                } else {
                    anyhow!("{key}: {message}")
                }
            })
        }
        Ok(match kind {
            "file-source" => {
                let config: file_source::FileSourceConfig = read(table)?;
                config.check()?;
                ConnectorSettings::FileSource(config)
            }
            "file-sink" => {
                let config: file_sink::FileSinkConfig = read(table)?;
                config.check()?;
                ConnectorSettings::FileSink(config)
            }
            "postgres-sink" => {
                let config: postgres::PostgresSinkConfig = read(table)?;
                config.check()?;
                ConnectorSettings::PostgresSink(config)
            }
            "mirror" => {
                let config: mirror::MirrorConfig = read(table)?;
                config.check()?;
                ConnectorSettings::Mirror(config)
            }
            other => bail!("unknown kind `{other}` (known: {KINDS})"),
        })
    }

    /// The connector these settings describe, ready to run.
    pub fn build(&self) -> Box<dyn Connector> {
        match self {
            ConnectorSettings::FileSource(c) => Box::new(file_source::FileSource::new(c.clone())),
            ConnectorSettings::FileSink(c) => Box::new(file_sink::FileSink::new(c.clone())),
            ConnectorSettings::PostgresSink(c) => Box::new(postgres::PostgresSink::new(c.clone())),
            ConnectorSettings::Mirror(c) => Box::new(mirror::Mirror::new(c.clone())),
        }
    }

    /// The kind's name, as `kind` spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectorSettings::FileSource(_) => "file-source",
            ConnectorSettings::FileSink(_) => "file-sink",
            ConnectorSettings::PostgresSink(_) => "postgres-sink",
            ConnectorSettings::Mirror(_) => "mirror",
        }
    }
}

/// How connectors reach the broker: the address, the request timeout, and the login and
/// TLS of the `eventflow` CLI (the same environment variables when the file leaves them
/// out).
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// Any broker address.
    pub bootstrap: String,
    /// How long connecting and each request may take.
    pub request_timeout: Duration,
    /// Who to log in as (`None`: anonymous).
    pub credentials: Option<Credentials>,
    /// TLS (`None`: plaintext).
    pub tls: Option<ClientTls>,
}

impl BrokerSettings {
    /// An admin connection.
    pub fn client(&self) -> Result<Client, ClientError> {
        Client::connect_secure(
            self.bootstrap.as_str(),
            self.request_timeout,
            self.credentials.as_ref(),
            self.tls.as_ref(),
        )
    }

    /// A producer's settings, with the library's defaults otherwise.
    pub fn producer(&self) -> ProducerConfig {
        ProducerConfig {
            bootstrap: self.bootstrap.clone(),
            request_timeout: self.request_timeout,
            credentials: self.credentials.clone(),
            tls: self.tls.clone(),
            ..ProducerConfig::default()
        }
    }

    /// A consumer's settings, with the library's defaults otherwise.
    pub fn consumer(&self) -> ConsumerConfig {
        ConsumerConfig {
            bootstrap: self.bootstrap.clone(),
            request_timeout: self.request_timeout,
            credentials: self.credentials.clone(),
            tls: self.tls.clone(),
            ..ConsumerConfig::default()
        }
    }
}

impl RunnerConfig {
    /// Reads and checks the config file at `path`.
    pub fn load(path: &Path) -> anyhow::Result<RunnerConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        RunnerConfig::parse(&text, &|var| std::env::var(var).ok())
            .with_context(|| format!("config file {}", path.display()))
    }

    /// Checks the config `text`; `env` gives the environment variables that stand in for
    /// keys the file leaves out (EVENTFLOW_BOOTSTRAP, EVENTFLOW_SASL_USER, ...).
    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<RunnerConfig> {
        // The parser's message quotes the line and marks the column.
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| anyhow!("{}", e.to_string().trim_end()))?;
        if raw.request_timeout_ms == 0 {
            bail!("request_timeout_ms must be at least 1");
        }
        let broker = BrokerSettings {
            bootstrap: raw
                .bootstrap
                .clone()
                .or_else(|| env("EVENTFLOW_BOOTSTRAP"))
                .unwrap_or_else(|| "127.0.0.1:9292".into()),
            request_timeout: Duration::from_millis(raw.request_timeout_ms),
            credentials: credentials(&raw, env)?,
            tls: tls(&raw, env)?,
        };
        if raw.connector.is_empty() {
            bail!("no [[connector]] table: nothing to run");
        }
        let mut names = HashSet::new();
        let mut connectors = Vec::with_capacity(raw.connector.len());
        for (i, mut table) in raw.connector.into_iter().enumerate() {
            let name = match table.remove("name") {
                Some(toml::Value::String(name)) => name,
                Some(_) => bail!("[[connector]] number {}: `name` must be a string", i + 1),
                None => bail!("[[connector]] number {}: missing key `name`", i + 1),
            };
            check_name(&name).with_context(|| format!("connector `{name}`"))?;
            if !names.insert(name.clone()) {
                bail!("two connectors are named `{name}`: names must be unique");
            }
            let kind = match table.remove("kind") {
                Some(toml::Value::String(kind)) => kind,
                Some(_) => bail!("connector `{name}`: `kind` must be a string ({KINDS})"),
                None => bail!("connector `{name}`: missing key `kind` ({KINDS})"),
            };
            let settings = ConnectorSettings::parse(&kind, table)
                .with_context(|| format!("connector `{name}` (kind {kind})"))?;
            connectors.push(ConnectorConfig { name, settings });
        }
        Ok(RunnerConfig {
            broker,
            state_dir: raw.state_dir,
            connectors,
        })
    }
}

/// A connector's name becomes part of file names: letters, digits, `.`, `_` and `-`.
fn check_name(name: &str) -> anyhow::Result<()> {
    let fits = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.starts_with('.') || !name.chars().all(fits) {
        bail!("the name must be letters, digits, `.`, `_` or `-` (and not start with `.`)");
    }
    Ok(())
}

/// The login from `sasl_user` (or EVENTFLOW_SASL_USER), its mechanism, and the password
/// from `sasl_password_file` or EVENTFLOW_SASL_PASSWORD (never from the config file).
fn credentials(
    raw: &RawConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Option<Credentials>> {
    let Some(user) = raw.sasl_user.clone().or_else(|| env("EVENTFLOW_SASL_USER")) else {
        return Ok(None);
    };
    let mechanism: Mechanism = raw
        .sasl_mechanism
        .clone()
        .or_else(|| env("EVENTFLOW_SASL_MECHANISM"))
        .as_deref()
        .unwrap_or("SCRAM-SHA-512")
        .parse()
        .map_err(|e: String| anyhow!("sasl_mechanism: {e}"))?;
    let password = match &raw.sasl_password_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("sasl_password_file: cannot read {}", path.display()))?;
            text.lines().next().unwrap_or("").to_string()
        }
        None => env("EVENTFLOW_SASL_PASSWORD").ok_or_else(|| {
            anyhow!(
                "sasl_user {user} needs a password: set EVENTFLOW_SASL_PASSWORD or \
                 sasl_password_file"
            )
        })?,
    };
    Ok(Some(Credentials {
        mechanism,
        user,
        password,
    }))
}

/// TLS from `tls_ca` (or EVENTFLOW_TLS_CA), with the client certificate of `tls_cert` and
/// `tls_key` (or EVENTFLOW_TLS_CLIENT_CERT and EVENTFLOW_TLS_CLIENT_KEY).
fn tls(raw: &RawConfig, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Option<ClientTls>> {
    let path =
        |key: &Option<PathBuf>, var: &str| key.clone().or_else(|| env(var).map(PathBuf::from));
    let cert = path(&raw.tls_cert, "EVENTFLOW_TLS_CLIENT_CERT");
    let key = path(&raw.tls_key, "EVENTFLOW_TLS_CLIENT_KEY");
    let Some(ca) = path(&raw.tls_ca, "EVENTFLOW_TLS_CA") else {
        if cert.is_some() || key.is_some() {
            bail!("tls_cert and tls_key need tls_ca (the CA that signed the broker's certificate)");
        }
        return Ok(None);
    };
    let client_cert = match (&cert, &key) {
        (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
        (None, None) => None,
        _ => bail!("tls_cert and tls_key go together"),
    };
    Ok(Some(
        ClientTls::new(&ca, client_cert).map_err(|e| anyhow!("tls_ca: {e}"))?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<RunnerConfig> {
        RunnerConfig::parse(text, &|_| None)
    }

    fn error(text: &str) -> String {
        format!("{:#}", parse(text).unwrap_err())
    }

    const SOURCE: &str = r#"
        state_dir = "/tmp/state"
        [[connector]]
        name = "lines"
        kind = "file-source"
        file = "test.txt"
        topic = "connect-test"
    "#;

    #[test]
    fn reads_a_source_with_defaults() {
        let config = parse(SOURCE).unwrap();
        assert_eq!(config.broker.bootstrap, "127.0.0.1:9292");
        assert_eq!(config.connectors.len(), 1);
        assert_eq!(config.connectors[0].name, "lines");
        assert_eq!(config.connectors[0].settings.kind(), "file-source");
    }

    #[test]
    fn environment_fills_what_the_file_leaves_out() {
        let config = RunnerConfig::parse(SOURCE, &|var| {
            (var == "EVENTFLOW_BOOTSTRAP").then(|| "10.0.0.1:9292".to_string())
        })
        .unwrap();
        assert_eq!(config.broker.bootstrap, "10.0.0.1:9292");
        let missing_password = RunnerConfig::parse(SOURCE, &|var| {
            (var == "EVENTFLOW_SASL_USER").then(|| "alice".to_string())
        })
        .unwrap_err();
        assert!(format!("{missing_password:#}").contains("EVENTFLOW_SASL_PASSWORD"));
    }

    #[test]
    fn errors_name_the_connector_and_the_key() {
        let unknown_key = error(&format!("{SOURCE}\nfiel = \"x\""));
        assert!(
            unknown_key.contains("connector `lines` (kind file-source)"),
            "{unknown_key}"
        );
        assert!(
            unknown_key.contains("unknown field `fiel`"),
            "{unknown_key}"
        );

        let unknown_kind = error(&SOURCE.replace("file-source", "file-soruce"));
        assert!(
            unknown_kind.contains("unknown kind `file-soruce`"),
            "{unknown_kind}"
        );

        let missing = error(&SOURCE.replace("file = \"test.txt\"", ""));
        assert!(missing.contains("missing field `file`"), "{missing}");

        let bad_value = error(&format!("{SOURCE}\nmax_line_bytes = 0"));
        assert!(bad_value.contains("max_line_bytes"), "{bad_value}");
        let bad_type = error(&format!("{SOURCE}\npoll_interval_ms = \"x\""));
        assert!(
            bad_type.contains("poll_interval_ms: invalid type"),
            "{bad_type}"
        );

        let top = error(&format!("statedir = \"x\"\n{SOURCE}"));
        assert!(top.contains("unknown field `statedir`"), "{top}");

        let twice = error(&format!(
            "{SOURCE}{}",
            SOURCE.replace("state_dir = \"/tmp/state\"", "")
        ));
        assert!(
            twice.contains("two connectors are named `lines`"),
            "{twice}"
        );

        let name = error(&SOURCE.replace("\"lines\"", "\"../x\""));
        assert!(name.contains("connector `../x`"), "{name}");
    }
}
