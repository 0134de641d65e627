//! The wire and disk formats, free of I/O: frames, API messages, error codes and Kafka's
//! RecordBatch v2. Everything here takes bytes and returns values (or the reverse), so it is
//! unit-tested, property-tested and fuzzed without a socket or a runtime.

pub mod api;
pub mod batch;
pub mod error;
pub mod frame;
pub mod group;
#[cfg(feature = "server")]
pub mod kafka;
pub mod message;

pub use error::{ErrorCode, WireError};
