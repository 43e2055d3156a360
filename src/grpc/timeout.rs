//! The `grpc-timeout` header: up to eight ASCII digits and a unit letter.

use std::time::Duration;

/// Parses a grpc-timeout value such as `"100m"` or `"5S"`.
pub fn parse(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    // Checked: a non-ASCII last character has no boundary one byte in.
    let (digits, unit) = value.split_at_checked(value.len() - 1)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Formats a duration for the header, choosing the finest unit that fits in
/// eight digits.
pub fn format(d: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let nanos = d.as_nanos();
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    for (scale, unit) in units {
        let v = nanos.div_ceil(scale);
        if v <= MAX {
            return format!("{v}{unit}");
        }
    }
    format!("{MAX}H")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse("4m"), Some(Duration::from_millis(4)));
        assert_eq!(parse("5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse("6n"), Some(Duration::from_nanos(6)));
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in ["", "S", "123456789S", "1x", "-1S", "1.5S", "\u{fffd}", "1µ"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn format_round_trips() {
        for d in [
            Duration::from_millis(1500),
            Duration::from_secs(20),
            Duration::from_nanos(7),
            Duration::from_secs(86400 * 30),
        ] {
            let parsed = parse(&format(d)).unwrap();
            assert!(parsed >= d && parsed - d < d / 1000 + Duration::from_nanos(1));
        }
    }
}
