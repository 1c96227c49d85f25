//! P3's cold burst, one pod: move into the pod's cgroup, then `--conns` threads
//! each send one credentials request at the same instant (`--at`, Unix ms).
//! Prints the latencies, measured from that instant.

use std::{
    net::SocketAddr,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crate::sweep::request_once;

/// A start more than this far ahead is a mistake.
const MAX_WAIT: Duration = Duration::from_secs(60);

pub fn run(to: &str, cgroup: &str, conns: usize, at_ms: u64) -> Result<(), String> {
    let addr: SocketAddr = to.parse().map_err(|e| format!("--to {to}: {e}"))?;
    if !(1..=64).contains(&conns) {
        return Err(format!("--conns {conns}: 1 to 64"));
    }
    // Move before any thread exists: the whole process goes.
    let procs = format!("{cgroup}/cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string())
        .map_err(|e| format!("write {procs}: {e}"))?;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| format!("clock: {e}"))?
        .as_millis() as u64;
    let wait = Duration::from_millis(at_ms.saturating_sub(now_ms));
    if wait > MAX_WAIT {
        return Err(format!("--at is {wait:?} away"));
    }
    let request = format!(
        "GET /v1/credentials HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        addr.ip()
    );
    let start = Instant::now() + wait;
    let threads: Vec<_> = (0..conns)
        .map(|_| {
            let request = request.clone();
            std::thread::spawn(move || {
                std::thread::sleep(start.saturating_duration_since(Instant::now()));
                let r = request_once(&addr, &request);
                (start.elapsed(), r)
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut failed = 0;
    for t in threads {
        match t.join() {
            Ok((d, Ok(()))) => lat.push(d.as_micros().to_string()),
            Ok((_, Err(e))) => {
                failed += 1;
                eprintln!("pia-bench burst: {cgroup}: {e}");
            }
            Err(_) => failed += 1,
        }
    }
    println!("BURST failed={failed} lat_us={}", lat.join(","));
    Ok(())
}
