//! Threads for housekeeping that should only take the CPU the client
//! requests leave: they run at a higher nice value, so on a small machine a
//! request's thread woken on the same core runs first instead of queueing
//! behind them.

use std::thread::JoinHandle;

/// Nice value of work worth finishing soon but not before a request
/// (a snapshot: reading and compressing every record).
pub const NICE_LOW: i32 = 10;

/// Nice value of work that only matters when it is not done in time, and
/// then its caller does it itself (directories and files made ahead).
pub const NICE_IDLE: i32 = 19;

/// Starts `work` on a thread named `name` at `nice`. Best effort: where
/// the priority cannot be lowered, the thread runs at the usual one.
pub fn spawn<T: Send + 'static>(
    name: &str,
    nice: i32,
    work: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<JoinHandle<T>> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            lower_this_thread(nice);
            work()
        })
}

/// The calling thread's nice value.
pub fn nice_of_this_thread() -> i32 {
    // SAFETY: plain system calls on this thread's own id.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
}

fn lower_this_thread(nice: i32) {
    // A thread's own nice value is set through its thread id (Linux).
    // SAFETY: plain system calls on this thread's own id.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_work_runs_at_its_nice_value_and_the_caller_keeps_its_own() {
        let here = nice_of_this_thread();
        let there = spawn("netsy-test", NICE_IDLE, nice_of_this_thread)
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(there, NICE_IDLE.max(here));
        assert_eq!(nice_of_this_thread(), here, "the caller keeps its own");
    }
}
