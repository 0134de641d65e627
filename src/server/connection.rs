//! One client connection, served entirely by the shard that accepted it, in either protocol:
//! native or Kafka. Both frame requests with a 4-byte length prefix, so the read loop,
//! the budgets, the in-flight limit, the writer and the splice are the same; only starting
//! a request (decode, hand to the protocol's front end, encode) and refusing a frame that
//! cannot be read differ ([`Protocol`]).
//!
//! The reader splits frames off one growing buffer: a request's record batches stay handles
//! into that buffer all the way to the log file. Requests are pipelined: each runs as its own
//! task and its response is queued when ready (responses carry the correlation id, so they
//! may overtake each other). The writer gathers every queued response into one vectored
//! write, and sends the records of partitions this shard owns straight from the segment
//! file with splice (through one pipe per connection).
//!
//! Memory is bounded by configuration. A frame larger than `max_request_bytes` is refused
//! before its bytes are read. The reader stops reading while `max_in_flight_per_connection`
//! requests are unanswered, or while its next frame does not fit the shard's
//! `max_queued_request_bytes` (taken when the frame is complete, given back when its
//! response is queued). So a shard holds at most that budget in requests, plus, per
//! connection, one frame being received and one read chunk.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::{poll_fn, Future};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use compio::buf::{BufResult, IntoInner, IoBufMut};
use compio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use compio::net::TcpStream;
use futures_util::future::Either;

use super::calls::ShareRelease;
use super::context::{first, ShardContext};
use super::kafka;
use super::native::{self, Reply};
use crate::protocol::api::{
    encode_error_response, encode_fetch_response_parts, encode_response, Request,
};
use crate::protocol::frame::{self, Part, RequestHeader, LENGTH_PREFIX, REQUEST_HEADER_LEN};
use crate::protocol::kafka as kafka_codec;
use crate::protocol::ErrorCode;
use crate::storage::FileRange;

/// The protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// Eventflow's own protocol (docs/PROTOCOL.md).
    Native,
    /// Kafka's protocol (docs/KAFKA.md).
    Kafka,
}

/// Smallest read the reader asks the kernel for.
const READ_CHUNK: usize = 64 * 1024;
/// Most iovecs in one write (the kernel's IOV_MAX is 1024).
const MAX_IOVECS: usize = 1024;

struct ConnectionState {
    /// Encoded responses waiting for the writer.
    outbox: RefCell<VecDeque<OutChunk>>,
    outbox_ready: crate::local::Notify,
    in_flight: Cell<usize>,
    request_done: crate::local::Notify,
    /// No more requests will be read; the writer exits once the outbox is empty and nothing
    /// is in flight.
    closing: Cell<bool>,
    /// The socket failed; stop everything.
    broken: Cell<bool>,
    /// Share-group consumers (group, member) that fetched on this connection: their locks
    /// are released when it closes, so others get their records at once.
    share_members: RefCell<Vec<(String, String)>>,
    /// Set when responses must leave in request order (Kafka's rule; the Java client
    /// fails on a response it did not expect next). Native responses leave as they finish:
    /// they carry correlation ids and the native clients match them.
    in_order: Option<InOrder>,
}

/// Responses held back until every earlier request's response is queued. Each request
/// takes a ticket when it starts (in arrival order); held responses are bounded by the
/// in-flight limit.
#[derive(Default)]
struct InOrder {
    next_ticket: Cell<u64>,
    next_out: Cell<u64>,
    held: RefCell<BTreeMap<u64, Vec<OutChunk>>>,
}

impl ConnectionState {
    fn push(&self, chunks: impl IntoIterator<Item = OutChunk>) {
        self.outbox.borrow_mut().extend(chunks);
        self.outbox_ready.notify_all();
    }

    fn push_bytes(&self, chunks: Vec<Bytes>) {
        self.push(chunks.into_iter().map(OutChunk::Bytes));
    }

    /// The ticket of a request starting now, when responses leave in order.
    fn ticket(&self) -> Option<u64> {
        self.in_order.as_ref().map(|o| {
            let ticket = o.next_ticket.get();
            o.next_ticket.set(ticket + 1);
            ticket
        })
    }

    /// Queues a finished request's response (`None`: it has none, as produce with acks 0):
    /// at once, or, with a ticket, after every earlier request's.
    fn finish(&self, ticket: Option<u64>, chunks: Option<Vec<OutChunk>>) {
        let (Some(ticket), Some(order)) = (ticket, &self.in_order) else {
            if let Some(chunks) = chunks {
                self.push(chunks);
            }
            return;
        };
        let mut held = order.held.borrow_mut();
        held.insert(ticket, chunks.unwrap_or_default());
        let mut outbox = self.outbox.borrow_mut();
        while let Some(chunks) = held.remove(&order.next_out.get()) {
            outbox.extend(chunks);
            order.next_out.set(order.next_out.get() + 1);
        }
        drop((held, outbox));
        self.outbox_ready.notify_all();
    }
}

/// A piece of the byte stream to the client.
enum OutChunk {
    /// Encoded response bytes (and fetched batches read on another shard).
    Bytes(Bytes),
    /// Stored batches sent straight from the segment file with splice.
    File(FileRange),
}

/// The response chunks of a handler's reply.
fn encode_reply(correlation_id: u32, reply: Reply) -> Vec<OutChunk> {
    match reply {
        Reply::Plain(response) => encode_response(correlation_id, &response)
            .into_iter()
            .map(OutChunk::Bytes)
            .collect(),
        Reply::Fetch(response, files) => {
            let parts = encode_fetch_response_parts(correlation_id, &response, &mut |i| {
                files.get(i).and_then(|f| f.as_ref()).map(|f| f.len)
            });
            with_files(parts, files.into_iter().flatten())
        }
    }
}

/// The chunks of an encoded frame whose placeholders take the file ranges, in order.
fn with_files(parts: Vec<Part>, mut files: impl Iterator<Item = FileRange>) -> Vec<OutChunk> {
    parts
        .into_iter()
        .filter_map(|part| match part {
            Part::Bytes(b) => Some(OutChunk::Bytes(b)),
            // Placeholders come in the order of the ranges that made them.
            Part::External(_) => files.next().map(OutChunk::File),
        })
        .collect()
}

/// A pipe for splicing file ranges to this connection's socket, made on first use.
struct SplicePipe {
    rx: compio::fs::pipe::Receiver,
    tx: compio::fs::pipe::Sender,
    capacity: usize,
}

impl SplicePipe {
    /// The kernel's default pipe holds 64 KiB; ask for 1 MiB (the default
    /// `/proc/sys/fs/pipe-max-size`) so a fetch moves in few splices.
    async fn new() -> std::io::Result<SplicePipe> {
        use std::os::fd::AsRawFd;
        let (rx, tx) = compio::fs::pipe::anonymous().await?;
        // SAFETY: fcntl on a pipe fd we own; F_SETPIPE_SZ takes an int and fails cleanly
        // (EPERM, EBUSY) if the size is not allowed, leaving the pipe as it was.
        let size = unsafe { libc::fcntl(tx.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
        // SAFETY: as above; F_GETPIPE_SZ only reads the pipe's size.
        let size = if size > 0 {
            size
        } else {
            unsafe { libc::fcntl(tx.as_raw_fd(), libc::F_GETPIPE_SZ) }
        };
        Ok(SplicePipe {
            rx,
            tx,
            capacity: usize::try_from(size).unwrap_or(0).max(4096),
        })
    }
}

/// Sends a file range to the socket: file → pipe → socket, without the bytes entering user
/// space.
async fn splice_range(
    stream: &TcpStream,
    pipe: &mut Option<SplicePipe>,
    range: &FileRange,
) -> std::io::Result<()> {
    use compio::fs::pipe::splice;
    use std::io::{Error, ErrorKind};
    if pipe.is_none() {
        *pipe = Some(SplicePipe::new().await?);
    }
    let pipe = pipe.as_ref().expect("created above");
    let mut sent = 0usize;
    while sent < range.len {
        let want = (range.len - sent).min(pipe.capacity);
        let offset = i64::try_from(range.position + sent as u64)
            .map_err(|_| Error::new(ErrorKind::InvalidInput, "file offset out of range"))?;
        let filled = splice(&range.file, &pipe.tx, want)
            .offset_in(offset)
            .await?;
        if filled == 0 {
            return Err(Error::new(
                ErrorKind::UnexpectedEof,
                "the segment ended before the range the index promised",
            ));
        }
        let mut in_pipe = filled;
        while in_pipe > 0 {
            let moved = splice(&pipe.rx, stream, in_pipe).await?;
            if moved == 0 {
                return Err(Error::new(ErrorKind::WriteZero, "the socket took nothing"));
            }
            in_pipe -= moved;
        }
        sent += filled;
    }
    Ok(())
}

/// Serves `stream` until the client leaves, the connection breaks, or the broker stops.
pub(crate) async fn serve(ctx: Rc<ShardContext>, stream: TcpStream, protocol: Protocol) {
    let peer = stream.peer_addr().ok();
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(?peer, "set_nodelay: {e}");
    }
    let state = Rc::new(ConnectionState {
        outbox: RefCell::new(VecDeque::new()),
        outbox_ready: crate::local::Notify::new(),
        in_flight: Cell::new(0),
        request_done: crate::local::Notify::new(),
        closing: Cell::new(false),
        broken: Cell::new(false),
        share_members: RefCell::new(Vec::new()),
        in_order: (protocol == Protocol::Kafka).then(InOrder::default),
    });
    let ends = Endpoints {
        local: stream.local_addr().ok(),
        peer,
    };
    let (reader, writer) = stream.into_split();
    let writer_task = compio::runtime::spawn(write_loop(writer, state.clone()));
    read_loop(&ctx, reader, &state, protocol, ends).await;
    state.closing.set(true);
    state.outbox_ready.notify_all();
    let _ = writer_task.await;
    let members = state.share_members.take();
    if !members.is_empty() && !ctx.is_shutting_down() {
        for (group, member) in members {
            ctx.call_all(|| ShareRelease {
                group: group.clone(),
                member: member.clone(),
            })
            .await;
        }
    }
    tracing::debug!(?peer, "connection closed");
}

async fn write_loop(mut stream: TcpStream, state: Rc<ConnectionState>) {
    let mut pipe: Option<SplicePipe> = None;
    loop {
        let ready = state.outbox_ready.notified();
        // Everything queued, up to the first file range: one gathered write. A file range
        // at the front: one splice.
        let (bytes, file): (Vec<Bytes>, Option<FileRange>) = {
            let mut outbox = state.outbox.borrow_mut();
            let mut bytes = Vec::new();
            let mut file = None;
            while bytes.len() < MAX_IOVECS {
                match outbox.pop_front() {
                    Some(OutChunk::Bytes(b)) => bytes.push(b),
                    Some(OutChunk::File(f)) if bytes.is_empty() => {
                        file = Some(f);
                        break;
                    }
                    Some(chunk @ OutChunk::File(_)) => {
                        outbox.push_front(chunk);
                        break;
                    }
                    None => break,
                }
            }
            (bytes, file)
        };
        let result = if let Some(range) = file {
            splice_range(&stream, &mut pipe, &range).await
        } else if !bytes.is_empty() {
            stream.write_vectored_all(bytes).await.0
        } else {
            if state.broken.get() || (state.closing.get() && state.in_flight.get() == 0) {
                break;
            }
            ready.await;
            continue;
        };
        if let Err(e) = result {
            tracing::debug!("write failed, dropping connection: {e}");
            state.broken.set(true);
            state.request_done.notify_all();
            break;
        }
    }
    let _ = stream.shutdown().await;
}

/// The two ends of a connection.
#[derive(Debug, Clone, Copy)]
struct Endpoints {
    /// The address the client connected to.
    local: Option<SocketAddr>,
    /// The client's address.
    peer: Option<SocketAddr>,
}

async fn read_loop(
    ctx: &Rc<ShardContext>,
    mut stream: TcpStream,
    state: &Rc<ConnectionState>,
    protocol: Protocol,
    ends: Endpoints,
) {
    let local_ip = ends.local.map(|a| a.ip());
    let max_payload = ctx.config.max_request_bytes;
    let max_in_flight = ctx.config.max_in_flight_per_connection.max(1);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        // Answer every complete frame already buffered.
        loop {
            match frame::split_frame(&mut buf, max_payload) {
                Ok(Some(payload)) => {
                    let cost = LENGTH_PREFIX + payload.len();
                    match first(ctx.request_budget.take(cost), ctx.shutdown.notified()).await {
                        Either::Left(()) => {}
                        Either::Right(()) => return,
                    }
                    let go_on = match protocol {
                        Protocol::Native => {
                            start_request(ctx, state, payload, cost, local_ip).await
                        }
                        Protocol::Kafka => {
                            start_kafka_request(ctx, state, payload, cost, ends).await
                        }
                    };
                    if !go_on {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) if protocol == Protocol::Kafka => {
                    // Kafka has no response for a frame it cannot read: close, as Kafka does.
                    tracing::warn!("closing a Kafka connection: {e}");
                    return;
                }
                Err(e) => {
                    // The stream cannot be resynchronised: answer, then close.
                    let correlation_id = if buf.len() >= LENGTH_PREFIX + REQUEST_HEADER_LEN {
                        RequestHeader::peek_correlation_id(&buf[LENGTH_PREFIX..])
                    } else {
                        0
                    };
                    tracing::debug!("refusing frame: {e}");
                    state.push_bytes(encode_error_response(
                        correlation_id,
                        e.code(),
                        &e.to_string(),
                    ));
                    return;
                }
            }
        }
        // Backpressure: stop reading while too many requests are unanswered.
        while state.in_flight.get() >= max_in_flight && !state.broken.get() {
            state.request_done.notified().await;
        }
        if state.broken.get() {
            return;
        }
        // Room for at least the rest of the frame being received, and a decent read.
        let wanted = frame::peek_frame_len(&buf)
            .map(|len| (LENGTH_PREFIX + len).saturating_sub(buf.len()))
            .unwrap_or(0)
            .max(READ_CHUNK);
        if buf.capacity() - buf.len() < wanted {
            buf.reserve(wanted);
        }
        let read = stream.read(buf.uninit());
        match first(read, ctx.shutdown.notified()).await {
            Either::Left(BufResult(Ok(0), _)) => return,
            Either::Left(BufResult(Ok(_), slice)) => buf = slice.into_inner(),
            Either::Left(BufResult(Err(e), _)) => {
                tracing::debug!("read failed: {e}");
                return;
            }
            Either::Right(()) => return,
        }
        if ctx.is_shutting_down() {
            return;
        }
    }
}

/// Decodes one request and starts it. Returns false if the connection must close.
/// `cost` bytes of the shard's request budget were taken for it: they are given back when
/// the request is answered.
async fn start_request(
    ctx: &Rc<ShardContext>,
    state: &Rc<ConnectionState>,
    mut payload: BytesMut,
    cost: usize,
    local_ip: Option<IpAddr>,
) -> bool {
    // Given back on every path: the decode errors below, or the request's task ending.
    let taken = BudgetTaken {
        ctx: ctx.clone(),
        cost,
    };
    let correlation_id = RequestHeader::peek_correlation_id(&payload);
    let header = match RequestHeader::decode(&mut payload) {
        Ok(h) => h,
        Err(e) => {
            state.push_bytes(encode_error_response(
                correlation_id,
                ErrorCode::CorruptFrame,
                &e.to_string(),
            ));
            return false;
        }
    };
    let request = match Request::decode(&header, payload) {
        Ok(r) => r,
        Err(e) => {
            let code = e.code();
            state.push_bytes(encode_error_response(correlation_id, code, &e.to_string()));
            // An unknown API or version, or a well-formed field with a value out of its
            // domain, leaves the stream in sync: the connection goes on. A body that does
            // not parse cannot be trusted: close.
            return matches!(
                code,
                ErrorCode::UnsupportedApi
                    | ErrorCode::UnsupportedVersion
                    | ErrorCode::InvalidRequest
            );
        }
    };
    if let Request::ShareFetch(r) = &request {
        let mut members = state.share_members.borrow_mut();
        if !members
            .iter()
            .any(|(g, m)| *g == r.group && *m == r.member_id)
        {
            members.push((r.group.clone(), r.member_id.clone()));
        }
    }
    let ctx = ctx.clone();
    run_request(state, taken, async move {
        native::handle(&ctx, request, local_ip)
            .await
            .map(|outcome| match outcome {
                Ok(reply) => encode_reply(correlation_id, reply),
                Err(e) => encode_error_response(correlation_id, e.code, &e.message)
                    .into_iter()
                    .map(OutChunk::Bytes)
                    .collect(),
            })
    })
    .await;
    true
}

/// Decodes one Kafka request and starts it. Returns false if the connection must close.
async fn start_kafka_request(
    ctx: &Rc<ShardContext>,
    state: &Rc<ConnectionState>,
    payload: BytesMut,
    cost: usize,
    ends: Endpoints,
) -> bool {
    let taken = BudgetTaken {
        ctx: ctx.clone(),
        cost,
    };
    let request = match kafka_codec::decode_request(payload) {
        Ok(r) => r,
        Err(kafka_codec::Refusal::ApiVersionsVersion {
            correlation_id,
            version,
        }) => {
            tracing::debug!(version, "api versions at an unknown version: answering v0");
            let answer = kafka_codec::api_versions_unsupported(correlation_id);
            state.finish(state.ticket(), Some(vec![OutChunk::Bytes(answer)]));
            return true;
        }
        Err(
            refusal @ kafka_codec::Refusal::Unsupported {
                correlation_id,
                key,
                version,
            },
        ) => {
            let Some(answer) = kafka_codec::unsupported_answer(correlation_id, key, version) else {
                tracing::warn!("closing a Kafka connection: {refusal}");
                return false;
            };
            tracing::warn!(
                key,
                version,
                "kafka api not served: answered UNSUPPORTED_VERSION"
            );
            state.finish(state.ticket(), Some(vec![OutChunk::Bytes(answer)]));
            return true;
        }
        Err(refusal) => {
            tracing::warn!("closing a Kafka connection: {refusal}");
            return false;
        }
    };
    let ctx = ctx.clone();
    let failed = state.clone();
    run_request(state, taken, async move {
        match kafka::handle(&ctx, request, ends.local, ends.peer).await {
            Ok(reply) => reply.map(|r| with_files(r.parts, r.files.into_iter())),
            Err(e) => {
                tracing::error!("closing a Kafka connection: {e}");
                failed.broken.set(true);
                None
            }
        }
    })
    .await;
    true
}

/// Runs a request's work, queueing the response chunks it returns (none: no response).
async fn run_request(
    state: &Rc<ConnectionState>,
    taken: BudgetTaken,
    work: impl Future<Output = Option<Vec<OutChunk>>> + 'static,
) {
    state.in_flight.set(state.in_flight.get() + 1);
    let ticket = state.ticket();
    let mut task: Pin<Box<dyn Future<Output = ()>>> = Box::pin({
        let state = state.clone();
        async move {
            let _taken = taken;
            let chunks = work.await;
            state.finish(ticket, chunks);
            state.in_flight.set(state.in_flight.get() - 1);
            state.request_done.notify_all();
            state.outbox_ready.notify_all();
        }
    });
    // Poll once right here: everything a handler does before its first wait (routing a
    // batch into a ring, queueing it on a local partition) happens in the order requests
    // arrived. Only what is left runs as its own task.
    let finished = poll_fn(|cx| Poll::Ready(task.as_mut().poll(cx).is_ready())).await;
    if !finished {
        compio::runtime::spawn(task).detach();
    }
}

/// Bytes of the shard's request budget held by one request; given back when dropped.
struct BudgetTaken {
    ctx: Rc<ShardContext>,
    cost: usize,
}

impl Drop for BudgetTaken {
    fn drop(&mut self) {
        self.ctx.request_budget.give(self.cost);
    }
}

/// Refuses a connection over the limit with an error frame, then closes it.
pub(crate) async fn refuse(mut stream: TcpStream, code: ErrorCode, message: &str) {
    let _ = stream.set_nodelay(true);
    let chunks = encode_error_response(0, code, message);
    let _ = stream.write_vectored_all(chunks).await;
    let _ = stream.shutdown().await;
}
