//! Pure statistics of the benchmark: medians and ranges over rounds, per-round
//! ratios, and the `BENCH key=value …` lines the load generators print.

#[cfg(test)]
mod tests;

/// One load run, as its generator reported it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    pub requests: u64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Slowest request (NaN when the generator does not say).
    pub max_us: f64,
    pub socket_errors: u64,
    pub non2xx: u64,
    /// CPU time the server (agent or baseline) spent per request, in µs; NaN
    /// when not measured.
    pub server_cpu_us: f64,
}

/// The value of `key=` in a `BENCH` line.
pub fn field(line: &str, key: &str) -> Result<f64, String> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{key} missing in report {line:?}"))
}

/// A `BENCH` line: `requests`, `duration_us`, `p50_us`, `p99_us` always, `max_us`
/// if present; the error
/// counters are summed from whichever of `connect read write timeout errors` appear,
/// and `status` counts non-2xx answers.
pub fn parse_report(line: &str) -> Result<Sample, String> {
    let requests = field(line, "requests")? as u64;
    let duration_s = field(line, "duration_us")? / 1e6;
    if duration_s <= 0.0 {
        return Err(format!("no duration in report {line:?}"));
    }
    let socket_errors = ["connect", "read", "write", "timeout", "errors", "failed"]
        .iter()
        .filter_map(|k| field(line, k).ok())
        .map(|x| x as u64)
        .sum();
    Ok(Sample {
        requests,
        rps: requests as f64 / duration_s,
        p50_us: field(line, "p50_us")?,
        p99_us: field(line, "p99_us")?,
        max_us: field(line, "max_us").unwrap_or(f64::NAN),
        socket_errors,
        non2xx: field(line, "status").map(|x| x as u64).unwrap_or(0),
        server_cpu_us: f64::NAN,
    })
}

pub fn median(xs: &[f64]) -> f64 {
    let mut xs = xs.to_vec();
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// (min, max); (inf, -inf) when empty.
pub fn range(xs: &[f64]) -> (f64, f64) {
    xs.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

/// `median [min–max]` of per-round values.
pub fn summary(xs: &[f64], prec: usize) -> String {
    let (lo, hi) = range(xs);
    format!("{:.prec$} [{:.prec$}–{:.prec$}]", median(xs), lo, hi)
}

/// Per-round ratios `a[k] / b[k]` (rounds are paired: same round, same conditions).
pub fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x / y).collect()
}
