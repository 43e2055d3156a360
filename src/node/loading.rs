//! Loading: bring the local store level with object storage (setting aside and rebuilding a
//! store that disagrees with the bucket, once). Each stage is timed.

use std::path::Path;
use std::sync::Arc;

use crate::http::metrics::{labels, Metrics};
use crate::log::restore::{self, CaughtUp};
use crate::log::{LogError, ObjectLog};
use crate::store::{unsynced, Store, StoreError, Timestamp};

/// Opens the local store on this machine boot: Ok(Err) when the store
/// refuses it (a database another boot left unflushed, among others).
async fn open_store(
    data_dir: &Path,
    boot: Option<String>,
) -> Result<Result<Arc<Store>, StoreError>, String> {
    let dir = data_dir.to_path_buf();
    let opened = tokio::task::spawn_blocking(move || Store::open_on_boot(&dir, boot))
        .await
        .map_err(|e| format!("opening the local store failed: {e}"))?;
    Ok(opened.map(Arc::new))
}

fn cannot_open(data_dir: &Path, e: StoreError) -> String {
    format!(
        "NETSY_DATA_DIR ({}): cannot open the local store: {e}",
        data_dir.display()
    )
}

/// Moves a local database that disagrees with object storage, or may have
/// lost pages, aside (with its mark), so the node rebuilds it from the
/// bucket.
fn set_aside(data_dir: &Path) -> Result<(), String> {
    let stamp = Timestamp::now().seconds;
    for name in [
        "db.sqlite3",
        "db.sqlite3-wal",
        "db.sqlite3-shm",
        unsynced::MARK_FILE,
    ] {
        let from = data_dir.join(name);
        if from.exists() {
            let to = data_dir.join(format!("{name}.diverged-{stamp}"));
            std::fs::rename(&from, &to)
                .map_err(|e| format!("moving {} aside: {e}", from.display()))?;
        }
    }
    Ok(())
}

fn diverged(e: &LogError) -> bool {
    let (LogError::Store(error) | LogError::Import { error, .. }) = e else {
        return false;
    };
    matches!(
        error,
        StoreError::Conflict { .. } | StoreError::Gap { .. } | StoreError::Integrity { .. }
    )
}

/// Restores from object storage. A local store that diverged from the
/// bucket, or that another machine boot wrote without flushes (it may have
/// lost pages; the bucket holds every batch so written), is set aside and
/// rebuilt once.
pub async fn load(
    data_dir: &Path,
    log: &ObjectLog,
    metrics: &Metrics,
) -> Result<(Arc<Store>, CaughtUp), String> {
    let boot = crate::failpoint::test_boot_id().or_else(unsynced::current_boot);
    let reason = match open_store(data_dir, boot.clone()).await? {
        Err(e @ StoreError::LeftUnsynced { .. }) => {
            log::warn!("{e}; rebuilding the local store from the bucket");
            "machine_restarted"
        }
        Err(e) => return Err(cannot_open(data_dir, e)),
        Ok(store) => match restore::catch_up(&store, log).await {
            Ok(report) => return Ok((store, report)),
            Err(e) if diverged(&e) => {
                log::warn!(
                    "the local store disagrees with object storage ({e}); rebuilding it from {}",
                    log.store.describe()
                );
                "integrity_check_failed"
            }
            Err(e) => return Err(format!("restoring from {}: {e}", log.store.describe())),
        },
    };
    set_aside(data_dir)?;
    let reason = labels(&[("reason", reason)]);
    metrics.local_db_rebuilds.get_or_create(&reason).inc();
    metrics.loading_restarts.get_or_create(&reason).inc();
    let store = open_store(data_dir, boot)
        .await?
        .map_err(|e| cannot_open(data_dir, e))?;
    let report = restore::catch_up(&store, log).await.map_err(|e| {
        format!(
            "restoring from {} after a rebuild: {e}",
            log.store.describe()
        )
    })?;
    Ok((store, report))
}

/// Runs a loading stage and records its duration and outcome
/// (`netsy_loading_stage_duration_seconds`).
pub async fn timed_stage<T>(
    metrics: &Metrics,
    stage: &'static str,
    work: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    let started = std::time::Instant::now();
    log::info!("loading_stage_started: {stage}");
    let result = work.await;
    let outcome = if result.is_ok() { "success" } else { "error" };
    metrics
        .loading_stage_duration
        .get_or_create(&labels(&[("stage", stage), ("result", outcome)]))
        .observe(started.elapsed().as_secs_f64());
    log::info!(
        "loading_stage_completed: {stage} ({outcome}) in {:?}",
        started.elapsed()
    );
    result
}
