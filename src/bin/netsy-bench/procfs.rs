//! What /proc says about a server process: its resident memory and the CPU
//! time it has used.

use std::time::Duration;

/// Resident memory of a process from /proc: (peak, current) in bytes.
pub fn rss(pid: u32) -> Result<(u64, u64), String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kb| kb * 1024)
            .ok_or_else(|| format!("{path}: no {name}"))
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}

/// CPU time a process has used so far, every thread counted: (user,
/// user + system).
pub fn cpu_time(pid: u32) -> Result<(Duration, Duration), String> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let (user, system) =
        user_and_system_ticks(&text).ok_or_else(|| format!("{path}: unreadable"))?;
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz)
        .ok()
        .filter(|h| *h > 0)
        .ok_or("no clock tick rate")?;
    let time = |ticks: u64| Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / hz);
    Ok((time(user), time(user + system)))
}

/// Fields 14 and 15 of a stat line (utime, stime, in clock ticks). The
/// command name (field 2) is in parentheses and may hold spaces, so the
/// fields are counted from after its closing one.
fn user_and_system_ticks(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let user = fields.next()?.parse().ok()?;
    let system = fields.next()?.parse().ok()?;
    Some((user, system))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_read_after_a_command_name_with_spaces() {
        let stat = "4242 (tokio rt) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 731 52 0 0 20 0 9 0";
        assert_eq!(user_and_system_ticks(stat), Some((731, 52)));
        assert_eq!(user_and_system_ticks("4242 (netsy"), None);
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        let (user, all) = cpu_time(std::process::id()).unwrap();
        assert!(all >= user);
        assert!(cpu_time(u32::MAX).is_err());
    }
}
