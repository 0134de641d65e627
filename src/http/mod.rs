//! The HTTP listener: `/metrics` today, more routes (the HTTP API) later, served on a
//! thread of its own, never on a shard.
//!
//! The stack is axum's router on hyper's HTTP/1.1 server, on a current-thread tokio
//! runtime that runs on one thread (`eventflow-http`). The shards never run HTTP code:
//! a route that needs them asks through [`crate::server::Scraper`] (or, later, the
//! client library), and waits here. Everything is bounded, so no client of this port can
//! cost the shards more than the work a request asks of them:
//!
//! - at most [`Limits::max_connections`] connections at once (the next waits in the
//!   kernel's backlog, unaccepted);
//! - request heads bounded by [`Limits::max_head_bytes`] and
//!   [`Limits::head_timeout`] (a client that trickles its head is closed);
//! - request bodies bounded by [`Limits::max_body_bytes`] (413 past it);
//! - a connection lives at most [`Limits::connection_lifetime`], so a scraper that stops
//!   reading its response holds one connection of this thread for that long, and nothing
//!   of a shard.

pub mod metrics;
pub mod tls;

use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::{oneshot, Semaphore};

/// The bounds of the HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Bytes of a request's head (request line and headers); at least 8 KiB.
    pub max_head_bytes: usize,
    /// How long a request's head may take to arrive.
    pub head_timeout: Duration,
    /// Bytes of a request's body.
    pub max_body_bytes: usize,
    /// How long one connection is kept, whatever it does.
    pub connection_lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 64,
            max_head_bytes: 16 << 10,
            head_timeout: Duration::from_secs(5),
            max_body_bytes: 1 << 20,
            connection_lifetime: Duration::from_secs(60),
        }
    }
}

/// The running HTTP listener; stopped when dropped.
pub struct HttpServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Serves `router` on `listener` from a new thread, in TLS if `tls` is given.
    pub fn start(
        listener: StdListener,
        router: Router,
        limits: Limits,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> io::Result<HttpServer> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let router = router.layer(DefaultBodyLimit::max(limits.max_body_bytes));
        let thread = std::thread::Builder::new()
            .name("eventflow-http".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let incoming = tokio::net::TcpListener::from_std(listener).and_then(|l| {
                        Ok(match tls {
                            None => Incoming::Plain(l),
                            Some(config) => Incoming::Tls(tls::TlsListener::new(l, config)?),
                        })
                    });
                    match incoming {
                        Ok(incoming) => serve(incoming, router, limits, stop_rx).await,
                        Err(e) => tracing::error!("http listener: {e}"),
                    }
                });
            })?;
        Ok(HttpServer {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Where connections come from: a plaintext listener, or one that finishes their TLS
/// handshakes first.
enum Incoming {
    Plain(tokio::net::TcpListener),
    Tls(tls::TlsListener),
}

/// An accepted connection.
enum Accepted {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

impl Incoming {
    async fn accept(&mut self) -> io::Result<Accepted> {
        match self {
            Incoming::Plain(listener) => Ok(Accepted::Plain(listener.accept().await?.0)),
            Incoming::Tls(listener) => match listener.next().await {
                Some((stream, _)) => Ok(Accepted::Tls(Box::new(stream))),
                None => Err(io::Error::other("the TLS listener stopped accepting")),
            },
        }
    }
}

/// Serves one connection for at most its lifetime.
async fn serve_connection<T>(io: T, router: Router, limits: Limits)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router);
    let connection = hyper::server::conn::http1::Builder::new()
        .max_buf_size(limits.max_head_bytes.max(8192))
        .header_read_timeout(limits.head_timeout)
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(io), service);
    match tokio::time::timeout(limits.connection_lifetime, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!("http connection: {e}"),
        Err(_) => tracing::debug!("http connection closed at its lifetime"),
    }
}

async fn serve(
    mut listener: Incoming,
    router: Router,
    limits: Limits,
    mut stop: oneshot::Receiver<()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            _ = &mut stop => return,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(stream) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("http accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = &mut stop => return,
        };
        let router = router.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match stream {
                Accepted::Plain(stream) => serve_connection(stream, router, limits).await,
                Accepted::Tls(stream) => serve_connection(stream, router, limits).await,
            }
        });
    }
}
