//! The Primary's leases: grant (stored in the bucket first, then in the
//! lease table), revoke (attached keys deleted through the write path,
//! then the bucket object), keep-alive, time-to-live and the list, and the
//! expiry loop that revokes what ran out. Only an active Primary answers:
//! the [`Lessor`]'s deadlines are taken over when this node starts to lead
//! and cleared when it stops.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::log::leases::{self as bucket, LeaseObject};
use crate::objstore::ObjectStore;
use crate::store::Store;

use super::core::{MAX_LEASE_TTL, MIN_LEASE_TTL};
use super::error::WriteError;
use super::lessor::{LeaseIds, Lessor, TimeToLive};
use super::Writer;

/// How often the expiry loop looks at least (etcd checks every 500 ms).
const EXPIRY_TICK: Duration = Duration::from_millis(500);

/// Fresh ids tried before giving up (each collision is a bucket round).
const FRESH_ID_ATTEMPTS: usize = 8;

/// A lease as LeaseTimeToLive reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseStatus {
    pub ttl: TimeToLive,
    /// Attached keys, when asked for.
    pub keys: Vec<Bytes>,
}

pub struct Leases {
    lessor: Mutex<Lessor>,
    ids: Mutex<LeaseIds>,
    bucket: Arc<dyn ObjectStore>,
    writer: Writer,
    store: Arc<Store>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Leases {
    pub fn new(bucket: Arc<dyn ObjectStore>, writer: Writer, store: Arc<Store>) -> Leases {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        Leases {
            lessor: Mutex::new(Lessor::default()),
            ids: Mutex::new(LeaseIds::new(seed)),
            bucket,
            writer,
            store,
        }
    }

    /// This node starts to lead: every lease in the table (preflight made
    /// it the bucket's) gets its full TTL from now.
    pub fn take_over(&self) {
        let leases = self.store.leases();
        let count = leases.len();
        let now = Instant::now();
        locked(&self.lessor).take_over(leases.into_iter().map(|l| (l.id, l.ttl)), now);
        if count > 0 {
            log::info!("holding {count} leases, each with its full TTL again");
        }
    }

    /// This node stops leading: whoever leads next owns expiry.
    pub fn step_down(&self) {
        locked(&self.lessor).clear();
    }

    /// Grants a lease; `id` 0 asks for a fresh one. Acknowledged once the
    /// lease is in the bucket and the lease table.
    pub async fn grant(&self, id: i64, ttl: i64) -> Result<(i64, i64), WriteError> {
        if ttl > MAX_LEASE_TTL {
            return Err(WriteError::LeaseTtlTooLarge);
        }
        self.writer.writable().await?;
        let ttl = ttl.max(MIN_LEASE_TTL);
        let id = self.store_in_bucket(id, ttl).await?;
        match self.writer.lease_grant(id, ttl).await {
            Ok(granted) => {
                locked(&self.lessor).granted(id, ttl, Instant::now());
                Ok(granted)
            }
            Err(e) => {
                // Not granted: the object would only come back as a lease
                // nobody holds at the next take-over.
                if let Err(d) = bucket::delete(&*self.bucket, id).await {
                    log::warn!("lease {id:016x} was not granted ({e}) and its object stays: {d}");
                }
                Err(e)
            }
        }
    }

    /// Creates the lease's object; a fresh id is drawn until one is free.
    async fn store_in_bucket(&self, id: i64, ttl: i64) -> Result<i64, WriteError> {
        for _ in 0..FRESH_ID_ATTEMPTS {
            let candidate = match id {
                0 => locked(&self.ids).fresh(|c| self.store.lease_exists(c)),
                id if self.store.lease_exists(id) => return Err(WriteError::LeaseExists),
                id => id,
            };
            let lease = LeaseObject { id: candidate, ttl };
            match bucket::create(&*self.bucket, lease).await {
                Ok(true) => return Ok(candidate),
                Ok(false) if id != 0 => return Err(WriteError::LeaseExists),
                Ok(false) => continue,
                Err(e) => {
                    return Err(WriteError::NotDurable(format!(
                        "lease {candidate:016x} could not be stored in object storage: {e}"
                    )))
                }
            }
        }
        Err(WriteError::NotDurable(format!(
            "no free lease id after {FRESH_ID_ATTEMPTS} tries"
        )))
    }

    /// Revokes a lease: its keys are deleted (one write each), then the
    /// lease. Returns the revision after the deletes.
    pub async fn revoke(&self, id: i64) -> Result<i64, WriteError> {
        let revision = self.writer.lease_revoke(id).await?;
        locked(&self.lessor).revoked(id);
        // The keys are gone for good; an object left behind only brings
        // back an empty lease at the next take-over, which expires again.
        if let Err(e) = bucket::delete(&*self.bucket, id).await {
            log::warn!("lease {id:016x} is revoked but its object could not be deleted: {e}");
        }
        Ok(revision)
    }

    /// A keep-alive: the granted TTL, or 0 when the lease is unknown or
    /// has run out (etcd's answers).
    pub async fn renew(&self, id: i64) -> Result<i64, WriteError> {
        self.writer.writable().await?;
        Ok(locked(&self.lessor).renew(id, Instant::now()).unwrap_or(0))
    }

    /// None when the lease is unknown.
    pub async fn time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> Result<Option<LeaseStatus>, WriteError> {
        self.writer.writable().await?;
        let Some(ttl) = locked(&self.lessor).time_to_live(id, Instant::now()) else {
            return Ok(None);
        };
        let keys = if keys {
            self.store.attached_keys(id)
        } else {
            Vec::new()
        };
        Ok(Some(LeaseStatus { ttl, keys }))
    }

    /// Every lease, soonest expiry first.
    pub async fn list(&self) -> Result<Vec<i64>, WriteError> {
        self.writer.writable().await?;
        Ok(locked(&self.lessor).ids())
    }

    /// Revokes what is due, until `stop` turns true. Runs on every node;
    /// only a leading node holds deadlines.
    pub async fn expire(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            let next = locked(&self.lessor).next_deadline();
            let wait = next.map_or(EXPIRY_TICK, |at| {
                at.saturating_duration_since(Instant::now())
                    .min(EXPIRY_TICK)
            });
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
            }
            let due = locked(&self.lessor).due(Instant::now());
            for id in due {
                match self.revoke(id).await {
                    Ok(_) => log::info!("lease {id:016x} expired and is revoked"),
                    Err(WriteError::LeaseNotFound) => locked(&self.lessor).revoked(id),
                    Err(e) => {
                        log::warn!("lease {id:016x} expired but could not be revoked: {e}");
                        locked(&self.lessor).retry(id);
                    }
                }
            }
        }
    }
}
