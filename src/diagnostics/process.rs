//! The `process_*` series that every Buildbarn binary exports from its first scrape:
//! CPU time, memory, file descriptors and start time of this process, read from
//! `/proc` at each scrape. Dashboards and alerts written for Buildbarn's Go binaries
//! work unchanged on the expander.
//!
//! | series | type | from |
//! |---|---|---|
//! | `process_cpu_seconds_total` | counter | `/proc/self/stat` utime + stime |
//! | `process_resident_memory_bytes` | gauge | `/proc/self/status` VmRSS |
//! | `process_virtual_memory_bytes` | gauge | `/proc/self/stat` vsize |
//! | `process_open_fds` | gauge | entries of `/proc/self/fd` |
//! | `process_max_fds` | gauge | `/proc/self/limits`, soft limit of open files |
//! | `process_start_time_seconds` | gauge | `/proc/self/stat` starttime + `/proc/stat` btime |
//!
//! Where `/proc` is missing (not Linux) or a file cannot be parsed, the series it feeds
//! is left out of that scrape rather than reported as 0.

use parking_lot::Mutex;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, Opts};
use std::path::Path;

/// The unit of the times in `/proc/<pid>/stat`: the kernel reports them in USER_HZ,
/// which is 100 on every architecture this service is built for.
const USER_HZ: f64 = 100.0;

/// What [`ProcessCollector`] reads from `/proc/self/stat`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Stat {
    /// User plus system CPU time, in USER_HZ ticks.
    pub cpu_ticks: u64,
    /// Start time after boot, in USER_HZ ticks.
    pub start_ticks: u64,
    /// Virtual memory size in bytes.
    pub virtual_memory_bytes: u64,
}

/// Parses `/proc/<pid>/stat`. The second field, the command name in parentheses, may
/// itself contain spaces and parentheses, so fields are counted from the last `)`.
pub(crate) fn parse_stat(text: &str) -> Option<Stat> {
    let (_, after_name) = text.rsplit_once(')')?;
    // Fields after the name, numbered as in proc(5): 3 is the state.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |number: usize| -> Option<u64> { fields.get(number - 3)?.parse().ok() };
    Some(Stat {
        cpu_ticks: field(14)? + field(15)?,
        start_ticks: field(22)?,
        virtual_memory_bytes: field(23)?,
    })
}

/// The value of a `Name:   123 kB` line of `/proc/<pid>/status`, in bytes.
pub(crate) fn parse_status_bytes(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(':')?;
        let kib: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some(kib * 1024)
    })
}

/// The boot time (`btime`, seconds since the epoch) from `/proc/stat`.
pub(crate) fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("btime ")?.trim().parse().ok())
}

/// The soft limit of `Max open files` in `/proc/<pid>/limits`; `None` when unlimited.
pub(crate) fn parse_max_open_files(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix("Max open files")?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn count_entries(path: &Path) -> Option<usize> {
    Some(std::fs::read_dir(path).ok()?.count())
}

/// Collects the `process_*` series from `/proc/self` at each scrape.
pub(crate) struct ProcessCollector {
    cpu_seconds: Counter,
    resident_memory: Gauge,
    virtual_memory: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    start_time: Gauge,
    descs: Vec<Desc>,
    /// Scrapes set the values, then read them back: one at a time.
    scrape: Mutex<()>,
}

impl ProcessCollector {
    pub fn new() -> Self {
        let gauge = |name: &str, help: &str| Gauge::with_opts(Opts::new(name, help)).unwrap();
        let cpu_seconds = Counter::with_opts(Opts::new(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
        ))
        .unwrap();
        let resident_memory = gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
        );
        let virtual_memory = gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
        );
        let open_fds = gauge("process_open_fds", "Number of open file descriptors.");
        let max_fds = gauge(
            "process_max_fds",
            "Maximum number of open file descriptors.",
        );
        let start_time = gauge(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
        );
        let descs = [
            cpu_seconds.desc(),
            resident_memory.desc(),
            virtual_memory.desc(),
            open_fds.desc(),
            max_fds.desc(),
            start_time.desc(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        Self {
            cpu_seconds,
            resident_memory,
            virtual_memory,
            open_fds,
            max_fds,
            start_time,
            descs,
            scrape: Mutex::new(()),
        }
    }
}

impl Default for ProcessCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _scrape = self.scrape.lock();
        let mut families = Vec::new();
        if let Some(stat) = read("/proc/self/stat").as_deref().and_then(parse_stat) {
            // A counter only goes up: replace its value with the kernel's total.
            self.cpu_seconds.reset();
            self.cpu_seconds.inc_by(stat.cpu_ticks as f64 / USER_HZ);
            families.extend(self.cpu_seconds.collect());
            self.virtual_memory.set(stat.virtual_memory_bytes as f64);
            families.extend(self.virtual_memory.collect());
            if let Some(boot) = read("/proc/stat").as_deref().and_then(parse_boot_time) {
                self.start_time
                    .set(boot as f64 + stat.start_ticks as f64 / USER_HZ);
                families.extend(self.start_time.collect());
            }
        }
        if let Some(rss) = read("/proc/self/status")
            .as_deref()
            .and_then(|s| parse_status_bytes(s, "VmRSS"))
        {
            self.resident_memory.set(rss as f64);
            families.extend(self.resident_memory.collect());
        }
        if let Some(open) = count_entries(Path::new("/proc/self/fd")) {
            // Reading the directory holds one descriptor open itself.
            self.open_fds.set(open.saturating_sub(1) as f64);
            families.extend(self.open_fds.collect());
        }
        if let Some(max) = read("/proc/self/limits")
            .as_deref()
            .and_then(parse_max_open_files)
        {
            self.max_fds.set(max as f64);
            families.extend(self.max_fds.collect());
        }
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_end_of_the_name() {
        // A command name with a space and a parenthesis, as a thread may be named.
        let text = "4242 (tokio (rt) w) S 1 4242 4242 0 -1 4194560 1200 0 3 0 \
                    250 37 0 0 20 0 9 0 123456 987654321 4096 18446744073709551615 \
                    1 1 0 0 0 0 0 4096 1088 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                cpu_ticks: 287,
                start_ticks: 123456,
                virtual_memory_bytes: 987654321,
            })
        );
        assert_eq!(parse_stat("4242 (truncated) S 1 2"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn status_limits_and_boot_time_are_parsed() {
        let status =
            "Name:\tbb-container-ex\nVmPeak:\t  20000 kB\nVmRSS:\t   5120 kB\nThreads:\t9\n";
        assert_eq!(parse_status_bytes(status, "VmRSS"), Some(5120 * 1024));
        assert_eq!(parse_status_bytes(status, "VmSwap"), None);
        assert_eq!(parse_status_bytes(status, "Threads"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_open_files(limits), Some(1024));
        assert_eq!(
            parse_max_open_files(
                "Max open files            unlimited            unlimited            files"
            ),
            None
        );
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1_700_000_000)
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_measured() {
        let families = ProcessCollector::new().collect();
        let value = |name: &str| {
            let family = families
                .iter()
                .find(|f| f.name() == name)
                .unwrap_or_else(|| panic!("{name} missing"));
            let metric = &family.get_metric()[0];
            if name.ends_with("_total") {
                metric.get_counter().get_value()
            } else {
                metric.get_gauge().get_value()
            }
        };
        assert!(value("process_resident_memory_bytes") > 0.0);
        assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
        assert!(value("process_cpu_seconds_total") >= 0.0);
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = value("process_start_time_seconds");
        assert!(
            started <= now + 1.0 && started > now - 3600.0,
            "{started} vs {now}"
        );
    }
}
