use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Instant,
};

use super::*;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Idle connections to the probe port hold at most MAX_PROBE_CONNECTIONS of the
/// agent's descriptors (the rest are closed at accept), and probes are answered at
/// once when the flood ends. Without the cap every idle connection costs the agent
/// a descriptor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cannot_exhaust_descriptors() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve_probes(
        listener,
        crate::http::health::Health::for_sources(Arc::new(|| None)),
        Arc::new(String::new),
    ));
    assert!(get(addr, "/healthz").unwrap().starts_with("HTTP/1.1 200"));

    const IDLE: usize = 400;
    let before = open_fds();
    let idle: Vec<TcpStream> = (0..IDLE)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    // Let the server accept whatever it will.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = open_fds().saturating_sub(before);
    // IDLE client sockets live in this process too; the server may add at most
    // its cap (plus a little slack for the runtime).
    assert!(
        grown <= IDLE + MAX_PROBE_CONNECTIONS + 8,
        "{grown} descriptors for {IDLE} idle connections (cap {MAX_PROBE_CONNECTIONS})"
    );

    // The flood ends: probes are answered at once again.
    drop(idle);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    let answer = tokio::task::spawn_blocking(move || get(addr, "/readyz"))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "probe waited {:?}",
        start.elapsed()
    );
    server.abort();
}
