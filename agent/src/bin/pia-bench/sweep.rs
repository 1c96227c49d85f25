//! One credentials request from each of many cgroups: the process moves itself into
//! each cgroup in turn (the kernel attributes a connection to the cgroup of the
//! process at `connect()`), so one process stands in for thousands of pods.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

pub fn run(to: &str, cgroups_file: &str) -> Result<(), String> {
    let addr: SocketAddr = to.parse().map_err(|e| format!("--to {to}: {e}"))?;
    let list =
        std::fs::read_to_string(cgroups_file).map_err(|e| format!("read {cgroups_file}: {e}"))?;
    let pid = std::process::id().to_string();
    let request = format!(
        "GET /v1/credentials HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        addr.ip()
    );
    let mut lat_ns = Vec::new();
    let mut failed = 0u64;
    let mut first_failure = None;
    let start = Instant::now();
    for cg in list.lines().filter(|l| !l.is_empty()) {
        let procs = format!("{cg}/cgroup.procs");
        std::fs::write(&procs, &pid).map_err(|e| format!("write {procs}: {e}"))?;
        let t = Instant::now();
        match request_once(&addr, &request) {
            Ok(()) => lat_ns.push(t.elapsed().as_nanos() as u64),
            Err(e) => {
                failed += 1;
                first_failure.get_or_insert(format!("{cg}: {e}"));
            }
        }
    }
    let elapsed = start.elapsed();
    lat_ns.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat_ns.is_empty() {
            return f64::NAN;
        }
        let k = ((p / 100.0) * (lat_ns.len() - 1) as f64).round() as usize;
        lat_ns[k] as f64 / 1e3
    };
    println!(
        "BENCH requests={} duration_us={} p50_us={:.1} p99_us={:.1} max_us={:.1} failed={failed}",
        lat_ns.len(),
        elapsed.as_micros(),
        pct(50.0),
        pct(99.0),
        pct(100.0)
    );
    if let Some(f) = first_failure {
        eprintln!("pia-bench sweep: first failure: {f}");
    }
    Ok(())
}

/// One request with `Connection: close`; Ok for a 200 answer.
pub fn request_once(addr: &SocketAddr, request: &str) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| format!("timeout: {e}"))?;
    s.write_all(request.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::with_capacity(4096);
    s.take(64 * 1024)
        .read_to_end(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    let head = String::from_utf8_lossy(&answer[..answer.len().min(64)]);
    if head.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(head.lines().next().unwrap_or("").to_owned())
    }
}
