//! A client's connection to a broker: a TCP socket, plaintext or in TLS.
//!
//! A TLS stream may be cloned and used from two threads at once, one reading and one
//! writing (the producer does): both share the rustls session, under a lock that is never
//! held across a socket read, so a reader waiting for a response does not stop the writer.
//! The writer holds a second lock while it sends, so records leave in the order rustls
//! made them.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustls::{ClientConnection, StreamOwned};

use crate::tls::ClientTls;

/// Ciphertext read from the socket at once, at most.
const CIPHERTEXT_READ: usize = 256 * 1024;

/// A connection to a broker.
#[derive(Debug)]
pub enum Stream {
    /// Plaintext.
    Plain(TcpStream),
    /// TLS, its handshake done.
    Tls(Arc<TlsStream>),
}

/// The shared state of a TLS connection.
pub struct TlsStream {
    socket: TcpStream,
    session: Mutex<ClientConnection>,
    /// Ciphertext read and not yet handed to rustls.
    pending: Mutex<Pending>,
    /// Ciphertext on its way out; held while sending.
    out: Mutex<Vec<u8>>,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

/// Ciphertext read from the socket: `buf[start..end]` is not yet handed to rustls. The
/// buffer is allocated (and zeroed) once, at the first read.
struct Pending {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Stream {
    /// Runs the TLS handshake on `socket` as a client of `addr` (whose host part the
    /// broker's certificate must name), within the socket's timeouts.
    pub fn tls(socket: TcpStream, addr: &str, tls: &ClientTls) -> io::Result<Stream> {
        let name = crate::tls::server_name(addr).map_err(io::Error::other)?;
        let session = ClientConnection::new(tls.config(), name).map_err(io::Error::other)?;
        let mut handshake = StreamOwned::new(session, socket);
        while handshake.conn.is_handshaking() {
            handshake
                .conn
                .complete_io(&mut handshake.sock)
                .map_err(|e| match e.kind() {
                    io::ErrorKind::InvalidData => io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("TLS handshake failed: {e}"),
                    ),
                    _ => e,
                })?;
        }
        let (session, socket) = handshake.into_parts();
        Ok(Stream::Tls(Arc::new(TlsStream {
            socket,
            session: Mutex::new(session),
            pending: Mutex::new(Pending {
                buf: Vec::new(),
                start: 0,
                end: 0,
            }),
            out: Mutex::new(Vec::new()),
        })))
    }

    fn socket(&self) -> &TcpStream {
        match self {
            Stream::Plain(socket) => socket,
            Stream::Tls(tls) => &tls.socket,
        }
    }

    /// Another handle on the same connection (for a reader thread beside a writer).
    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Plain(socket) => Stream::Plain(socket.try_clone()?),
            Stream::Tls(tls) => Stream::Tls(tls.clone()),
        })
    }

    /// See [`TcpStream::set_nodelay`].
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.socket().set_nodelay(on)
    }

    /// See [`TcpStream::set_read_timeout`].
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.socket().set_read_timeout(timeout)
    }

    /// See [`TcpStream::set_write_timeout`].
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.socket().set_write_timeout(timeout)
    }

    /// Closes both directions (after TLS's close_notify, best effort).
    pub fn shutdown(&self) -> io::Result<()> {
        if let Stream::Tls(tls) = self {
            lock(&tls.session).send_close_notify();
            let _ = tls.send_pending();
        }
        self.socket().shutdown(Shutdown::Both)
    }
}

impl TlsStream {
    /// Sends every record rustls holds.
    fn send_pending(&self) -> io::Result<()> {
        let mut out = lock(&self.out);
        {
            let mut session = lock(&self.session);
            while session.wants_write() {
                session.write_tls(&mut *out)?;
            }
        }
        let sent = (&self.socket).write_all(&out);
        out.clear();
        sent
    }

    fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut out = lock(&self.out);
        let taken = {
            let mut session = lock(&self.session);
            let taken = session.writer().write_vectored(bufs)?;
            while session.wants_write() {
                session.write_tls(&mut *out)?;
            }
            taken
        };
        let sent = (&self.socket).write_all(&out);
        out.clear();
        sent.map(|()| taken)
    }

    /// Fills `buf` with as much plaintext as the ciphertext already read holds, reading
    /// the socket (up to [`CIPHERTEXT_READ`] at once) only when there is none.
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            {
                let mut session = lock(&self.session);
                let mut pending = lock(&self.pending);
                let mut got = 0;
                loop {
                    match session.reader().read(&mut buf[got..]) {
                        // close_notify (buf[got..] is never empty here).
                        Ok(0) => return Ok(got),
                        Ok(n) => {
                            got += n;
                            if got == buf.len() {
                                return Ok(got);
                            }
                            continue;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) if got > 0 => {
                            tracing::debug!("TLS read after {got} bytes: {e}");
                            return Ok(got);
                        }
                        Err(e) => return Err(e),
                    }
                    if pending.start == pending.end {
                        break;
                    }
                    // rustls takes a few KiB per call: one record may take several.
                    let Pending {
                        buf: bytes,
                        start,
                        end,
                    } = &mut *pending;
                    *start += session.read_tls(&mut &bytes[*start..*end])?;
                    session.process_new_packets().map_err(|e| {
                        io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}"))
                    })?;
                }
                if got > 0 {
                    return Ok(got);
                }
            }
            // Only this reader touches `pending`; the session stays free for a writer
            // while the socket read waits.
            let mut pending = lock(&self.pending);
            if pending.buf.is_empty() {
                pending.buf = vec![0; CIPHERTEXT_READ];
            }
            let n = (&self.socket).read(&mut pending.buf)?;
            pending.start = 0;
            pending.end = n;
            if n == 0 {
                return Ok(0);
            }
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => socket.read(buf),
            Stream::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => socket.write_vectored(bufs),
            Stream::Tls(tls) => tls.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
