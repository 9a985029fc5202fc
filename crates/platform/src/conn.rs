//! The connections of a gRPC listener, bounded (README, "Bounds on callers"): at most
//! `server.max_connections` open at once (one more is accepted and closed at once), accept
//! errors such as running out of file descriptors back off instead of spinning, a
//! connection with no call open for `server.idle_timeout_ms` is closed, and one past its
//! age plus grace is closed whatever it is doing (the GOAWAY at its age is tonic's
//! `max_connection_age`).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::Sender;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::config::ServerLimits;

/// What the accept loop applies to every connection.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    permits: Arc<Semaphore>,
    max_connections: usize,
    idle: Option<Duration>,
    close_at_age: Option<Duration>,
}

impl ConnLimits {
    /// The bounds `limits` sets.
    pub fn new(limits: &ServerLimits) -> Self {
        let ms = crate::config::optional_ms;
        Self {
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            max_connections: limits.max_connections,
            idle: ms(limits.idle_timeout_ms),
            close_at_age: ms(limits.max_connection_age_ms)
                .map(|age| age + Duration::from_millis(limits.max_connection_age_grace_ms)),
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.max_connections - self.permits.available_permits()
    }
}

/// The calls open on one connection, shared by the connection and the server's layer
/// (which finds it in each request's extensions, see [`ConnInfo`]).
#[derive(Debug)]
pub struct Activity {
    started: Instant,
    streams: AtomicUsize,
    /// When the last call ended (or the connection opened), in ms since `started`.
    idle_since_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            streams: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
        }
    }

    /// Counts a call open until the guard is dropped.
    pub fn call(self: &Arc<Self>) -> CallGuard {
        self.streams.fetch_add(1, Ordering::AcqRel);
        CallGuard(self.clone())
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// How long until the connection has been idle for `idle`: `None` once it has.
    fn idle_left(&self, idle: Duration) -> Option<Duration> {
        if self.streams.load(Ordering::Acquire) > 0 {
            return Some(idle);
        }
        let idle_for = Duration::from_millis(self.now_ms().saturating_sub(self.idle_since_ms.load(Ordering::Acquire)));
        idle.checked_sub(idle_for).filter(|left| !left.is_zero())
    }
}

/// One open call of a connection (see [`Activity::call`]).
#[derive(Debug)]
pub struct CallGuard(Arc<Activity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.idle_since_ms.store(self.0.now_ms(), Ordering::Release);
        self.0.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What tonic puts into the extensions of every request of a connection: the peer's
/// address, and the connection's [`Activity`].
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The TCP addresses, as tonic reports them for its own listeners.
    pub tcp: TcpConnectInfo,
    /// The calls open on the connection.
    pub activity: Arc<Activity>,
}

/// A connection accepted under [`ConnLimits`]: it holds its slot until dropped, and reads
/// fail (closing the connection) once it is idle or past its age and grace.
#[derive(Debug)]
pub struct Bounded {
    inner: TcpStream,
    info: ConnInfo,
    _slot: OwnedSemaphorePermit,
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
    close_at: Option<Pin<Box<Sleep>>>,
}

impl Bounded {
    fn check_timers(&mut self, cx: &mut Context<'_>) -> Result<(), std::io::Error> {
        if let Some(close_at) = &mut self.close_at
            && close_at.as_mut().poll(cx).is_ready()
        {
            tracing::debug!(peer = ?self.info.tcp.remote_addr, "closing a connection past its age and grace");
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connection past its maximum age and grace",
            ));
        }
        if let Some((idle, timer)) = &mut self.idle {
            while timer.as_mut().poll(cx).is_ready() {
                match self.info.activity.idle_left(*idle) {
                    Some(left) => timer.as_mut().reset(Instant::now() + left),
                    None => {
                        tracing::debug!(peer = ?self.info.tcp.remote_addr, "closing an idle connection");
                        return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "idle connection"));
                    }
                }
            }
        }
        Ok(())
    }
}

impl Connected for Bounded {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Bounded {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        // hyper always has a read pending on a connection, so the timers are polled here.
        if let Err(e) = self.check_timers(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Bounded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// First and longest pause after a failed accept (out of file descriptors, say).
const ACCEPT_BACKOFF: (u64, u64) = (10, 1_000);

/// Accepts connections on `listener`, each one [`Bounded`] by `limits`, handing each to
/// `deliver`.
async fn accept_loop(listener: TcpListener, limits: ConnLimits, mut deliver: impl FnMut(Bounded)) {
    let mut failures = 0u32;
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => {
                failures = 0;
                accepted
            }
            Err(e) => {
                // EMFILE and the like: the error repeats until a connection closes, so wait
                // instead of spinning a core on it.
                failures = failures.saturating_add(1);
                let pause = crate::rpc::backoff_ms(ACCEPT_BACKOFF.0, ACCEPT_BACKOFF.1, failures, rand::random());
                tracing::warn!(error = %e, pause_ms = pause, "cannot accept a connection; pausing");
                tokio::time::sleep(Duration::from_millis(pause)).await;
                continue;
            }
        };
        let Ok(slot) = limits.permits.clone().try_acquire_owned() else {
            // At the cap: closed at once, so the caller can go elsewhere now rather than
            // wait in the kernel's backlog.
            tracing::debug!(%peer, max = limits.max_connections, "connection refused: at server.max_connections");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let tcp_info = TcpConnectInfo {
            local_addr: tcp.local_addr().ok(),
            remote_addr: Some(peer),
        };
        let conn = Bounded {
            inner: tcp,
            info: ConnInfo {
                tcp: tcp_info,
                activity: Arc::new(Activity::new()),
            },
            _slot: slot,
            idle: limits.idle.map(|idle| (idle, Box::pin(tokio::time::sleep(idle)))),
            close_at: limits.close_at_age.map(|d| Box::pin(tokio::time::sleep(d))),
        };
        deliver(conn);
    }
}

/// The connections of `listener` for tonic's `serve_with_incoming`, each [`Bounded`] by
/// `limits` and handed to `deliver` with the sender of the stream (which may prepare it
/// first, a TLS handshake say). Accepting stops, and the listener closes, when the stream
/// is dropped.
pub fn incoming_with<T: Send + 'static>(
    listener: TcpListener,
    limits: ConnLimits,
    mut deliver: impl FnMut(Bounded, &Sender<std::io::Result<T>>) + Send + 'static,
) -> ReceiverStream<std::io::Result<T>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let closed = tx.clone();
        tokio::select! {
            () = closed.closed() => {}
            () = accept_loop(listener, limits, |conn| deliver(conn, &tx)) => {}
        }
    });
    ReceiverStream::new(rx)
}

/// The plaintext [`Bounded`] connections of `listener` (see [`incoming_with`]).
pub fn incoming(listener: TcpListener, limits: ConnLimits) -> ReceiverStream<std::io::Result<Bounded>> {
    incoming_with(listener, limits, |conn, tx| {
        // Full: the server is behind; the connection waits its turn.
        if let Err(tokio::sync::mpsc::error::TrySendError::Full(conn)) = tx.try_send(Ok(conn)) {
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(conn).await;
            });
        }
    })
}

/// The [`ConnInfo`] of a request's connection, plain or TLS.
pub fn conn_info<B>(req: &http::Request<B>) -> Option<&ConnInfo> {
    let ext = req.extensions();
    ext.get::<ConnInfo>().or_else(|| {
        ext.get::<tonic::transport::server::TlsConnectInfo<ConnInfo>>()
            .map(|tls| tls.get_ref())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_without_calls() {
        let a = Arc::new(Activity::new());
        let idle = Duration::from_secs(10);
        assert_eq!(a.idle_left(idle), Some(idle));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(a.idle_left(idle), Some(Duration::from_secs(6)));
        let call = a.call();
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(a.idle_left(idle), Some(idle), "a call is open");
        drop(call);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(a.idle_left(idle), Some(Duration::from_secs(1)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(a.idle_left(idle), None);
    }
}
