//! P5: warm start. From a pod's cgroup and record appearing to its credentials
//! being cached (prefetched), so that its first request is a hit. A watcher in the
//! node netns polls the agent's count of upstream calls that succeeded
//! (`pod_identity_upstream_request_duration_seconds_count{outcome="ok"}`, observed
//! as the credentials are stored) every 5 ms and prints the wall-clock time it
//! grows. (The cache's entry count grows earlier, when the fetch is queued.)

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::Stdio,
    time::{SystemTime, UNIX_EPOCH},
};

use serde_json::{json, Value};

use super::{
    io_err, remove_sim_pods, sim_pod, stats::median, stats::range, write_pods_file, Bench, PROBE,
};

const TRIALS: usize = 5;
const TAG: u8 = 0xa5;
const TARGET_MS: f64 = 50.0;

const WATCH_PY: &str = r#"
import sys, time, urllib.request
url = sys.argv[1]
def entries():
    n = 0.0
    for l in urllib.request.urlopen(url, timeout=5).read().decode().splitlines():
        if l.startswith("pod_identity_upstream_request_duration_seconds_count{") and 'outcome="ok"' in l:
            n += float(l.split()[-1])
    return n
base = entries()
print("READY", flush=True)
end = time.time() + 15
while time.time() < end:
    if entries() > base:
        print("SEEN %.6f" % time.time(), flush=True)
        break
    time.sleep(0.005)
else:
    print("TIMEOUT", flush=True)
"#;

pub struct Warm {
    ms: Vec<f64>,
}

pub fn run(b: &Bench, pods_file: &Path) -> Result<Warm, String> {
    let mut records = Vec::new();
    let mut dirs: Vec<PathBuf> = Vec::new();
    let r = trials(b, pods_file, &mut records, &mut dirs);
    remove_sim_pods(&dirs);
    write_pods_file(&b.node, &[], pods_file)?;
    r
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn trials(
    b: &Bench,
    pods_file: &Path,
    records: &mut Vec<(String, String)>,
    dirs: &mut Vec<PathBuf>,
) -> Result<Warm, String> {
    eprintln!("bench: P5: {TRIALS} pods appearing, one at a time");
    let mut ms = Vec::new();
    for i in 0..TRIALS {
        let mut c = b.node.node_command("timeout");
        c.args(["-k", "2", "20", "python3", "-c", WATCH_PY])
            .arg(format!("http://{PROBE}/metrics"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = c.spawn().map_err(io_err("spawn the P5 watcher"))?;
        let stdout = child.stdout.take().ok_or("P5 watcher: no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut next = || -> Result<String, String> {
            lines
                .next()
                .ok_or("P5 watcher: ended early")?
                .map_err(io_err("P5 watcher output"))
        };
        if next()? != "READY" {
            return Err("P5 watcher did not start".into());
        }
        // A pod starting on its own: the agent's background calls (prefetch,
        // renewals) are paced (--max-service-qps, 3/s), so trials are spaced.
        std::thread::sleep(std::time::Duration::from_millis(500));
        let (uid, name, dir) = sim_pod(&b.node, TAG, i)?;
        dirs.push(dir);
        records.push((uid, name));
        write_pods_file(&b.node, records, pods_file)?;
        let t0 = now_s();
        let line = next()?;
        let _ = child.wait();
        let seen: f64 = line
            .strip_prefix("SEEN ")
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| format!("P5: pod {i} was not prefetched within 15 s ({line})"))?;
        ms.push((seen - t0) * 1e3);
    }
    Ok(Warm { ms })
}

pub fn print(w: &Warm) {
    let m = median(&w.ms);
    let (lo, hi) = range(&w.ms);
    println!();
    println!("== P5: warm start (cgroup + pod record appear → credentials cached by prefetch; {TRIALS} pods, 0.5 s apart)");
    println!(
        "   {m:.0} ms [{lo:.0}–{hi:.0}]  target < {TARGET_MS} ms: {}",
        if m < TARGET_MS { "holds" } else { "MISSED" }
    );
    println!("   path: inotify on the pods file's directory → reload → rescan (10 ms settle) → prefetch → one STS call (moto)");
}

pub fn json(w: &Warm) -> Value {
    json!({ "per_pod_ms": w.ms, "median_ms": median(&w.ms), "target_ms": TARGET_MS })
}
