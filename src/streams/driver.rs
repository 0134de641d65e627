//! Running a topology without a broker: records in, records out, in one thread, for
//! tests of an application's logic (and of the DSL itself).
//!
//! The driver plays the broker's part: it places records on partitions with the default
//! partitioner, numbers them with offsets, feeds repartition records back to their
//! sub-topology at once, keeps the changelog records aside and serves table lookups from
//! tables it is given directly.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

use crate::client::consumer::ConsumerRecord;
use crate::client::partitioner::partition_for_key;

use super::dsl::StreamsBuilder;
use super::error::StreamsError;
use super::topology::{Output, Registry, ORIGIN_HEADER};

/// A written record's key and value bytes (`None`: null).
pub type KeyValue = (Option<Vec<u8>>, Option<Vec<u8>>);

/// A topology run in memory; see the module docs.
pub struct TestDriver {
    registry: Rc<RefCell<Registry>>,
    partitions: u32,
    next_offsets: HashMap<(Arc<str>, u32), i64>,
    outputs: Vec<Output>,
    late_records: u64,
}

impl TestDriver {
    /// Builds the topology of application `application_id` whose topics all have
    /// `partitions` partitions; a mistake in the topology is returned here.
    pub fn new(
        application_id: &str,
        partitions: u32,
        build: impl FnOnce(&mut StreamsBuilder),
    ) -> Result<TestDriver, StreamsError> {
        let mut builder = StreamsBuilder::new(application_id);
        build(&mut builder);
        let registry = builder.into_registry();
        if let Some(e) = registry.borrow_mut().build_error.take() {
            return Err(e);
        }
        Ok(TestDriver {
            registry,
            partitions: partitions.max(1),
            next_offsets: HashMap::new(),
            outputs: Vec::new(),
            late_records: 0,
        })
    }

    /// Feeds a record to `topic` on its key's partition (0 when it has no key).
    pub fn pipe(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp: i64,
    ) -> Result<(), StreamsError> {
        let partition = key.map_or(0, |k| partition_for_key(k, self.partitions));
        let record = self.record(topic, partition, key, value, timestamp);
        self.process(record)
    }

    /// Feeds a record as consumed, at its own partition and offset (a replay feeds one
    /// again).
    pub fn process(&mut self, record: ConsumerRecord) -> Result<(), StreamsError> {
        let mut pending = VecDeque::from([record]);
        while let Some(record) = pending.pop_front() {
            let ctx = self
                .registry
                .borrow_mut()
                .process(&record, self.partitions)?;
            self.late_records += ctx.late;
            for output in ctx.outputs {
                let internal = self
                    .registry
                    .borrow()
                    .repartition_topics
                    .iter()
                    .any(|t| **t == *output.topic);
                if internal {
                    pending.push_back(self.repartitioned(&output));
                }
                self.outputs.push(output);
            }
        }
        Ok(())
    }

    /// Sets `key` of the table read from `topic` (a `None` value deletes it), on the
    /// key's partition.
    pub fn put_table(&mut self, topic: &str, key: &[u8], value: Option<&[u8]>) {
        let partition = partition_for_key(key, self.partitions);
        for table in &self.registry.borrow().tables {
            let mut table = table.borrow_mut();
            if table.topic == topic {
                table.apply(partition, key, value);
            }
        }
    }

    /// Every record written to `topic` so far, as (key, value), in order.
    pub fn output(&self, topic: &str) -> Vec<KeyValue> {
        self.outputs
            .iter()
            .filter(|o| &*o.topic == topic)
            .map(|o| (o.key.clone(), o.value.clone()))
            .collect()
    }

    /// Every record written so far (outputs, repartition and changelog records).
    pub fn written(&self) -> &[Output] {
        &self.outputs
    }

    /// Records dropped from at least one closed window.
    pub fn late_records(&self) -> u64 {
        self.late_records
    }

    fn repartitioned(&mut self, output: &Output) -> ConsumerRecord {
        let key = output.key.as_deref();
        let partition = key.map_or(0, |k| partition_for_key(k, self.partitions));
        let mut record = self.record(
            &output.topic,
            partition,
            key,
            output.value.as_deref(),
            output.timestamp,
        );
        if let Some(origin) = &output.origin {
            record.headers = vec![(
                Bytes::from_static(ORIGIN_HEADER),
                Some(Bytes::from(origin.clone())),
            )];
        }
        record
    }

    fn record(
        &mut self,
        topic: &str,
        partition: u32,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp: i64,
    ) -> ConsumerRecord {
        let topic: Arc<str> = Arc::from(topic);
        let next = self
            .next_offsets
            .entry((topic.clone(), partition))
            .or_insert(0);
        let offset = *next;
        *next += 1;
        ConsumerRecord {
            topic,
            partition,
            offset,
            timestamp,
            key: key.map(Bytes::copy_from_slice),
            value: value.map(Bytes::copy_from_slice),
            headers: Vec::new(),
        }
    }
}
