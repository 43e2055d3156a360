//! Claims: why two nodes that both act as Primary for a moment (an old one
//! still finishing a batch, a new one just appointed) cannot both make the
//! same revisions durable. A chunk is keyed by its last revision, so two
//! batches that start at the same revision but end differently would not
//! collide on their keys. A multi-record chunk is therefore acknowledged
//! only once its *claim* — its first record alone, as a single-record
//! chunk keyed by that revision, written by the same node — is created too.
//! One create-only key, one winner; a single-record chunk is its own claim.
//!
//! A multi-record chunk whose first revision's key holds a single-record
//! chunk that is another write, or the same write uploaded by another node
//! (a new Primary re-uploading what it adopted), lost its claim: it is
//! *superseded*, was never acknowledged, and readers skip it. The active
//! Primary deletes the ones it meets, so they do not block a key it needs.

use crate::objstore::{ObjError, ObjectStore};
use crate::store::Record;

use super::{keys, read_written_chunk, EncodedChunk, LogError, ObjectLog};

/// Who holds a chunk's revisions after writing it and its claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The chunk and its claim are in the bucket: the records are durable.
    Ours,
    /// Another writer holds these revisions (the claim's key, or the
    /// chunk's own key, holds its object); ours must not be acknowledged.
    Theirs,
}

impl ObjectLog {
    /// The claim of a multi-record chunk: its first record alone. None for
    /// a single record (the chunk is its own claim).
    pub fn encode_claim(&self, records: &[Record]) -> Result<Option<EncodedChunk>, LogError> {
        if records.len() < 2 {
            return Ok(None);
        }
        self.encode_chunk(&records[..1])
    }

    /// Writes `chunk` (holding `records`) and then its claim, both
    /// create-only. `Ours` once both are in place; `Theirs` when either key
    /// holds another writer's object. A storage error leaves the outcome
    /// unknown (a retry settles it).
    pub async fn put_claimed(
        &self,
        records: &[Record],
        chunk: &EncodedChunk,
        claim: Option<&EncodedChunk>,
    ) -> Result<Claim, LogError> {
        if self.create(chunk, records).await? == Claim::Theirs {
            return Ok(Claim::Theirs);
        }
        match claim {
            Some(claim) => self.create(claim, &records[..1]).await,
            None => Ok(Claim::Ours),
        }
    }

    /// Whether these records, read from one chunk `writer` wrote, lost
    /// their claim. Only a single-record chunk decides (it can never be
    /// superseded itself), so the answer never changes once true.
    pub async fn superseded(&self, writer: &str, records: &[Record]) -> Result<bool, LogError> {
        superseded(&*self.store, writer, records).await
    }

    /// Creates a chunk holding `records`. The same records from this node
    /// already there count as written; a superseded chunk at the key is
    /// deleted first (it was never acknowledged and would block this
    /// revision for good).
    async fn create(&self, chunk: &EncodedChunk, records: &[Record]) -> Result<Claim, LogError> {
        // Each pass deletes one superseded chunk; a writer that lost its
        // claim may put its chunk back once, while it gives up.
        for _ in 0..3 {
            match self.put_chunk(chunk).await {
                Ok(()) => return Ok(Claim::Ours),
                Err(LogError::Storage(ObjError::Conflict(key))) => {
                    let occupant = match read_written_chunk(&*self.store, &key).await {
                        Ok(occupant) => occupant,
                        // Deleted meanwhile: try again.
                        Err(LogError::Storage(ObjError::NotFound(_))) => continue,
                        Err(e) => return Err(e),
                    };
                    if occupant.writer == self.leader_id && holds(&occupant.records, records) {
                        return Ok(Claim::Ours);
                    }
                    if !self.superseded(&occupant.writer, &occupant.records).await? {
                        return Ok(Claim::Theirs);
                    }
                    log::warn!(
                        "deleting {key}: its records lost their revisions to other writes \
                         (a Primary that was replaced wrote it) and it blocks revision {}",
                        chunk.last_revision
                    );
                    match self.store.delete(&key).await {
                        Ok(()) | Err(ObjError::NotFound(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(LogError::Invalid(format!(
            "{}: a superseded chunk kept coming back",
            chunk.key
        )))
    }
}

/// [`ObjectLog::superseded`] for a bare object store.
pub async fn superseded(
    store: &dyn ObjectStore,
    writer: &str,
    records: &[Record],
) -> Result<bool, LogError> {
    let [first, _, ..] = records else {
        return Ok(false);
    };
    let key = keys::chunk_key(first.revision);
    let holder = match read_written_chunk(store, &key).await {
        Ok(holder) => holder,
        Err(LogError::Storage(ObjError::NotFound(_))) => return Ok(false),
        Err(e) => return Err(e),
    };
    Ok(match holder.records.as_slice() {
        [claim] => {
            claim.revision == first.revision
                && (holder.writer != writer || !claim.same_write(first))
        }
        _ => false,
    })
}

/// Whether `occupant` holds `records`: the same records, or for a claim
/// (one record) the same write at that revision inside another chunk.
fn holds(occupant: &[Record], records: &[Record]) -> bool {
    match records {
        [one] => occupant.last().is_some_and(|r| r.same_write(one)),
        _ => {
            occupant.len() == records.len()
                && occupant.iter().zip(records).all(|(x, y)| x.same_write(y))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::log::testing::records;
    use crate::objstore::memory::MemoryStore;

    /// Two logs on one bucket, as two nodes see it.
    fn two_nodes() -> (tempfile::TempDir, Arc<MemoryStore>, ObjectLog, ObjectLog) {
        let dir = tempfile::tempdir().unwrap();
        let bucket = Arc::new(MemoryStore::new());
        let old = ObjectLog::new(bucket.clone(), "old", &dir.path().join("old")).unwrap();
        let new = ObjectLog::new(bucket.clone(), "new", &dir.path().join("new")).unwrap();
        (dir, bucket, old, new)
    }

    async fn write(log: &ObjectLog, records: &[Record]) -> Claim {
        let chunk = log.encode_chunk(records).unwrap().unwrap();
        let claim = log.encode_claim(records).unwrap();
        log.put_claimed(records, &chunk, claim.as_ref())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn racing_batches_from_the_same_revision_have_one_winner_whatever_their_ends() {
        let (_dir, bucket, old, new) = two_nodes();
        // The old Primary's 56..=58 and the new one's 56..=57 have
        // different keys (58, 57); the claim at 56 decides.
        let theirs = records(56..=58, "old");
        let ours = records(56..=57, "new");
        assert_eq!(write(&new, &ours).await, Claim::Ours);
        assert_eq!(write(&old, &theirs).await, Claim::Theirs);
        // The loser's chunk reached the bucket before its claim failed: it
        // is superseded, the winner's is not.
        let left = old.read_chunk(&keys::chunk_key(58)).await.unwrap();
        assert!(old.superseded("old", &left).await.unwrap());
        assert!(!old.superseded("new", &ours).await.unwrap());
        let claim = bucket.get(&keys::chunk_key(56)).await.unwrap();
        let (_, held, _) = crate::datafile::decode(&claim.data, None).unwrap();
        assert!(held[0].same_write(&ours[0]));
    }

    #[tokio::test]
    async fn the_first_claim_wins_even_when_its_chunk_is_the_later_one() {
        let (_dir, _bucket, old, new) = two_nodes();
        let a = records(10..=12, "old");
        let b = records(10..=11, "new");
        // Both chunks land, then the claims: the old one claims first.
        let (ca, cb) = (
            old.encode_chunk(&a).unwrap().unwrap(),
            new.encode_chunk(&b).unwrap().unwrap(),
        );
        old.put_chunk(&ca).await.unwrap();
        new.put_chunk(&cb).await.unwrap();
        let claim_a = old.encode_claim(&a).unwrap().unwrap();
        let claim_b = new.encode_claim(&b).unwrap().unwrap();
        assert_eq!(old.create(&claim_a, &a[..1]).await.unwrap(), Claim::Ours);
        assert_eq!(new.create(&claim_b, &b[..1]).await.unwrap(), Claim::Theirs);
        assert!(new.superseded("new", &b).await.unwrap());
        assert!(!new.superseded("old", &a).await.unwrap());
    }

    #[tokio::test]
    async fn a_retry_with_the_same_bytes_is_ours_and_a_single_record_claims_itself() {
        let (_dir, bucket, _old, new) = two_nodes();
        let batch = records(5..=7, "new");
        assert_eq!(write(&new, &batch).await, Claim::Ours);
        assert_eq!(write(&new, &batch).await, Claim::Ours, "written again");
        let one = records(8..=8, "new");
        assert!(new.encode_claim(&one).unwrap().is_none());
        assert_eq!(write(&new, &one).await, Claim::Ours);
        let listed = bucket.list(keys::CHUNKS).await.unwrap();
        let mut keys: Vec<_> = listed.iter().map(|l| l.key.clone()).collect();
        keys.sort();
        assert_eq!(
            keys,
            [5, 7, 8].map(keys::chunk_key),
            "chunk 5..=7, its claim at 5, the single record at 8"
        );
    }

    #[tokio::test]
    async fn a_superseded_chunk_at_a_needed_key_is_deleted_and_the_write_goes_in() {
        let (_dir, _bucket, old, new) = two_nodes();
        // The new Primary won 20 (its claim) and wrote 20..=21; the old
        // one's 20..=22 came late and sits at key 22.
        assert_eq!(write(&new, &records(20..=21, "new")).await, Claim::Ours);
        let late = records(20..=22, "old");
        old.put_chunk(&old.encode_chunk(&late).unwrap().unwrap())
            .await
            .unwrap();
        // The new Primary's next batch is 22 alone: key 22 is needed.
        let next = records(22..=22, "new");
        assert_eq!(write(&new, &next).await, Claim::Ours);
        let held = new.read_chunk(&keys::chunk_key(22)).await.unwrap();
        assert!(held[0].same_write(&next[0]));
    }

    #[tokio::test]
    async fn a_chunk_whose_claim_is_missing_or_a_chunk_is_not_superseded() {
        let (_dir, _bucket, old, new) = two_nodes();
        // Written without claims (a chunk buffer flush, or the reference):
        // nothing says they lost.
        let flushed = records(30..=33, "old");
        old.put_chunk(&old.encode_chunk(&flushed).unwrap().unwrap())
            .await
            .unwrap();
        assert!(!old.superseded("old", &flushed).await.unwrap());
        // A multi-record chunk at the first revision's key does not decide.
        let other = records(29..=30, "new");
        new.put_chunk(&new.encode_chunk(&other).unwrap().unwrap())
            .await
            .unwrap();
        assert!(!old.superseded("old", &flushed).await.unwrap());
        // The occupant of a needed key that is not superseded is theirs.
        assert_eq!(
            write(&new, &records(33..=33, "new")).await,
            Claim::Theirs,
            "key 33 holds the flushed chunk"
        );
    }

    #[tokio::test]
    async fn the_same_write_uploaded_by_the_next_primary_is_not_the_old_ones_claim() {
        let (_dir, _bucket, old, new) = two_nodes();
        // The old Primary's 40..=43 reached a replica as far as 41 before
        // the link broke; appointed, the replica uploaded 40 and 41 (one
        // chunk each, as preflight does) and went on with its own 42.
        let batch = records(40..=43, "old");
        for r in &batch[..2] {
            new.write_chunk(std::slice::from_ref(r)).await.unwrap();
        }
        assert_eq!(write(&new, &records(42..=42, "new")).await, Claim::Ours);
        // The old Primary's claim at 40 meets the same write, uploaded by
        // another node: not its claim, so 40..=43 is not acknowledged.
        assert_eq!(write(&old, &batch).await, Claim::Theirs);
        assert!(old.superseded("old", &batch).await.unwrap());
    }
}
