//! A long-lived connection to one peer: made when first needed, made again
//! when lost, kept checked by HTTP/2 keepalive pings, with a doubling
//! backoff between failed attempts so an unreachable peer costs one quick
//! error per call rather than a connect timeout each.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::time::Instant;

use super::client::{Channel, ClientCall, Keepalive};
use super::status::Status;

/// How a connection is verified: TLS with this configuration (which also
/// carries the client certificate), the server named `server_name`.
#[derive(Clone)]
pub struct TlsTarget {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: String,
}

/// Tunables of a [`Connector`].
#[derive(Clone, Copy, Debug)]
pub struct ConnectorSettings {
    /// TCP connect plus TLS and HTTP/2 handshakes.
    pub connect_timeout: Duration,
    pub keepalive: Keepalive,
    /// Wait after the first failed attempt; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for ConnectorSettings {
    fn default() -> Self {
        ConnectorSettings {
            connect_timeout: Duration::from_secs(5),
            keepalive: Keepalive {
                interval: Duration::from_secs(10),
                timeout: Duration::from_secs(5),
            },
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// When the next connection attempt may be made: at once at first, then
/// after a delay that doubles with each failure (capped) and resets on
/// success. Told the time; holds no clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    delay: Duration,
    not_before: Option<Instant>,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            delay: min,
            not_before: None,
        }
    }

    /// None when an attempt may be made at `now`, else when it may.
    pub fn wait_until(&self, now: Instant) -> Option<Instant> {
        self.not_before.filter(|at| *at > now)
    }

    pub fn failed(&mut self, now: Instant) {
        self.not_before = Some(now + self.delay);
        self.delay = (self.delay * 2).min(self.max);
    }

    pub fn succeeded(&mut self) {
        self.delay = self.min;
        self.not_before = None;
    }
}

struct State {
    channel: Option<Channel>,
    backoff: Backoff,
    last_error: Option<Status>,
}

/// The connection to one peer address.
pub struct Connector {
    addr: String,
    tls: Option<TlsTarget>,
    settings: ConnectorSettings,
    state: tokio::sync::Mutex<State>,
}

impl Connector {
    pub fn new(addr: &str, tls: Option<TlsTarget>, settings: ConnectorSettings) -> Connector {
        Connector {
            addr: addr.to_string(),
            tls,
            settings,
            state: tokio::sync::Mutex::new(State {
                channel: None,
                backoff: Backoff::new(settings.min_backoff, settings.max_backoff),
                last_error: None,
            }),
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Waits (at most `at_most`) until a connection attempt may be made,
    /// for a retry that should really try rather than fail at once.
    pub async fn wait_for_attempt(&self, at_most: Duration) {
        let at = {
            let state = self.state.lock().await;
            if state.channel.as_ref().is_some_and(|ch| !ch.is_closed()) {
                return;
            }
            state.backoff.wait_until(Instant::now())
        };
        if let Some(at) = at {
            tokio::time::sleep_until(at.min(Instant::now() + at_most)).await;
        }
    }

    /// A live channel: the current one, or a new connection. While backing
    /// off after a failed attempt, fails at once with that attempt's error.
    pub async fn channel(&self) -> Result<Channel, Status> {
        let mut state = self.state.lock().await;
        if let Some(ch) = &state.channel {
            if !ch.is_closed() {
                return Ok(ch.clone());
            }
            log::info!("connection to {} lost; reconnecting", self.addr);
            state.channel = None;
        }
        let now = Instant::now();
        if let Some(at) = state.backoff.wait_until(now) {
            let last = state
                .last_error
                .as_ref()
                .map_or_else(String::new, |e| format!(": {}", e.message));
            return Err(Status::unavailable(format!(
                "no connection to {}{last} (next attempt in {:?})",
                self.addr,
                at - now
            )));
        }
        match self.connect().await {
            Ok(ch) => {
                state.backoff.succeeded();
                state.last_error = None;
                state.channel = Some(ch.clone());
                Ok(ch)
            }
            Err(e) => {
                state.backoff.failed(Instant::now());
                state.last_error = Some(e.clone());
                Err(e)
            }
        }
    }

    async fn connect(&self) -> Result<Channel, Status> {
        let keepalive = Some(self.settings.keepalive);
        let addr = &self.addr;
        let attempt = async {
            // The whole attempt is bounded by connect_timeout below.
            let tcp = super::client::dial(addr, None).await?;
            match &self.tls {
                None => Channel::over_with(tcp, addr, "http", keepalive).await,
                Some(t) => {
                    let tls = super::client::handshake(tcp, t.config.clone(), &t.server_name, addr)
                        .await?;
                    Channel::over_with(tls, addr, "https", keepalive).await
                }
            }
        };
        match tokio::time::timeout(self.settings.connect_timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(Status::unavailable(format!(
                "connect to {addr}: timed out after {:?}",
                self.settings.connect_timeout
            ))),
        }
    }

    /// One request, one response, within `timeout`.
    pub async fn unary<Req: Message, Resp: Message + Default>(
        &self,
        path: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, Status> {
        let ch = self.channel().await?;
        ch.unary_with_timeout(path, request, Some(timeout)).await
    }

    /// Opens a streaming call.
    pub async fn start(&self, path: &str, timeout: Option<Duration>) -> Result<ClientCall, Status> {
        self.channel().await?.start(path, timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets_on_success() {
        let t0 = Instant::now();
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        assert_eq!(b.wait_until(t0), None, "the first attempt is at once");
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..5 {
            b.failed(now);
            let at = b.wait_until(now).expect("backing off");
            waits.push((at - now).as_millis());
            assert_eq!(b.wait_until(at), None, "due at that instant");
            now = at;
        }
        assert_eq!(waits, [100, 200, 400, 500, 500]);
        b.succeeded();
        assert_eq!(b.wait_until(now), None);
        b.failed(now);
        assert_eq!(b.wait_until(now), Some(now + Duration::from_millis(100)));
    }
}
