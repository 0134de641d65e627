//! The topology DSL: streams, grouped streams, tables and their steps, built inside the
//! application's thread from the closure given to `Streams::start`.
//!
//! Each stream is a list of typed steps to run on every record that reaches it; a step
//! that derives a new stream owns that stream's list, so the topology is a tree of closures
//! per source topic, and a record is pushed through it by plain calls (no queue between
//! steps, no boxing of records). A stream feeding several steps hands each a clone.
//!
//! A step that changes the key (`map`, `flat_map`, `select_key`) marks the stream as
//! re-keyed: a stateful step after it reads through a repartition topic, so all records of
//! a key meet on one partition (the key's partition under the default partitioner).

use std::cell::RefCell;
use std::rc::Rc;

use crate::client::consumer::ConsumerRecord;
use crate::client::partitioner::partition_for_key;

use super::error::StreamsError;
use super::serde::{from_record_bytes, to_record_bytes, Data, SerdeError};
use super::store::{self, KeyValueStore, TableStore, Update};
use super::topology::{Context, Output, Registry, SourceProcessor};
use super::window::{window_key, SessionWindowed, SessionWindows, TimeWindows, Windowed};

/// One step: takes a record (key, value, timestamp).
type Step<K, V> = Box<dyn FnMut(&mut Context, K, V, i64) -> Result<(), StreamsError>>;

/// A test on a record, for [`KStream::branch`].
pub type Predicate<K, V> = Box<dyn FnMut(&K, &V) -> bool>;

/// The steps fed by one stream.
type Downstream<K, V> = Rc<RefCell<Vec<Step<K, V>>>>;

/// Passes a record to every step of `down` (clones for all but the last).
fn forward<K: Clone, V: Clone>(
    down: &Downstream<K, V>,
    ctx: &mut Context,
    key: K,
    value: V,
    timestamp: i64,
) -> Result<(), StreamsError> {
    let mut steps = down.borrow_mut();
    let Some((last, rest)) = steps.split_last_mut() else {
        return Ok(());
    };
    for step in rest {
        step(ctx, key.clone(), value.clone(), timestamp)?;
    }
    last(ctx, key, value, timestamp)
}

fn new_downstream<K, V>() -> Downstream<K, V> {
    Rc::new(RefCell::new(Vec::new()))
}

/// Builds a topology: source streams and tables. Given to the closure of
/// `Streams::start` (and of `TestDriver::new`).
pub struct StreamsBuilder {
    registry: Rc<RefCell<Registry>>,
}

impl StreamsBuilder {
    pub(crate) fn new(application_id: &str) -> StreamsBuilder {
        StreamsBuilder {
            registry: Rc::new(RefCell::new(Registry::new(application_id))),
        }
    }

    pub(crate) fn into_registry(self) -> Rc<RefCell<Registry>> {
        self.registry
    }

    /// A stream of the records of `topics` (one or more; read through the application's
    /// consumer group). All source topics of an application need the same partition count.
    pub fn stream<K: Data, V: Data>(&mut self, topics: &[&str]) -> KStream<K, V> {
        let down = new_downstream();
        let mut registry = self.registry.borrow_mut();
        if topics.is_empty() {
            registry.reject(StreamsError::Topology(
                "a stream needs a source topic".into(),
            ));
        }
        for topic in topics {
            registry.add_source(topic, source_processor(down.clone()), true);
        }
        KStream {
            registry: self.registry.clone(),
            down,
            sources: Rc::new(topics.iter().map(ToString::to_string).collect()),
            rekeyed: false,
        }
    }

    /// A table of the latest value of each key of `topic` (a null value deletes the key),
    /// for joins. Its store is the topic itself: each partition is read from its start when
    /// the stream partition of the same number is assigned, then followed. The topic must
    /// be co-partitioned with the streams that join it.
    pub fn table<K: Data, V: Data>(&mut self, topic: &str) -> Table<K, V> {
        let store = Rc::new(RefCell::new(TableStore::new(topic.to_string())));
        self.registry.borrow_mut().tables.push(store.clone());
        Table {
            store,
            _types: std::marker::PhantomData,
        }
    }
}

/// Decodes `bytes` (`None`: null) as the `what` (key or value) of the record `at`.
fn decode<T: Data>(
    bytes: Option<&[u8]>,
    what: &'static str,
    at: impl FnOnce() -> String,
) -> Result<T, StreamsError> {
    from_record_bytes(bytes).map_err(|source: SerdeError| StreamsError::Decode {
        what,
        at: at(),
        source,
    })
}

/// The entry point of a source topic for a stream whose steps are `down`.
fn source_processor<K: Data, V: Data>(down: Downstream<K, V>) -> SourceProcessor {
    Box::new(move |ctx: &mut Context, record: &ConsumerRecord| {
        let key: K = decode(record.key.as_deref(), "key", || ctx.at.clone())?;
        let value: V = decode(record.value.as_deref(), "value", || ctx.at.clone())?;
        forward(&down, ctx, key, value, record.timestamp)
    })
}

/// A stream of keyed records.
pub struct KStream<K, V> {
    registry: Rc<RefCell<Registry>>,
    down: Downstream<K, V>,
    /// The topics this stream's records are read from (a repartition topic after one):
    /// the partitions its stores follow.
    sources: Rc<Vec<String>>,
    /// A step changed the key since the last read from a topic.
    rekeyed: bool,
}

impl<K: Data, V: Data> KStream<K, V> {
    /// A new stream fed by `step`, which runs on every record of this one.
    fn derive<K2: Data, V2: Data>(
        &self,
        rekeyed: bool,
        mut step: impl FnMut(&mut Context, K, V, i64, &Downstream<K2, V2>) -> Result<(), StreamsError>
            + 'static,
    ) -> KStream<K2, V2> {
        let down = new_downstream();
        let target = down.clone();
        self.down
            .borrow_mut()
            .push(Box::new(move |ctx, k, v, ts| step(ctx, k, v, ts, &target)));
        KStream {
            registry: self.registry.clone(),
            down,
            sources: self.sources.clone(),
            rekeyed: self.rekeyed || rekeyed,
        }
    }

    /// The records for which `keep` holds.
    pub fn filter(&self, mut keep: impl FnMut(&K, &V) -> bool + 'static) -> KStream<K, V> {
        self.derive(false, move |ctx, k, v, ts, down| {
            if keep(&k, &v) {
                forward(down, ctx, k, v, ts)?;
            }
            Ok(())
        })
    }

    /// Each record turned into a new key and value (re-keys the stream).
    pub fn map<K2: Data, V2: Data>(
        &self,
        mut f: impl FnMut(K, V) -> (K2, V2) + 'static,
    ) -> KStream<K2, V2> {
        self.derive(true, move |ctx, k, v, ts, down| {
            let (k, v) = f(k, v);
            forward(down, ctx, k, v, ts)
        })
    }

    /// Each record with a new value and the same key.
    pub fn map_values<V2: Data>(&self, mut f: impl FnMut(V) -> V2 + 'static) -> KStream<K, V2> {
        self.derive(false, move |ctx, k, v, ts, down| {
            forward(down, ctx, k, f(v), ts)
        })
    }

    /// Each record turned into any number of records (re-keys the stream).
    pub fn flat_map<K2: Data, V2: Data, I: IntoIterator<Item = (K2, V2)>>(
        &self,
        mut f: impl FnMut(K, V) -> I + 'static,
    ) -> KStream<K2, V2> {
        self.derive(true, move |ctx, k, v, ts, down| {
            for (k, v) in f(k, v) {
                forward(down, ctx, k, v, ts)?;
            }
            Ok(())
        })
    }

    /// Each record turned into any number of values with its key.
    pub fn flat_map_values<V2: Data, I: IntoIterator<Item = V2>>(
        &self,
        mut f: impl FnMut(V) -> I + 'static,
    ) -> KStream<K, V2> {
        self.derive(false, move |ctx, k, v, ts, down| {
            for v in f(v) {
                forward(down, ctx, k.clone(), v, ts)?;
            }
            Ok(())
        })
    }

    /// Each record with the key `f` computes (re-keys the stream).
    pub fn select_key<K2: Data>(
        &self,
        mut f: impl FnMut(&K, &V) -> K2 + 'static,
    ) -> KStream<K2, V> {
        self.derive(true, move |ctx, k, v, ts, down| {
            let key = f(&k, &v);
            forward(down, ctx, key, v, ts)
        })
    }

    /// The same records, after `f` has seen each (logging, metrics).
    pub fn peek(&self, mut f: impl FnMut(&K, &V) + 'static) -> KStream<K, V> {
        self.derive(false, move |ctx, k, v, ts, down| {
            f(&k, &v);
            forward(down, ctx, k, v, ts)
        })
    }

    /// One stream per predicate: a record goes to the first whose predicate holds, and is
    /// dropped if none does.
    pub fn branch(&self, mut predicates: Vec<Predicate<K, V>>) -> Vec<KStream<K, V>> {
        let branches: Vec<KStream<K, V>> = predicates
            .iter()
            .map(|_| KStream {
                registry: self.registry.clone(),
                down: new_downstream(),
                sources: self.sources.clone(),
                rekeyed: self.rekeyed,
            })
            .collect();
        let targets: Vec<Downstream<K, V>> = branches.iter().map(|b| b.down.clone()).collect();
        self.down.borrow_mut().push(Box::new(move |ctx, k, v, ts| {
            match predicates.iter_mut().position(|p| p(&k, &v)) {
                Some(i) => forward(&targets[i], ctx, k, v, ts),
                None => Ok(()),
            }
        }));
        branches
    }

    /// Writes every record to `topic` (partitioned by key; the topic must exist).
    pub fn to(&self, topic: &str) {
        let topic: std::sync::Arc<str> = topic.into();
        self.down.borrow_mut().push(Box::new(move |ctx, k, v, ts| {
            ctx.outputs.push(Output {
                topic: topic.clone(),
                partition: None,
                key: to_record_bytes(&k),
                value: to_record_bytes(&v),
                timestamp: ts,
                origin: None,
            });
            Ok(())
        }));
    }

    /// Writes the records through the internal topic `<application>-<name>-repartition`
    /// and reads them back, so each lands on its key's partition.
    pub fn repartition(&self, name: &str) -> KStream<K, V> {
        let topic = {
            let mut registry = self.registry.borrow_mut();
            registry.claim(name);
            let topic = registry.repartition_topic(name);
            registry.repartition_topics.push(topic.clone());
            topic
        };
        let sink: std::sync::Arc<str> = topic.as_str().into();
        self.down.borrow_mut().push(Box::new(move |ctx, k, v, ts| {
            let mut origin = Vec::with_capacity(48);
            ctx.next_origin()?.encode(&mut origin);
            ctx.outputs.push(Output {
                topic: sink.clone(),
                partition: None,
                key: to_record_bytes(&k),
                value: to_record_bytes(&v),
                timestamp: ts,
                origin: Some(origin),
            });
            Ok(())
        }));
        let down = new_downstream();
        self.registry
            .borrow_mut()
            .add_source(&topic, source_processor(down.clone()), false);
        KStream {
            registry: self.registry.clone(),
            down,
            sources: Rc::new(vec![topic]),
            rekeyed: false,
        }
    }

    /// The records grouped by their key, for `count`, `reduce` and `aggregate`.
    pub fn group_by_key(&self) -> KGroupedStream<K, V> {
        KGroupedStream {
            stream: self.clone_handle(),
        }
    }

    /// The records grouped by the key `f` computes (a re-key, then [`group_by_key`]).
    ///
    /// [`group_by_key`]: KStream::group_by_key
    pub fn group_by<K2: Data>(
        &self,
        f: impl FnMut(&K, &V) -> K2 + 'static,
    ) -> KGroupedStream<K2, V> {
        self.select_key(f).group_by_key()
    }

    /// Each record joined with the table's value for its key: `f(key, value, table
    /// value)`; records whose key is not in the table are dropped.
    pub fn join<VT: Data, VR: Data>(
        &self,
        table: &Table<K, VT>,
        mut f: impl FnMut(&K, V, VT) -> VR + 'static,
    ) -> KStream<K, VR> {
        self.lookup(table, move |k, v, found| found.map(|t| f(k, v, t)))
    }

    /// Each record joined with the table's value for its key, `None` when the key is not
    /// in the table.
    pub fn left_join<VT: Data, VR: Data>(
        &self,
        table: &Table<K, VT>,
        mut f: impl FnMut(&K, V, Option<VT>) -> VR + 'static,
    ) -> KStream<K, VR> {
        self.lookup(table, move |k, v, found| Some(f(k, v, found)))
    }

    fn lookup<VT: Data, VR: Data>(
        &self,
        table: &Table<K, VT>,
        mut f: impl FnMut(&K, V, Option<VT>) -> Option<VR> + 'static,
    ) -> KStream<K, VR> {
        let topic = table.store.borrow().topic.clone();
        if self.rekeyed {
            self.registry
                .borrow_mut()
                .reject(StreamsError::Topology(format!(
                    "the stream joined with table {topic} was re-keyed: call repartition(name) \
                 before the join so its records sit on their key's partition"
                )));
        }
        table
            .store
            .borrow_mut()
            .joined_by
            .extend(self.sources.iter().cloned());
        let store = table.store.clone();
        self.derive(false, move |ctx, k, v, ts, down| {
            let key = k.to_bytes();
            let home = partition_for_key(&key, ctx.partition_count);
            if home != ctx.partition {
                return Err(StreamsError::Topology(format!(
                    "{}: its key belongs to partition {home} under the default partitioner \
                     (murmur2 of the key), not {}: a stream joined with table {topic} must \
                     be produced with keys and the default partitioner",
                    ctx.at, ctx.partition
                )));
            }
            let found = match store.borrow().get(ctx.partition, &key) {
                Some(bytes) => {
                    Some(
                        VT::from_bytes(bytes).map_err(|source| StreamsError::Decode {
                            what: "value",
                            at: format!("table {topic}, key of {}", ctx.at),
                            source,
                        })?,
                    )
                }
                None => None,
            };
            match f(&k, v, found) {
                Some(joined) => forward(down, ctx, k, joined, ts),
                None => Ok(()),
            }
        })
    }

    fn clone_handle(&self) -> KStream<K, V> {
        KStream {
            registry: self.registry.clone(),
            down: self.down.clone(),
            sources: self.sources.clone(),
            rekeyed: self.rekeyed,
        }
    }
}

/// A stream grouped by key: the input of stateful steps.
pub struct KGroupedStream<K, V> {
    stream: KStream<K, V>,
}

impl<K: Data, V: Data> KGroupedStream<K, V> {
    /// The number of records per key, in store `name` (changelog
    /// `<application>-<name>-changelog`).
    pub fn count(&self, name: &str) -> KTable<K, u64> {
        self.aggregate(name, || 0, |_, _, n| n + 1)
    }

    /// The values of each key combined with `f(accumulated, new)`; the first value of a
    /// key is its start.
    pub fn reduce(&self, name: &str, mut f: impl FnMut(V, V) -> V + 'static) -> KTable<K, V> {
        self.stateful(name, move |_, v, current| match current {
            Some(acc) => f(acc, v),
            None => v,
        })
    }

    /// The values of each key folded into an aggregate: `f(key, value, aggregate)`,
    /// starting from `init()`.
    pub fn aggregate<A: Data>(
        &self,
        name: &str,
        init: impl Fn() -> A + 'static,
        mut f: impl FnMut(&K, V, A) -> A + 'static,
    ) -> KTable<K, A> {
        self.stateful(name, move |k, v, current| {
            f(k, v, current.unwrap_or_else(&init))
        })
    }

    /// The same grouping, aggregated per time window.
    pub fn windowed_by(&self, windows: TimeWindows) -> WindowedStream<K, V> {
        WindowedStream {
            grouped: KGroupedStream {
                stream: self.stream.clone_handle(),
            },
            windows,
        }
    }

    /// The same grouping, aggregated per session of activity.
    pub fn session_windowed_by(&self, windows: SessionWindows) -> SessionWindowedStream<K, V> {
        SessionWindowedStream {
            grouped: KGroupedStream {
                stream: self.stream.clone_handle(),
            },
            windows,
        }
    }

    /// The stream to aggregate and a new store `name` following its partitions: through
    /// the repartition topic `<application>-<name>-repartition` if it was re-keyed.
    fn input(&self, name: &str) -> (KStream<K, V>, Rc<RefCell<KeyValueStore>>) {
        let stream = if self.stream.rekeyed {
            self.stream.repartition(name)
        } else {
            self.stream.registry.borrow_mut().claim(name);
            self.stream.clone_handle()
        };
        let mut registry = stream.registry.borrow_mut();
        let store = Rc::new(RefCell::new(KeyValueStore::new(
            name.to_string(),
            registry.changelog_topic(name),
            stream.sources.to_vec(),
        )));
        registry.stores.push(store.clone());
        drop(registry);
        (stream, store)
    }

    fn stateful<A: Data>(
        &self,
        name: &str,
        mut step: impl FnMut(&K, V, Option<A>) -> A + 'static,
    ) -> KTable<K, A> {
        let (stream, store) = self.input(name);
        let down = new_downstream();
        let target = down.clone();
        stream
            .down
            .borrow_mut()
            .push(Box::new(move |ctx, k, v, ts| {
                let origin = ctx.next_origin()?;
                let key = k.to_bytes();
                let mut store = store.borrow_mut();
                let value = apply_step(&mut store, ctx, key, &origin, ts, "key", |current| {
                    step(&k, v, current)
                })?;
                drop(store);
                forward(&target, ctx, k, value, ts)
            }));
        KTable {
            stream: KStream {
                registry: stream.registry.clone(),
                down,
                sources: stream.sources.clone(),
                rekeyed: false,
            },
        }
    }
}

/// A changelog record of a store partition.
/// Applies one record to the value stored under `key` in `store`'s partition of
/// `ctx` (the record's origin decides whether it was applied before: a replay changes
/// nothing), queues the changelog update when it changed the store, and returns the value
/// the key now has. `what` names the key in a decode error (`key`, `window 60000`).
fn apply_step<A: Data>(
    store: &mut KeyValueStore,
    ctx: &mut Context,
    key: Vec<u8>,
    origin: &store::Origin,
    timestamp: i64,
    what: &str,
    step: impl FnOnce(Option<A>) -> A,
) -> Result<A, StreamsError> {
    let name = store.name.clone();
    let at = &ctx.at;
    let mut fresh = None;
    let update =
        store
            .partition(ctx.partition)
            .update(&key, origin, |current| {
                let current = current.map(A::from_bytes).transpose().map_err(|source| {
                    StreamsError::Decode {
                        what: "value",
                        at: format!("store {name}, {what} of {at}"),
                        source,
                    }
                })?;
                let next = step(current);
                let bytes = next.to_bytes();
                fresh = Some(next);
                Ok(bytes)
            })?;
    match (update, fresh) {
        (
            Update::Applied {
                changelog: entry, ..
            },
            Some(value),
        ) => {
            ctx.outputs.push(changelog_record(
                &store.changelog,
                ctx.partition,
                key,
                Some(entry),
                timestamp,
            ));
            Ok(value)
        }
        (Update::Applied { value, .. } | Update::Replayed { value }, _) => {
            decode(Some(&value), "value", || format!("store {name}"))
        }
    }
}

/// Queues the changelog updates of windows or sessions that closed at stream time `now`:
/// a tombstone for each of their `closed` keys, and the saved stream time.
fn retire(
    ctx: &mut Context,
    changelog: &std::sync::Arc<str>,
    closed: Vec<Vec<u8>>,
    now: i64,
    timestamp: i64,
) {
    for key in closed {
        ctx.outputs.push(changelog_record(
            changelog,
            ctx.partition,
            key,
            None,
            timestamp,
        ));
    }
    ctx.outputs.push(changelog_record(
        changelog,
        ctx.partition,
        store::STREAM_TIME_KEY.to_vec(),
        Some(store::stream_time_value(now)),
        timestamp,
    ));
}

fn changelog_record(
    changelog: &std::sync::Arc<str>,
    partition: u32,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    timestamp: i64,
) -> Output {
    Output {
        topic: changelog.clone(),
        partition: Some(partition),
        key: Some(key),
        value,
        timestamp,
        origin: None,
    }
}

/// A grouped stream cut into time windows; see [`super::window`] for the semantics.
pub struct WindowedStream<K, V> {
    grouped: KGroupedStream<K, V>,
    windows: TimeWindows,
}

impl<K: Data, V: Data> WindowedStream<K, V> {
    /// The number of records per key and window.
    pub fn count(&self, name: &str) -> KTable<Windowed<K>, u64> {
        self.aggregate(name, || 0, |_, _, n| n + 1)
    }

    /// The values of each key and window combined with `f(accumulated, new)`.
    pub fn reduce(
        &self,
        name: &str,
        mut f: impl FnMut(V, V) -> V + 'static,
    ) -> KTable<Windowed<K>, V> {
        self.stateful(name, move |_, v, current| match current {
            Some(acc) => f(acc, v),
            None => v,
        })
    }

    /// The values of each key and window folded into an aggregate, from `init()`.
    pub fn aggregate<A: Data>(
        &self,
        name: &str,
        init: impl Fn() -> A + 'static,
        mut f: impl FnMut(&K, V, A) -> A + 'static,
    ) -> KTable<Windowed<K>, A> {
        self.stateful(name, move |k, v, current| {
            f(k, v, current.unwrap_or_else(&init))
        })
    }

    fn stateful<A: Data>(
        &self,
        name: &str,
        mut step: impl FnMut(&K, V, Option<A>) -> A + 'static,
    ) -> KTable<Windowed<K>, A> {
        let (stream, store) = self.grouped.input(name);
        let windows = self.windows;
        let down = new_downstream();
        let target = down.clone();
        stream
            .down
            .borrow_mut()
            .push(Box::new(move |ctx, k: K, v: V, ts| {
                let origin = ctx.next_origin()?;
                let key = k.to_bytes();
                let mut updates = Vec::new();
                let mut late = false;
                {
                    let mut store = store.borrow_mut();
                    let changelog = store.changelog.clone();
                    let partition = store.partition(ctx.partition);
                    let before = partition.stream_time;
                    partition.stream_time = partition.stream_time.max(ts);
                    let now = partition.stream_time;
                    for start in windows.starts_of(ts) {
                        if windows.is_closed(start, now) {
                            late = true;
                            continue;
                        }
                        let window = window_key(&key, start);
                        let value = apply_step(
                            &mut store,
                            ctx,
                            window,
                            &origin,
                            ts,
                            &format!("window {start}"),
                            |current| step(&k, v.clone(), current),
                        )?;
                        updates.push((start, value));
                    }
                    let partition = store.partition(ctx.partition);
                    // A window closed: closed windows leave the store and the changelog
                    // (tombstones), and the new stream time is saved.
                    if windows.closes_between(before, now) {
                        let closed = partition.remove_where(|window, _| {
                            window_start(window).is_some_and(|start| windows.is_closed(start, now))
                        });
                        retire(ctx, &changelog, closed, now, ts);
                    }
                }
                if late {
                    ctx.late += 1;
                }
                for (start, value) in updates {
                    let windowed = Windowed {
                        key: k.clone(),
                        start,
                    };
                    forward(&target, ctx, windowed, value, ts)?;
                }
                Ok(())
            }));
        KTable {
            stream: KStream {
                registry: stream.registry.clone(),
                down,
                sources: stream.sources.clone(),
                rekeyed: false,
            },
        }
    }
}

/// A grouped stream cut into sessions; see [`super::window`] for the semantics. Its
/// results are `Option`s: `None` (a null, a tombstone) for a session merged into another.
pub struct SessionWindowedStream<K, V> {
    grouped: KGroupedStream<K, V>,
    windows: SessionWindows,
}

/// The changelog and store value of a session: its end, then its aggregate.
fn session_value(end: i64, aggregate: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + aggregate.len());
    out.extend_from_slice(&end.to_be_bytes());
    out.extend_from_slice(aggregate);
    out
}

/// A session's end and aggregate bytes, from its store value.
fn split_session_value(value: &[u8]) -> Option<(i64, &[u8])> {
    let (end, aggregate) = value.split_first_chunk::<8>()?;
    Some((i64::from_be_bytes(*end), aggregate))
}

/// One session of a key in a store: its store key, start, end and aggregate bytes.
type StoredSession = (Vec<u8>, i64, i64, Vec<u8>);

impl<K: Data, V: Data> SessionWindowedStream<K, V> {
    /// The number of records per key and session.
    pub fn count(&self, name: &str) -> KTable<SessionWindowed<K>, Option<u64>> {
        self.aggregate(name, || 0, |_, _, n| n + 1, |_, a, b| a + b)
    }

    /// The values of each key and session combined with `f(accumulated, new)`; merging
    /// two sessions combines their values with `f` too.
    pub fn reduce(
        &self,
        name: &str,
        f: impl FnMut(V, V) -> V + 'static,
    ) -> KTable<SessionWindowed<K>, Option<V>> {
        let f = Rc::new(RefCell::new(f));
        let merge = f.clone();
        self.stateful(
            name,
            move |_, v, current| match current {
                Some(acc) => (f.borrow_mut())(acc, v),
                None => v,
            },
            move |_, a, b| (merge.borrow_mut())(a, b),
        )
    }

    /// The values of each key and session folded into an aggregate from `init()`;
    /// `merge(key, older, newer)` combines the aggregates of two sessions a record joins.
    pub fn aggregate<A: Data>(
        &self,
        name: &str,
        init: impl Fn() -> A + 'static,
        mut f: impl FnMut(&K, V, A) -> A + 'static,
        merge: impl FnMut(&K, A, A) -> A + 'static,
    ) -> KTable<SessionWindowed<K>, Option<A>> {
        self.stateful(
            name,
            move |k, v, current| f(k, v, current.unwrap_or_else(&init)),
            merge,
        )
    }

    fn stateful<A: Data>(
        &self,
        name: &str,
        mut step: impl FnMut(&K, V, Option<A>) -> A + 'static,
        mut merge: impl FnMut(&K, A, A) -> A + 'static,
    ) -> KTable<SessionWindowed<K>, Option<A>> {
        let (stream, store) = self.grouped.input(name);
        let windows = self.windows;
        let down = new_downstream();
        let target = down.clone();
        stream
            .down
            .borrow_mut()
            .push(Box::new(move |ctx, k: K, v: V, ts| {
                let origin = ctx.next_origin()?;
                let key = k.to_bytes();
                let mut prefix = key.clone();
                prefix.push(b'@');
                // (start, end, aggregate or None for a merged-away session) to forward.
                let mut results: Vec<(i64, i64, Option<A>)> = Vec::new();
                {
                    let mut store = store.borrow_mut();
                    let changelog = store.changelog.clone();
                    let name = store.name.clone();
                    let decode_aggregate = |bytes: &[u8]| {
                        decode::<A>(Some(bytes), "value", || format!("store {name}"))
                    };
                    let partition = store.partition(ctx.partition);
                    partition.stream_time = partition.stream_time.max(ts);
                    let now = partition.stream_time;
                    // This key's sessions (a longer key that starts with `key@` has no number
                    // after the prefix and is skipped).
                    let sessions: Vec<StoredSession> = partition
                        .with_prefix(&prefix)
                        .filter_map(|(stored, value)| {
                            let start = std::str::from_utf8(&stored[prefix.len()..])
                                .ok()?
                                .parse()
                                .ok()?;
                            let (end, aggregate) = split_session_value(value)?;
                            Some((stored.to_vec(), start, end, aggregate.to_vec()))
                        })
                        .collect();
                    let keys: Vec<Vec<u8>> = sessions.iter().map(|s| s.0.clone()).collect();
                    if windows.is_late(ts, now) {
                        ctx.late += 1;
                    } else if partition.applied_to_any(&keys, &origin) {
                        // A replay: the session holding the record is written again.
                        for (_, start, end, aggregate) in &sessions {
                            if (*start..=*end).contains(&ts) {
                                results.push((*start, *end, Some(decode_aggregate(aggregate)?)));
                            }
                        }
                    } else {
                        let merging: Vec<&StoredSession> = sessions
                            .iter()
                            .filter(|(_, start, end, _)| windows.reaches(*start, *end, ts))
                            .collect();
                        let (mut start, mut end, mut acc) = (ts, ts, None);
                        for (_, s, e, aggregate) in &merging {
                            start = start.min(*s);
                            end = end.max(*e);
                            let aggregate = decode_aggregate(aggregate)?;
                            acc = Some(match acc {
                                None => aggregate,
                                Some(older) => merge(&k, older, aggregate),
                            });
                        }
                        let next = step(&k, v, acc);
                        let stored = window_key(&key, start);
                        let merged: Vec<Vec<u8>> = merging.iter().map(|m| m.0.clone()).collect();
                        let entry = partition.merge_into(
                            &merged,
                            stored.clone(),
                            session_value(end, &next.to_bytes()),
                            &origin,
                        );
                        for (old, s, e, _) in merging {
                            if *old != stored {
                                ctx.outputs.push(changelog_record(
                                    &changelog,
                                    ctx.partition,
                                    old.clone(),
                                    None,
                                    ts,
                                ));
                            }
                            if (*s, *e) != (start, end) {
                                results.push((*s, *e, None));
                            }
                        }
                        ctx.outputs.push(changelog_record(
                            &changelog,
                            ctx.partition,
                            stored,
                            Some(entry),
                            ts,
                        ));
                        results.push((start, end, Some(next)));
                    }
                    // Sessions no record can reach any more leave the store and the changelog,
                    // at most once per gap of stream time; the stream time is saved.
                    if now >= partition.expired_at.saturating_add(windows.gap.max(1)) {
                        partition.expired_at = now;
                        let closed = partition.remove_where(|_, value| {
                            split_session_value(value)
                                .is_some_and(|(end, _)| windows.is_closed(end, now))
                        });
                        retire(ctx, &changelog, closed, now, ts);
                    }
                }
                for (start, end, value) in results {
                    let session = SessionWindowed {
                        key: k.clone(),
                        start,
                        end,
                    };
                    forward(&target, ctx, session, value, ts)?;
                }
                Ok(())
            }));
        KTable {
            stream: KStream {
                registry: stream.registry.clone(),
                down,
                sources: stream.sources.clone(),
                rekeyed: false,
            },
        }
    }
}

/// The start of a window from its store key (`<key>@<start>`).
fn window_start(window: &[u8]) -> Option<i64> {
    let at = window.iter().rposition(|b| *b == b'@')?;
    std::str::from_utf8(&window[at + 1..]).ok()?.parse().ok()
}

/// The result of a stateful step: a table whose every update is a record of its stream.
pub struct KTable<K, V> {
    stream: KStream<K, V>,
}

impl<K: Data, V: Data> KTable<K, V> {
    /// The table's updates as a stream (same keys).
    pub fn to_stream(&self) -> KStream<K, V> {
        self.stream.clone_handle()
    }

    /// Writes every update of the table to `topic`: the last record of a key there is
    /// the key's current value.
    pub fn to(&self, topic: &str) {
        self.stream.to(topic);
    }
}

/// A table read from a topic, for [`KStream::join`] and [`KStream::left_join`].
pub struct Table<K, V> {
    store: Rc<RefCell<TableStore>>,
    _types: std::marker::PhantomData<(K, V)>,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::super::driver::TestDriver;
    use super::*;

    fn text(bytes: &Option<Vec<u8>>) -> String {
        String::from_utf8(bytes.clone().unwrap_or_default()).unwrap()
    }

    /// The last value written per key to `topic`.
    fn latest(driver: &TestDriver, topic: &str) -> BTreeMap<String, String> {
        driver
            .output(topic)
            .iter()
            .map(|(k, v)| (text(k), text(v)))
            .collect()
    }

    fn word_count(builder: &mut StreamsBuilder) {
        builder
            .stream::<String, String>(&["lines"])
            .flat_map(|_, line| {
                line.split_whitespace()
                    .map(|w| (w.to_string(), String::new()))
                    .collect::<Vec<_>>()
            })
            .group_by_key()
            .count("counts")
            .to("word-counts");
    }

    #[test]
    fn stateless_steps_transform_filter_and_branch() {
        let mut driver = TestDriver::new("app", 3, |b| {
            let numbers = b
                .stream::<String, u64>(&["in"])
                .filter(|_, n| *n != 0)
                .map_values(|n| n * 10)
                .peek(|_, n| assert!(n % 10 == 0));
            let mut branches = numbers.branch(vec![
                Box::new(|_, n| *n >= 100),
                Box::new(|k, _| k.starts_with('a')),
            ]);
            branches.remove(1).to("a-small");
            branches.remove(0).to("big");
            numbers
                .select_key(|k, n| format!("{k}:{n}"))
                .flat_map_values(|n| [n, n + 1])
                .to("keyed");
            numbers.map(|k, n| (n, k)).to("swapped");
        })
        .unwrap();
        for (k, n) in [("apple", "1"), ("bee", "20"), ("ant", "0"), ("cat", "2")] {
            driver
                .pipe("in", Some(k.as_bytes()), Some(n.as_bytes()), 0)
                .unwrap();
        }
        let pairs = |topic| {
            driver
                .output(topic)
                .iter()
                .map(|(k, v)| (text(k), text(v)))
                .collect::<Vec<_>>()
        };
        assert_eq!(pairs("big"), [("bee".into(), "200".into())]);
        assert_eq!(pairs("a-small"), [("apple".into(), "10".into())]);
        assert_eq!(pairs("keyed").len(), 6);
        assert_eq!(pairs("keyed")[0], ("apple:10".into(), "10".into()));
        assert_eq!(pairs("keyed")[1], ("apple:10".into(), "11".into()));
        assert_eq!(pairs("swapped")[2], ("20".into(), "cat".into()));
    }

    #[test]
    fn a_rekeyed_count_goes_through_the_repartition_topic() {
        let mut driver = TestDriver::new("wc", 4, word_count).unwrap();
        for line in ["the cat", "the dog the end", "a cat"] {
            driver
                .pipe("lines", None, Some(line.as_bytes()), 0)
                .unwrap();
        }
        let counts = latest(&driver, "word-counts");
        let expected = [
            ("a", "1"),
            ("cat", "2"),
            ("dog", "1"),
            ("end", "1"),
            ("the", "3"),
        ];
        assert_eq!(
            counts,
            expected
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        );
        let written = driver.written();
        let repartitioned = written
            .iter()
            .filter(|o| &*o.topic == "wc-counts-repartition");
        assert_eq!(repartitioned.count(), 8);
        // Changelog records name the store partition: the word's partition.
        for o in written
            .iter()
            .filter(|o| &*o.topic == "wc-counts-changelog")
        {
            let key = o.key.as_deref().unwrap();
            assert_eq!(o.partition, Some(partition_for_key(key, 4)));
        }
    }

    #[test]
    fn a_replayed_record_is_counted_once_and_its_count_written_again() {
        let mut driver = TestDriver::new("wc", 1, word_count).unwrap();
        let line = |offset| ConsumerRecord {
            topic: "lines".into(),
            partition: 0,
            offset,
            timestamp: 0,
            key: None,
            value: Some(bytes::Bytes::from_static(b"x x y")),
            headers: Vec::new(),
        };
        driver.process(line(0)).unwrap();
        driver.process(line(1)).unwrap();
        // A crash before the commit: both lines come again.
        driver.process(line(0)).unwrap();
        driver.process(line(1)).unwrap();
        assert_eq!(latest(&driver, "word-counts")["x"], "4");
        assert_eq!(latest(&driver, "word-counts")["y"], "2");
        assert_eq!(driver.output("word-counts").len(), 12);
    }

    #[test]
    fn reduce_and_aggregate_keep_a_value_per_key() {
        let mut driver = TestDriver::new("app", 2, |b| {
            let grouped = b.stream::<String, u64>(&["in"]).group_by_key();
            grouped.reduce("max", u64::max).to("max");
            grouped
                .aggregate("sum", || 0i64, |_, v, sum| sum + v as i64)
                .to("sum");
        })
        .unwrap();
        for (k, v) in [("a", "3"), ("b", "1"), ("a", "7"), ("a", "5")] {
            driver
                .pipe("in", Some(k.as_bytes()), Some(v.as_bytes()), 0)
                .unwrap();
        }
        assert_eq!(latest(&driver, "max")["a"], "7");
        assert_eq!(latest(&driver, "sum")["a"], "15");
        assert_eq!(latest(&driver, "sum")["b"], "1");
    }

    #[test]
    fn tumbling_windows_drop_records_after_the_grace_period() {
        let minute = Duration::from_secs(60);
        let mut driver = TestDriver::new("app", 1, |b| {
            b.stream::<String, String>(&["clicks"])
                .group_by_key()
                .windowed_by(TimeWindows::tumbling(minute).grace(Duration::from_secs(10)))
                .count("per-minute")
                .to("counts");
        })
        .unwrap();
        let mut click = |ts| driver.pipe("clicks", Some(b"k"), Some(b""), ts).unwrap();
        click(1_000);
        click(59_000);
        click(61_000); // stream time 61 s: window 0 still open (grace to 70 s)
        click(30_000); // late but within grace: counted
        click(75_000); // stream time 75 s: window 0 closed
        click(2_000); // too late: dropped
        assert_eq!(driver.late_records(), 1);
        let counts = latest(&driver, "counts");
        assert_eq!(counts["k@0"], "3");
        assert_eq!(counts["k@60000"], "2");
        // The closed window left the store: its changelog got a tombstone.
        let tombstones = driver
            .written()
            .iter()
            .filter(|o| &*o.topic == "app-per-minute-changelog" && o.value.is_none())
            .count();
        assert_eq!(tombstones, 1);
    }

    #[test]
    fn hopping_windows_count_a_record_in_each_window_holding_it() {
        let mut driver = TestDriver::new("app", 1, |b| {
            b.stream::<String, String>(&["in"])
                .group_by_key()
                .windowed_by(TimeWindows::hopping(
                    Duration::from_secs(10),
                    Duration::from_secs(5),
                ))
                .count("hops")
                .to_stream()
                .map(|w, n| (format!("{}/{}", w.key, w.start), n))
                .to("out");
        })
        .unwrap();
        driver.pipe("in", Some(b"k"), Some(b""), 7_000).unwrap();
        driver.pipe("in", Some(b"k"), Some(b""), 12_000).unwrap();
        let counts = latest(&driver, "out");
        assert_eq!(counts["k/0"], "1");
        assert_eq!(counts["k/5000"], "2");
        assert_eq!(counts["k/10000"], "1");
    }

    #[test]
    fn sessions_merge_when_a_record_bridges_the_gap() {
        let mut driver = TestDriver::new("app", 1, |b| {
            b.stream::<String, String>(&["in"])
                .group_by_key()
                .session_windowed_by(
                    SessionWindows::with_inactivity_gap(Duration::from_secs(10))
                        .grace(Duration::from_secs(10)),
                )
                .count("sessions")
                .to("out");
        })
        .unwrap();
        let record = |offset, timestamp| ConsumerRecord {
            topic: "in".into(),
            partition: 0,
            offset,
            timestamp,
            key: Some(bytes::Bytes::from_static(b"k")),
            value: Some(bytes::Bytes::new()),
            headers: Vec::new(),
        };
        for (offset, ts) in [(0, 0), (1, 20_000), (2, 10_000)] {
            driver.process(record(offset, ts)).unwrap();
        }
        // A replay of the bridging record is not counted again; its session is written
        // again.
        driver.process(record(2, 10_000)).unwrap();
        for (offset, ts) in [(3, 100_000), (4, 50_000)] {
            driver.process(record(offset, ts)).unwrap();
        }
        assert_eq!(driver.late_records(), 1);
        let out: Vec<(String, Option<String>)> = driver
            .output("out")
            .into_iter()
            .map(|(k, v)| (text(&k), v.map(|v| String::from_utf8(v).unwrap())))
            .collect();
        let expected = [
            ("k@0-0", Some("1")),
            ("k@20000-20000", Some("1")),
            // 10 s reaches both: they merge, and the old sessions get tombstones.
            ("k@0-0", None),
            ("k@20000-20000", None),
            ("k@0-20000", Some("3")),
            ("k@0-20000", Some("3")),
            ("k@100000-100000", Some("1")),
        ];
        let expected: Vec<(String, Option<String>)> = expected
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
            .collect();
        assert_eq!(out, expected);
        // Store tombstones: `k@20000` merged into `k@0`, then `k@0` closed at 100 s.
        let tombstones = driver
            .written()
            .iter()
            .filter(|o| &*o.topic == "app-sessions-changelog" && o.value.is_none())
            .count();
        assert_eq!(tombstones, 2);
    }

    #[test]
    fn joins_enrich_records_with_the_table_value() {
        let mut driver = TestDriver::new("shop", 3, |b| {
            let customers = b.table::<String, String>("customers");
            let orders = b.stream::<String, String>(&["orders"]);
            orders
                .join(&customers, |_, order, name| format!("{order} for {name}"))
                .to("enriched");
            orders
                .left_join(&customers, |_, order, name| {
                    format!("{order} for {}", name.unwrap_or_else(|| "?".into()))
                })
                .to("all");
        })
        .unwrap();
        driver.put_table("customers", b"c1", Some(b"Ada"));
        driver
            .pipe("orders", Some(b"c1"), Some(b"book"), 0)
            .unwrap();
        driver.pipe("orders", Some(b"c2"), Some(b"pen"), 0).unwrap();
        driver.put_table("customers", b"c1", None);
        driver.pipe("orders", Some(b"c1"), Some(b"ink"), 0).unwrap();
        let values = |topic| {
            driver
                .output(topic)
                .iter()
                .map(|(_, v)| text(v))
                .collect::<Vec<_>>()
        };
        assert_eq!(values("enriched"), ["book for Ada"]);
        assert_eq!(values("all"), ["book for Ada", "pen for ?", "ink for ?"]);
    }

    #[test]
    fn a_join_refuses_a_record_off_its_key_partition() {
        let mut driver = TestDriver::new("shop", 3, |b| {
            let customers = b.table::<String, String>("customers");
            b.stream::<String, String>(&["orders"])
                .join(&customers, |_, o, c| format!("{o}{c}"))
                .to("out");
        })
        .unwrap();
        let home = partition_for_key(b"c1", 3);
        let record = ConsumerRecord {
            topic: "orders".into(),
            partition: (home + 1) % 3,
            offset: 0,
            timestamp: 0,
            key: Some(bytes::Bytes::from_static(b"c1")),
            value: Some(bytes::Bytes::from_static(b"x")),
            headers: Vec::new(),
        };
        let err = driver.process(record).unwrap_err().to_string();
        assert!(err.contains("default partitioner"), "{err}");
    }

    #[test]
    fn topology_mistakes_are_reported_at_build() {
        let twice = TestDriver::new("app", 1, |b| {
            let s = b.stream::<String, String>(&["in"]);
            s.group_by_key().count("c");
            s.group_by_key().count("c");
        });
        assert!(twice.err().unwrap().to_string().contains("used twice"));
        let rekeyed_join = TestDriver::new("app", 1, |b| {
            let t = b.table::<String, String>("t");
            b.stream::<String, String>(&["in"])
                .select_key(|_, v| v.clone())
                .join(&t, |_, v, _| v)
                .to("out");
        });
        assert!(rekeyed_join
            .err()
            .unwrap()
            .to_string()
            .contains("repartition"));
        let bad_name = TestDriver::new("app", 1, |b| {
            b.stream::<String, String>(&["in"])
                .group_by_key()
                .count("a/b");
        });
        assert!(bad_name.is_err());
    }

    #[test]
    fn a_damaged_origin_header_is_an_error() {
        let mut driver = TestDriver::new("wc", 1, word_count).unwrap();
        let record = ConsumerRecord {
            topic: "wc-counts-repartition".into(),
            partition: 0,
            offset: 0,
            timestamp: 0,
            key: Some(bytes::Bytes::from_static(b"w")),
            value: Some(bytes::Bytes::new()),
            headers: vec![(
                bytes::Bytes::from_static(super::super::topology::ORIGIN_HEADER),
                Some(bytes::Bytes::from_static(&[0, 9, b'x'])),
            )],
        };
        let err = driver.process(record).unwrap_err().to_string();
        assert!(err.contains("damaged") && err.contains("origin"), "{err}");
    }

    #[test]
    fn undecodable_records_stop_processing_with_their_position() {
        let mut driver = TestDriver::new("app", 1, |b| {
            b.stream::<String, u64>(&["in"]).to("out");
        })
        .unwrap();
        let err = driver
            .pipe("in", None, Some(b"12x"), 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("in/0@0") && err.contains("value"), "{err}");
    }
}
