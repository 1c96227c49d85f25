//! P3: a cold burst. 200 simulated pods appear (cgroups and records); at one
//! instant each sends 10 concurrent first requests (`pia-bench burst`, one process
//! per pod, moved into the pod's cgroup). The upstream (moto's STS) must be called
//! exactly once per pod: counted by moto itself (its request log) and by the agent.

use std::{
    fs,
    path::Path,
    process::Stdio,
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::{json, Value};

use super::{
    io_err, metric, metrics, remove_sim_pods, sim_pod, stats::median, write_pods_file, Bench, Place,
};

const PODS: usize = 200;
const CONNS: usize = 10;
/// The pod whose netns the burst processes use.
const POD_BURST: usize = 11;
const TAG: u8 = 0xb3;
/// Time allowed to start every burst process before the common instant.
const LEAD: Duration = Duration::from_secs(8);

pub struct Burst {
    prefetched_before: u64,
    upstream_moto: u64,
    upstream_agent: u64,
    served: usize,
    failed: usize,
    last_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Median over pods of each pod's slowest request.
    pod_worst_median_ms: f64,
}

/// STS calls moto logged (one line per request: `"POST / HTTP/1.1" 200`).
fn moto_calls(log: &Path) -> Result<u64, String> {
    let text = fs::read_to_string(log).map_err(io_err(format!("read {}", log.display())))?;
    Ok(text.lines().filter(|l| l.contains("\"POST / HTTP")).count() as u64)
}

pub fn run(b: &Bench, pods_file: &Path, sts_log: &Path) -> Result<Burst, String> {
    let mut records = Vec::new();
    let mut dirs = Vec::new();
    for i in 0..PODS {
        let (uid, name, dir) = sim_pod(&b.node, TAG, i)?;
        records.push((uid, name));
        dirs.push(dir);
    }
    let result = burst(b, pods_file, sts_log, &records, &dirs);
    remove_sim_pods(&dirs);
    write_pods_file(&b.node, &[], pods_file)?;
    result
}

fn burst(
    b: &Bench,
    pods_file: &Path,
    sts_log: &Path,
    records: &[(String, String)],
    dirs: &[std::path::PathBuf],
) -> Result<Burst, String> {
    let m = metrics(&b.node)?;
    let entries0 = metric(&m, "pod_identity_cache_entries")?;
    let agent0 = metric(&m, "pod_identity_sts_calls_total")?;
    let moto0 = moto_calls(sts_log)?;
    write_pods_file(&b.node, records, pods_file)?;
    // The pods file is polled every 2 s.
    thread::sleep(Duration::from_millis(2_500));
    let prefetched_before =
        metric(&metrics(&b.node)?, "pod_identity_cache_entries")?.saturating_sub(entries0);
    let at = SystemTime::now() + LEAD;
    let at_ms = at
        .duration_since(UNIX_EPOCH)
        .map_err(|e| format!("clock: {e}"))?
        .as_millis();
    eprintln!(
        "bench: P3: {} pods × {CONNS} first requests at one instant",
        dirs.len()
    );
    let mut children = Vec::new();
    for dir in dirs {
        let mut c = b.command(Place::Pod(POD_BURST), "timeout");
        c.args(["-k", "5", "60", b.tool_str()?, "burst"])
            .args(["--to", "169.254.170.23:80", "--cgroup"])
            .arg(dir)
            .args(["--conns", &CONNS.to_string(), "--at", &at_ms.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        children.push(c.spawn().map_err(io_err("spawn pia-bench burst"))?);
    }
    if SystemTime::now() > at {
        return Err(format!(
            "P3: starting {} processes took longer than {LEAD:?}",
            dirs.len()
        ));
    }
    let mut all = Vec::new();
    let mut worst = Vec::new();
    let mut failed = 0;
    for child in children {
        let o = child
            .wait_with_output()
            .map_err(io_err("wait for pia-bench burst"))?;
        let text = String::from_utf8_lossy(&o.stdout);
        let line = text
            .lines()
            .find(|l| l.starts_with("BURST "))
            .ok_or_else(|| {
                format!(
                    "pia-bench burst printed no report: {text} {}",
                    String::from_utf8_lossy(&o.stderr)
                )
            })?;
        let f: usize = super::stats::field(line, "failed")? as usize;
        failed += f;
        let lat: Vec<f64> = line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("lat_us="))
            .unwrap_or("")
            .split(',')
            .filter_map(|x| x.parse::<f64>().ok())
            .map(|us| us / 1e3)
            .collect();
        if let Some(w) = lat.iter().copied().reduce(f64::max) {
            worst.push(w);
        }
        all.extend(lat);
    }
    // moto logs a request when it answers; let the last lines land.
    thread::sleep(Duration::from_secs(1));
    let upstream_moto = moto_calls(sts_log)? - moto0;
    let upstream_agent = metric(&metrics(&b.node)?, "pod_identity_sts_calls_total")? - agent0;
    all.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        if all.is_empty() {
            f64::NAN
        } else {
            all[((p / 100.0) * (all.len() - 1) as f64).round() as usize]
        }
    };
    Ok(Burst {
        prefetched_before,
        upstream_moto,
        upstream_agent,
        served: all.len(),
        failed,
        last_ms: pct(100.0),
        p50_ms: pct(50.0),
        p99_ms: pct(99.0),
        pod_worst_median_ms: median(&worst),
    })
}

pub fn print(r: &Burst) {
    println!();
    println!(
        "== P3: cold burst ({PODS} pods × {CONNS} concurrent first requests, STS upstream = moto)"
    );
    let verdict = if r.upstream_moto == PODS as u64 {
        "holds"
    } else {
        "MISSED"
    };
    println!(
        "   upstream calls: {} (moto's log), {} (agent's count); must equal {PODS}: {verdict}",
        r.upstream_moto, r.upstream_agent
    );
    println!(
        "   served {} of {}, failed {}; time to the last served credential {:.0} ms; p50 {:.0} ms, p99 {:.0} ms; a pod's slowest request, median over pods {:.0} ms",
        r.served,
        PODS * CONNS,
        r.failed,
        r.last_ms,
        r.p50_ms,
        r.p99_ms,
        r.pod_worst_median_ms
    );
    println!(
        "   note: prefetch is always on with STS; {} of {PODS} pods were prefetched (paced, 3/s) before the burst",
        r.prefetched_before
    );
}

pub fn json(r: &Burst) -> Value {
    json!({
        "pods": PODS, "conns_per_pod": CONNS,
        "upstream_calls_moto": r.upstream_moto, "upstream_calls_agent": r.upstream_agent,
        "upstream_calls_target": PODS,
        "prefetched_before": r.prefetched_before,
        "served": r.served, "failed": r.failed,
        "last_served_ms": r.last_ms, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms,
        "pod_worst_median_ms": r.pod_worst_median_ms,
    })
}
