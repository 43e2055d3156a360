//! "Did you mean …?" for misspelt config keys and environment variables.

/// Edit distance counting an insertion, a deletion, a substitution or a
/// swap of two neighbours as one edit (the optimal string alignment
/// distance), ignoring ASCII case: `storgae` is one edit from `storage`.
pub fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().map(|c| c.to_ascii_lowercase()).collect();
    let b: Vec<char> = b.chars().map(|c| c.to_ascii_lowercase()).collect();
    // rows[i][j]: distance between a[..i] and b[..j].
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

/// Whether `candidate` is close enough to `written` to suggest: two edits
/// (a third of the candidate's length for long names), or the start of
/// the candidate cut short (`bucket` for `bucket_name`).
pub fn is_close(written: &str, candidate: &str) -> bool {
    let cut_short = written.chars().count() >= 3
        && candidate
            .to_ascii_lowercase()
            .starts_with(&written.to_ascii_lowercase());
    cut_short || distance(written, candidate) <= (candidate.chars().count() / 3).max(2)
}

/// The closest candidate that [`is_close`] to `written` (the first of
/// equally close ones).
pub fn closest<'a>(
    written: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .filter(|c| is_close(written, c))
        .min_by_key(|c| distance(written, c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_counts_edits_and_swaps() {
        assert_eq!(distance("storage", "storage"), 0);
        assert_eq!(distance("storgae", "storage"), 1, "a swap is one edit");
        assert_eq!(distance("bucket", "bucket_name"), 5);
        assert_eq!(distance("Cluster_ID", "cluster_id"), 0, "case is ignored");
        assert_eq!(distance("", "abc"), 3);
    }

    #[test]
    fn only_close_names_are_suggested() {
        let keys = ["storage", "snapshot", "cluster_id"];
        assert_eq!(closest("storgae", keys), Some("storage"));
        assert_eq!(closest("snapshots", keys), Some("snapshot"));
        assert_eq!(closest("logging", keys), None);
        assert_eq!(closest("clus", keys), Some("cluster_id"), "cut short");
        assert_eq!(closest("cl", keys), None, "too short to tell");
        assert_eq!(
            closest("NETSY_TLS_CA", ["NETSY_DEBUG", "NETSY_TLS_CA_CERT"]),
            Some("NETSY_TLS_CA_CERT")
        );
        assert_eq!(closest("NETSY_FOO", ["NETSY_DEBUG", "NETSY_CONFIG"]), None);
    }
}
