//! This process's memory, as Linux reports it in `/proc/self/status`: for
//! the benchmarks and examples that print what a run held.

/// A `/proc/self/status` field in KiB (`VmRSS`: resident now; `VmHWM`: the
/// peak), or `None` where there is no such file or field.
fn status_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The resident set now, in KiB (0 where unknown).
pub fn now_kib() -> u64 {
    status_kib("VmRSS").unwrap_or(0)
}

/// The peak resident set so far, in KiB (`None` where unknown).
pub fn peak_kib() -> Option<u64> {
    status_kib("VmHWM")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_linux_process_knows_its_resident_set() {
        if std::path::Path::new("/proc/self/status").exists() {
            assert!(super::now_kib() > 0);
            assert!(super::peak_kib().unwrap() >= super::now_kib() / 2);
        }
    }
}
