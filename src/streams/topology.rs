//! What a built topology is at run time: the processors of each source topic, the
//! internal topics and the stores, and the processing of one consumed record into the
//! records to write.
//!
//! The DSL (`dsl.rs`) wires typed closures into a tree per source topic; this module
//! knows them only as byte-level entry points. Everything a record causes — output records,
//! repartition records, changelog updates — is collected in its `Context` and returned to
//! the caller, which writes them all and waits for their acknowledgements before it commits
//! the input offset (at-least-once: output first, progress second).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use crate::client::consumer::ConsumerRecord;

use super::error::StreamsError;
use super::store::{KeyValueStore, Origin, TableStore};

/// The header that carries a repartitioned record's [`Origin`].
pub(crate) const ORIGIN_HEADER: &[u8] = b"eventflow.streams.origin";

/// A record to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Topic.
    pub topic: Arc<str>,
    /// A fixed partition (changelogs: the store's partition), or `None` for the key's
    /// partition under the default partitioner.
    pub partition: Option<u32>,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes (`None`: a tombstone).
    pub value: Option<Vec<u8>>,
    /// Timestamp, ms: the input record's.
    pub timestamp: i64,
    /// The origin header of a repartition record.
    pub(crate) origin: Option<Vec<u8>>,
}

/// The state of processing one input record.
pub(crate) struct Context {
    /// The input record's partition: the partition of every store it touches.
    pub(crate) partition: u32,
    /// The input topic's partition count.
    pub(crate) partition_count: u32,
    /// Where the input record came from (through a repartition topic: where its ancestor
    /// entered the application).
    origin: Origin,
    /// Records derived so far that reached a stateful step or a repartition topic.
    derived: u64,
    /// What the record caused.
    pub(crate) outputs: Vec<Output>,
    /// Window updates dropped as late.
    pub(crate) late: u64,
    /// `topic/partition@offset` of the input record, for error messages.
    pub(crate) at: String,
}

impl Context {
    /// The origin of the next record that reaches a stateful step or a repartition topic:
    /// the input's origin with this record's place among those derived from it.
    pub(crate) fn next_origin(&mut self) -> Result<Origin, StreamsError> {
        if self.derived > 0xffff || self.origin.seq >> 48 != 0 {
            return Err(StreamsError::Topology(format!(
                "{}: more than 65536 records derived from one input record, or more than \
                 three repartitions in a row (the origin sequence has 64 bits)",
                self.at
            )));
        }
        let seq = (self.origin.seq << 16) | self.derived;
        self.derived += 1;
        Ok(Origin {
            seq,
            ..self.origin.clone()
        })
    }
}

/// The entry point of a source topic: decodes a record and pushes it down the tree.
pub(crate) type SourceProcessor =
    Box<dyn FnMut(&mut Context, &ConsumerRecord) -> Result<(), StreamsError>>;

/// Everything the DSL registered: filled in while building, read by the runtime.
pub(crate) struct Registry {
    pub(crate) application_id: String,
    /// Entry points by source topic (user topics and repartition topics).
    pub(crate) sources: BTreeMap<String, Vec<SourceProcessor>>,
    /// The user's source topics, in the order first named.
    pub(crate) user_topics: Vec<String>,
    pub(crate) repartition_topics: Vec<String>,
    pub(crate) stores: Vec<Rc<RefCell<KeyValueStore>>>,
    pub(crate) tables: Vec<Rc<RefCell<TableStore>>>,
    /// Names used so far (stores and repartitions share the internal topics' namespace).
    names: Vec<String>,
    /// The first mistake made while building, reported when the application starts.
    pub(crate) build_error: Option<StreamsError>,
}

impl Registry {
    pub(crate) fn new(application_id: &str) -> Registry {
        Registry {
            application_id: application_id.to_string(),
            sources: BTreeMap::new(),
            user_topics: Vec::new(),
            repartition_topics: Vec::new(),
            stores: Vec::new(),
            tables: Vec::new(),
            names: Vec::new(),
            build_error: None,
        }
    }

    /// Records a mistake in the topology (the first one is reported at start).
    pub(crate) fn reject(&mut self, error: StreamsError) {
        self.build_error.get_or_insert(error);
    }

    /// Claims `name` for an internal topic; a bad or second use is a build error.
    pub(crate) fn claim(&mut self, name: &str) {
        if let Err(e) = self.check_name(name) {
            self.reject(e);
        }
    }

    fn check_name(&mut self, name: &str) -> Result<(), StreamsError> {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid {
            return Err(StreamsError::Topology(format!(
                "name {name:?}: use letters, digits, '-', '_' and '.' (it names a topic)"
            )));
        }
        if self.names.iter().any(|n| n == name) {
            return Err(StreamsError::Topology(format!(
                "name {name:?} is used twice: every store and repartition needs its own"
            )));
        }
        self.names.push(name.to_string());
        Ok(())
    }

    pub(crate) fn repartition_topic(&self, name: &str) -> String {
        format!("{}-{name}-repartition", self.application_id)
    }

    pub(crate) fn changelog_topic(&self, name: &str) -> String {
        format!("{}-{name}-changelog", self.application_id)
    }

    pub(crate) fn add_source(&mut self, topic: &str, processor: SourceProcessor, user: bool) {
        if user && !self.user_topics.iter().any(|t| t == topic) {
            self.user_topics.push(topic.to_string());
        }
        self.sources
            .entry(topic.to_string())
            .or_default()
            .push(processor);
    }

    /// Every topic the application consumes through its group.
    pub(crate) fn subscribed_topics(&self) -> Vec<String> {
        self.sources.keys().cloned().collect()
    }

    /// Runs one consumed record through the processors of its topic.
    pub(crate) fn process(
        &mut self,
        record: &ConsumerRecord,
        partition_count: u32,
    ) -> Result<Context, StreamsError> {
        let at = format!("{}/{}@{}", record.topic, record.partition, record.offset);
        let from_header = record
            .headers
            .iter()
            .find(|(k, _)| k.as_ref() == ORIGIN_HEADER)
            .and_then(|(_, v)| v.as_ref());
        let origin = match from_header {
            Some(bytes) if self.repartition_topics.iter().any(|t| **t == *record.topic) => {
                Origin::decode(bytes)
                    .map_err(|e| StreamsError::Corrupt(format!("{at}: bad origin header: {e}")))?
                    .0
            }
            _ => Origin {
                topic: record.topic.clone(),
                partition: record.partition,
                offset: record.offset,
                seq: 0,
            },
        };
        let mut ctx = Context {
            partition: record.partition,
            partition_count,
            origin,
            derived: 0,
            outputs: Vec::new(),
            late: 0,
            at,
        };
        if let Some(processors) = self.sources.get_mut(&*record.topic) {
            for processor in processors {
                processor(&mut ctx, record)?;
            }
        }
        Ok(ctx)
    }
}
