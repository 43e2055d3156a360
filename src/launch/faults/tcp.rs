//! A fault-injecting TCP proxy for one link, such as a node's peer API
//! (the cluster launcher can make a node advertise the proxy while it
//! binds the real port). Bytes are forwarded as they come, TLS and all;
//! a test switches [`TcpMode`]s at run time through [`TcpFaults`].
//!
//! A blackhole stops the bytes rather than losing them: TCP never loses
//! bytes inside a connection, so a partition looks like a stall to both
//! ends, and the bytes flow again if it heals before they give up.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::Background;

/// Which way bytes go through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From whoever connected to the proxy, to the target.
    ToTarget,
    /// From the target back to whoever connected.
    FromTarget,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpMode {
    /// Bytes flow both ways.
    Pass,
    /// Each chunk read waits this long before it is written on.
    Delay(Duration),
    /// Connections are accepted (and made to the target) but no byte flows
    /// either way.
    Blackhole,
    /// Every open connection is reset now, and each new one as soon as it
    /// is accepted.
    Reset,
    /// Bytes flow only this way; the other way stalls as in a blackhole.
    OneWay(Direction),
}

impl TcpMode {
    /// Whether bytes going `direction` flow, and after what wait.
    fn flows(self, direction: Direction) -> Option<Option<Duration>> {
        match self {
            TcpMode::Pass => Some(None),
            TcpMode::Delay(d) => Some(Some(d)),
            TcpMode::OneWay(d) if d == direction => Some(None),
            TcpMode::Blackhole | TcpMode::Reset | TcpMode::OneWay(_) => None,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct State {
    mode: TcpMode,
    /// Moves on every [`TcpFaults::reset_now`]; a connection older than
    /// the current one is reset.
    epoch: u64,
}

#[derive(Default)]
struct Stats {
    accepted: AtomicU64,
    open: AtomicU64,
    reset: AtomicU64,
    to_target: AtomicU64,
    from_target: AtomicU64,
}

/// What the proxy has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpCounts {
    pub accepted: u64,
    /// Connections open now.
    pub open: u64,
    /// Connections the proxy reset (on open ones and at accept).
    pub reset: u64,
    pub bytes_to_target: u64,
    pub bytes_from_target: u64,
}

/// The control handle of a [`TcpProxy`]; cheap to clone and usable from
/// any thread.
#[derive(Clone)]
pub struct TcpFaults {
    state: Arc<watch::Sender<State>>,
    stats: Arc<Stats>,
}

impl TcpFaults {
    /// Switches the mode; open connections follow at once.
    pub fn set(&self, mode: TcpMode) {
        self.state.send_modify(|s| s.mode = mode);
    }

    pub fn mode(&self) -> TcpMode {
        self.state.borrow().mode
    }

    /// Resets every open connection now and keeps the mode: clients
    /// reconnect to a link that works (or not) as before.
    pub fn reset_now(&self) {
        self.state.send_modify(|s| s.epoch += 1);
    }

    pub fn counts(&self) -> TcpCounts {
        let s = &self.stats;
        TcpCounts {
            accepted: s.accepted.load(Ordering::Acquire),
            open: s.open.load(Ordering::Acquire),
            reset: s.reset.load(Ordering::Acquire),
            bytes_to_target: s.to_target.load(Ordering::Acquire),
            bytes_from_target: s.from_target.load(Ordering::Acquire),
        }
    }
}

/// The proxy: listens on 127.0.0.1 and forwards every connection to the
/// target; stops (closing every connection) when dropped.
pub struct TcpProxy {
    addr: SocketAddr,
    target: String,
    faults: TcpFaults,
    _background: Background,
}

impl TcpProxy {
    /// A proxy to `target` (`host:port`), passing everything until told
    /// otherwise. The target need not listen yet: each connection dials it
    /// when accepted.
    pub fn start(target: &str) -> Result<TcpProxy, String> {
        let (state, _) = watch::channel(State {
            mode: TcpMode::Pass,
            epoch: 0,
        });
        let faults = TcpFaults {
            state: Arc::new(state),
            stats: Arc::default(),
        };
        let (background, addr) = {
            let (target, faults) = (target.to_string(), faults.clone());
            Background::start("tcp-fault-proxy", move |listener| {
                serve(listener, target, faults)
            })?
        };
        Ok(TcpProxy {
            addr,
            target: target.to_string(),
            faults,
            _background: background,
        })
    }

    /// Where clients connect: `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    pub fn faults(&self) -> TcpFaults {
        self.faults.clone()
    }
}

async fn serve(listener: tokio::net::TcpListener, target: String, faults: TcpFaults) {
    let target: Arc<str> = target.into();
    loop {
        let client = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors and the like: try again shortly.
                log::warn!("tcp fault proxy: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        faults.stats.accepted.fetch_add(1, Ordering::AcqRel);
        if faults.mode() == TcpMode::Reset {
            abort(&client);
            faults.stats.reset.fetch_add(1, Ordering::AcqRel);
            continue;
        }
        let (target, faults) = (target.clone(), faults.clone());
        tokio::spawn(connection(client, target, faults));
    }
}

/// A reset rather than an orderly close: linger 0 sends RST on drop.
fn abort(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

/// Counts a connection as open while it lives.
struct Open(Arc<Stats>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn connection(mut client: TcpStream, target: Arc<str>, faults: TcpFaults) {
    faults.stats.open.fetch_add(1, Ordering::AcqRel);
    let _open = Open(faults.stats.clone());
    let epoch = faults.state.borrow().epoch;
    let mut server = match TcpStream::connect(&*target).await {
        Ok(s) => s,
        Err(e) => {
            // The target is down: the client sees a reset, as it would
            // connecting to it directly.
            log::debug!("tcp fault proxy: cannot reach {target}: {e}");
            abort(&client);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let was_reset = {
        let (mut client_read, mut client_write) = client.split();
        let (mut server_read, mut server_write) = server.split();
        let up = pump(
            &mut client_read,
            &mut server_write,
            Direction::ToTarget,
            faults.state.subscribe(),
            &faults.stats.to_target,
        );
        let down = pump(
            &mut server_read,
            &mut client_write,
            Direction::FromTarget,
            faults.state.subscribe(),
            &faults.stats.from_target,
        );
        tokio::select! {
            _ = async { tokio::join!(up, down) } => false,
            _ = reset_requested(faults.state.subscribe(), epoch) => true,
        }
    };
    if was_reset {
        abort(&client);
        abort(&server);
        faults.stats.reset.fetch_add(1, Ordering::AcqRel);
    }
}

/// Resolves once this connection must be reset: the mode is Reset, or a
/// reset of every connection was asked after it opened.
async fn reset_requested(mut state: watch::Receiver<State>, epoch: u64) {
    loop {
        {
            let s = *state.borrow_and_update();
            if s.mode == TcpMode::Reset || s.epoch != epoch {
                return;
            }
        }
        if state.changed().await.is_err() {
            // The proxy is stopping; its runtime ends this task.
            std::future::pending::<()>().await;
        }
    }
}

/// Waits until bytes may go `direction`; the wait before each write.
async fn flowing(
    state: &mut watch::Receiver<State>,
    direction: Direction,
) -> Option<Option<Duration>> {
    loop {
        let mode = state.borrow_and_update().mode;
        if let Some(delay) = mode.flows(direction) {
            return Some(delay);
        }
        state.changed().await.ok()?;
    }
}

/// Copies one direction until end of stream (passed on as a half-close)
/// or an error, following the mode before every read and every write.
async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    direction: Direction,
    mut state: watch::Receiver<State>,
    counter: &AtomicU64,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Not reading while stalled leaves the bytes in the kernel's
        // buffers, so the sender feels the stall as it would on a network.
        if flowing(&mut state, direction).await.is_none() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        // The mode may have changed during the read: these bytes wait too.
        let Some(delay) = flowing(&mut state, direction).await else {
            return;
        };
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        counter.fetch_add(n as u64, Ordering::AcqRel);
    }
}
