//! Eventflow: a single-node, log-based message broker with Kafka's data model, built
//! thread-per-core on io_uring.
//!
//! The modules follow the data path and depend on each other in one direction only:
//! `protocol` ← `storage` ← `shard` ← `server`; the `client` depends on `protocol` alone.
//!
//! - [`protocol`]: frames, API messages, error codes and the RecordBatch v2 format. Pure and
//!   sans-I/O: bytes in, values or bytes out.
//! - [`storage`]: the segmented partition log, its indexes, recovery and retention, and the
//!   durable topic catalog.
//! - [`shard`]: pinned per-core threads, partition ownership and the inter-shard rings.
//! - [`server`]: listeners, connections and request dispatch on each shard.
//! - [`metrics`]: per-shard counters and histograms, and their Prometheus exposition.
//! - [`http`]: the HTTP listener (`/metrics`), on a thread of its own, off the shards.
//! - `fasthash`: the FNV hasher of small maps looked up per record or request (client and
//!   metrics).
//! - [`local`]: oneshot and notify primitives for tasks of one shard.
//! - [`http_api`]: the HTTP API and web console, a client of the broker's native listener
//!   on a thread of its own.
//! - [`auth`]: the SASL mechanisms (PLAIN, SCRAM-SHA-256/512), shared by broker and client.
//! - [`client`]: the client library — admin, producer, consumer — and what the `eventflow`
//!   CLI is built on.
//! - [`streams`]: stream processing from topics to topics with state (Kafka Streams' model),
//!   a library over the client.
//!
//! The broker modules (`config`, `http_api`, `local`, `storage`, `shard`, `server`) need the `server`
//! feature, on by default; without it the crate is the client library alone, with no
//! io_uring runtime or storage engine.

// The workspace sets the other lints (Cargo.toml); the library documents its whole API.
#![warn(missing_docs)]

pub mod auth;
pub mod client;
#[cfg(feature = "server")]
pub mod config;
mod fasthash;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "server")]
pub mod groups;
#[cfg(feature = "server")]
pub mod http;
#[cfg(feature = "server")]
pub mod http_api;
#[cfg(feature = "server")]
pub mod local;
#[cfg(feature = "server")]
pub mod metrics;
pub mod protocol;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod shard;
#[cfg(feature = "server")]
pub mod storage;
pub mod streams;
pub mod tls;
