//! The table the benchmark prints, and small measuring helpers.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How a measured value compares with its target.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub enum Target {
    /// `measured / baseline` at most this.
    RatioAtMost(f64),
    /// `measured / baseline` at least this.
    RatioAtLeast(f64),
    /// `measured` at most this many units.
    AtMost(f64),
    /// `measured` at least this many units.
    AtLeast(f64),
    /// `measured - baseline` at most this many units.
    DeltaAtMost(f64),
    /// Nothing to check (context for other rows).
    Info,
}

/// Units of a row's measured and baseline values.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub enum Unit {
    Seconds,
    Millis,
    PerSecond,
    MiB,
    /// A number of things (calls per action).
    Count,
}

impl Unit {
    fn format(self, v: f64) -> String {
        match self {
            Unit::Seconds => format!("{v:.2} s"),
            Unit::Millis => format!("{v:.3} ms"),
            Unit::PerSecond => format!("{v:.0}/s"),
            Unit::MiB => format!("{v:.0} MiB"),
            Unit::Count => format!("{v:.2}"),
        }
    }
}

#[derive(Serialize, Deserialize)]
pub struct Row {
    pub name: String,
    pub unit: Unit,
    pub measured: f64,
    pub baseline: Option<f64>,
    pub target: Target,
    pub note: String,
}

impl Row {
    pub fn new(
        name: impl Into<String>,
        unit: Unit,
        measured: f64,
        baseline: Option<f64>,
        target: Target,
    ) -> Self {
        Self {
            name: name.into(),
            unit,
            measured,
            baseline,
            target,
            note: String::new(),
        }
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }

    fn ratio(&self) -> Option<f64> {
        self.baseline
            .filter(|b| *b > 0.0)
            .map(|b| self.measured / b)
    }

    /// `None` for informational rows.
    pub fn passed(&self) -> Option<bool> {
        match self.target {
            Target::RatioAtMost(limit) => self.ratio().map(|r| r <= limit),
            Target::RatioAtLeast(limit) => self.ratio().map(|r| r >= limit),
            Target::AtMost(limit) => Some(self.measured <= limit),
            Target::AtLeast(limit) => Some(self.measured >= limit),
            Target::DeltaAtMost(limit) => self.baseline.map(|b| self.measured - b <= limit),
            Target::Info => None,
        }
    }

    fn target_text(&self) -> String {
        match self.target {
            Target::RatioAtMost(limit) => format!("ratio <= {limit}"),
            Target::RatioAtLeast(limit) => format!("ratio >= {limit}"),
            Target::AtMost(limit) => format!("<= {}", self.unit.format(limit)),
            Target::AtLeast(limit) => format!(">= {}", self.unit.format(limit)),
            Target::DeltaAtMost(limit) => format!("+ <= {}", self.unit.format(limit)),
            Target::Info => "-".into(),
        }
    }
}

#[derive(Default)]
pub struct Table {
    pub rows: Vec<Row>,
    /// In a child process: rows are printed as `ROW <json>` lines for the parent.
    pub child: bool,
}

/// Prefix of the lines a child process reports its rows with.
pub const ROW_PREFIX: &str = "ROW ";

impl Table {
    pub fn push(&mut self, row: Row) {
        if self.child {
            println!("{ROW_PREFIX}{}", serde_json::to_string(&row).unwrap());
        } else {
            print_row(&row);
        }
        self.rows.push(row);
    }

    pub fn print(&self) {
        println!();
        println!("{}", header());
        for row in &self.rows {
            println!("{}", line(row));
        }
        let notes: Vec<&Row> = self.rows.iter().filter(|r| !r.note.is_empty()).collect();
        if !notes.is_empty() {
            println!();
            for row in notes {
                println!("  {}: {}", row.name, row.note);
            }
        }
    }
}

fn header() -> String {
    format!(
        "{:<44} {:>12} {:>12} {:>8} {:>16} {}",
        "name", "measured", "baseline", "ratio", "target", "result"
    )
}

fn line(row: &Row) -> String {
    let baseline = row
        .baseline
        .map(|b| row.unit.format(b))
        .unwrap_or_else(|| "-".into());
    let ratio = match (row.target, row.baseline) {
        (Target::DeltaAtMost(_), Some(b)) => format!("{:+.3}", row.measured - b),
        _ => row
            .ratio()
            .map(|r| format!("{r:.2}x"))
            .unwrap_or_else(|| "-".into()),
    };
    let result = match row.passed() {
        Some(true) => "PASS",
        Some(false) => "FAIL",
        None => "info",
    };
    format!(
        "{:<44} {:>12} {:>12} {:>8} {:>16} {}",
        row.name,
        row.unit.format(row.measured),
        baseline,
        ratio,
        row.target_text(),
        result
    )
}

fn print_row(row: &Row) {
    println!("  -> {}", line(row));
    if !row.note.is_empty() {
        println!("     {}", row.note);
    }
}

/// `/proc/loadavg`, first three fields.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// The `p`-th percentile (0..=100) of `samples`, nearest rank.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

/// CPU time (user + system) this process has used so far, in seconds.
pub fn process_cpu_seconds() -> f64 {
    stat_seconds("self", 11, 12)
}

/// CPU time (user + system) process `pid` has used so far, in seconds.
pub fn cpu_seconds_of(pid: u32) -> f64 {
    stat_seconds(&pid.to_string(), 11, 12)
}

/// CPU time (user + system) of the child processes waited for so far (their own
/// waited-for children included), in seconds.
pub fn children_cpu_seconds() -> f64 {
    stat_seconds("self", 13, 14)
}

/// The sum of two clock-tick fields of `/proc/PROCESS/stat`, counted after the command
/// name.
fn stat_seconds(process: &str, user: usize, system: usize) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{process}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime, stime, cutime and cstime are fields 14 to 17 of the line: 11 to 14 after ')'.
    (ticks(user) + ticks(system)) / 100.0
}
