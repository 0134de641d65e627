//! Stream processing from topics to topics, with state: the client-side library that
//! Kafka users know as Kafka Streams, built on this crate's client (group consumer,
//! producer, admin calls). Nothing of it runs in the broker.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use eventflow::streams::{Streams, StreamsConfig};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let mut config = StreamsConfig::new("word-count", "127.0.0.1:9292");
//!     config.stop_when_idle = Some(Duration::from_secs(5));
//!     let app = Streams::start(config, |builder| {
//!         builder
//!             .stream::<String, String>(&["lines"])
//!             .flat_map(|_, line| {
//!                 line.split_whitespace()
//!                     .map(|w| (w.to_lowercase(), String::new()))
//!                     .collect::<Vec<_>>()
//!             })
//!             .group_by_key()
//!             .count("counts")
//!             .to("word-counts");
//!     })?;
//!     app.wait()?;
//!     Ok(())
//! }
//! ```
//!
//! The pieces, in the order a record meets them:
//! - [`dsl`]: the builder and the typed streams, grouped streams and tables.
//! - [`serde`]: how keys and values become bytes (decimal numbers, UTF-8, JSON).
//! - [`topology`]: what a built topology is at run time: entry points per topic, internal
//!   topics, stores, the records one input record causes.
//! - `store`: per-partition state, its changelog format and the marks that keep a replayed
//!   record from being applied twice.
//! - [`window`]: tumbling, hopping and session windows, grace period, windowed keys.
//! - [`runtime`]: the instance thread: group membership, at-least-once loop, restores.
//! - [`driver`]: the same topology in memory, for tests.
//!
//! docs/STREAMS.md describes the guarantees under crashes and rebalances.

pub mod driver;
pub mod dsl;
pub mod error;
pub mod runtime;
pub mod serde;
pub(crate) mod store;
pub mod topology;
pub mod window;

pub use driver::TestDriver;
pub use dsl::{
    KGroupedStream, KStream, KTable, Predicate, SessionWindowedStream, StreamsBuilder, Table,
    WindowedStream,
};
pub use error::StreamsError;
pub use runtime::{Streams, StreamsConfig, StreamsStats};
pub use serde::{Data, Serde, SerdeError};
pub use window::{SessionWindowed, SessionWindows, TimeWindows, Windowed};
