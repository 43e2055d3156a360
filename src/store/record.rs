//! The record: one write at one revision, as kept in SQLite, streamed to
//! replicas and written to data files. Also RFC 3339 timestamps as the
//! reference stores them (nanoseconds, trailing zeros trimmed).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::pb::netsy as peer;

/// Key of the internal record at revision 1, invisible to clients.
pub const INTERNAL_KEY: &[u8] = b"_netsy";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub revision: i64,
    pub key: Bytes,
    /// This write created the key (it was absent or a tombstone before).
    pub created: bool,
    /// This write is a tombstone.
    pub deleted: bool,
    pub create_revision: i64,
    /// Revision of the key's previous live row, 0 if none.
    pub prev_revision: i64,
    /// etcd version; 0 for tombstones.
    pub version: i64,
    pub lease: i64,
    pub dek: i64,
    /// None for tombstones and compacted rows.
    pub value: Option<Bytes>,
    pub created_at: Timestamp,
    pub compacted_at: Option<Timestamp>,
    pub leader_id: String,
    pub replicated_at: Option<Timestamp>,
}

impl Record {
    /// The internal first record of every store.
    pub fn internal(leader_id: &str) -> Record {
        Record {
            revision: 1,
            key: Bytes::from_static(INTERNAL_KEY),
            created: true,
            deleted: false,
            create_revision: 1,
            prev_revision: 0,
            version: 1,
            lease: 0,
            dek: 0,
            value: None,
            created_at: Timestamp::now(),
            compacted_at: None,
            leader_id: leader_id.to_string(),
            replicated_at: None,
        }
    }

    /// The record with its key and value copied into allocations of their
    /// own. Decoded from a message, they are slices of the message's
    /// buffer, which the index and the watch ring would then keep alive for
    /// as long as the key lives: a stream's buffer holds many messages.
    pub fn detached(mut self) -> Record {
        self.key = detached(&self.key);
        self.value = self.value.as_ref().map(detached);
        self
    }

    /// The same write as `other`: everything the Primary decided, leaving
    /// out local stamps (replicated_at, compaction).
    pub fn same_write(&self, other: &Record) -> bool {
        let value = |r: &Record| r.value.clone().unwrap_or_default();
        self.revision == other.revision
            && self.key == other.key
            && self.created == other.created
            && self.deleted == other.deleted
            && self.create_revision == other.create_revision
            && self.prev_revision == other.prev_revision
            && self.version == other.version
            && self.lease == other.lease
            && self.dek == other.dek
            && self.leader_id == other.leader_id
            && self.created_at == other.created_at
            && (self.compacted_at.is_some()
                || other.compacted_at.is_some()
                || value(self) == value(other))
    }

    /// True for revision 1, which clients never see.
    pub fn is_internal(&self) -> bool {
        self.revision == 1
    }

    /// The peer-protocol form (crc left 0; data files compute it).
    pub fn to_proto(&self) -> peer::Record {
        peer::Record {
            crc: 0,
            revision: self.revision,
            key: self.key.clone(),
            created: self.created,
            deleted: self.deleted,
            create_revision: self.create_revision,
            prev_revision: self.prev_revision,
            version: self.version,
            lease: self.lease,
            dek: self.dek,
            value: self.value.clone().unwrap_or_default(),
            created_at: Some(self.created_at.to_proto()),
            compacted_at: self.compacted_at.map(|t| t.to_proto()),
            leader_id: self.leader_id.clone(),
            replicated_at: self.replicated_at.map(|t| t.to_proto()),
        }
    }

    /// From the peer-protocol form. A live row keeps an empty value as
    /// Some(""), tombstones and compacted rows have None.
    pub fn from_proto(p: &peer::Record) -> Record {
        let value = if p.deleted || p.compacted_at.is_some() {
            None
        } else {
            Some(p.value.clone())
        };
        Record {
            revision: p.revision,
            key: p.key.clone(),
            created: p.created,
            deleted: p.deleted,
            create_revision: p.create_revision,
            prev_revision: p.prev_revision,
            version: p.version,
            lease: p.lease,
            dek: p.dek,
            value,
            created_at: p.created_at.map(Timestamp::from_proto).unwrap_or_default(),
            compacted_at: p.compacted_at.map(Timestamp::from_proto),
            leader_id: p.leader_id.clone(),
            replicated_at: p.replicated_at.map(Timestamp::from_proto),
        }
    }
}

/// A UTC instant with nanosecond precision (seconds may be negative).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    pub seconds: i64,
    pub nanos: u32,
}

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp::from_system(SystemTime::now())
    }

    pub fn from_system(t: SystemTime) -> Timestamp {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp {
                seconds: d.as_secs() as i64,
                nanos: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                let mut seconds = -(d.as_secs() as i64);
                let mut nanos = d.subsec_nanos();
                if nanos > 0 {
                    seconds -= 1;
                    nanos = 1_000_000_000 - nanos;
                }
                Timestamp { seconds, nanos }
            }
        }
    }

    pub fn to_system(self) -> SystemTime {
        if self.seconds >= 0 {
            UNIX_EPOCH + Duration::new(self.seconds as u64, self.nanos)
        } else {
            UNIX_EPOCH - Duration::from_secs(self.seconds.unsigned_abs())
                + Duration::from_nanos(self.nanos as u64)
        }
    }

    pub fn to_proto(self) -> prost_types::Timestamp {
        prost_types::Timestamp {
            seconds: self.seconds,
            nanos: self.nanos as i32,
        }
    }

    pub fn from_proto(t: prost_types::Timestamp) -> Timestamp {
        Timestamp {
            seconds: t.seconds,
            nanos: t.nanos.clamp(0, 999_999_999) as u32,
        }
    }

    /// RFC 3339 in UTC with nanoseconds, trailing fractional zeros trimmed:
    /// `2025-01-02T03:04:05.123456789Z`, `2025-01-02T03:04:05Z`.
    pub fn to_rfc3339(self) -> String {
        let days = self.seconds.div_euclid(86_400);
        let secs_of_day = self.seconds.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        let (hh, mm, ss) = (secs_of_day / 3600, secs_of_day / 60 % 60, secs_of_day % 60);
        if !(0..=9999).contains(&y) {
            let mut out = format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}");
            self.push_fraction(&mut out);
            out.push('Z');
            return out;
        }
        // Digit by digit rather than through format!: every record written
        // to SQLite carries one, and formatting was a tenth of its insert.
        let mut out = String::with_capacity(30);
        for (value, width, after) in [
            (y as u64, 4, '-'),
            (m as u64, 2, '-'),
            (d as u64, 2, 'T'),
            (hh as u64, 2, ':'),
            (mm as u64, 2, ':'),
            (ss as u64, 2, '.'),
        ] {
            push_digits(&mut out, value, width);
            out.push(after);
        }
        out.pop();
        self.push_fraction(&mut out);
        out.push('Z');
        out
    }

    /// `.` and the nanoseconds without trailing zeros; nothing for none.
    fn push_fraction(self, out: &mut String) {
        if self.nanos == 0 {
            return;
        }
        let (mut n, mut width) = (self.nanos as u64, 9);
        while n % 10 == 0 {
            n /= 10;
            width -= 1;
        }
        out.push('.');
        push_digits(out, n, width);
    }

    /// Parses RFC 3339 (`Z` or a numeric offset, optional fraction).
    pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
        let b = s.as_bytes();
        if b.len() < 20
            || b[4] != b'-'
            || b[7] != b'-'
            || (b[10] != b'T' && b[10] != b't')
            || b[13] != b':'
            || b[16] != b':'
        {
            return None;
        }
        let num = |r: std::ops::Range<usize>| -> Option<i64> {
            let part = s.get(r)?;
            if !part.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            part.parse().ok()
        };
        let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
            return None;
        }
        let mut i = 19;
        let mut nanos: u32 = 0;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            let digits = &s[start..i];
            if digits.is_empty() {
                return None;
            }
            let mut padded: String = digits.chars().take(9).collect();
            while padded.len() < 9 {
                padded.push('0');
            }
            nanos = padded.parse().ok()?;
        }
        let offset = match b.get(i)? {
            b'Z' | b'z' if i + 1 == b.len() => 0,
            b'+' | b'-' if i + 6 == b.len() && b[i + 3] == b':' => {
                let oh = num(i + 1..i + 3)?;
                let om = num(i + 4..i + 6)?;
                let sign = if b[i] == b'+' { 1 } else { -1 };
                sign * (oh * 3600 + om * 60)
            }
            _ => return None,
        };
        let seconds = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - offset;
        Some(Timestamp { seconds, nanos })
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
/// `value` in decimal, zero-padded to `width` digits (`value` has at most
/// that many).
fn push_digits(out: &mut String, value: u64, width: u32) {
    let mut div = 10u64.pow(width.saturating_sub(1));
    while div > 0 {
        out.push(char::from(b'0' + (value / div % 10) as u8));
        div /= 10;
    }
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) to days since 1970-01-01.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `bytes` in an allocation of its own, sized to it: a key or value sliced
/// from a request keeps the request's whole buffer alive (rounded up to the
/// allocator's size class: 1,280 bytes for a put of a 1 KiB value, a
/// quarter more than the value; 100,000 such keys held about 20 MiB more).
pub fn detached(bytes: &Bytes) -> Bytes {
    Bytes::copy_from_slice(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detached_record_owns_its_key_and_value() {
        let message = Bytes::from(vec![b'm'; 512]);
        let mut record = Record::internal("n1");
        record.key = message.slice(0..16);
        record.value = Some(message.slice(16..272));
        let detached = record.clone().detached();
        assert_eq!(detached, record);
        let within = message.as_ptr_range();
        assert!(!within.contains(&detached.key.as_ptr()));
        assert!(!within.contains(&detached.value.unwrap_or_default().as_ptr()));
    }

    #[test]
    fn rfc3339_matches_reference_shape() {
        let t = Timestamp {
            seconds: 1_735_787_045,
            nanos: 123_456_789,
        };
        assert_eq!(t.to_rfc3339(), "2025-01-02T03:04:05.123456789Z");
        let t = Timestamp {
            seconds: 1_735_787_045,
            nanos: 120_000_000,
        };
        assert_eq!(t.to_rfc3339(), "2025-01-02T03:04:05.12Z");
        let t = Timestamp {
            seconds: 0,
            nanos: 0,
        };
        assert_eq!(t.to_rfc3339(), "1970-01-01T00:00:00Z");
        let zero = Timestamp {
            seconds: -62_135_596_800,
            nanos: 0,
        };
        assert_eq!(zero.to_rfc3339(), "0001-01-01T00:00:00Z");
    }

    #[test]
    fn rfc3339_digit_by_digit_matches_formatting() {
        let formatted = |t: Timestamp| {
            let (days, secs) = (t.seconds.div_euclid(86_400), t.seconds.rem_euclid(86_400));
            let (y, m, d) = civil_from_days(days);
            let (hh, mm, ss) = (secs / 3600, secs / 60 % 60, secs % 60);
            let mut out = format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}");
            if t.nanos > 0 {
                out.push('.');
                out.push_str(format!("{:09}", t.nanos).trim_end_matches('0'));
            }
            out + "Z"
        };
        let mut seconds: i64 = -62_135_596_800;
        for nanos in [0, 1, 10, 999_999_999, 500_000_000, 123_000_789] {
            for step in [0, 86_399, 1_735_787_045, 253_402_300_799, 253_402_300_800] {
                let t = Timestamp {
                    seconds: seconds + step,
                    nanos,
                };
                assert_eq!(t.to_rfc3339(), formatted(t), "{t:?}");
            }
            seconds += 1_000_003_331;
        }
        let early = Timestamp {
            seconds: -62_135_596_801,
            nanos: 5,
        };
        assert_eq!(early.to_rfc3339(), formatted(early));
    }

    #[test]
    fn rfc3339_round_trips_and_accepts_offsets() {
        for (s, n) in [(1_700_000_000, 5), (951_782_400, 0), (-1, 999_999_999)] {
            let t = Timestamp {
                seconds: s,
                nanos: n,
            };
            assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()), Some(t));
        }
        let a = Timestamp::parse_rfc3339("2025-01-02T04:04:05.5+01:00").unwrap();
        assert_eq!(
            a,
            Timestamp {
                seconds: 1_735_787_045,
                nanos: 500_000_000
            }
        );
        assert_eq!(Timestamp::parse_rfc3339("2025-13-02T04:04:05Z"), None);
        assert_eq!(Timestamp::parse_rfc3339("garbage"), None);
    }

    #[test]
    fn system_time_round_trip() {
        let now = SystemTime::now();
        assert_eq!(Timestamp::from_system(now).to_system(), now);
    }

    #[test]
    fn proto_round_trip_keeps_empty_values_live() {
        let mut r = Record::internal("n1");
        r.revision = 7;
        r.value = Some(Bytes::new());
        assert_eq!(Record::from_proto(&r.to_proto()), r);
        r.deleted = true;
        r.value = None;
        assert_eq!(Record::from_proto(&r.to_proto()), r);
    }
}
