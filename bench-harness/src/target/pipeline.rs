//! A pipelined producer connection for the peers whose protocol the harness speaks itself
//! (Redis, NATS). The harness thread encodes each record's command into an outgoing batch
//! and writes the batch when it reaches `batch_bytes`, or when its first record has waited
//! `linger` (a flusher thread covers the gaps between sends); a reader thread matches each
//! reply to its record by id and reports it to the [`AckSink`]. This is the batching the
//! other targets' clients do (Kafka's `batch.size` and `linger.ms`), applied to commands.
//!
//! Two locks, never held together by the reader: `out` (the batch and the socket's write
//! side) and `inflight` (records written and not yet answered). The reader takes only
//! `inflight`, so a writer blocked on a full socket can never keep the reader from draining
//! replies, which is what unblocks the server and then the writer.
//!
//! At most `max_inflight` records wait for their replies, the same bound in bytes as the
//! other targets' client buffers ([`super::producer_buffer_bytes`]); `send` waits beyond it
//! (the wait shows up as publish delay).

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::AckSink;

/// Bound on [`Pipeline::flush`]'s wait for the last replies.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// One reply: the id of the record it answers, and the server's error, if any.
pub(super) type Reply = (u64, Option<String>);

/// Reads replies off the connection; implemented per protocol.
pub(super) trait Replies: Send + 'static {
    /// Blocks for at least one reply and appends every reply that is already complete to
    /// `out`; `control` writes a protocol message (a keep-alive answer) between batches.
    /// Returns `Ok(false)` at the end of the stream.
    fn read(
        &mut self,
        out: &mut Vec<Reply>,
        control: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<bool>;
}

struct Outgoing {
    buf: Vec<u8>,
    /// Tags of the records in `buf`, in id order.
    tags: Vec<u64>,
    first_at: Option<Instant>,
    next_id: u64,
    writer: TcpStream,
}

#[derive(Default)]
struct InFlight {
    /// Id of `slots[0]`.
    base: u64,
    /// The tag of each record written from `base` on; `None` once answered.
    slots: VecDeque<Option<u64>>,
    live: usize,
    /// Why the connection can take no more records.
    closed: Option<String>,
}

struct Shared {
    out: Mutex<Outgoing>,
    /// Signalled when a batch gets its first record or the pipeline stops.
    pending: Condvar,
    inflight: Mutex<InFlight>,
    /// Signalled when replies arrive or the connection closes.
    answered: Condvar,
    stop: AtomicBool,
    sink: Arc<dyn AckSink>,
    batch_bytes: usize,
    linger: Duration,
    max_inflight: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The pipelined connection of one producer.
pub(super) struct Pipeline {
    shared: Arc<Shared>,
    stream: TcpStream,
    flusher: Option<JoinHandle<()>>,
    reader: Option<JoinHandle<()>>,
}

impl Pipeline {
    /// Starts the reader (and, with a linger, the flusher) on a connected socket.
    pub(super) fn start(
        stream: TcpStream,
        replies: impl Replies,
        sink: Arc<dyn AckSink>,
        batch_bytes: usize,
        linger: Duration,
        max_inflight: usize,
    ) -> Result<Pipeline> {
        let shared = Arc::new(Shared {
            out: Mutex::new(Outgoing {
                buf: Vec::with_capacity(batch_bytes.min(16 << 20) + 4096),
                tags: Vec::new(),
                first_at: None,
                next_id: 0,
                writer: stream.try_clone().context("cloning the socket")?,
            }),
            pending: Condvar::new(),
            inflight: Mutex::new(InFlight::default()),
            answered: Condvar::new(),
            stop: AtomicBool::new(false),
            sink,
            batch_bytes,
            linger,
            max_inflight: max_inflight.max(1),
        });
        let reader = {
            let shared = shared.clone();
            thread::Builder::new()
                .name("bench-replies".into())
                .spawn(move || read_loop(&shared, replies))?
        };
        let flusher = if linger.is_zero() {
            None
        } else {
            let shared = shared.clone();
            Some(
                thread::Builder::new()
                    .name("bench-linger".into())
                    .spawn(move || flush_loop(&shared))?,
            )
        };
        Ok(Pipeline {
            shared,
            stream,
            flusher,
            reader: Some(reader),
        })
    }

    /// Adds one record: `encode` appends its command, given the record's id.
    pub(super) fn send(&self, tag: u64, encode: impl FnOnce(&mut Vec<u8>, u64)) -> Result<()> {
        let s = &*self.shared;
        let mut out = lock(&s.out);
        // Back-pressure: wait while the records written and those batched reach the bound.
        {
            let mut f = lock(&s.inflight);
            while f.closed.is_none() && f.live + out.tags.len() >= s.max_inflight {
                if out.tags.is_empty() {
                    f = s.answered.wait(f).unwrap_or_else(PoisonError::into_inner);
                } else {
                    drop(f);
                    write_batch(s, &mut out)?;
                    f = lock(&s.inflight);
                }
            }
            if let Some(reason) = &f.closed {
                bail!("connection closed: {reason}");
            }
        }
        let id = out.next_id;
        out.next_id += 1;
        encode(&mut out.buf, id);
        out.tags.push(tag);
        if out.first_at.is_none() {
            out.first_at = Some(Instant::now());
            s.pending.notify_one();
        }
        if out.buf.len() >= s.batch_bytes || s.linger.is_zero() {
            write_batch(s, &mut out)?;
        }
        Ok(())
    }

    /// Writes what is batched and waits until every record has its reply.
    pub(super) fn flush(&self) -> Result<()> {
        let s = &*self.shared;
        write_batch(s, &mut lock(&s.out))?;
        let deadline = Instant::now() + FLUSH_TIMEOUT;
        let mut f = lock(&s.inflight);
        while f.live > 0 && f.closed.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("{} records without a reply after {FLUSH_TIMEOUT:?}", f.live);
            }
            f = s
                .answered
                .wait_timeout(f, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        match &f.closed {
            Some(reason) if f.live > 0 => bail!("connection closed: {reason}"),
            _ => Ok(()),
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.pending.notify_all();
        let _ = self.stream.shutdown(Shutdown::Both);
        for handle in [self.flusher.take(), self.reader.take()]
            .into_iter()
            .flatten()
        {
            let _ = handle.join();
        }
    }
}

/// Registers the batch's records as in flight (before their bytes leave, so that no reply
/// can come first) and writes the batch.
fn write_batch(s: &Shared, out: &mut Outgoing) -> Result<()> {
    if out.tags.is_empty() {
        return Ok(());
    }
    {
        let mut f = lock(&s.inflight);
        if let Some(reason) = &f.closed {
            bail!("connection closed: {reason}");
        }
        f.live += out.tags.len();
        f.slots.extend(out.tags.drain(..).map(Some));
    }
    out.first_at = None;
    let result = out.writer.write_all(&out.buf);
    out.buf.clear();
    if let Err(e) = result {
        close(s, &format!("write: {e}"));
        return Err(e).context("writing a batch");
    }
    Ok(())
}

/// Writes a batch once its first record is `linger` old.
fn flush_loop(s: &Shared) {
    let mut out = lock(&s.out);
    while !s.stop.load(Ordering::Relaxed) {
        let wait = match out.first_at {
            None => Duration::from_millis(100),
            Some(t) => {
                let due = t + s.linger;
                let now = Instant::now();
                if now >= due {
                    if write_batch(s, &mut out).is_err() {
                        return;
                    }
                    continue;
                }
                due - now
            }
        };
        out = s
            .pending
            .wait_timeout(out, wait)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

fn read_loop(s: &Shared, mut replies: impl Replies) {
    let mut batch = Vec::new();
    let mut done: Vec<(u64, Option<String>)> = Vec::new();
    let mut control = |bytes: &[u8]| lock(&s.out).writer.write_all(bytes);
    loop {
        batch.clear();
        let reason = match replies.read(&mut batch, &mut control) {
            Ok(true) => None,
            Ok(false) => Some("the server closed the connection".to_string()),
            Err(e) => Some(format!("read: {e}")),
        };
        {
            let mut f = lock(&s.inflight);
            for (id, error) in batch.drain(..) {
                let slot = id
                    .checked_sub(f.base)
                    .and_then(|i| f.slots.get_mut(i as usize))
                    .and_then(Option::take);
                match slot {
                    Some(tag) => done.push((tag, error)),
                    None => {
                        drop(f);
                        close(s, &format!("a reply for record {id}, which is not waiting"));
                        return;
                    }
                }
            }
            f.live -= done.len();
            while f.slots.front().is_some_and(Option::is_none) {
                f.slots.pop_front();
                f.base += 1;
            }
        }
        s.answered.notify_all();
        for (tag, error) in done.drain(..) {
            match error {
                None => s.sink.acked(tag, None),
                Some(e) => s.sink.acked(tag, Some(&e as &dyn fmt::Display)),
            }
        }
        if let Some(reason) = reason {
            close(s, &reason);
            return;
        }
    }
}

/// Marks the connection closed; records still waiting fail with `reason` (unless the
/// producer itself is being dropped).
fn close(s: &Shared, reason: &str) {
    let waiting: Vec<u64> = {
        let mut f = lock(&s.inflight);
        if f.closed.is_some() {
            return;
        }
        f.closed = Some(reason.to_string());
        f.live = 0;
        f.slots.drain(..).flatten().collect()
    };
    s.answered.notify_all();
    if s.stop.load(Ordering::Relaxed) {
        return;
    }
    for tag in waiting {
        s.sink.acked(tag, Some(&reason as &dyn fmt::Display));
    }
}
