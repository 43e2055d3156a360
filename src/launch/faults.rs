//! Fault-injecting proxies for tests and benchmarks, switched at run time
//! through a cloneable control handle: [`s3::S3Proxy`] (HTTP in front of an
//! S3 API server: latency, 5xx, dropped connections, outage, lost
//! conditional writes) and [`tcp::TcpProxy`] (any TCP link, such as a
//! node's peer API: delay, blackhole, reset, one-way cut). Each runs on
//! its own thread and runtime, so it keeps working while a test blocks its
//! own thread, and it stops when dropped. Both listen on 127.0.0.1 only.

pub mod s3;
pub mod tcp;

use std::future::Future;
use std::net::SocketAddr;

use tokio::sync::oneshot;

/// A proxy's thread, running `serve` on its listener until dropped; every
/// connection task ends with it.
struct Background {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    /// Binds 127.0.0.1:0 now (the address is known before anything
    /// connects) and serves it on a new thread.
    fn start<F, Fut>(name: &str, serve: F) -> Result<(Background, SocketAddr), String>
    where
        F: FnOnce(tokio::net::TcpListener) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| format!("{name}: cannot listen on 127.0.0.1: {e}"))?;
        let addr = listener.local_addr().map_err(|e| format!("{name}: {e}"))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("{name}: {e}"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("{name}: cannot start a runtime: {e}"))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let what = name.to_string();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            log::error!("{what}: {e}");
                            return;
                        }
                    };
                    tokio::select! {
                        _ = serve(listener) => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime here drops every connection task
                // and closes its sockets.
            })
            .map_err(|e| format!("{name}: cannot start its thread: {e}"))?;
        Ok((
            Background {
                stop: Some(stop),
                thread: Some(thread),
            },
            addr,
        ))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Whether the `seen`-th matching request (0-based) of a mode that hits
/// `fraction` of them is hit: the hits are spread evenly and the same run
/// gives the same ones, so a test can count them.
fn spread(seen: u64, fraction: f64) -> bool {
    let f = fraction.clamp(0.0, 1.0);
    ((seen + 1) as f64 * f).floor() > (seen as f64 * f).floor()
}

#[cfg(test)]
mod tests {
    use super::spread;

    #[test]
    fn fractions_are_spread_evenly() {
        let hits = |f: f64| (0..100).filter(|n| spread(*n, f)).count();
        assert_eq!(hits(0.0), 0);
        assert_eq!(hits(1.0), 100);
        assert_eq!(hits(0.5), 50);
        assert_eq!(hits(0.1), 10);
        assert_eq!(hits(2.0), 100, "clamped");
        let half: Vec<bool> = (0..4).map(|n| spread(n, 0.5)).collect();
        assert_eq!(half, [false, true, false, true]);
    }
}
