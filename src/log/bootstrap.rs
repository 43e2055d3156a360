//! `bootstrap.netsy`: an operator-provided snapshot that seeds a brand-new
//! bucket. Only the first Elector (while `members.json` does not exist)
//! promotes it to `snapshots/{N}.netsy`; once `members.json` exists it is
//! ignored forever. Promotion is idempotent, so a crash at any point is
//! retried safely.

use bytes::Bytes;

use crate::objstore::{put_if_absent_idempotent, ObjError};

use super::restore::validate_snapshot;
use super::{keys, LogError, ObjectLog};

/// Promotes `bootstrap.netsy` if present. Returns the promoted revision.
/// Refuses (loudly) when the bucket already has chunks or other snapshots.
pub async fn promote(log: &ObjectLog) -> Result<Option<i64>, LogError> {
    let path = log.temp_path("netsy_bootstrap");
    match log.store.get_to_file(keys::BOOTSTRAP, &path).await {
        Ok(_) => {}
        Err(ObjError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let result = async {
        let p = path.clone();
        let revision = tokio::task::spawn_blocking(move || validate_snapshot(&p))
            .await
            .map_err(|e| LogError::Invalid(format!("validation task failed: {e}")))?
            .map_err(|error| LogError::Corrupt {
                key: keys::BOOTSTRAP.to_string(),
                error,
            })?;
        let target = keys::snapshot_key(revision);
        if let Some(chunk) = log.store.list(keys::CHUNKS).await?.first() {
            return Err(LogError::Invalid(format!(
                "refusing to promote {}: the bucket already has chunks ({})",
                keys::BOOTSTRAP,
                chunk.key
            )));
        }
        if let Some(other) = log
            .store
            .list(keys::SNAPSHOTS)
            .await?
            .into_iter()
            .find(|s| s.key != target)
        {
            return Err(LogError::Invalid(format!(
                "refusing to promote {}: the bucket already has snapshot {}",
                keys::BOOTSTRAP,
                other.key
            )));
        }
        let data = tokio::fs::read(&path)
            .await
            .map_err(|e| LogError::Invalid(format!("reading {}: {e}", path.display())))?;
        put_if_absent_idempotent(&*log.store, &target, Bytes::from(data)).await?;
        log::info!("promoted {} to {target}", keys::BOOTSTRAP);
        Ok(Some(revision))
    }
    .await;
    let _ = std::fs::remove_file(&path);
    result
}
