//! `connect()` in a loop: the cost every process on the node pays per connection.

use std::{
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

pub fn run(to: &str, secs: u64) -> Result<(), String> {
    let addr: SocketAddr = to.parse().map_err(|e| format!("--to {to}: {e}"))?;
    let end = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut lat_ns: Vec<u64> = Vec::with_capacity(1 << 16);
    let mut errors = 0u64;
    while Instant::now() < end {
        let t = Instant::now();
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => {
                lat_ns.push(t.elapsed().as_nanos() as u64);
                // RST on close: no TIME_WAIT on either side.
                let _ = rustix::net::sockopt::set_socket_linger(&s, Some(Duration::ZERO));
            }
            Err(_) => errors += 1,
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
        "BENCH requests={} duration_us={} p50_us={:.1} p99_us={:.1} errors={errors}",
        lat_ns.len(),
        elapsed.as_micros(),
        pct(50.0),
        pct(99.0)
    );
    Ok(())
}
