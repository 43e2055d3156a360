//! The identifier rule shared by node ids, cluster ids and certificate
//! identities: 1–32 characters of [a-z0-9-], starting and ending with a
//! letter or digit, without consecutive hyphens.

/// Checks `value` and names `field` in the reference's error texts.
pub fn validate(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{field} is required"));
    }
    if value.len() > 32 {
        return Err(format!("{field} must be at most 32 characters"));
    }
    if value.contains("--") {
        return Err(format!("{field} must not contain consecutive hyphens"));
    }
    let ok_char = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let bytes = value.as_bytes();
    let well_formed = bytes.iter().all(|&c| ok_char(c) || c == b'-')
        && ok_char(bytes[0])
        && ok_char(bytes[bytes.len() - 1]);
    if !well_formed {
        return Err(format!(
            "{field} must be lowercase alphanumeric with hyphens, no leading/trailing hyphens"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate;

    #[test]
    fn identifier_rule() {
        assert!(validate("node_id", "dev-node-1").is_ok());
        assert!(validate("node_id", "a").is_ok());
        assert_eq!(validate("node_id", "").unwrap_err(), "node_id is required");
        assert_eq!(
            validate("node_id", &"a".repeat(33)).unwrap_err(),
            "node_id must be at most 32 characters"
        );
        assert_eq!(
            validate("node_id", "a--b").unwrap_err(),
            "node_id must not contain consecutive hyphens"
        );
        for bad in ["-a", "a-", "A", "a_b", "a.b"] {
            assert!(
                validate("cluster_id", bad)
                    .unwrap_err()
                    .contains("lowercase alphanumeric"),
                "{bad}"
            );
        }
    }
}
