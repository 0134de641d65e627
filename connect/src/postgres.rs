//! The PostgreSQL sink: upserts the JSON records of its topics into a table.
//!
//! **Mapping.** A record's value is a JSON object; its fields go to the columns of the
//! same names (all the table's columns that the object has, or the configured `columns`),
//! and its key, as text, to `key_column`, the table's primary key (the key wins over a
//! field of that name). PostgreSQL converts each field to its column's type itself: every
//! statement reads its row from `json_populate_record(NULL::table, $1)`, so numbers,
//! strings, booleans, arrays and nested objects (into `json`/`jsonb` columns) land as they
//! would through `INSERT … SELECT` from JSON. A row is written with `INSERT … ON CONFLICT
//! (key_column) DO UPDATE`, so the last record of a key gives the row's final state; a
//! tombstone (a record without a value) deletes the key's row.
//!
//! **At least once, idempotent final state.** The sink consumes as a member of a consumer
//! group and commits by hand: each poll's records are written in transactions of at most
//! `batch_size` records, and the group's offsets are committed only after the last of
//! them committed. A crash or a lost connection between the two replays those records;
//! replaying upserts and deletes in their order gives the same rows, so the table ends as
//! if each record had been applied once. A lost connection (PostgreSQL restarted, a
//! network cut) is retried with backoff (200 ms doubling to 5 s) with the same records,
//! for as long as it takes: nothing is skipped.
//!
//! **Bad records** (a value that is not a JSON object, a missing key, a configured column
//! the object lacks, a field with no column, or a value PostgreSQL refuses for its column
//! type or a constraint) follow `errors_tolerance`, as in Kafka Connect: `none` (the
//! default) stops the connector with an error that names the record: its transaction is
//! rolled back and the group's offsets stay before its poll, so a start after the table or
//! the data is fixed writes it (replaying the poll's records before it, harmlessly); `all`
//! skips it, logging its topic, partition, offset and reason, and counts it.
//! When PostgreSQL refuses a batch, the sink writes it again with a savepoint per record
//! to find the records at fault.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use eventflow::client::backoff::Backoff;
use eventflow::client::consumer::{Consumer, ConsumerRecord};
use eventflow::client::ClientError;
use postgres::{NoTls, Statement};
use serde::Deserialize;

use crate::connector::{Connector, ConnectorContext};
use crate::file_sink::Start;

/// How often progress is logged.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// What to do with a record that cannot be written (Kafka Connect's `errors.tolerance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorTolerance {
    /// Stop the connector, committing nothing of the record's batch (the default).
    #[default]
    None,
    /// Skip the record, logged and counted.
    All,
}

/// `kind = "postgres-sink"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkConfig {
    /// libpq-style connection settings: `host=… port=… user=… dbname=…` or a
    /// `postgresql://` URL.
    pub connection: String,
    /// A file whose first line is the password (kept out of the config file).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The table, `name` or `schema.name`.
    pub table: String,
    /// The primary key column, which gets the record key as text.
    #[serde(default = "default_key_column")]
    pub key_column: String,
    /// The columns written from the object's fields (default: every field, each of which
    /// must name a column).
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// The topics to read.
    pub topics: Vec<String>,
    /// The consumer group (default: the connector's name).
    #[serde(default)]
    pub group: Option<String>,
    /// Where partitions without a committed offset start: `earliest` or `latest`.
    #[serde(default)]
    pub start: Start,
    /// Records per transaction, at most.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// `none` (stop on a bad record) or `all` (skip it, logged and counted).
    #[serde(default)]
    pub errors_tolerance: ErrorTolerance,
    /// The group's session timeout, in ms.
    #[serde(default = "crate::file_sink::default_session_timeout_ms")]
    pub session_timeout_ms: u64,
}

fn default_key_column() -> String {
    "id".into()
}

fn default_batch_size() -> usize {
    500
}

impl PostgresSinkConfig {
    /// Checks the values serde cannot.
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        let connection = self
            .connection
            .parse::<postgres::Config>()
            .map_err(|e| anyhow!("connection: {e}"))?;
        if connection.get_ssl_mode() == postgres::config::SslMode::Require {
            bail!("connection: sslmode=require cannot be met: the sink connects without TLS");
        }
        if self.table.is_empty() || self.table.split('.').count() > 2 {
            bail!("table must be `name` or `schema.name`");
        }
        if self.key_column.is_empty() {
            bail!("key_column must not be empty");
        }
        if let Some(columns) = &self.columns {
            if columns.is_empty() || columns.iter().any(String::is_empty) {
                bail!("columns must name at least one column (leave it out for every field)");
            }
        }
        if self.topics.is_empty() || self.topics.iter().any(String::is_empty) {
            bail!("topics must name at least one topic (and no empty name)");
        }
        if self.group.as_deref() == Some("") {
            bail!("group must not be empty (leave it out for the connector's name)");
        }
        if !(1..=100_000).contains(&self.batch_size) {
            bail!("batch_size must be between 1 and 100000");
        }
        if !(1_000..=300_000).contains(&self.session_timeout_ms) {
            bail!("session_timeout_ms must be between 1000 and 300000");
        }
        Ok(())
    }
}

/// `name` quoted as an SQL identifier.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// One record turned into what the table gets.
#[derive(Debug, PartialEq)]
enum Change {
    /// Insert or update the row: the JSON object (key column included) and its columns,
    /// sorted.
    Upsert { row: String, columns: Vec<String> },
    /// Delete the key's row: a JSON object with only the key column.
    Delete { row: String },
}

/// Why a record cannot be written.
type BadRecord = String;

/// Turns `record` into its change: `columns` are the configured ones, `known` the
/// table's.
fn change_of(
    record: &ConsumerRecord,
    key_column: &str,
    columns: Option<&[String]>,
    known: &[String],
) -> Result<Change, BadRecord> {
    let key = record
        .key
        .as_deref()
        .ok_or("the record has no key (the primary key)")?;
    let key = std::str::from_utf8(key).map_err(|_| "the record's key is not UTF-8 text")?;
    let Some(value) = record.value.as_deref() else {
        let row = serde_json::json!({ key_column: key }).to_string();
        return Ok(Change::Delete { row });
    };
    let object = match serde_json::from_slice::<serde_json::Value>(value) {
        Ok(serde_json::Value::Object(object)) => object,
        Ok(_) => return Err("the value is not a JSON object".into()),
        Err(e) => return Err(format!("the value is not JSON: {e}")),
    };
    let mut row = serde_json::Map::new();
    match columns {
        Some(columns) => {
            for column in columns.iter().filter(|c| *c != key_column) {
                let field = object
                    .get(column)
                    .ok_or_else(|| format!("the object has no field `{column}`"))?;
                row.insert(column.clone(), field.clone());
            }
        }
        None => {
            for (field, v) in object {
                if field == key_column {
                    continue;
                }
                if !known.contains(&field) {
                    return Err(format!("the table has no column `{field}`"));
                }
                row.insert(field, v);
            }
        }
    }
    let mut columns: Vec<String> = row.keys().cloned().collect();
    columns.push(key_column.to_string());
    columns.sort();
    row.insert(key_column.into(), key.into());
    Ok(Change::Upsert {
        row: serde_json::Value::Object(row).to_string(),
        columns,
    })
}

/// How a failed write is taken.
enum WriteError {
    /// The connection broke (or the server is going away): reconnect and write again.
    Connection(postgres::Error),
    /// PostgreSQL refused the data (SQLSTATE class 22 or 23): a record is at fault.
    Data(postgres::Error),
    /// Anything else (a missing table, no unique index on the key, permissions): stop.
    Fatal(anyhow::Error),
}

impl From<postgres::Error> for WriteError {
    fn from(e: postgres::Error) -> WriteError {
        let class = e.code().map(|c| &c.code()[..2]);
        match class {
            // No SQLSTATE: the socket or the protocol failed. 08: connection exception;
            // 57: operator intervention (shutdown, cannot connect now); 53: out of
            // resources; 40: serialization failure or deadlock.
            None | Some("08" | "57" | "53" | "40") => WriteError::Connection(e),
            Some("22" | "23") => WriteError::Data(e),
            Some(_) => WriteError::Fatal(anyhow::Error::new(e)),
        }
    }
}

/// `e` with its cause: the server's message for a database error ("db error" alone says
/// little), the socket's error for a connection that failed.
fn describe(e: &postgres::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// A connection with the statements prepared on it.
struct Session {
    client: postgres::Client,
    /// The table's columns.
    known: Vec<String>,
    /// Upserts by their sorted column list.
    upserts: HashMap<Vec<String>, Statement>,
    delete: Statement,
}

/// The PostgreSQL sink connector.
pub struct PostgresSink {
    config: PostgresSinkConfig,
    /// The table, quoted.
    table: String,
    skipped: u64,
}

impl PostgresSink {
    /// A sink with these settings.
    pub fn new(config: PostgresSinkConfig) -> PostgresSink {
        let table = config
            .table
            .split('.')
            .map(quote)
            .collect::<Vec<_>>()
            .join(".");
        PostgresSink {
            config,
            table,
            skipped: 0,
        }
    }

    /// Connects, reads the table's columns and prepares the delete.
    fn connect(&self) -> Result<Session, WriteError> {
        let config = &self.config;
        let mut pg: postgres::Config = config
            .connection
            .parse()
            .map_err(|e| WriteError::Fatal(anyhow!("connection: {e}")))?;
        if let Some(path) = &config.password_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("password_file: cannot read {}", path.display()))
                .map_err(WriteError::Fatal)?;
            pg.password(text.lines().next().unwrap_or(""));
        }
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(Duration::from_secs(10));
        }
        let mut client = pg.connect(NoTls)?;
        let known: Vec<String> = client
            .query(
                "SELECT attname::text FROM pg_attribute \
                 WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped \
                 ORDER BY attnum",
                &[&self.table],
            )?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let missing: Vec<&String> = std::iter::once(&config.key_column)
            .chain(config.columns.iter().flatten())
            .filter(|c| !known.contains(c))
            .collect();
        if !missing.is_empty() {
            return Err(WriteError::Fatal(anyhow!(
                "table {} has no column {} (it has {})",
                config.table,
                missing
                    .iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                known.join(", ")
            )));
        }
        let key = quote(&config.key_column);
        let delete = client.prepare(&format!(
            "DELETE FROM {table} WHERE {key} = \
             (json_populate_record(NULL::{table}, $1::text::json)).{key}",
            table = self.table
        ))?;
        Ok(Session {
            client,
            known,
            upserts: HashMap::new(),
            delete,
        })
    }

    /// The upsert of rows with these (sorted) columns, prepared once per connection.
    fn upsert<'s>(
        &self,
        session: &'s mut Session,
        columns: &[String],
    ) -> Result<&'s Statement, postgres::Error> {
        if !session.upserts.contains_key(columns) {
            let key = quote(&self.config.key_column);
            let list: Vec<String> = columns.iter().map(|c| quote(c)).collect();
            let updates: Vec<String> = list
                .iter()
                .filter(|c| **c != key)
                .map(|c| format!("{c} = EXCLUDED.{c}"))
                .collect();
            let on_conflict = if updates.is_empty() {
                "DO NOTHING".to_string()
            } else {
                format!("DO UPDATE SET {}", updates.join(", "))
            };
            let sql = format!(
                "INSERT INTO {table} ({list}) SELECT {list} FROM \
                 json_populate_record(NULL::{table}, $1::text::json) \
                 ON CONFLICT ({key}) {on_conflict}",
                table = self.table,
                list = list.join(", "),
            );
            let statement = session.client.prepare(&sql)?;
            session.upserts.insert(columns.to_vec(), statement);
        }
        Ok(&session.upserts[columns])
    }

    /// Applies one change in the open transaction, under a savepoint if one is named.
    fn apply(
        &self,
        session: &mut Session,
        savepoint: Option<&str>,
        change: &Change,
    ) -> Result<(), postgres::Error> {
        let (statement, row) = match change {
            Change::Upsert { row, columns } => (self.upsert(session, columns)?.clone(), row),
            Change::Delete { row } => (session.delete.clone(), row),
        };
        if let Some(name) = savepoint {
            session.client.batch_execute(&format!("SAVEPOINT {name}"))?;
        }
        let result = session.client.execute(&statement, &[row]);
        if let Some(name) = savepoint {
            let finish = match result {
                Ok(_) => format!("RELEASE SAVEPOINT {name}"),
                Err(_) => format!("ROLLBACK TO SAVEPOINT {name}"),
            };
            session.client.batch_execute(&finish)?;
        }
        result.map(drop)
    }

    /// Writes `records` in one transaction. Bad records stop the connector, or (with
    /// `errors_tolerance = all`) are skipped; `careful` writes each record under a
    /// savepoint so that PostgreSQL's refusal of one is pinned on it.
    fn write_batch(
        &mut self,
        ctx: &ConnectorContext,
        session: &mut Session,
        records: &[ConsumerRecord],
        careful: bool,
    ) -> Result<(), WriteError> {
        let config = &self.config;
        let mut skipped = Vec::new();
        session.client.batch_execute("BEGIN")?;
        let result = (|| {
            for record in records {
                let at = || {
                    format!(
                        "record {}/{} offset {}",
                        record.topic, record.partition, record.offset
                    )
                };
                let change = change_of(
                    record,
                    &config.key_column,
                    config.columns.as_deref(),
                    &session.known,
                );
                let change = match change {
                    Ok(change) => change,
                    Err(why) => {
                        skipped.push(format!("{}: {why}", at()));
                        continue;
                    }
                };
                let savepoint = careful.then_some("record");
                if let Err(e) = self.apply(session, savepoint, &change) {
                    match WriteError::from(e) {
                        WriteError::Data(e) if careful => {
                            skipped.push(format!(
                                "{}: PostgreSQL refused it: {}",
                                at(),
                                describe(&e)
                            ));
                        }
                        other => return Err(other),
                    }
                }
            }
            if !skipped.is_empty() && config.errors_tolerance == ErrorTolerance::None {
                return Err(WriteError::Fatal(anyhow!(
                    "{} (errors_tolerance = none: the sink stops; fix the table or the \
                     data, or set errors_tolerance = \"all\" to skip such records)",
                    skipped[0]
                )));
            }
            session.client.batch_execute("COMMIT")?;
            Ok(())
        })();
        if result.is_err() {
            // A broken connection needs no rollback (the server drops the transaction).
            let _ = session.client.batch_execute("ROLLBACK");
            return result;
        }
        for why in skipped {
            tracing::warn!("{}: skipped {why}", ctx.name);
            self.skipped += 1;
        }
        Ok(())
    }

    /// Writes `records` until they are committed, reconnecting with backoff while the
    /// connection is lost; false if told to stop first.
    fn write(
        &mut self,
        ctx: &ConnectorContext,
        session: &mut Option<Session>,
        records: &[ConsumerRecord],
    ) -> anyhow::Result<bool> {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut careful = false;
        loop {
            let result = match session {
                Some(open) if !open.client.is_closed() => {
                    self.write_batch(ctx, open, records, careful)
                }
                _ => match self.connect() {
                    Ok(open) => {
                        tracing::info!("{}: connected to PostgreSQL", ctx.name);
                        *session = Some(open);
                        continue;
                    }
                    Err(e) => Err(e),
                },
            };
            match result {
                Ok(()) => return Ok(true),
                Err(WriteError::Connection(e)) => {
                    tracing::warn!("{}: PostgreSQL: {}; trying again", ctx.name, describe(&e));
                    *session = None;
                    if !ctx.sleep(backoff.next_delay()) {
                        return Ok(false);
                    }
                }
                Err(WriteError::Data(_)) if !careful => {
                    tracing::info!(
                        "{}: PostgreSQL refused a batch of {}: writing it again record by \
                         record to find the records at fault",
                        ctx.name,
                        records.len()
                    );
                    careful = true;
                }
                Err(WriteError::Data(e)) => {
                    return Err(anyhow::Error::new(e).context("PostgreSQL refused the batch"))
                }
                Err(WriteError::Fatal(e)) => return Err(e),
            }
        }
    }

    /// A consumer that joined `group`, subscribed to the topics.
    fn join(&self, ctx: &ConnectorContext, group: &str) -> Result<Consumer, ClientError> {
        let config = &self.config;
        ctx.join_group(
            group,
            &config.topics,
            config.start,
            config.session_timeout_ms,
        )
    }
}

impl Connector for PostgresSink {
    fn run(&mut self, ctx: &ConnectorContext) -> anyhow::Result<()> {
        let group = self
            .config
            .group
            .clone()
            .unwrap_or_else(|| ctx.name.clone());
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut consumer = loop {
            match self.join(ctx, &group) {
                Ok(consumer) => break consumer,
                Err(e) if e.is_retriable() => {
                    tracing::warn!("{}: cannot join group {group}: {e}; trying again", ctx.name);
                    if !ctx.sleep(backoff.next_delay()) {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e).with_context(|| format!("cannot join group {group}")),
            }
        };
        tracing::info!(
            "{}: upserting {} into table {} (group {group})",
            ctx.name,
            self.config.topics.join(", "),
            self.config.table
        );
        let mut session = None;
        let mut written = 0u64;
        let mut last_report = Instant::now();
        'poll: while !ctx.stopping() {
            let records = match consumer.poll(Duration::from_millis(200)) {
                Ok(records) => records,
                Err(e) if e.is_retriable() => {
                    tracing::warn!("{}: {e}; trying again", ctx.name);
                    ctx.sleep(Duration::from_millis(500));
                    continue;
                }
                Err(e @ ClientError::CorruptBatch { .. }) => {
                    return Err(e).context("a corrupt batch: the sink stops rather than skip it")
                }
                Err(e) => return Err(e.into()),
            };
            for batch in records.chunks(self.config.batch_size) {
                if !self.write(ctx, &mut session, batch)? {
                    break 'poll; // Stopping: the records are read again next time.
                }
                written += batch.len() as u64;
            }
            if !records.is_empty() {
                if let Err(e) = consumer.commit() {
                    // The rows are in: a replay of these records changes nothing.
                    tracing::warn!("{}: cannot commit the group's offsets: {e}", ctx.name);
                }
            }
            if written > 0 && last_report.elapsed() >= REPORT_EVERY {
                tracing::info!(
                    "{}: took {written} records in the last {} s ({} skipped in all)",
                    ctx.name,
                    last_report.elapsed().as_secs(),
                    self.skipped
                );
                written = 0;
                last_report = Instant::now();
            }
        }
        if let Err(e) = consumer.close() {
            tracing::warn!("{}: leaving the group: {e}", ctx.name);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;

    fn record(key: Option<&str>, value: Option<&str>) -> ConsumerRecord {
        ConsumerRecord {
            topic: Arc::from("t"),
            partition: 0,
            offset: 0,
            timestamp: 0,
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
            headers: Vec::new(),
        }
    }

    fn known() -> Vec<String> {
        ["id", "owner", "balance"].map(String::from).into()
    }

    #[test]
    fn objects_become_upserts_and_tombstones_deletes() {
        let upsert = change_of(
            &record(
                Some("7"),
                Some(r#"{"owner": "ann", "balance": 3, "id": 99}"#),
            ),
            "id",
            None,
            &known(),
        )
        .unwrap();
        assert_eq!(
            upsert,
            Change::Upsert {
                row: r#"{"balance":3,"id":"7","owner":"ann"}"#.into(),
                columns: ["balance", "id", "owner"].map(String::from).into(),
            }
        );
        let configured = ["owner".to_string()];
        let only_owner = change_of(
            &record(Some("7"), Some(r#"{"owner": "ann", "balance": 3}"#)),
            "id",
            Some(&configured),
            &known(),
        )
        .unwrap();
        assert_eq!(
            only_owner,
            Change::Upsert {
                row: r#"{"id":"7","owner":"ann"}"#.into(),
                columns: ["id", "owner"].map(String::from).into(),
            }
        );
        assert_eq!(
            change_of(&record(Some("7"), None), "id", None, &known()).unwrap(),
            Change::Delete {
                row: r#"{"id":"7"}"#.into()
            }
        );
    }

    #[test]
    fn bad_records_say_why() {
        let why = |key: Option<&str>, value: Option<&str>, columns: Option<&[String]>| {
            change_of(&record(key, value), "id", columns, &known()).unwrap_err()
        };
        assert!(why(Some("1"), Some("[1]"), None).contains("not a JSON object"));
        assert!(why(Some("1"), Some("{"), None).contains("not JSON"));
        assert!(why(None, Some("{}"), None).contains("no key"));
        assert!(why(Some("1"), Some(r#"{"x": 1}"#), None).contains("no column `x`"));
        let columns = ["balance".to_string()];
        assert!(why(Some("1"), Some("{}"), Some(&columns)).contains("no field `balance`"));
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
        let config: PostgresSinkConfig = toml::from_str(
            r#"
            connection = "host=localhost"
            table = "shop.Accounts"
            topics = ["t"]
            "#,
        )
        .unwrap();
        config.check().unwrap();
        assert_eq!(PostgresSink::new(config).table, "\"shop\".\"Accounts\"");
        let tls: PostgresSinkConfig = toml::from_str(
            r#"
            connection = "host=db sslmode=require"
            table = "t"
            topics = ["t"]
            "#,
        )
        .unwrap();
        assert!(tls.check().unwrap_err().to_string().contains("without TLS"));
    }
}
