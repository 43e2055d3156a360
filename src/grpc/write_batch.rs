//! A connection's writes gathered into one system call per turn of its task.
//! h2 writes a frame at a time (a DATA frame of more than 256 bytes ends a
//! write), and a stream that sends wakes the connection's task first in
//! line, so a commit that woke a thousand watch streams made a send (each
//! through the whole TCP stack) every few frames. Here h2's writes fill a
//! buffer; the connection's task lets the tasks queued before it run first,
//! polls h2, and then writes the buffer out. The server's connections and
//! the client's both use it (a client's callers queue their next requests
//! as a server's streams queue their answers).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Above this many buffered bytes h2's writes go out at once, and past
/// twice this they wait for the socket (backpressure, as without a buffer).
pub(super) const WRITE_AT: usize = 64 * 1024;

/// What an idle connection's buffer may keep (h2's own write buffer size).
pub(super) const KEPT: usize = 16 * 1024;

struct Shared<IO> {
    io: IO,
    out: Vec<u8>,
    /// Bytes of `out` already written.
    written: usize,
    /// Why writing failed: every later write fails with it.
    failed: Option<io::ErrorKind>,
    /// Something was written since the last [`Drain::release_capacity`].
    busy: bool,
}

impl<IO: AsyncWrite + Unpin> Shared<IO> {
    fn pending(&self) -> usize {
        self.out.len() - self.written
    }

    /// Writes the buffer out until it is empty or the socket is full.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(kind) = self.failed {
            return Poll::Ready(Err(kind.into()));
        }
        while self.written < self.out.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.out[self.written..]) {
                Poll::Ready(Ok(0)) => return self.fail(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    self.written += n;
                    self.busy = true;
                }
                Poll::Ready(Err(e)) => return self.fail(e),
                Poll::Pending => {
                    // A socket that keeps taking part of the buffer must
                    // not leave it growing at the front.
                    if self.written >= WRITE_AT {
                        self.out.drain(..self.written);
                        self.written = 0;
                    }
                    return Poll::Pending;
                }
            }
        }
        self.out.clear();
        self.written = 0;
        if self.out.capacity() > 4 * WRITE_AT {
            // One frame larger than the usual batch (a peer may allow DATA
            // frames of up to 16 MiB) does not leave its size behind.
            self.out.shrink_to(WRITE_AT);
        }
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Ready(Err(e)) => self.fail(e),
            other => other,
        }
    }

    fn fail(&mut self, e: io::Error) -> Poll<io::Result<()>> {
        self.failed = Some(e.kind());
        Poll::Ready(Err(e))
    }
}

/// The connection h2 reads and writes.
pub struct Batched<IO>(Arc<Mutex<Shared<IO>>>);

/// What the connection's task holds to write the batch out.
pub struct Drain<IO> {
    shared: Arc<Mutex<Shared<IO>>>,
    /// This turn has let the tasks queued before it run.
    waited: AtomicBool,
}

pub fn batched<IO>(io: IO) -> (Batched<IO>, Drain<IO>) {
    let shared = Arc::new(Mutex::new(Shared {
        io,
        out: Vec::new(),
        written: 0,
        failed: None,
        busy: false,
    }));
    let drain = Drain {
        shared: shared.clone(),
        waited: AtomicBool::new(false),
    };
    (Batched(shared), drain)
}

fn lock<IO>(shared: &Mutex<Shared<IO>>) -> io::Result<MutexGuard<'_, Shared<IO>>> {
    shared
        .lock()
        .map_err(|_| io::Error::other("connection state poisoned"))
}

impl<IO: AsyncWrite + Unpin> Drain<IO> {
    /// Writes out what h2 has written so far. Pending when the socket is
    /// full: the task is woken when it can take more.
    pub fn poll_drain(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        lock(&self.shared)?.poll_drain(cx)
    }

    /// Gives back the buffer's memory if nothing was written since the
    /// last call and nothing waits: run now and then, so a connection that
    /// once had a burst does not keep its buffer while it sits idle (and a
    /// busy one keeps it).
    pub fn release_capacity(&self) {
        if let Ok(mut shared) = lock(&self.shared) {
            let busy = std::mem::replace(&mut shared.busy, false);
            if !busy && shared.pending() == 0 && shared.out.capacity() > KEPT {
                shared.out = Vec::new();
                shared.written = 0;
            }
        }
    }

    /// Reads the buffer's capacity whenever called (tests).
    #[cfg(test)]
    pub fn capacity_probe(&self) -> impl Fn() -> usize + Send + Sync + 'static
    where
        IO: Send + 'static,
    {
        let shared = self.shared.clone();
        move || lock(&shared).map_or(0, |s| s.out.capacity())
    }

    /// Polls `poll` (which writes through h2), then writes out what it
    /// wrote. A failed write is h2's to see: its next write fails.
    pub fn after<T>(
        &self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        let polled = poll(cx);
        let _ = self.poll_drain(cx);
        polled
    }

    /// As [`Drain::after`], but while other streams of the connection have
    /// been woken and wait to run (`streams_queued`), each time the task is
    /// woken it first goes to the back of its worker's queue, so those
    /// streams (a commit wakes every watch stream it concerns) queue their
    /// frames before h2 writes. Without them it needs no wait: the stream
    /// that woke it did so from its own task, and the connection's task
    /// then waits in its worker's next slot until that stream's task has
    /// queued all it had. And going to the back of the queue tells an idle
    /// worker to look for work (a wake of a halted CPU, and a unary call's
    /// answer then written from the other worker: about 3 context switches
    /// per call), so parked streams, such as a client's quiet watches,
    /// must not count.
    pub fn turn<T>(
        &self,
        cx: &mut Context<'_>,
        streams_queued: usize,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        if streams_queued > 0 && !self.waited.swap(true, Ordering::Relaxed) {
            // A task woken while it runs is queued last, not first in line
            // as a task woken by another is.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.waited.store(false, Ordering::Relaxed);
        self.after(cx, poll)
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Batched<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut lock(&self.0)?.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> Batched<IO> {
    /// Room for more: Pending while the buffer is over its limit and the
    /// socket takes no more.
    fn poll_room(shared: &mut Shared<IO>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(kind) = shared.failed {
            return Poll::Ready(Err(kind.into()));
        }
        if shared.pending() >= WRITE_AT {
            match shared.poll_drain(cx) {
                Poll::Ready(r) => r?,
                Poll::Pending if shared.pending() >= 2 * WRITE_AT => return Poll::Pending,
                Poll::Pending => {}
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Batched<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut shared = lock(&self.0)?;
        std::task::ready!(Self::poll_room(&mut shared, cx))?;
        shared.out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut shared = lock(&self.0)?;
        std::task::ready!(Self::poll_room(&mut shared, cx))?;
        let mut n = 0;
        for b in bufs {
            shared.out.extend_from_slice(b);
            n += b.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// h2 flushes after every large frame; the batch goes out when the
    /// connection's task drains it (or here once it is large).
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut shared = lock(&self.0)?;
        Self::poll_room(&mut shared, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut shared = lock(&self.0)?;
        std::task::ready!(shared.poll_drain(cx))?;
        std::task::ready!(Pin::new(&mut shared.io).poll_flush(cx))?;
        Pin::new(&mut shared.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    /// A socket that records each write; it can be made full or broken.
    #[derive(Clone, Default)]
    struct Socket(Arc<Mutex<SocketState>>);

    #[derive(Default)]
    struct SocketState {
        writes: Vec<Vec<u8>>,
        full: bool,
        /// Takes at most this many bytes a write, then is full until
        /// `full` is cleared.
        takes: Option<usize>,
        broken: bool,
        shut: bool,
    }

    impl Socket {
        fn state(&self) -> MutexGuard<'_, SocketState> {
            self.0.lock().unwrap()
        }
    }

    impl AsyncWrite for Socket {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let mut s = self.state();
            if s.broken {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            if s.full {
                return Poll::Pending;
            }
            let n = s.takes.map_or(buf.len(), |t| t.min(buf.len()));
            if s.takes.is_some() {
                s.full = true;
            }
            s.writes.push(buf[..n].to_vec());
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.state().shut = true;
            Poll::Ready(Ok(()))
        }
    }

    fn cx() -> Context<'static> {
        Context::from_waker(Waker::noop())
    }

    fn write(b: &mut Batched<Socket>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(b).poll_write(&mut cx(), data)
    }

    fn flush(b: &mut Batched<Socket>) -> Poll<io::Result<()>> {
        Pin::new(b).poll_flush(&mut cx())
    }

    #[test]
    fn writes_and_flushes_go_out_as_one_write_when_drained() {
        let socket = Socket::default();
        let (mut b, drain) = batched(socket.clone());
        for frame in [&b"one"[..], b"two", b"three"] {
            assert!(matches!(write(&mut b, frame), Poll::Ready(Ok(n)) if n == frame.len()));
            assert!(matches!(flush(&mut b), Poll::Ready(Ok(()))));
        }
        assert!(socket.state().writes.is_empty(), "held until the turn ends");
        assert!(matches!(drain.poll_drain(&mut cx()), Poll::Ready(Ok(()))));
        assert_eq!(socket.state().writes, vec![b"onetwothree".to_vec()]);
        assert!(matches!(drain.poll_drain(&mut cx()), Poll::Ready(Ok(()))));
        assert_eq!(socket.state().writes.len(), 1, "nothing left to write");
    }

    #[test]
    fn a_full_socket_holds_writes_back_once_the_buffer_is_over_its_limit() {
        let socket = Socket::default();
        socket.state().full = true;
        let (mut b, drain) = batched(socket.clone());
        let frame = vec![7u8; 16 * 1024];
        let mut taken = 0;
        while let Poll::Ready(r) = write(&mut b, &frame) {
            taken += r.unwrap();
            assert!(
                taken <= 2 * WRITE_AT + frame.len(),
                "the buffer grows without bound"
            );
        }
        assert!(taken >= 2 * WRITE_AT);
        assert!(drain.poll_drain(&mut cx()).is_pending());
        socket.state().full = false;
        assert!(matches!(drain.poll_drain(&mut cx()), Poll::Ready(Ok(()))));
        let written: usize = socket.state().writes.iter().map(Vec::len).sum();
        assert_eq!(written, taken, "every byte taken was written");
        assert!(write(&mut b, &frame).is_ready(), "room again");
    }

    #[test]
    fn a_socket_that_takes_part_of_each_write_keeps_the_buffer_bounded() {
        let socket = Socket::default();
        socket.state().takes = Some(8 * 1024);
        let (mut b, drain) = batched(socket.clone());
        let frame = vec![1u8; 10 * 1024];
        let mut taken = 0;
        for _ in 0..1000 {
            socket.state().full = false;
            if let Poll::Ready(r) = write(&mut b, &frame) {
                taken += r.unwrap();
            }
            let _ = drain.poll_drain(&mut cx());
            let held = lock(&b.0).unwrap().out.len();
            assert!(held <= 4 * WRITE_AT, "{held} bytes held");
        }
        socket.state().takes = None;
        socket.state().full = false;
        assert!(matches!(drain.poll_drain(&mut cx()), Poll::Ready(Ok(()))));
        let written: usize = socket.state().writes.iter().map(Vec::len).sum();
        assert_eq!(written, taken, "every byte taken was written, once");
    }

    #[test]
    fn a_connection_idle_between_two_looks_gives_its_buffer_back() {
        let socket = Socket::default();
        let (mut b, drain) = batched(socket.clone());
        socket.state().full = true;
        assert!(write(&mut b, &vec![0u8; 100 * 1024]).is_ready());
        drain.release_capacity();
        assert_eq!(
            lock(&b.0).unwrap().pending(),
            100 * 1024,
            "kept while it waits"
        );
        socket.state().full = false;
        assert!(matches!(drain.poll_drain(&mut cx()), Poll::Ready(Ok(()))));
        assert!(lock(&b.0).unwrap().out.capacity() >= 100 * 1024);
        drain.release_capacity();
        let capacity = lock(&b.0).unwrap().out.capacity();
        assert!(capacity >= 100 * 1024, "it wrote since the last look: kept");
        drain.release_capacity();
        assert!(
            lock(&b.0).unwrap().out.capacity() <= KEPT,
            "idle since: given back"
        );
        assert!(write(&mut b, b"next").is_ready());
        assert!(matches!(drain.poll_drain(&mut cx()), Poll::Ready(Ok(()))));
        assert_eq!(socket.state().writes.last().unwrap(), b"next");
    }

    #[test]
    fn a_failed_write_fails_every_later_one() {
        let socket = Socket::default();
        let (mut b, drain) = batched(socket.clone());
        assert!(write(&mut b, b"frame").is_ready());
        socket.state().broken = true;
        assert!(matches!(drain.poll_drain(&mut cx()), Poll::Ready(Err(_))));
        socket.state().broken = false;
        assert!(matches!(write(&mut b, b"more"), Poll::Ready(Err(_))));
        assert!(matches!(flush(&mut b), Poll::Ready(Err(_))));
        assert!(socket.state().writes.is_empty());
    }

    #[test]
    fn shutdown_writes_what_is_held_first() {
        let socket = Socket::default();
        let (mut b, _drain) = batched(socket.clone());
        assert!(write(&mut b, b"goaway").is_ready());
        assert!(matches!(
            Pin::new(&mut b).poll_shutdown(&mut cx()),
            Poll::Ready(Ok(()))
        ));
        let s = socket.state();
        assert_eq!(s.writes, vec![b"goaway".to_vec()]);
        assert!(s.shut);
    }

    #[test]
    fn a_turn_lets_the_queued_tasks_run_before_it_polls() {
        let (_b, drain) = batched(Socket::default());
        let polls = std::cell::Cell::new(0);
        let poll = |_: &mut Context<'_>| {
            polls.set(polls.get() + 1);
            Poll::<()>::Pending
        };
        assert!(drain.turn(&mut cx(), 2, poll).is_pending());
        assert_eq!(polls.get(), 0, "first it wakes itself and waits its turn");
        assert!(drain.turn(&mut cx(), 2, poll).is_pending());
        assert_eq!(polls.get(), 1);
        assert!(drain.turn(&mut cx(), 1, poll).is_pending());
        assert_eq!(
            polls.get(),
            1,
            "and again on the next wake, for one stream too"
        );
        assert!(drain.turn(&mut cx(), 1, poll).is_pending());
        assert_eq!(polls.get(), 2);
        // With no stream waiting to run, it polls at once, every time.
        assert!(drain.turn(&mut cx(), 0, poll).is_pending());
        assert_eq!(polls.get(), 3);
        assert!(drain.turn(&mut cx(), 0, poll).is_pending());
        assert_eq!(polls.get(), 4);
    }
}
