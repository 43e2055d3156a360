//! Whether the write path takes writes, and if not, what callers are told.
//! The node opens it when this node becomes the active Primary and closes
//! it on every other role change; the write path closes it itself the
//! moment durability fails. A gate closed for a passing reason (a Primary
//! being chosen or starting) makes writers wait a little for it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

use super::error::WriteError;

/// How long a write waits for a gate closed for a passing reason.
pub const WRITE_PATIENCE: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
struct Closed {
    /// The primary state writers are told.
    state: &'static str,
    reason: String,
    /// The gate is expected to open soon.
    passing: bool,
}

pub struct WriteGate {
    open: AtomicBool,
    closed: Mutex<Closed>,
    changed: watch::Sender<()>,
}

impl Default for WriteGate {
    fn default() -> Self {
        WriteGate {
            open: AtomicBool::new(false),
            closed: Mutex::new(Closed {
                state: "replica",
                reason: String::new(),
                passing: false,
            }),
            changed: watch::Sender::new(()),
        }
    }
}

impl WriteGate {
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    fn set(&self, open: bool, update: impl FnOnce(&mut Closed)) {
        if let Ok(mut c) = self.closed.lock() {
            update(&mut c);
        }
        self.open.store(open, Ordering::Release);
        self.changed.send_replace(());
    }

    pub fn open(&self) {
        self.set(true, |c| c.reason.clear());
    }

    /// Refuses writes as a node in primary state `state`; the reason given
    /// when the write path closed the gate itself is kept.
    pub fn close(&self, state: &'static str) {
        self.set(false, |c| {
            c.state = state;
            c.passing = false;
        });
    }

    /// Refuses writes as a node in primary state `state`, telling why;
    /// `passing` when the gate should open again soon.
    pub fn close_for(&self, state: &'static str, reason: String, passing: bool) {
        self.set(false, |c| {
            *c = Closed {
                state,
                reason,
                passing,
            }
        });
    }

    fn closed(&self) -> Closed {
        self.closed.lock().map(|c| c.clone()).unwrap_or(Closed {
            state: "draining",
            reason: String::new(),
            passing: false,
        })
    }

    pub fn check(&self) -> Result<(), WriteError> {
        if self.is_open() {
            return Ok(());
        }
        let Closed { state, reason, .. } = self.closed();
        Err(WriteError::NotAccepting { state, reason })
    }

    /// Ok once open; waits up to `patience` while closed for a passing
    /// reason, fails at once otherwise.
    pub async fn wait(&self, patience: Duration) -> Result<(), WriteError> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut changes = self.changed.subscribe();
        loop {
            if self.is_open() || !self.closed().passing {
                return self.check();
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return self.check();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn writers_wait_for_a_passing_closure_only() {
        let gate = std::sync::Arc::new(WriteGate::default());
        assert!(
            gate.wait(WRITE_PATIENCE).await.is_err(),
            "closed for good: at once"
        );
        gate.close_for("starting", String::new(), true);
        let g = gate.clone();
        let waiter = tokio::spawn(async move { g.wait(WRITE_PATIENCE).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        gate.open();
        assert_eq!(waiter.await.unwrap(), Ok(()));

        gate.close_for("replica", "no Primary is elected yet".into(), true);
        let started = tokio::time::Instant::now();
        let err = gate.wait(WRITE_PATIENCE).await.unwrap_err();
        assert_eq!(
            started.elapsed(),
            WRITE_PATIENCE,
            "waited the whole patience"
        );
        assert_eq!(
            err.to_string(),
            "this node is not accepting writes (state: replica): no Primary is elected yet"
        );
        gate.close("draining");
        let started = tokio::time::Instant::now();
        assert!(gate.wait(WRITE_PATIENCE).await.is_err());
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
