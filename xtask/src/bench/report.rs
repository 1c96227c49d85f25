//! The benchmark's JSON (`target/bench/bench.json`) and the verdict next to a target.

use std::{fs, path::Path};

use serde_json::{json, Value};

use super::stats::{median, range};

#[cfg(test)]
mod tests;

/// `{"median", "min", "max"}` of per-round values.
pub fn spread(xs: &[f64]) -> Value {
    let (lo, hi) = range(xs);
    json!({ "median": finite(median(xs)), "min": finite(lo), "max": finite(hi) })
}

/// JSON has no NaN or infinity: those become null.
fn finite(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else {
        Value::Null
    }
}

/// `target ≥ 0.90: holds` / `MISSED` for a target written as `≥ X` or `≤ X`,
/// judged on the median over rounds; empty without a target.
pub fn target_note(xs: &[f64], target: &str) -> String {
    let m = median(xs);
    let verdict = if let Some(x) = target.strip_prefix("≥ ") {
        x.parse::<f64>().ok().map(|t| m >= t)
    } else if let Some(x) = target.strip_prefix("≤ ") {
        x.parse::<f64>().ok().map(|t| m <= t)
    } else {
        None
    };
    match verdict {
        Some(true) => format!("target {target}: holds"),
        Some(false) => format!("target {target}: MISSED"),
        None => String::new(),
    }
}

/// What the numbers ran on: kernel, CPU model, CPU count, load average at the end.
pub fn machine() -> Value {
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    json!({
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "cpu": cpu,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "loadavg": read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    })
}

pub fn write_json(path: &Path, doc: &Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(doc).map_err(|e| format!("bench JSON: {e}"))?;
    fs::write(path, text + "\n").map_err(|e| format!("write {}: {e}", path.display()))
}
