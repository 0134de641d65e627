//! `eventflow-connect`: moves data between Eventflow topics and files, PostgreSQL tables
//! or other Kafka-protocol clusters without writing a client, like Kafka Connect's
//! standalone mode.
//!
//! The [`runner`] reads a [`config`] file and runs each of its connectors on its own
//! thread through the [`connector::Connector`] trait. A connector kind is one module with
//! its settings type and its `Connector` ([`file_source`], [`file_sink`], [`postgres`],
//! [`mirror`]), one variant of [`config::ConnectorSettings`], and its arms in that enum's
//! `parse` and `build`.
//!
//! This is its own crate so that connectors may bring heavy dependencies (database
//! drivers, librdkafka) that the broker never links: it uses only the client library of
//! `eventflow` (`default-features = false`). docs/CONNECT.md describes the config and what
//! each connector guarantees.

pub mod config;
pub mod connector;
pub mod file_sink;
pub mod file_source;
pub mod mirror;
pub mod postgres;
pub mod runner;
mod state_file;
