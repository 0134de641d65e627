//! The `eventflow://` target: Eventflow's own client library.
//!
//! Against a broker that requires authentication, every connection logs in as
//! `EVENTFLOW_BENCH_SASL_USER` with `EVENTFLOW_BENCH_SASL_PASSWORD` (SCRAM-SHA-512, or
//! `EVENTFLOW_BENCH_SASL_MECHANISM`). Against a broker whose native listener speaks TLS,
//! `EVENTFLOW_BENCH_TLS_CA` names the PEM file of the CA to trust.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use eventflow::auth::Mechanism;
use eventflow::client::consumer::{Consumer, ConsumerConfig, StartAt};
use eventflow::client::group::{GroupConfig, OffsetReset};
use eventflow::client::producer::{Producer, ProducerConfig, Record};
use eventflow::client::{Client, ClientError, ClientTls, Credentials};
use eventflow::protocol::api::{offset_spec, Acks};
use eventflow::protocol::ErrorCode;

use super::{AckSink, ConsumerWorker, OutgoingRecord, ProducerWorker, Target};
use crate::workload::{self, Workload};

pub(super) struct Eventflow {
    addr: String,
    url: String,
    admin: Mutex<Client>,
    credentials: Option<Credentials>,
    tls: Option<ClientTls>,
}

/// The TLS the environment asks for, if any.
fn tls() -> Result<Option<ClientTls>> {
    let Some(ca) = std::env::var_os("EVENTFLOW_BENCH_TLS_CA") else {
        return Ok(None);
    };
    let tls = ClientTls::new(std::path::Path::new(&ca), None).context("EVENTFLOW_BENCH_TLS_CA")?;
    Ok(Some(tls))
}

/// The credentials the environment gives, if any.
fn credentials() -> Result<Option<Credentials>> {
    let Ok(user) = std::env::var("EVENTFLOW_BENCH_SASL_USER") else {
        return Ok(None);
    };
    let password = std::env::var("EVENTFLOW_BENCH_SASL_PASSWORD")
        .context("EVENTFLOW_BENCH_SASL_USER needs EVENTFLOW_BENCH_SASL_PASSWORD")?;
    let mechanism = match std::env::var("EVENTFLOW_BENCH_SASL_MECHANISM") {
        Ok(name) => name.parse().map_err(|e: String| anyhow::anyhow!(e))?,
        Err(_) => Mechanism::ScramSha512,
    };
    Ok(Some(Credentials {
        mechanism,
        user,
        password,
    }))
}

impl Eventflow {
    pub(super) fn new(addr: &str) -> Result<Eventflow> {
        let credentials = credentials()?;
        let tls = tls()?;
        let mut admin = Client::connect_secure(
            addr,
            eventflow::client::DEFAULT_REQUEST_TIMEOUT,
            credentials.as_ref(),
            tls.as_ref(),
        )
        .with_context(|| format!("connecting to eventflow://{addr}"))?;
        admin.api_versions()?;
        Ok(Eventflow {
            addr: addr.to_string(),
            url: format!("eventflow://{addr}"),
            admin: Mutex::new(admin),
            credentials,
            tls,
        })
    }

    fn admin(&self) -> std::sync::MutexGuard<'_, Client> {
        self.admin
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn acks(a: workload::Acks) -> Acks {
    match a {
        workload::Acks::None => Acks::None,
        workload::Acks::Leader => Acks::Leader,
        workload::Acks::All => Acks::All,
    }
}

fn producer_config(
    addr: &str,
    w: &Workload,
    credentials: Option<Credentials>,
    tls: Option<ClientTls>,
) -> ProducerConfig {
    ProducerConfig {
        bootstrap: addr.to_string(),
        credentials,
        tls,
        acks: acks(w.acks),
        batch_bytes: w.batch_bytes,
        linger: Duration::from_micros(w.linger_us),
        buffer_bytes: super::producer_buffer_bytes(w),
        block_when_full: true,
        ..ProducerConfig::default()
    }
}

impl Target for Eventflow {
    fn kind(&self) -> &'static str {
        "eventflow"
    }

    fn url(&self) -> &str {
        &self.url
    }

    fn prepare_topic(&self, w: &Workload) -> Result<()> {
        let mut admin = self.admin();
        if w.create_topic {
            match admin.delete_topic(&w.topic) {
                Ok(()) => {}
                Err(e) if e.code() == Some(ErrorCode::UnknownTopicOrPartition) => {}
                Err(e) => return Err(e).context(format!("deleting topic {}", w.topic)),
            }
            admin
                .create_topic(&w.topic, w.partitions, &[])
                .with_context(|| format!("creating topic {}", w.topic))?;
            return Ok(());
        }
        let described = admin
            .describe_topic(&w.topic)
            .with_context(|| format!("topic {} (use --create-topic to create it)", w.topic))?;
        super::check_partitions(w, described.partitions.len())
    }

    fn watermarks(&self, w: &Workload) -> Result<Vec<(i64, i64)>> {
        let mut admin = self.admin();
        (0..w.partitions)
            .map(|p| {
                let mut offset = |spec| {
                    admin
                        .list_offset(&w.topic, p, spec)
                        .with_context(|| format!("offsets of {}/{p}", w.topic))
                };
                Ok((offset(offset_spec::EARLIEST)?, offset(offset_spec::LATEST)?))
            })
            .collect()
    }

    fn producer(&self, w: &Workload, sink: Arc<dyn AckSink>) -> Result<Box<dyn ProducerWorker>> {
        // A batch's records are reported together: one clock reading and one lock per run
        // of a batch instead of per record (they were a quarter of the harness's samples
        // at full rate).
        let callback = Arc::new(
            move |tags: &[u64], outcome: &Result<_, ClientError>| match outcome {
                Ok(_) => sink.acked_many(tags, None),
                Err(e) => sink.acked_many(tags, Some(e)),
            },
        );
        let producer = Producer::with_batch_callback(
            producer_config(&self.addr, w, self.credentials.clone(), self.tls.clone()),
            callback,
        )
        .with_context(|| format!("producer for {}", self.url))?;
        Ok(Box::new(EventflowProducer {
            producer,
            topic: w.topic.clone(),
        }))
    }

    fn consumer(&self, w: &Workload, index: u32, start: &[i64]) -> Result<Box<dyn ConsumerWorker>> {
        let mut consumer = Consumer::new(ConsumerConfig {
            bootstrap: self.addr.clone(),
            max_wait: Duration::from_millis(100),
            min_bytes: 1,
            max_bytes: 8 << 20,
            check_crcs: w.check_crcs,
            credentials: self.credentials.clone(),
            tls: self.tls.clone(),
            ..ConsumerConfig::default()
        })
        .with_context(|| format!("consumer for {}", self.url))?;
        if let Some(group) = &w.consumer_group {
            // Members start where the run starts: the offsets are committed for the group
            // (while it has no members) before anyone subscribes.
            if index == 0 {
                let offsets: Vec<(&str, u32, i64)> = start
                    .iter()
                    .enumerate()
                    .map(|(p, &o)| (w.topic.as_str(), p as u32, o))
                    .collect();
                self.admin()
                    .commit_offsets(group, None, &offsets)
                    .with_context(|| format!("setting the start offsets of group {group}"))?;
            }
            let config = GroupConfig {
                session_timeout: Duration::from_secs(10),
                heartbeat_interval: Duration::from_millis(200),
                auto_commit: Some(Duration::from_secs(1)),
                reset: OffsetReset::Earliest,
                client_id: format!("eventflow-bench-{index}"),
                ..GroupConfig::default()
            };
            consumer
                .subscribe(group, &[&w.topic], config)
                .with_context(|| format!("joining group {group}"))?;
            return Ok(Box::new(EventflowConsumer { consumer }));
        }
        for p in w.consumer_partitions(index) {
            let at = start.get(p as usize).copied().unwrap_or(0);
            consumer
                .assign(&w.topic, &[p], StartAt::Offset(at))
                .with_context(|| format!("assigning {}/{p}", w.topic))?;
        }
        Ok(Box::new(EventflowConsumer { consumer }))
    }

    fn client_settings(&self, w: &Workload) -> Vec<(String, String)> {
        let c = producer_config(&self.addr, w, self.credentials.clone(), self.tls.clone());
        vec![
            ("client".into(), "eventflow (Rust, this repository)".into()),
            (
                "tls".into(),
                if self.tls.is_some() {
                    "on (rustls)"
                } else {
                    "off"
                }
                .into(),
            ),
            ("acks".into(), w.acks.as_str().into()),
            (
                "send".into(),
                "send_tagged_many at full rate (one lock and clock reading per 64 records), \
                 send_tagged on a schedule"
                    .into(),
            ),
            ("batch_bytes".into(), c.batch_bytes.to_string()),
            ("linger".into(), format!("{:?}", c.linger)),
            ("buffer_bytes".into(), c.buffer_bytes.to_string()),
            ("max_in_flight".into(), c.max_in_flight.to_string()),
            ("fetch max_bytes".into(), (8u32 << 20).to_string()),
            ("fetch max_wait".into(), "100ms".into()),
        ]
    }
}

struct EventflowProducer {
    producer: Producer,
    topic: String,
}

impl ProducerWorker for EventflowProducer {
    fn send(
        &mut self,
        partition: Option<u32>,
        key: Option<&[u8]>,
        value: &[u8],
        tag: u64,
    ) -> Result<()> {
        let record = Record {
            topic: &self.topic,
            partition,
            key,
            value: Some(value),
            ..Record::default()
        };
        self.producer.send_tagged(record, tag)?;
        Ok(())
    }

    fn send_many(&mut self, records: &[OutgoingRecord<'_>]) -> Result<()> {
        let topic = self.topic.as_str();
        let records = records.iter().map(|r| {
            let record = Record {
                topic,
                key: r.key,
                value: Some(r.value),
                ..Record::default()
            };
            (record, r.tag)
        });
        self.producer.send_tagged_many(records)?;
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.producer.flush()?;
        Ok(())
    }
}

struct EventflowConsumer {
    consumer: Consumer,
}

impl ConsumerWorker for EventflowConsumer {
    fn poll(&mut self, timeout: Duration, on_value: &mut dyn FnMut(&[u8])) -> Result<usize> {
        let records = self.consumer.poll(timeout)?;
        for r in &records {
            on_value(r.value.as_deref().unwrap_or_default());
        }
        Ok(records.len())
    }
}
