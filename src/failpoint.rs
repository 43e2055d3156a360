//! Named fault points for tests (TiKV-style, minimal): a test sets
//! `NETSY_FAILPOINT_<NAME>=<path>` and the node holds at that point while
//! the file exists. Unset (always, in production), a fault point costs one
//! environment lookup.

use std::time::Duration;

/// Waits at fault point `name` while its file exists.
pub async fn hold(name: &str) {
    let var = format!(
        "{}{}",
        crate::config::env_vars::FAILPOINT.name,
        name.to_ascii_uppercase()
    );
    let Ok(path) = std::env::var(&var) else {
        return;
    };
    let path = std::path::PathBuf::from(path);
    if path.exists() {
        log::warn!(
            "fault point {name}: holding while {} exists",
            path.display()
        );
    }
    while path.exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
