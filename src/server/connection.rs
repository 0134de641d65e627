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
//! `max_queued_request_bytes`: a frame's bytes are taken from that budget as soon as its
//! length prefix arrives, before its body is buffered, and given back when its response is
//! queued. So a shard holds at most that budget in requests, complete or partial, plus one
//! small read ([`SMALL_READ`]) per connection. A client that announces a frame and trickles
//! it is closed after `request_read_timeout`; a silent one after `idle_timeout`.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use compio::buf::{BufResult, IntoInner, IoBuf};
use compio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use compio::net::TcpStream;
use futures_util::future::Either;

use super::authorizer::Caller;
use super::calls::ShareRelease;
use super::context::{first, ShardContext};
use super::kafka;
use super::native::{self, Reply};
use super::sasl::SaslSession;
use super::tls::{self, TlsReader, TlsWriter};
use crate::auth::acl::{Operation, ResourceType};
use crate::metrics::shard::{self as metrics, ApiId, Outcome, WireProtocol};
use crate::protocol::api::{
    encode_error_response, encode_fetch_response_parts, encode_response, Request,
};
use crate::protocol::frame::{self, Part, RequestHeader, LENGTH_PREFIX, REQUEST_HEADER_LEN};
use crate::protocol::kafka as kafka_codec;
use crate::protocol::ErrorCode;
use crate::storage::FileRange;
use kafka_protocol::messages::ApiKey;

/// The protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// Eventflow's own protocol (docs/PROTOCOL.md).
    Native,
    /// Kafka's protocol (docs/KAFKA.md).
    Kafka,
}

/// What the reader reads beyond the rest of an admitted frame, or at most while no frame
/// is admitted: a frame's length prefix and small requests. Bytes the request budget does
/// not count, per connection.
const SMALL_READ: usize = 4 * 1024;
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
    /// When bytes last arrived or a response was last queued: the idle timeout counts from
    /// here.
    last_active: Cell<Instant>,
    /// Share-group consumers (group, member) that fetched on this connection: their locks
    /// are released when it closes, so others get their records at once.
    share_members: RefCell<Vec<(String, String)>>,
    /// Set when responses must leave in request order (Kafka's rule; the Java client
    /// fails on a response it did not expect next). Native responses leave as they finish:
    /// they carry correlation ids and the native clients match them.
    in_order: Option<InOrder>,
    /// The connection's authentication: who the client is, or how far it got.
    sasl: kafka::Session,
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
    let mut out = Vec::with_capacity(parts.len());
    for part in parts {
        match part {
            Part::Bytes(b) => out.push(OutChunk::Bytes(b)),
            // Placeholders come in the order of the ranges that made them.
            // A range the log had in memory (`--log-writes direct`) goes as its pieces.
            Part::External(_) => match files.next() {
                Some(FileRange {
                    cached: Some(pieces),
                    ..
                }) => out.extend(pieces.into_iter().map(OutChunk::Bytes)),
                Some(range) => out.push(OutChunk::File(range)),
                None => {}
            },
        }
    }
    out
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

/// A connection's socket as the listener hands it over: plaintext, or TLS after its
/// handshake.
pub(crate) enum Transport {
    Plain(TcpStream),
    Tls(TcpStream, tls::Session),
}

/// The reading side of a connection.
enum Reader {
    Plain(TcpStream),
    Tls(TlsReader),
}

impl Reader {
    /// Reads at most `wanted` bytes onto the end of `buf` (which has room for them).
    async fn read(&mut self, buf: BytesMut, wanted: usize) -> BufResult<usize, BytesMut> {
        match self {
            Reader::Plain(stream) => {
                let start = buf.len();
                let BufResult(read, buf) = stream.read(buf.slice(start..start + wanted)).await;
                BufResult(read, buf.into_inner())
            }
            Reader::Tls(reader) => reader.read(buf, wanted).await,
        }
    }
}

/// The writing side of a connection.
enum Writer {
    Plain(TcpStream),
    Tls(TlsWriter),
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
/// `sasl` is the connection's authentication as the listener starts it.
pub(crate) async fn serve(
    ctx: Rc<ShardContext>,
    transport: Transport,
    protocol: Protocol,
    sasl: SaslSession,
) {
    let stream = match &transport {
        Transport::Plain(stream) | Transport::Tls(stream, _) => stream,
    };
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
        last_active: Cell::new(Instant::now()),
        share_members: RefCell::new(Vec::new()),
        in_order: (protocol == Protocol::Kafka).then(InOrder::default),
        sasl: Rc::new(RefCell::new(sasl)),
    });
    let ends = Endpoints {
        local: stream.local_addr().ok(),
        peer,
    };
    let (reader, writer) = match transport {
        Transport::Plain(stream) => {
            let (reader, writer) = stream.into_split();
            (Reader::Plain(reader), Writer::Plain(writer))
        }
        Transport::Tls(stream, session) => {
            let (reader, writer) = stream.into_split();
            let woken = state.clone();
            let wake_writer = Box::new(move || woken.outbox_ready.notify_all());
            (
                Reader::Tls(TlsReader::new(reader, session.clone(), wake_writer)),
                Writer::Tls(TlsWriter::new(writer, session)),
            )
        }
    };
    let writer_task = compio::runtime::spawn(write_loop(writer, state.clone()));
    read_loop(&ctx, reader, &state, protocol, ends).await;
    // The connection no longer waits to authenticate: its place among the unauthenticated
    // ones is free before the writer closes the socket, so the client that sees the close
    // can connect again within the bound.
    state.sasl.borrow_mut().release_slot();
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

async fn write_loop(mut writer: Writer, state: Rc<ConnectionState>) {
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
        let result = match (&mut writer, file) {
            (Writer::Plain(stream), Some(range)) => splice_range(stream, &mut pipe, &range).await,
            (Writer::Tls(tls), Some(range)) => tls.send_file(&range).await,
            (Writer::Plain(stream), None) if !bytes.is_empty() => {
                stream.write_vectored_all(bytes).await.0
            }
            (Writer::Tls(tls), None) if !bytes.is_empty() => tls.write_all(bytes).await,
            // Records TLS owes the client that no response made (an alert, a key update).
            (Writer::Tls(tls), None) if tls.has_pending() => tls.flush().await,
            (_, None) => Ok(()),
        };
        if result.is_ok() && state.outbox.borrow().is_empty() {
            if state.broken.get() || (state.closing.get() && state.in_flight.get() == 0) {
                break;
            }
            ready.await;
            continue;
        }
        if let Err(e) = result {
            tracing::debug!("write failed, dropping connection: {e}");
            state.broken.set(true);
            state.request_done.notify_all();
            break;
        }
    }
    match &mut writer {
        Writer::Plain(stream) => {
            let _ = stream.shutdown().await;
        }
        Writer::Tls(tls) => tls.close().await,
    }
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
    mut stream: Reader,
    state: &Rc<ConnectionState>,
    protocol: Protocol,
    ends: Endpoints,
) {
    let max_payload = ctx.config.max_request_bytes;
    let max_in_flight = ctx.config.max_in_flight_per_connection.max(1);
    let read_timeout = ctx.config.request_read_timeout;
    let mut buf = BytesMut::new();
    // The budget of the frame at the front of `buf`, taken when its length prefix arrived.
    let mut reserved: Option<BudgetTaken> = None;
    // When the frame at the front of `buf` must be complete (set while one is partial).
    let mut frame_deadline: Option<Instant> = None;
    loop {
        // Admit the frame whose prefix is here, then answer every complete frame buffered.
        loop {
            if reserved.is_none() {
                if let Some(len) = frame::peek_frame_len(&buf).filter(|&l| l <= max_payload) {
                    let cost = LENGTH_PREFIX + len;
                    match first(ctx.request_budget.take(cost), ctx.shutdown.notified()).await {
                        Either::Left(()) => {}
                        Either::Right(()) => return,
                    }
                    reserved = Some(BudgetTaken {
                        ctx: ctx.clone(),
                        cost,
                    });
                    // The wait for the budget was the broker's: the client's time starts now.
                    frame_deadline = Some(Instant::now() + read_timeout);
                }
            }
            match frame::split_frame(&mut buf, max_payload) {
                Ok(Some(payload)) => {
                    let Some(taken) = reserved.take() else {
                        // Unreachable: a complete frame's prefix was admitted above.
                        tracing::error!("a complete frame without its budget: closing");
                        return;
                    };
                    frame_deadline = (!buf.is_empty()).then(|| Instant::now() + read_timeout);
                    let go_on = match protocol {
                        Protocol::Native => start_request(ctx, state, payload, taken, ends).await,
                        Protocol::Kafka => {
                            start_kafka_request(ctx, state, payload, taken, ends).await
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
        // Room for the rest of an admitted frame and a little more (the next prefix and small
        // requests); without an admitted frame, only that little: the bytes of a frame are
        // buffered once the budget holds them.
        let rest = match (&reserved, frame::peek_frame_len(&buf)) {
            (Some(_), Some(len)) => (LENGTH_PREFIX + len).saturating_sub(buf.len()),
            _ => 0,
        };
        let wanted = rest + SMALL_READ;
        if buf.is_empty() && buf.capacity() > wanted {
            // Do not keep a large frame's allocation alive while waiting for the next one.
            buf = BytesMut::new();
        }
        if buf.capacity() - buf.len() < wanted {
            buf.reserve(wanted);
        }
        buf = match receive(ctx, &mut stream, state, buf, wanted, frame_deadline).await {
            Received::Bytes(filled) => filled,
            Received::Closed => return,
            Received::TimedOut(why) => {
                tracing::info!(peer = ?ends.peer, ?protocol, "closing a connection: {why}");
                return;
            }
        };
        if frame_deadline.is_none() {
            frame_deadline = Some(Instant::now() + read_timeout);
        }
        state.last_active.set(Instant::now());
        if ctx.is_shutting_down() {
            return;
        }
    }
}

/// What one read brought.
enum Received {
    /// More bytes (the buffer, filled further).
    Bytes(BytesMut),
    /// The client closed, the socket failed, or the broker is stopping.
    Closed,
    /// The client took too long; why.
    TimedOut(String),
}

/// Reads at most `wanted` bytes once into `buf` (which has room for them), unless a timeout
/// passes first: `frame_deadline` for a frame that has started to arrive, else the idle
/// timeout once no request is in flight.
async fn receive(
    ctx: &ShardContext,
    stream: &mut Reader,
    state: &ConnectionState,
    buf: BytesMut,
    wanted: usize,
    frame_deadline: Option<Instant>,
) -> Received {
    let idle = ctx.config.idle_timeout;
    let read = stream.read(buf, wanted);
    futures_util::pin_mut!(read);
    loop {
        let now = Instant::now();
        let idle_since = state.last_active.get();
        let (wake, expired) = match frame_deadline {
            Some(deadline) => (deadline, deadline <= now),
            // A request in flight (a long poll) keeps the connection: look again later.
            None if state.in_flight.get() > 0 => (now + idle, false),
            None => (idle_since + idle, idle_since + idle <= now),
        };
        let auth_deadline = state.sasl.borrow().deadline();
        if let Some(deadline) = auth_deadline {
            if deadline <= now {
                return Received::TimedOut(format!(
                    "not authenticated within --sasl-timeout-ms ({} ms)",
                    ctx.config.auth.timeout.as_millis()
                ));
            }
        }
        let wake = auth_deadline.map_or(wake, |d| d.min(wake));
        if expired {
            return Received::TimedOut(match frame_deadline {
                Some(_) => format!(
                    "a request did not arrive within --request-read-timeout-ms ({} ms)",
                    ctx.config.request_read_timeout.as_millis()
                ),
                None => format!("idle for --idle-timeout-ms ({} ms)", idle.as_millis()),
            });
        }
        let timer = compio::time::sleep(wake - now);
        let stop = first(timer, ctx.shutdown.notified());
        match first(read.as_mut(), stop).await {
            Either::Left(BufResult(Ok(0), _)) => return Received::Closed,
            Either::Left(BufResult(Ok(_), filled)) => return Received::Bytes(filled),
            Either::Left(BufResult(Err(e), _)) => {
                tracing::debug!("read failed: {e}");
                return Received::Closed;
            }
            Either::Right(Either::Left(())) => {}
            Either::Right(Either::Right(())) => return Received::Closed,
        }
    }
}

/// Decodes one request and starts it. Returns false if the connection must close.
/// `taken` is the frame's share of the shard's request budget: it is given back on every
/// path, the decode errors below or the request's task ending.
async fn start_request(
    ctx: &Rc<ShardContext>,
    state: &Rc<ConnectionState>,
    mut payload: BytesMut,
    taken: BudgetTaken,
    ends: Endpoints,
) -> bool {
    let (local_ip, peer) = (ends.local.map(|a| a.ip()), ends.peer);
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
    let exchange = matches!(
        request,
        Request::ApiVersions(_) | Request::SaslHandshake(_) | Request::SaslAuthenticate(_)
    );
    if !exchange && !state.sasl.borrow().admits_requests() {
        // Answered, so the client can say why, then closed: the stream stays in sync, but
        // a client that skipped authentication will not start it now.
        tracing::info!(peer = ?peer, api = ?request.api_key(), "closing a native connection: a request before authenticating");
        state.push_bytes(encode_error_response(
            correlation_id,
            ErrorCode::AuthenticationRequired,
            "this listener requires authentication first (SaslHandshake, SaslAuthenticate)",
        ));
        return false;
    }
    if let Request::ShareFetch(r) = &request {
        // The members whose records are released when this connection closes: only those
        // of groups this client may read, or closing it would release another's locks.
        let caller = Caller::new(ctx, &state.sasl.borrow(), peer);
        let mut members = state.share_members.borrow_mut();
        if caller.may(Operation::Read, ResourceType::Group, &r.group)
            && !members
                .iter()
                .any(|(g, m)| *g == r.group && *m == r.member_id)
        {
            members.push((r.group.clone(), r.member_id.clone()));
        }
    }
    let ctx = ctx.clone();
    let session = state.sasl.clone();
    let api = ApiId {
        protocol: WireProtocol::Native,
        key: request.api_key() as i16,
    };
    run_request(state, taken, async move {
        let started = Instant::now();
        let answer = native::handle(&ctx, request, local_ip, peer, &session).await;
        let outcome = match &answer {
            Some(Err(e)) => Outcome::Error(e.code.as_u16()),
            _ => Outcome::Ok,
        };
        metrics::request(api, outcome, started.elapsed());
        answer.map(|outcome| match outcome {
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
    taken: BudgetTaken,
    ends: Endpoints,
) -> bool {
    if state.sasl.borrow().takes_raw_tokens() {
        // After SaslHandshake v0 the frames are bare SASL tokens.
        let (ctx, session, failed) = (ctx.clone(), state.sasl.clone(), state.clone());
        run_request(state, taken, async move {
            let reply = kafka::sasl_raw_token(&ctx, &session, &payload, ends.peer).await;
            if reply.is_none() {
                failed.broken.set(true);
            }
            reply.map(|frame| vec![OutChunk::Bytes(frame)])
        })
        .await;
        return true;
    }
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
    let exchange = matches!(
        request.key,
        ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
    );
    if !exchange && !state.sasl.borrow().admits_requests() {
        // Kafka has no answer for a request before authentication: it closes.
        tracing::warn!(
            peer = ?ends.peer,
            key = ?request.key,
            "closing a Kafka connection: a request before authenticating"
        );
        return false;
    }
    let ctx = ctx.clone();
    let failed = state.clone();
    let session = state.sasl.clone();
    let api = ApiId {
        protocol: WireProtocol::Kafka,
        key: request.key as i16,
    };
    run_request(state, taken, async move {
        let started = Instant::now();
        let answer = kafka::handle(&ctx, request, ends.local, ends.peer, &session).await;
        let outcome = match answer {
            Ok(_) => Outcome::Ok,
            Err(_) => Outcome::Closed,
        };
        metrics::request(api, outcome, started.elapsed());
        match answer {
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
            state.last_active.set(Instant::now());
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

/// Refuses a connection over a limit with an error frame, then closes it. What the client
/// sent meanwhile is read and dropped for up to a second first: closing a socket with unread
/// bytes resets the connection, and the client could lose the error frame to the reset.
pub(crate) async fn refuse(mut stream: TcpStream, code: ErrorCode, message: &str) {
    let _ = stream.set_nodelay(true);
    let chunks = encode_error_response(0, code, message);
    if stream.write_vectored_all(chunks).await.0.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let drain = async {
        let mut buf = Vec::with_capacity(SMALL_READ);
        loop {
            match stream.read(buf).await {
                BufResult(Ok(n), b) if n > 0 => buf = b,
                _ => return,
            }
            buf.clear();
        }
    };
    let _ = first(
        drain,
        compio::time::sleep(std::time::Duration::from_secs(1)),
    )
    .await;
}
