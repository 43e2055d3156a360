//! Object keys of the log and snapshot layout (relative to
//! `storage.key_prefix`). Coordination keys (members, registrations, the
//! elector lock) belong to `election/`.

pub const CHUNKS: &str = "chunks/";
pub const SNAPSHOTS: &str = "snapshots/";
pub const BOOTSTRAP: &str = "bootstrap.netsy";

/// `chunks/{R mod 10000:04}/{R:019}.netsy`, R = the chunk's last revision.
/// The 4-digit partition spreads keys over 10 000 prefixes.
pub fn chunk_key(revision: i64) -> String {
    format!(
        "chunks/{:04}/{:019}.netsy",
        revision.rem_euclid(10_000),
        revision
    )
}

/// `snapshots/{R:019}.netsy`: every record 1..=R.
pub fn snapshot_key(revision: i64) -> String {
    format!("snapshots/{revision:019}.netsy")
}

/// The revision a chunk or snapshot key names: the last path segment
/// without `.netsy`, as a decimal integer. None for anything else.
pub fn revision_of(key: &str) -> Option<i64> {
    let name = key.rsplit('/').next()?;
    let digits = name.strip_suffix(".netsy")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_examples() {
        assert_eq!(chunk_key(1), "chunks/0001/0000000000000000001.netsy");
        assert_eq!(chunk_key(12345), "chunks/2345/0000000000000012345.netsy");
        assert_eq!(chunk_key(120042), "chunks/0042/0000000000000120042.netsy");
        assert_eq!(snapshot_key(10000), "snapshots/0000000000000010000.netsy");
    }

    #[test]
    fn parses_revisions_and_ignores_other_objects() {
        assert_eq!(revision_of(&chunk_key(120042)), Some(120042));
        assert_eq!(revision_of(&snapshot_key(7)), Some(7));
        assert_eq!(revision_of("chunks/0001/notes.txt"), None);
        assert_eq!(revision_of("chunks/0001/.netsy"), None);
        assert_eq!(revision_of("chunks/0001/-1.netsy"), None);
        assert_eq!(revision_of("members.json"), None);
    }
}
