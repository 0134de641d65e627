//! The bodies of the fuzz targets in `fuzz/` (one plain function per target, taking the
//! fuzzer's bytes), and the allocation bound they run under. The same functions run every
//! committed corpus file and crash reproducer in `tests/fuzz_corpus.rs`, so a bug the fuzzer
//! once found stays found on stable `cargo test` without a fuzzer.
//!
//! Each target feeds bytes to the decoders the broker runs on bytes from outside (sockets
//! and files) and, where the format has one, checks a property: a decoded message encodes
//! and decodes back to itself, a batch that validates carries its own CRC-32C. Any panic is
//! a bug (the broker never panics on input), and so is any single allocation above
//! [`AllocLimit`]'s bound, which [`LimitedAlloc`] turns into an abort the fuzzer reports.
//!
//! Hidden from the documentation: this is test support, not API.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::api::{self, ApiKey, Request};
use crate::protocol::frame::{self, Decoder, RequestHeader, ResponseHeader};
use crate::protocol::kafka::{self, consumer, Body, Refusal};
use crate::protocol::ErrorCode;
use kafka_protocol::protocol::Encodable;

use crate::server::fuzz_targets as server;
use crate::storage::fuzz_targets as storage;

/// A target's body: takes the fuzzer's bytes, panics on a bug.
pub type Target = fn(&[u8]);

/// Every target by name (the name of its directory under `fuzz/corpus/` and of its binary
/// in `fuzz/fuzz_targets/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("native_frames", native_frames),
    ("record_batch", record_batch),
    ("kafka_request", kafka_request),
    ("metadata_files", metadata_files),
    ("internal_log", internal_log),
    ("producer_snapshot", producer_snapshot),
    ("index_files", index_files),
    ("recovery", recovery),
    ("sasl_messages", sasl_messages),
];

/// Largest frame payload the targets split off (the broker's default is 16 MiB; inputs are
/// far smaller, so this only has to be above them).
const MAX_PAYLOAD: usize = 1 << 20;

/// Bytes any single allocation may take whatever the input.
pub const ALLOC_FLOOR: usize = 64 << 10;
/// Bytes a single allocation may take per byte of input, above [`ALLOC_FLOOR`]: a decoder
/// that sizes a buffer from a count or length field must bound it by the bytes it has.
pub const ALLOC_PER_INPUT_BYTE: usize = 16;

/// [`ALLOC_FLOOR`] of the recovery target: recovery reads and checks the log in chunks of
/// 1 MiB, whatever its size.
pub const RECOVERY_ALLOC_FLOOR: usize = 1 << 20;

static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);

/// While alive, bounds every single allocation to [`ALLOC_FLOOR`] plus
/// [`ALLOC_PER_INPUT_BYTE`] per input byte (when [`LimitedAlloc`] is the global allocator).
pub struct AllocLimit {
    previous: usize,
}

impl AllocLimit {
    /// The bound for an input of `len` bytes.
    pub fn for_input(len: usize) -> AllocLimit {
        AllocLimit::with_floor(ALLOC_FLOOR, len)
    }

    /// The bound for an input of `len` bytes with another floor.
    pub fn with_floor(floor: usize, len: usize) -> AllocLimit {
        let limit = floor.saturating_add(len.saturating_mul(ALLOC_PER_INPUT_BYTE));
        AllocLimit {
            previous: LIMIT.swap(limit, Ordering::Relaxed),
        }
    }
}

impl Drop for AllocLimit {
    fn drop(&mut self) {
        LIMIT.store(self.previous, Ordering::Relaxed);
    }
}

/// The system allocator, except that an allocation above the current [`AllocLimit`] aborts
/// the process after saying so on stderr (libFuzzer reports the abort as a crash and saves
/// the input). libFuzzer's own `-malloc_limit_mb` needs a sanitizer's allocator hooks, which
/// a build without a sanitizer lacks: this is the stand-in.
pub struct LimitedAlloc;

impl LimitedAlloc {
    fn check(size: usize) {
        // A panic's report (the backtrace) is not the decoder's doing.
        if size > LIMIT.load(Ordering::Relaxed) && !std::thread::panicking() {
            over_limit(size);
        }
    }
}

/// Says which allocation and where (lifting the limit so the backtrace can allocate), then
/// aborts: an allocator must not unwind, so this cannot be a panic.
#[cold]
fn over_limit(size: usize) -> ! {
    LIMIT.store(usize::MAX, Ordering::Relaxed);
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = size;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let parts: [&[u8]; 3] = [
        b"fuzzing: an allocation of ",
        &digits[at..],
        b" bytes exceeds the limit for this input\n",
    ];
    for part in parts {
        // SAFETY: writes a valid buffer to stderr; the result does not matter.
        unsafe {
            libc::write(2, part.as_ptr().cast(), part.len());
        }
    }
    eprintln!("{}", std::backtrace::Backtrace::force_capture());
    std::process::abort()
}

// SAFETY: every call goes to `System` with the caller's arguments; the check only aborts.
unsafe impl GlobalAlloc for LimitedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LimitedAlloc::check(layout.size());
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LimitedAlloc::check(layout.size());
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LimitedAlloc::check(new_size);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Joins encoded chunks into one buffer.
fn concat(chunks: Vec<Bytes>) -> BytesMut {
    let mut out = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
    for c in chunks {
        out.put_slice(&c);
    }
    out
}

/// Splits the one frame `encoded` holds.
fn only_frame(mut encoded: BytesMut) -> BytesMut {
    let payload = frame::split_frame(&mut encoded, usize::MAX)
        .expect("no limit")
        .expect("an encoded frame is whole");
    assert!(encoded.is_empty(), "an encoded frame has bytes after it");
    payload
}

/// Record batches as the broker takes them from a produce request and as readers walk
/// them: see `server::fuzz_targets::record_batch`.
pub fn record_batch(data: &[u8]) {
    let _limit = AllocLimit::for_input(data.len());
    server::record_batch(data);
}

/// The internal logs' records read back from disk: see
/// `server::fuzz_targets::internal_log`.
pub fn internal_log(data: &[u8]) {
    let _limit = AllocLimit::for_input(data.len());
    server::internal_log(data);
}

/// What a client sends in a SASL exchange, to the broker's parsers: a PLAIN message, and
/// SCRAM's client-first and client-final messages (the input split at its first `0xff`)
/// against a known user; what a broker sends, to the client's SCRAM parsers; and a client
/// certificate, to the walk that finds its user. None may panic, and no input may
/// authenticate without the password.
pub fn sasl_messages(data: &[u8]) {
    use crate::auth::{self, Credential, ScramClient, ScramHash, ScramServer};
    use std::sync::OnceLock;
    let _limit = AllocLimit::with_floor(64 * 1024, data.len());
    // Salting costs thousands of rounds: once per process.
    static STORED: OnceLock<Credential> = OnceLock::new();
    let stored = STORED.get_or_init(|| Credential::new(ScramHash::Sha256, "fuzz-password", 4096));
    let _ = auth::parse_plain(data);
    // A client certificate's user: the DER walk to its subject's common name.
    let _ = crate::tls::certificate_user(&rustls::pki_types::CertificateDer::from(data));
    let (first, last) = match data.iter().position(|&b| b == 0xff) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let mut server = ScramServer::new(ScramHash::Sha256);
    if server.client_first(first, |_| Some(stored.clone())).is_ok() {
        assert!(
            server.client_final(last).is_err(),
            "a client-final message made without the password authenticated"
        );
    }
    // (The client's nonce is random, so an input passes its checks only up to the nonce:
    // the parsing before it is what is fuzzed here, never a salting.)
    let mut client = ScramClient::new(ScramHash::Sha256, "user", "password");
    client.client_first();
    if client.client_final(first).is_ok() {
        let _ = client.verify_server_final(last);
    }
}

/// The catalog and the producer-id counter: see `storage::fuzz_targets::metadata_files`.
pub fn metadata_files(data: &[u8]) {
    let _limit = AllocLimit::for_input(data.len());
    storage::metadata_files(data);
}

/// Producer-state snapshots: see `storage::fuzz_targets::producer_snapshot`.
pub fn producer_snapshot(data: &[u8]) {
    let _limit = AllocLimit::for_input(data.len());
    storage::producer_snapshot(data);
}

/// Offset and time index files: see `storage::fuzz_targets::index_files`.
pub fn index_files(data: &[u8]) {
    let _limit = AllocLimit::for_input(data.len());
    storage::index_files(data);
}

/// A partition directory recovered after a crash: see `storage::fuzz_targets::recovery`.
/// The files go to a directory of this process under `$EVENTFLOW_FUZZ_DIR`, else
/// `/dev/shm` (memory: fast), else the temporary directory.
pub fn recovery(data: &[u8]) {
    let _limit = AllocLimit::with_floor(RECOVERY_ALLOC_FLOOR, data.len());
    storage::recovery(data, recovery_dir());
}

/// The directory of this process where the recovery target writes its files; removed when
/// the process exits.
pub fn recovery_dir() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let base = std::env::var_os("EVENTFLOW_FUZZ_DIR")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                let shm = std::path::Path::new("/dev/shm");
                shm.is_dir().then(|| shm.to_path_buf())
            })
            .unwrap_or_else(std::env::temp_dir);
        // libFuzzer ends the process with exit(): remove the directory then.
        // SAFETY: registers a function that takes nothing and does not unwind.
        unsafe {
            libc::atexit(remove_recovery_dir);
        }
        base.join(format!("eventflow-fuzz-recovery-{}", std::process::id()))
    })
}

extern "C" fn remove_recovery_dir() {
    let _ = std::panic::catch_unwind(|| std::fs::remove_dir_all(recovery_dir()));
}

/// Native protocol frames as a connection reads them: split off a stream, each payload
/// decoded as a request (what the broker does) and as a response (what the client does).
/// A decoded message must encode to a frame that decodes to the same message.
pub fn native_frames(data: &[u8]) {
    let _limit = AllocLimit::for_input(data.len());
    let mut stream = BytesMut::from(data);
    while let Ok(Some(payload)) = frame::split_frame(&mut stream, MAX_PAYLOAD) {
        native_request(payload.clone());
        native_response(payload);
    }
}

fn native_request(mut payload: BytesMut) {
    let correlation_id = RequestHeader::peek_correlation_id(&payload);
    let header = match RequestHeader::decode(&mut payload) {
        Ok(header) => header,
        Err(e) => {
            api::encode_error_response(correlation_id, ErrorCode::CorruptFrame, &e.to_string());
            return;
        }
    };
    assert_eq!(header.correlation_id, correlation_id);
    let request = match Request::decode(&header, payload) {
        Ok(request) => request,
        Err(e) => {
            api::encode_error_response(correlation_id, e.code(), &e.to_string());
            return;
        }
    };
    let shown = format!("{request:?}");
    let api = request.api_key();
    let mut again = only_frame(concat(request.encode(header.correlation_id)));
    let header_again = RequestHeader::decode(&mut again).expect("an encoded header decodes");
    assert_eq!(header_again.api_key, api as u16);
    assert_eq!(header_again.correlation_id, header.correlation_id);
    let request_again = Request::decode(&header_again, again).expect("an encoded request decodes");
    assert_eq!(format!("{request_again:?}"), shown, "request round trip");
}

fn native_response(mut payload: BytesMut) {
    // The client knows which API it asked; here the first byte picks one.
    let Some(&pick) = payload.first() else { return };
    let _ = bytes::Buf::get_u8(&mut payload);
    let api = ApiKey::ALL[usize::from(pick) % ApiKey::ALL.len()];
    let mut d = Decoder::new(payload);
    let Ok(header) = ResponseHeader::decode(&mut d) else {
        return;
    };
    if header.error != ErrorCode::None {
        return;
    }
    let Ok(response) = api::decode_response(api, &mut d) else {
        return;
    };
    if d.finish().is_err() {
        return;
    }
    let again = only_frame(concat(api::encode_response(
        header.correlation_id,
        &response,
    )));
    let mut d = Decoder::new(again);
    let header_again = ResponseHeader::decode(&mut d).expect("an encoded header decodes");
    // A success carries no message (a client ignores one if sent): compare the rest.
    assert_eq!(
        (header_again.correlation_id, header_again.error),
        (header.correlation_id, header.error)
    );
    let response_again = api::decode_response(api, &mut d).expect("an encoded response decodes");
    d.finish()
        .expect("an encoded response has no trailing bytes");
    assert_eq!(response_again, response, "response round trip");
}

/// Kafka request frames as the Kafka listener reads them: split off a stream, decoded
/// (header, version check, the array-count walk, the body), refused as the connection
/// refuses, and the embedded consumer-protocol bytes of JoinGroup and SyncGroup read as
/// the group handlers read them. A Produce body (decoded by hand) must encode with the
/// crate at its version and decode back to itself, and so must the consumer-protocol
/// messages with their own encoders.
pub fn kafka_request(data: &[u8]) {
    let _limit = AllocLimit::for_input(data.len());
    let mut stream = BytesMut::from(data);
    while let Ok(Some(payload)) = frame::split_frame(&mut stream, MAX_PAYLOAD) {
        kafka_one(payload);
    }
}

fn kafka_one(payload: BytesMut) {
    let request = match kafka::decode_request(payload) {
        Ok(request) => request,
        Err(Refusal::ApiVersionsVersion { correlation_id, .. }) => {
            kafka::api_versions_unsupported(correlation_id);
            return;
        }
        Err(Refusal::Unsupported {
            correlation_id,
            key,
            version,
        }) => {
            kafka::unsupported_answer(correlation_id, key, version);
            return;
        }
        Err(Refusal::Malformed { .. }) => return,
    };
    match request.body {
        Body::Produce(produce) => {
            if request.version < kafka::PRODUCE_MIN_SERVED {
                let topics: Vec<(String, Vec<i32>)> = produce
                    .topics
                    .iter()
                    .map(|t| {
                        (
                            t.name.clone(),
                            t.partitions.iter().map(|p| p.index).collect(),
                        )
                    })
                    .collect();
                kafka::produce_refusal_v0_2(request.version, request.correlation_id, &topics);
            }
            kafka_produce_round_trip(&produce, request.version);
        }
        // Bodies the crate decoded are not encoded again: the broker never re-encodes a
        // request, and the crate's own symmetry is not this target's business (it has
        // cases that do not round-trip, such as Metadata v9 with some tagged fields).
        Body::Kind(body) => kafka_consumer_protocol(&body),
    }
}

/// The hand-written Produce decoder against the crate's encoder: what it decoded, encoded
/// by the crate at the same version, decodes to the same again.
fn kafka_produce_round_trip(produce: &kafka::produce::ProduceData, version: i16) {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ProduceRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;

    let request = ProduceRequest::default()
        .with_transactional_id(
            produce
                .transactional_id
                .clone()
                .map(|id| kafka_protocol::messages::TransactionalId(StrBytes::from_string(id))),
        )
        .with_acks(produce.acks)
        .with_timeout_ms(produce.timeout_ms)
        .with_topic_data(
            produce
                .topics
                .iter()
                .map(|t| {
                    TopicProduceData::default()
                        .with_name(TopicName(StrBytes::from_string(t.name.clone())))
                        .with_partition_data(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    PartitionProduceData::default()
                                        .with_index(p.index)
                                        .with_records(Some(Bytes::copy_from_slice(&p.records)))
                                })
                                .collect(),
                        )
                })
                .collect(),
        );
    let mut encoded = BytesMut::new();
    if request.encode(&mut encoded, version).is_err() {
        return;
    }
    let again =
        kafka::produce::decode_produce(encoded, version).expect("an encoded produce decodes");
    assert_eq!(
        format!("{again:?}"),
        format!("{produce:?}"),
        "produce round trip"
    );
}

/// What the group handlers read out of JoinGroup and SyncGroup requests.
fn kafka_consumer_protocol(body: &kafka_protocol::messages::RequestKind) {
    use kafka_protocol::messages::RequestKind;
    match body {
        RequestKind::JoinGroup(r) => {
            for p in &r.protocols {
                if let Some(topics) = consumer::subscription_topics(&p.metadata) {
                    let again =
                        consumer::subscription_topics(&consumer::encode_subscription(&topics));
                    assert_eq!(again.as_ref(), Some(&topics), "subscription round trip");
                }
            }
        }
        RequestKind::SyncGroup(r) => {
            for a in &r.assignments {
                if let Some(partitions) = consumer::assignment_partitions(&a.assignment) {
                    let Ok(unsigned) = partitions
                        .iter()
                        .map(|(t, ps)| {
                            ps.iter()
                                .map(|&p| u32::try_from(p))
                                .collect::<Result<Vec<u32>, _>>()
                                .map(|ps| (t.clone(), ps))
                        })
                        .collect::<Result<Vec<_>, _>>()
                    else {
                        continue;
                    };
                    let again =
                        consumer::assignment_partitions(&consumer::encode_assignment(&unsigned));
                    assert_eq!(again.as_ref(), Some(&partitions), "assignment round trip");
                }
            }
        }
        _ => {}
    }
}
