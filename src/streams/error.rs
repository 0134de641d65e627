//! The one error type of a streams application.

use crate::client::ClientError;

use super::serde::SerdeError;

/// Why a streams application stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum StreamsError {
    /// A call to the broker failed.
    #[error("{context}: {source}")]
    Client {
        /// What the application was doing.
        context: String,
        /// The client's error.
        #[source]
        source: ClientError,
    },
    /// A record's key or value did not decode: the application stops before committing
    /// past it, so nothing is lost (fix the data or the types and start again).
    #[error("cannot decode the {what} of {at}: {source}")]
    Decode {
        /// `key` or `value`.
        what: &'static str,
        /// The record (`topic/partition@offset`) or store entry.
        at: String,
        /// Why.
        #[source]
        source: SerdeError,
    },
    /// The topology or the topics do not fit together (partition counts, co-partitioning,
    /// names).
    #[error("invalid topology: {0}")]
    Topology(String),
    /// A changelog record or a repartition record's origin header does not parse: the
    /// instance stops rather than build state from it.
    #[error("damaged internal record: {0}")]
    Corrupt(String),
    /// A record could not be written (output, repartition or changelog): the consumed
    /// offsets are not committed, and the records are processed again after a restart.
    #[error("writing to {topic}: {source}")]
    Produce {
        /// The topic written to.
        topic: String,
        /// The client's error.
        #[source]
        source: ClientError,
    },
    /// The application's thread could not be spawned or ended abnormally.
    #[error("streams thread: {0}")]
    Thread(String),
}

impl StreamsError {
    /// A client error with what the application was doing.
    pub(crate) fn client(context: impl Into<String>) -> impl FnOnce(ClientError) -> StreamsError {
        let context = context.into();
        move |source| StreamsError::Client { context, source }
    }
}
