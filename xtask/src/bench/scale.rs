//! P4: the agent with 1,000 and 10,000 pods. Simulated pods: cgroups shaped like the
//! kubelet's (systemd driver, containerd) under the attach subtree, records in the
//! pods file, and one cached credential each, fetched by `pia-bench sweep`, which
//! moves itself into each cgroup in turn (the kernel attributes by cgroup) and runs
//! in a pod's netns. Then a second sweep over every cgroup times cached lookups
//! (connect + redirect + attribution + cache hit, one request at a time).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use super::{
    io_err, memory, metric, metrics, remove_sim_pods, sim_pod, stats, write_pods_file, Bench, Mem,
    Sample, ALL_PODS,
};

/// Pod counts measured (besides the 50 real pods).
const SIZES: [usize; 2] = [1_000, 10_000];
/// Sweep processes filling the cache at once (each sequential).
const FILL_PROCS: usize = 4;
/// Pods whose netns the sweeps run in.
const POD_SWEEP: usize = 7;
/// Cached lookups timed per pod count (cgroups spread over all of them).
const LOOKUP_SAMPLE: usize = 250;
/// Bound on one sweep process.
const SWEEP_TIMEOUT_S: u32 = 300;

const TARGET_1K_MIB: f64 = 32.0;
const TARGET_10K_MIB: f64 = 64.0;
/// (pods, RSS MiB) targets, for the chart.
pub const TARGETS_MIB: [(f64, f64); 2] = [(1_000.0, TARGET_1K_MIB), (10_000.0, TARGET_10K_MIB)];

pub struct Point {
    pods: usize,
    cache_entries: u64,
    mem: Mem,
    /// Time to fill the cache for the pods added at this step, and how many.
    fill: Option<(f64, usize)>,
    lookup: Sample,
}

/// Simulated pods of this section.
const TAG: u8 = 0x5c;

/// `sweep` over `cgroups` from `procs` processes at once; their reports.
fn sweep(b: &Bench, cgroups: &[String], procs: usize, tag: &str) -> Result<Vec<Sample>, String> {
    let chunk = cgroups.len().div_ceil(procs.max(1)).max(1);
    let mut children = Vec::new();
    for (k, part) in cgroups.chunks(chunk).enumerate() {
        let list = b.work.join(format!("sweep-{tag}-{k}.txt"));
        fs::write(&list, part.join("\n")).map_err(io_err(format!("write {}", list.display())))?;
        let mut c = b.node.pod_command(POD_SWEEP + k, "timeout");
        c.args([
            "-k",
            "5",
            &SWEEP_TIMEOUT_S.to_string(),
            b.tool_str()?,
            "sweep",
        ])
        .args(["--to", "169.254.170.23:80", "--cgroups"])
        .arg(&list)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        children.push(c.spawn().map_err(io_err("spawn pia-bench sweep"))?);
    }
    let mut out = Vec::new();
    for child in children {
        let o = child
            .wait_with_output()
            .map_err(io_err("wait for pia-bench sweep"))?;
        let text = String::from_utf8_lossy(&o.stdout);
        let line = text
            .lines()
            .find(|l| l.starts_with("BENCH "))
            .ok_or_else(|| {
                format!(
                    "pia-bench sweep printed no report: {text} {}",
                    String::from_utf8_lossy(&o.stderr)
                )
            })?;
        let s = stats::parse_report(line)?;
        if s.socket_errors > 0 {
            return Err(format!(
                "sweep ({tag}): {} of {} requests failed: {}",
                s.socket_errors,
                s.requests + s.socket_errors,
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        out.push(s);
    }
    Ok(out)
}

pub fn run(b: &mut Bench, pods_file: &Path, pid: u32) -> Result<Vec<Point>, String> {
    let mut cgroups: Vec<String> = b
        .node
        .pods
        .iter()
        .map(|p| p.cgroup.path().display().to_string())
        .collect();
    let r = measure(b, pods_file, pid, &mut cgroups);
    // Also when a step failed: the next sections want a small node.
    eprintln!(
        "bench: P4: removing {} simulated pods",
        cgroups.len() - ALL_PODS
    );
    let dirs: Vec<PathBuf> = cgroups[ALL_PODS..].iter().map(PathBuf::from).collect();
    remove_sim_pods(&dirs);
    write_pods_file(&b.node, &[], pods_file)?;
    r
}

fn measure(
    b: &mut Bench,
    pods_file: &Path,
    pid: u32,
    cgroups: &mut Vec<String>,
) -> Result<Vec<Point>, String> {
    let mut sim: Vec<(String, String)> = Vec::new();
    // Moving a process between cgroups takes the kernel tens of ms (an RCU grace
    // period): time lookups on an evenly spread sample, not on every cgroup.
    let lookup = |b: &Bench, cgroups: &[String]| -> Result<Sample, String> {
        let step = cgroups.len().div_ceil(LOOKUP_SAMPLE).max(1);
        let sample: Vec<String> = cgroups.iter().step_by(step).cloned().collect();
        Ok(sweep(b, &sample, 1, "lookup")?.remove(0))
    };
    let point = |b: &Bench, pods, fill, lookup| -> Result<Point, String> {
        thread::sleep(Duration::from_secs(2));
        let mem = memory(pid)?;
        let cache_entries = metric(&metrics(&b.node)?, "pod_identity_cache_entries")?;
        Ok(Point {
            pods,
            cache_entries,
            mem,
            fill,
            lookup,
        })
    };
    eprintln!("bench: P4: lookups with the {ALL_PODS} real pods");
    let l = lookup(b, cgroups)?;
    let mut points = vec![point(b, ALL_PODS, None, l)?];
    for n in SIZES {
        let t = Instant::now();
        let first_new = cgroups.len();
        while sim.len() + ALL_PODS < n {
            let (uid, name, dir) = sim_pod(&b.node, TAG, sim.len())?;
            cgroups.push(dir.display().to_string());
            sim.push((uid, name));
        }
        write_pods_file(&b.node, &sim, pods_file)?;
        eprintln!(
            "bench: P4: {n} pods ({} cgroups made in {:.1} s); filling the cache",
            cgroups.len() - first_new,
            t.elapsed().as_secs_f64()
        );
        // The pods file is polled every 2 s, the cgroup tree rescanned every 1 s.
        thread::sleep(Duration::from_secs(3));
        let t = Instant::now();
        sweep(b, &cgroups[first_new..], FILL_PROCS, "fill")?;
        let fill = (t.elapsed().as_secs_f64(), cgroups.len() - first_new);
        eprintln!(
            "bench: P4: {} credentials fetched in {:.1} s; timing cached lookups",
            fill.1, fill.0
        );
        let l = lookup(b, cgroups)?;
        points.push(point(b, n, Some(fill), l)?);
    }
    Ok(points)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn target_of(pods: usize) -> Option<f64> {
    match pods {
        1_000 => Some(TARGET_1K_MIB),
        10_000 => Some(TARGET_10K_MIB),
        _ => None,
    }
}

pub fn print(points: &[Point]) {
    println!();
    println!("== P4: scale (simulated pods: kubelet-shaped cgroups, pods file, one cached credential each)");
    println!(
        "{:>6} {:>8} {:>10} {:>11} {:>9} {:>10} {:>14} {:>14} {:>16}  target",
        "pods",
        "entries",
        "RSS MiB",
        "anon MiB",
        "file MiB",
        "shmem MiB",
        "lookup p50 µs",
        "lookup p99 µs",
        "fill (s / pods)"
    );
    for p in points {
        let fill = p
            .fill
            .map(|(s, n)| format!("{s:.1} / {n}"))
            .unwrap_or_default();
        let target = target_of(p.pods)
            .map(|t| {
                let ok = mib(p.mem.rss_kib) <= t;
                format!("RSS ≤ {t} MiB: {}", if ok { "holds" } else { "MISSED" })
            })
            .unwrap_or_default();
        println!(
            "{:>6} {:>8} {:>10.1} {:>11.1} {:>9.1} {:>10.1} {:>14.0} {:>14.0} {:>16}  {target}",
            p.pods,
            p.cache_entries,
            mib(p.mem.rss_kib),
            mib(p.mem.anon_kib),
            mib(p.mem.file_kib),
            mib(p.mem.shmem_kib),
            p.lookup.p50_us,
            p.lookup.p99_us,
            fill
        );
    }
    if let (Some(first), Some(last)) = (points.first(), points.last()) {
        println!(
            "   lookup p50 {} pods / {} pods: {:.2} (flat: ≈ 1)",
            last.pods,
            first.pods,
            last.lookup.p50_us / first.lookup.p50_us
        );
    }
}

pub fn json(points: &[Point]) -> Value {
    Value::Array(
        points
            .iter()
            .map(|p| {
                json!({
                    "pods": p.pods,
                    "cache_entries": p.cache_entries,
                    "rss_kib": p.mem.rss_kib,
                    "anon_kib": p.mem.anon_kib,
                    "file_kib": p.mem.file_kib,
                    "shmem_kib": p.mem.shmem_kib,
                    "rss_target_mib": target_of(p.pods),
                    "lookup_p50_us": p.lookup.p50_us,
                    "lookup_p99_us": p.lookup.p99_us,
                    "lookups": p.lookup.requests,
                    "fill_seconds": p.fill.map(|f| f.0),
                    "fill_pods": p.fill.map(|f| f.1),
                })
            })
            .collect(),
    )
}

/// (pods, RSS MiB) for the chart.
pub fn memory_points(points: &[Point]) -> Vec<(f64, f64)> {
    points
        .iter()
        .map(|p| (p.pods as f64, mib(p.mem.rss_kib)))
        .collect()
}
