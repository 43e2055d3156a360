//! Latency and throughput bookkeeping.

use std::time::Duration;

use serde_json::{json, Value};

/// What one client (or one run) measured.
#[derive(Default, Clone)]
pub struct Stats {
    pub ops: u64,
    pub errors: u64,
    /// Microseconds per successful operation.
    pub latencies_us: Vec<u32>,
    /// The first error seen, to show why.
    pub first_error: Option<String>,
    /// CPU time the server used meanwhile, (user, user + system), when it
    /// was counted (whole runs only, not per client).
    pub server_cpu: Option<(Duration, Duration)>,
}

impl Stats {
    pub fn record(&mut self, latency: Duration, ok: Result<(), String>) {
        match ok {
            Ok(()) => {
                self.ops += 1;
                self.latencies_us
                    .push(latency.as_micros().min(u32::MAX as u128) as u32);
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    pub fn merge(&mut self, other: Stats) {
        self.ops += other.ops;
        self.errors += other.errors;
        self.latencies_us.extend(other.latencies_us);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// The summary of one run against one server.
#[derive(Clone, Debug)]
pub struct Report {
    pub mode: String,
    pub target: String,
    pub ops: u64,
    pub errors: u64,
    pub seconds: f64,
    pub throughput: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub first_error: Option<String>,
    /// With checks (smoke): Ok, or the one line saying what differed.
    pub check: Option<Result<(), String>>,
    /// The server's CPU time per successful operation in microseconds,
    /// (user, user + system), when it was counted.
    pub server_cpu_us: Option<(f64, f64)>,
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

impl Report {
    pub fn new(mode: &str, target: &str, mut stats: Stats, elapsed: Duration) -> Report {
        stats.latencies_us.sort_unstable();
        let l = &stats.latencies_us;
        let seconds = elapsed.as_secs_f64().max(1e-9);
        let per_op = |d: Duration| d.as_secs_f64() * 1e6 / stats.ops.max(1) as f64;
        let server_cpu_us = stats.server_cpu.map(|(u, all)| (per_op(u), per_op(all)));
        Report {
            mode: mode.to_string(),
            target: target.to_string(),
            ops: stats.ops,
            errors: stats.errors,
            seconds,
            throughput: stats.ops as f64 / seconds,
            p50_ms: percentile(l, 0.50),
            p90_ms: percentile(l, 0.90),
            p99_ms: percentile(l, 0.99),
            max_ms: l.last().copied().unwrap_or(0) as f64 / 1000.0,
            first_error: stats.first_error,
            check: None,
            server_cpu_us,
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "mode": self.mode, "target": self.target, "ops": self.ops, "errors": self.errors,
            "seconds": self.seconds, "throughput": self.throughput,
            "p50_ms": self.p50_ms, "p90_ms": self.p90_ms, "p99_ms": self.p99_ms, "max_ms": self.max_ms,
            "first_error": self.first_error,
            "server_cpu_us_per_op": self.server_cpu_us.map(|c| c.1),
            "server_user_cpu_us_per_op": self.server_cpu_us.map(|c| c.0),
            "check": self.check.as_ref().map(|c| match c {
                Ok(()) => "ok".to_string(),
                Err(e) => format!("failed: {e}"),
            }),
        })
    }

    pub fn header() -> String {
        format!(
            "{:<23} {:<8} {:>9} {:>7} {:>11} {:>9} {:>9} {:>9} {:>9} {:>13}",
            "mode",
            "target",
            "ops",
            "errors",
            "ops/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "server CPU µs"
        )
    }

    pub fn line(&self) -> String {
        format!(
            "{:<23} {:<8} {:>9} {:>7} {:>11.1} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>13}",
            self.mode,
            self.target,
            self.ops,
            self.errors,
            self.throughput,
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.max_ms,
            self.server_cpu_us
                .map_or("-".to_string(), |c| format!("{:.1}", c.1))
        )
    }
}

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_medians() {
        let mut s = Stats::default();
        for ms in 1..=100u64 {
            s.record(Duration::from_millis(ms), Ok(()));
        }
        s.record(Duration::ZERO, Err("boom".into()));
        let r = Report::new("put", "netsy", s, Duration::from_secs(2));
        assert_eq!((r.ops, r.errors), (100, 1));
        assert_eq!(r.throughput, 50.0);
        assert_eq!(r.p50_ms, 51.0);
        assert_eq!(r.p99_ms, 99.0);
        assert_eq!(r.max_ms, 100.0);
        assert_eq!(r.first_error.as_deref(), Some("boom"));
        assert_eq!(r.server_cpu_us, None);
        let mut s = Stats::default();
        for _ in 0..4 {
            s.record(Duration::from_millis(1), Ok(()));
        }
        s.server_cpu = Some((Duration::from_micros(100), Duration::from_micros(300)));
        let r = Report::new("put", "netsy", s, Duration::from_secs(1));
        assert_eq!(r.server_cpu_us, Some((25.0, 75.0)));
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
