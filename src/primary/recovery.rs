//! Recovery after a batch could not be made durable: the node stops taking
//! writes (draining) and keeps trying to settle the failed batch, at once
//! and then with a doubling backoff, until the durable store has it (or
//! other records at its revisions). Then the node gives up the Primary
//! role; whoever appoints the next Primary runs preflight, which catches up
//! with what the durable store holds. A plain state machine: it is told
//! the time and the outcome of each attempt, and says when to try next.

use std::time::Duration;

use tokio::time::Instant;

/// The first wait after a failed attempt.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// The longest wait between attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What recovery wants next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Try settling the failed batch at this instant.
    AttemptAt(Instant),
    /// Settled: the write path can be handed back.
    Settled,
}

#[derive(Debug)]
pub struct Recovery {
    step: Step,
    backoff: Duration,
    attempts: u32,
}

impl Recovery {
    /// Recovery starting at `now`: the first attempt is due at once.
    pub fn new(now: Instant) -> Recovery {
        Recovery {
            step: Step::AttemptAt(now),
            backoff: FIRST_BACKOFF,
            attempts: 0,
        }
    }

    pub fn step(&self) -> Step {
        self.step
    }

    /// Attempts made so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Records an attempt made at `now`; says what comes next.
    pub fn attempted(&mut self, now: Instant, settled: bool) -> Step {
        self.attempts += 1;
        self.step = if settled {
            Step::Settled
        } else {
            let at = now + self.backoff;
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            Step::AttemptAt(at)
        };
        self.step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_attempt_at_once_then_doubling_backoff_capped_then_settled() {
        let t0 = Instant::now();
        let mut r = Recovery::new(t0);
        assert_eq!(r.step(), Step::AttemptAt(t0));
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..7 {
            let Step::AttemptAt(next) = r.attempted(now, false) else {
                panic!("not settled yet");
            };
            waits.push((next - now).as_secs());
            now = next;
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(r.attempted(now, true), Step::Settled);
        assert_eq!(r.step(), Step::Settled);
        assert_eq!(r.attempts(), 8);
    }
}
