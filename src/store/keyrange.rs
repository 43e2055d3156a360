//! etcd key-range semantics, byte-exact: an empty range_end selects one key,
//! "\0" selects every key from `key` on, anything else is [key, range_end).

use std::ops::Bound;

use bytes::Bytes;

/// Lower and upper bound of a key scan.
pub type ScanBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRange {
    /// Exactly one key.
    Single(Bytes),
    /// [start, end), or [start, ∞) when end is None.
    Span { start: Bytes, end: Option<Bytes> },
}

impl KeyRange {
    /// Interprets an etcd (key, range_end) pair.
    pub fn new(key: &Bytes, range_end: &Bytes) -> KeyRange {
        if range_end.is_empty() {
            KeyRange::Single(key.clone())
        } else if range_end.as_ref() == b"\0" {
            KeyRange::Span {
                start: key.clone(),
                end: None,
            }
        } else {
            KeyRange::Span {
                start: key.clone(),
                end: Some(range_end.clone()),
            }
        }
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        match self {
            KeyRange::Single(key) => key.as_ref() == k,
            KeyRange::Span { start, end } => {
                k >= start.as_ref() && end.as_ref().is_none_or(|e| k < e.as_ref())
            }
        }
    }

    /// True when at most one key can match.
    pub fn is_single_key(&self) -> bool {
        match self {
            KeyRange::Single(_) => true,
            // [k, k+"\0") holds only k.
            KeyRange::Span {
                start,
                end: Some(end),
            } => {
                end.len() == start.len() + 1 && end.starts_with(start) && end[start.len()] == 0
                    || end.as_ref() <= start.as_ref()
            }
            KeyRange::Span { end: None, .. } => false,
        }
    }

    /// Bounds for a BTreeMap range scan; None when the range is empty
    /// (end at or before start), which BTreeMap would reject.
    pub fn bounds(&self) -> Option<ScanBounds<'_>> {
        match self {
            KeyRange::Single(k) => Some((Bound::Included(k.as_ref()), Bound::Included(k.as_ref()))),
            KeyRange::Span { start, end: None } => {
                Some((Bound::Included(start.as_ref()), Bound::Unbounded))
            }
            KeyRange::Span {
                start,
                end: Some(end),
            } => {
                if end.as_ref() <= start.as_ref() {
                    None
                } else {
                    Some((
                        Bound::Included(start.as_ref()),
                        Bound::Excluded(end.as_ref()),
                    ))
                }
            }
        }
    }
}

/// The smallest key greater than every key with this prefix (etcd's
/// GetPrefixRangeEnd): strip trailing 0xff bytes and add one to the last;
/// "\0" (every key) when the prefix is all 0xff.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(&last) = end.last() {
        if last < 0xff {
            let n = end.len();
            end[n - 1] = last + 1;
            return end;
        }
        end.pop();
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(key: &[u8], end: &[u8]) -> KeyRange {
        KeyRange::new(&Bytes::copy_from_slice(key), &Bytes::copy_from_slice(end))
    }

    #[test]
    fn single_key() {
        let k = r(b"a", b"");
        assert!(k.contains(b"a"));
        assert!(!k.contains(b"a\0"));
        assert!(k.is_single_key());
        assert!(r(b"a", b"a\0").is_single_key());
        assert!(!r(b"a", b"b").is_single_key());
    }

    #[test]
    fn from_key_and_all_keys() {
        let all = r(b"\0", b"\0");
        assert!(all.contains(b"\0"));
        assert!(all.contains(b"\xff\xff"));
        let from = r(b"m", b"\0");
        assert!(from.contains(b"m") && from.contains(b"zz"));
        assert!(!from.contains(b"l"));
    }

    #[test]
    fn prefix_ranges_are_byte_exact() {
        let p = r(b"a%", &prefix_end(b"a%"));
        assert!(p.contains(b"a%x"));
        assert!(!p.contains(b"ab"), "% is not a wildcard");
        assert!(!p.contains(b"A%"), "matching is case-sensitive");
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        let p = r(b"a\xff", &prefix_end(b"a\xff"));
        assert!(p.contains(b"a\xff\xff\x01"));
        assert!(!p.contains(b"b"));
    }

    #[test]
    fn inverted_range_is_empty() {
        let k = r(b"b", b"a");
        assert!(!k.contains(b"a") && !k.contains(b"b"));
        assert!(k.bounds().is_none());
    }
}
