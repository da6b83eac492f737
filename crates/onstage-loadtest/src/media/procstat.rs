//! CPU time and resident memory of a process from `/proc`, to put the server's
//! cost next to the traffic it carried (and the tool's own, to show it stayed
//! out of the way). CPU is utime + stime; 100% is one core fully busy.

use std::time::Instant;

/// One reading of a process.
#[derive(Clone, Copy, Debug)]
pub struct ProcSample {
    pub at: Instant,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    pub rss_kib: u64,
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Reads `/proc/<pid>` (`None` for `self`); `None` when the process is gone.
pub fn sample(pid: Option<u32>) -> Option<ProcSample> {
    let dir = match pid {
        Some(p) => format!("/proc/{p}"),
        None => "/proc/self".to_owned(),
    };
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    // Fields after the command name (which may hold spaces and parentheses):
    // state is field 3, utime 14, stime 15.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Some(ProcSample {
        at: Instant::now(),
        cpu_ticks: utime + stime,
        rss_kib,
    })
}

/// CPU% of one core between two samples.
pub fn cpu_percent(earlier: &ProcSample, later: &ProcSample) -> f64 {
    let seconds = later.at.duration_since(earlier.at).as_secs_f64();
    if seconds <= 0.0 {
        return 0.0;
    }
    later.cpu_ticks.saturating_sub(earlier.cpu_ticks) as f64 / ticks_per_second() / seconds * 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_process() {
        let s = sample(None);
        assert!(s.is_some_and(|s| s.rss_kib > 0));
        assert!(sample(Some(u32::MAX)).is_none());
    }
}
