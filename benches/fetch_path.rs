//! The fetch path sends stored record-batch bytes from a segment file (already in the page
//! cache) to a consumer's socket without re-encoding them. These benches compare three ways of
//! doing that over a loopback TCP connection:
//!
//! * `pread_write`: `pread` the range into a reusable user buffer, then `write_all` it;
//! * `splice`: file → pipe → socket with `splice(2)`, the pipe sized to the fetch chunk;
//! * `sendfile`: `sendfile(2)` straight from the file to the socket.
//!
//! Each iteration sends a whole 64 MiB "segment" as a sequence of chunk-sized fetch responses
//! (64 KiB and 1 MiB). A consumer thread drains the socket into a reusable buffer and signals
//! once it has read every byte, so the measured time covers delivery, not just queuing.
//! Linux only.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const FILE_LEN: usize = 64 << 20;
const CHUNKS: [(usize, &str); 2] = [(64 << 10, "64KiB"), (1 << 20, "1MiB")];
const RECV_BUF: usize = 1 << 20;

#[derive(Clone, Copy, Debug)]
enum Method {
    PreadWrite,
    Splice,
    Sendfile,
}

impl Method {
    const ALL: [Method; 3] = [Method::PreadWrite, Method::Splice, Method::Sendfile];

    fn name(self) -> &'static str {
        match self {
            Method::PreadWrite => "pread_write",
            Method::Splice => "splice",
            Method::Sendfile => "sendfile",
        }
    }
}

/// What the consumer thread is asked to do next.
enum Request {
    /// Read and discard this many bytes, then signal.
    Drain(u64),
    /// Read this many bytes and hand them back, then signal.
    Capture(usize),
}

/// The consumer side of the loopback connection: a thread that reads what it is told to.
struct Consumer {
    requests: Option<Sender<Request>>,
    done: Receiver<Vec<u8>>,
    thread: Option<JoinHandle<()>>,
}

impl Consumer {
    fn spawn(mut socket: TcpStream) -> Self {
        let (req_tx, req_rx) = mpsc::channel::<Request>();
        let (done_tx, done_rx) = mpsc::channel::<Vec<u8>>();
        let thread = thread::spawn(move || {
            let mut buf = vec![0_u8; RECV_BUF];
            while let Ok(request) = req_rx.recv() {
                match request {
                    Request::Drain(mut left) => {
                        while left > 0 {
                            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                            let n = read_some(&mut socket, &mut buf[..want]);
                            left -= n as u64;
                        }
                        done_tx.send(Vec::new()).expect("bench side hung up");
                    }
                    Request::Capture(len) => {
                        let mut out = vec![0_u8; len];
                        socket.read_exact(&mut out).expect("capture read");
                        done_tx.send(out).expect("bench side hung up");
                    }
                }
            }
        });
        Consumer {
            requests: Some(req_tx),
            done: done_rx,
            thread: Some(thread),
        }
    }

    fn post(&self, request: Request) {
        self.requests
            .as_ref()
            .expect("consumer running")
            .send(request)
            .expect("consumer thread died");
    }

    fn wait(&self) -> Vec<u8> {
        self.done.recv().expect("consumer thread died")
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        // Closing the request channel ends the consumer's loop.
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn read_some(socket: &mut TcpStream, buf: &mut [u8]) -> usize {
    loop {
        match socket.read(buf) {
            Ok(0) => panic!("producer closed the connection early"),
            Ok(n) => return n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("consumer read: {e}"),
        }
    }
}

/// Runs a syscall returning `ssize_t`, retrying on `EINTR`.
fn retry(mut call: impl FnMut() -> libc::ssize_t) -> io::Result<usize> {
    loop {
        let ret = call();
        if ret >= 0 {
            return Ok(ret as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// A pipe used as the in-kernel bounce buffer for `splice`, sized to hold one chunk.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    fn with_capacity(chunk: usize) -> io::Result<Self> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` is a valid array of two file descriptors for pipe2 to fill in.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let max = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(1 << 20);
        let want = chunk.min(max) as libc::c_int;
        // SAFETY: fcntl on a descriptor we own; F_SETPIPE_SZ takes an int argument.
        let mut capacity = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, want) };
        if capacity < 0 {
            // Keep whatever size the pipe already has.
            // SAFETY: as above; F_GETPIPE_SZ takes no argument.
            capacity = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
            if capacity < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Pipe {
            read,
            write,
            capacity: capacity as usize,
        })
    }
}

/// The producer side: owns the segment file and the socket, and sends fetch responses.
struct Producer {
    file: File,
    socket: TcpStream,
    buf: Vec<u8>,
    pipe: Option<Pipe>,
}

impl Producer {
    /// Sends `file[offset..offset + len]` as one fetch response.
    fn send_chunk(&mut self, method: Method, offset: u64, len: usize) -> io::Result<()> {
        match method {
            Method::PreadWrite => {
                let buf = &mut self.buf[..len];
                self.file.read_exact_at(buf, offset)?;
                self.socket.write_all(buf)
            }
            Method::Splice => {
                let pipe = self.pipe.as_ref().expect("pipe set up for splice");
                let file_fd = self.file.as_raw_fd();
                let sock_fd = self.socket.as_raw_fd();
                let mut off = offset as libc::loff_t;
                let mut left = len;
                while left > 0 {
                    // File → pipe: at most what the pipe can hold.
                    let want = left.min(pipe.capacity);
                    // SAFETY: valid descriptors; `off` outlives the call; no output offset for
                    // a pipe.
                    let mut in_pipe = retry(|| unsafe {
                        libc::splice(
                            file_fd,
                            &mut off,
                            pipe.write.as_raw_fd(),
                            std::ptr::null_mut(),
                            want,
                            libc::SPLICE_F_MOVE,
                        )
                    })?;
                    if in_pipe == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    left -= in_pipe;
                    // Pipe → socket: drain everything we just put in.
                    while in_pipe > 0 {
                        // Hint that more of this response follows, except for its last bytes.
                        let flags = if left > 0 {
                            libc::SPLICE_F_MOVE | libc::SPLICE_F_MORE
                        } else {
                            libc::SPLICE_F_MOVE
                        };
                        // SAFETY: valid descriptors; neither end takes an offset.
                        let sent = retry(|| unsafe {
                            libc::splice(
                                pipe.read.as_raw_fd(),
                                std::ptr::null_mut(),
                                sock_fd,
                                std::ptr::null_mut(),
                                in_pipe,
                                flags,
                            )
                        })?;
                        if sent == 0 {
                            return Err(io::ErrorKind::WriteZero.into());
                        }
                        in_pipe -= sent;
                    }
                }
                Ok(())
            }
            Method::Sendfile => {
                let file_fd = self.file.as_raw_fd();
                let sock_fd = self.socket.as_raw_fd();
                let mut off = offset as libc::off_t;
                let mut left = len;
                while left > 0 {
                    // SAFETY: valid descriptors; `off` outlives the call.
                    let sent =
                        retry(|| unsafe { libc::sendfile(sock_fd, file_fd, &mut off, left) })?;
                    if sent == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    left -= sent;
                }
                Ok(())
            }
        }
    }

    /// Sends the whole file as a sequence of `chunk`-sized fetch responses.
    fn send_file(&mut self, method: Method, chunk: usize) {
        let mut offset = 0;
        while offset < FILE_LEN {
            let len = chunk.min(FILE_LEN - offset);
            self.send_chunk(method, offset as u64, len)
                .unwrap_or_else(|e| panic!("{} send: {e}", method.name()));
            offset += len;
        }
    }
}

/// A 64 MiB file of non-repeating bytes, read once so it sits in the page cache.
fn segment_file() -> File {
    let mut file = tempfile::tempfile_in(env!("CARGO_TARGET_TMPDIR")).expect("temp file");
    let mut block = vec![0_u8; 1 << 20];
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..FILE_LEN / block.len() {
        for word in block.chunks_exact_mut(8) {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        file.write_all(&block).expect("write temp file");
    }
    file.sync_all().expect("sync temp file");
    let mut offset = 0;
    while offset < FILE_LEN {
        file.read_exact_at(&mut block, offset as u64)
            .expect("warm page cache");
        offset += block.len();
    }
    file
}

fn loopback_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let producer = TcpStream::connect(listener.local_addr().expect("local addr")).expect("connect");
    let (consumer, _) = listener.accept().expect("accept");
    producer.set_nodelay(true).expect("TCP_NODELAY");
    consumer.set_nodelay(true).expect("TCP_NODELAY");
    (producer, consumer)
}

fn fetch_path(c: &mut Criterion) {
    let file = segment_file();
    let expected = {
        let mut all = vec![0_u8; FILE_LEN];
        file.read_exact_at(&mut all, 0).expect("read temp file");
        all
    };
    let (socket, consumer_socket) = loopback_pair();
    let consumer = Consumer::spawn(consumer_socket);
    let mut producer = Producer {
        file,
        socket,
        buf: vec![0_u8; CHUNKS.iter().map(|&(size, _)| size).max().unwrap_or(0)],
        pipe: None,
    };

    let mut group = c.benchmark_group("fetch_path");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Bytes(FILE_LEN as u64));

    for &(chunk, label) in &CHUNKS {
        for method in Method::ALL {
            producer.pipe = match method {
                Method::Splice => Some(Pipe::with_capacity(chunk).expect("pipe for splice")),
                _ => None,
            };

            // Check once, outside the measurement, that the consumer receives the file intact.
            consumer.post(Request::Capture(FILE_LEN));
            producer.send_file(method, chunk);
            assert!(
                consumer.wait() == expected,
                "{} / {label}: consumer received different bytes",
                method.name()
            );

            group.bench_function(BenchmarkId::new(method.name(), label), |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    consumer.post(Request::Drain(iters * FILE_LEN as u64));
                    for _ in 0..iters {
                        producer.send_file(method, chunk);
                    }
                    consumer.wait();
                    start.elapsed()
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, fetch_path);
criterion_main!(benches);
