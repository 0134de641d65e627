//! A connection's TLS on its shard: the handshake, then a reader and a writer that share
//! the one rustls session (both on the shard's thread, so a `RefCell`, never borrowed across
//! an await).
//!
//! The reader reads ciphertext from the socket into a buffer of its own, hands it to rustls
//! and copies the plaintext into the connection's frame buffer: one copy more than a
//! plaintext connection, where the kernel reads straight into that buffer. The writer hands
//! each response's bytes to rustls, which encrypts them into its own buffer, and sends the
//! ciphertext; the records of a fetch are read from the segment file into memory first, as
//! they cannot be spliced through an encryption done in user space (docs/SECURITY.md says
//! how kernel TLS would keep the splice). Plaintext connections never come here.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::rc::Rc;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use compio::buf::BufResult;
use compio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use compio::net::TcpStream;
use rustls::{ServerConfig, ServerConnection};

use crate::storage::FileRange;

/// Ciphertext read from the socket at once, at least (a little more than one full TLS
/// record) and at most: a connection's reader holds this much beside its frame buffer.
const CIPHERTEXT_READ: usize = 18 * 1024;
const MAX_CIPHERTEXT_READ: usize = 1 << 20;
/// Plaintext rustls may hold encrypted and unsent before the writer sends it, and the most
/// of a segment file read into memory at once.
const SEND_CHUNK: usize = 256 * 1024;

/// A connection's TLS session, shared by its reader and writer.
pub(crate) type Session = Rc<RefCell<ServerConnection>>;

/// Runs the server side of the handshake on `stream`. On success, the session is ready for
/// [`TlsReader`] and [`TlsWriter`]; any application data the client sent right after its
/// last handshake message is already inside it.
pub(crate) async fn accept(
    stream: &mut TcpStream,
    config: Arc<ServerConfig>,
) -> io::Result<Session> {
    let mut conn = ServerConnection::new(config).map_err(io::Error::other)?;
    conn.set_buffer_limit(Some(SEND_CHUNK));
    let mut inbuf = Vec::with_capacity(CIPHERTEXT_READ);
    let mut out = Vec::new();
    while conn.is_handshaking() {
        if conn.wants_write() {
            out = send_pending(stream, &mut conn, out).await?;
            continue;
        }
        inbuf.clear();
        let BufResult(read, back) = stream.read(inbuf).await;
        inbuf = back;
        if read? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the client closed during the TLS handshake",
            ));
        }
        if let Err(e) = feed(&mut conn, &inbuf) {
            // Tell the client why (a TLS alert), if it still listens.
            let _ = send_pending(stream, &mut conn, out).await;
            return Err(e);
        }
    }
    send_pending(stream, &mut conn, out).await?;
    Ok(Rc::new(RefCell::new(conn)))
}

/// Hands all of `ciphertext` to rustls and processes the records it completes.
fn feed(conn: &mut ServerConnection, mut ciphertext: &[u8]) -> io::Result<()> {
    while !ciphertext.is_empty() {
        conn.read_tls(&mut ciphertext)?;
        conn.process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}")))?;
    }
    Ok(())
}

/// Sends every TLS record rustls holds for the client. `out` is a buffer to reuse; it is
/// given back (emptied).
async fn send_pending(
    stream: &mut TcpStream,
    conn: &mut ServerConnection,
    mut out: Vec<u8>,
) -> io::Result<Vec<u8>> {
    while conn.wants_write() {
        conn.write_tls(&mut out)?;
    }
    if out.is_empty() {
        return Ok(out);
    }
    let BufResult(written, mut back) = stream.write_all(out).await;
    written?;
    back.clear();
    Ok(back)
}

/// The plaintext side of a TLS connection's reads.
pub(crate) struct TlsReader {
    stream: TcpStream,
    session: Session,
    /// Ciphertext read and not yet handed to rustls.
    pending: Vec<u8>,
    consumed: usize,
    /// Plaintext rustls holds, decrypted and not yet taken.
    ready: usize,
    /// The client sent close_notify.
    closed: bool,
    /// Wakes the writer when rustls has records to send that no response caused (an alert,
    /// a key update).
    wake_writer: Box<dyn Fn()>,
}

impl TlsReader {
    pub(crate) fn new(stream: TcpStream, session: Session, wake_writer: Box<dyn Fn()>) -> Self {
        // What the client sent right after the handshake may be decrypted already.
        let (ready, closed) = match session.borrow_mut().process_new_packets() {
            Ok(state) => (state.plaintext_bytes_to_read(), state.peer_has_closed()),
            Err(_) => (0, false),
        };
        TlsReader {
            stream,
            session,
            pending: Vec::with_capacity(CIPHERTEXT_READ),
            consumed: 0,
            ready,
            closed,
            wake_writer,
        }
    }

    /// Reads at most `wanted` bytes of plaintext onto the end of `buf`: Ok(0) when the
    /// client closed. Decrypts everything already read before it reads the socket again,
    /// and reads the socket in pieces as large as what is wanted (up to
    /// [`MAX_CIPHERTEXT_READ`]), so a large request costs few reads.
    pub(crate) async fn read(
        &mut self,
        mut buf: BytesMut,
        wanted: usize,
    ) -> BufResult<usize, BytesMut> {
        let mut got = 0;
        loop {
            if self.ready > 0 {
                match self.take_plaintext(&mut buf, wanted - got) {
                    Ok(n) => got += n,
                    Err(e) => return BufResult(Err(e), buf),
                }
                if got == wanted {
                    return BufResult(Ok(got), buf);
                }
                continue;
            }
            if self.closed {
                return BufResult(Ok(got), buf);
            }
            if self.consumed < self.pending.len() {
                if let Err(e) = self.feed() {
                    return BufResult(Err(e), buf);
                }
                continue;
            }
            if got > 0 {
                return BufResult(Ok(got), buf);
            }
            // Room for what is wanted, within bounds; a large buffer is not kept for the
            // small reads that follow.
            let room = wanted.clamp(CIPHERTEXT_READ, MAX_CIPHERTEXT_READ);
            let mut pending = std::mem::take(&mut self.pending);
            if pending.capacity() < room || pending.capacity() > 2 * room {
                pending = Vec::with_capacity(room);
            }
            pending.clear();
            self.consumed = 0;
            let BufResult(read, back) = self.stream.read(pending).await;
            self.pending = back;
            match read {
                Ok(0) => return BufResult(Ok(0), buf),
                Ok(_) => {}
                Err(e) => return BufResult(Err(e), buf),
            }
        }
    }

    /// Hands ciphertext to rustls until some plaintext is ready or all of it is taken.
    fn feed(&mut self) -> io::Result<()> {
        let mut conn = self.session.borrow_mut();
        let result = loop {
            if self.consumed == self.pending.len() {
                break Ok(());
            }
            // rustls takes a few KiB per call: one record may take several.
            match conn.read_tls(&mut &self.pending[self.consumed..]) {
                Ok(n) => self.consumed += n,
                Err(e) => break Err(e),
            }
            match conn.process_new_packets() {
                Ok(state) => {
                    self.ready = state.plaintext_bytes_to_read();
                    self.closed = state.peer_has_closed();
                }
                Err(e) => {
                    break Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("TLS: {e}"),
                    ))
                }
            }
            if self.ready > 0 || self.closed {
                break Ok(());
            }
        };
        if conn.wants_write() {
            (self.wake_writer)();
        }
        result
    }

    /// Moves up to `wanted` decrypted bytes (of the `ready` ones) onto the end of `buf`.
    fn take_plaintext(&mut self, buf: &mut BytesMut, wanted: usize) -> io::Result<usize> {
        let take = wanted.min(self.ready);
        let start = buf.len();
        buf.resize(start + take, 0);
        let read = self.session.borrow_mut().reader().read(&mut buf[start..]);
        match read {
            Ok(n) => {
                buf.truncate(start + n);
                self.ready -= n;
                if n == 0 {
                    // rustls had less than it said: look again after more ciphertext.
                    self.ready = 0;
                }
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                buf.truncate(start);
                self.ready = 0;
                Ok(0)
            }
            Err(e) => {
                buf.truncate(start);
                Err(e)
            }
        }
    }
}

/// The plaintext side of a TLS connection's writes.
pub(crate) struct TlsWriter {
    stream: TcpStream,
    session: Session,
    out: Vec<u8>,
}

impl TlsWriter {
    pub(crate) fn new(stream: TcpStream, session: Session) -> Self {
        TlsWriter {
            stream,
            session,
            out: Vec::new(),
        }
    }

    /// Encrypts and sends `chunks`, in order.
    pub(crate) async fn write_all(&mut self, chunks: Vec<Bytes>) -> io::Result<()> {
        for chunk in chunks {
            self.write_plaintext(&chunk).await?;
        }
        self.flush().await
    }

    /// Encrypts and sends a segment file's range, read into memory a piece at a time.
    pub(crate) async fn send_file(&mut self, range: &FileRange) -> io::Result<()> {
        let mut sent = 0;
        while sent < range.len {
            let piece = range
                .read_part(sent, SEND_CHUNK)
                .await
                .map_err(io::Error::other)?;
            if piece.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the segment ended before the range the index promised",
                ));
            }
            sent += piece.len();
            self.write_plaintext(&piece).await?;
        }
        self.flush().await
    }

    /// Hands `bytes` to rustls, sending ciphertext whenever its buffer is full.
    async fn write_plaintext(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let taken = self.session.borrow_mut().writer().write(bytes)?;
            bytes = &bytes[taken..];
            // rustls takes no more once it holds SEND_CHUNK unsent: send that first.
            if taken == 0 {
                self.flush().await?;
            }
        }
        Ok(())
    }

    /// Whether rustls holds records to send.
    pub(crate) fn has_pending(&self) -> bool {
        self.session.borrow().wants_write()
    }

    /// Sends every record rustls holds (a response's, or an alert or key update).
    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        {
            let mut conn = self.session.borrow_mut();
            while conn.wants_write() {
                conn.write_tls(&mut self.out)?;
            }
        }
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        let BufResult(written, mut back) = self.stream.write_all(out).await;
        back.clear();
        self.out = back;
        written
    }

    /// Says goodbye (close_notify) and shuts the socket's sending side.
    pub(crate) async fn close(&mut self) {
        self.session.borrow_mut().send_close_notify();
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }
}
