//! What the runner drives: a [`Connector`] runs on its own thread until it is told to
//! stop or fails, with a [`ConnectorContext`] that gives it its name, the broker's
//! settings, its state file and the stop signal.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventflow::client::consumer::Consumer;
use eventflow::client::group::{GroupConfig, OffsetReset};
use eventflow::client::ClientError;

use crate::config::BrokerSettings;
use crate::file_sink::Start;

/// One connector: copies data between the broker and the world until told to stop.
pub trait Connector: Send {
    /// Runs until [`ConnectorContext::stopping`] (then leaves everything it acknowledged
    /// durable and returns `Ok`) or until an error it cannot get past (returned; the
    /// runner reports the connector FAILED). Broker outages are not such errors: a
    /// connector waits them out.
    fn run(&mut self, ctx: &ConnectorContext) -> anyhow::Result<()>;
}

/// A connector's view of the runner.
#[derive(Debug, Clone)]
pub struct ConnectorContext {
    /// The connector's name.
    pub name: String,
    /// How to reach the broker.
    pub broker: BrokerSettings,
    /// The runner's state directory (locked by this runner).
    pub state_dir: PathBuf,
    stop: Arc<AtomicBool>,
}

impl ConnectorContext {
    /// A context whose connector stops once `stop` is set.
    pub fn new(
        name: String,
        broker: BrokerSettings,
        state_dir: PathBuf,
        stop: Arc<AtomicBool>,
    ) -> ConnectorContext {
        ConnectorContext {
            name,
            broker,
            state_dir,
            stop,
        }
    }

    /// The runner asked connectors to stop.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Sleeps `pause`, waking early when asked to stop; false if stopping.
    pub fn sleep(&self, pause: Duration) -> bool {
        let until = Instant::now() + pause;
        while !self.stopping() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
        false
    }

    /// A group consumer that joined `group` and subscribed to `topics`, with manual commits,
    /// partitions without a committed offset starting at `start`, and heartbeats at a fifth
    /// of the session timeout (at least every 100 ms): the sinks' way in.
    pub fn join_group(
        &self,
        group: &str,
        topics: &[String],
        start: Start,
        session_timeout_ms: u64,
    ) -> Result<Consumer, ClientError> {
        let mut consumer = Consumer::new(self.broker.consumer())?;
        let session = Duration::from_millis(session_timeout_ms);
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        let group_config = GroupConfig {
            session_timeout: session,
            heartbeat_interval: (session / 5).max(Duration::from_millis(100)),
            auto_commit: None,
            reset: match start {
                Start::Earliest => OffsetReset::Earliest,
                Start::Latest => OffsetReset::Latest,
            },
            client_id: "eventflow-connect".into(),
            ..GroupConfig::default()
        };
        consumer.subscribe(group, &topics, group_config)?;
        Ok(consumer)
    }

    /// The connector's state file: `<state_dir>/<name>.<suffix>`.
    pub fn state_file(&self, suffix: &str) -> PathBuf {
        self.state_dir.join(format!("{}.{suffix}", self.name))
    }
}
