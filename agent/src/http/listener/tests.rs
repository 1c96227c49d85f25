use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use hyper::StatusCode;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

use super::*;
use crate::http::response::text;

/// Stand-in for the kernel: the client's loopback address is its "cgroup".
struct ByAddress;

impl Attribute for ByAddress {
    fn caller(&self, peer: SocketAddr, _local: SocketAddr) -> Result<Option<Caller>, String> {
        let IpAddr::V4(ip) = peer.ip() else {
            return Ok(None);
        };
        Ok(Some(crate::testing::caller(u64::from(ip.octets()[3]))))
    }
}

struct Ok200;

impl Handler for Ok200 {
    async fn handle(&self, _ctx: RequestContext, _req: Request<Incoming>) -> Response<Full<Bytes>> {
        text(StatusCode::OK, "ok")
    }
}

async fn connect_from(last_octet: u8, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(
        Ipv4Addr::new(127, 0, 0, last_octet).into(),
        0,
    ))
    .unwrap();
    s.connect(to).await.unwrap()
}

async fn get(mut s: TcpStream) -> String {
    s.write_all(
        b"GET /v1/credentials HTTP/1.1\r\nhost: 169.254.170.23\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}

/// One pod holding every connection it can cannot keep another pod from being
/// served: its share is capped, and the accept loop never waits for a slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_holding_its_maximum_does_not_starve_another_pod() {
    let limits = ConnectionLimits {
        total: 64,
        per_caller: 16,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve(
        listener,
        Arc::new(ByAddress),
        Arc::new(Ok200),
        limits,
    ));

    // Pod .2 opens far more idle connections than the listener's total.
    let mut idle = Vec::new();
    for _ in 0..(limits.total + 36) {
        idle.push(connect_from(2, addr).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let start = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(3), get(connect_from(3, addr).await))
        .await
        .expect("pod .3 was not answered within 3 s");
    assert!(answer.starts_with("HTTP/1.1 200"), "pod .3 got {answer:?}");
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "pod .3 waited {:?}",
        start.elapsed()
    );
    drop(idle);
    server.abort();
}

/// Records what the listener reports about connections, and when requests come.
#[derive(Default)]
struct Recording {
    log: std::sync::Mutex<Vec<String>>,
}

impl Handler for Recording {
    async fn handle(&self, ctx: RequestContext, _req: Request<Incoming>) -> Response<Full<Bytes>> {
        let cgroup = ctx.caller.as_ref().map(|c| c.cgroup_id).unwrap_or(0);
        self.log.lock().unwrap().push(format!("request {cgroup}"));
        text(StatusCode::OK, "ok")
    }

    fn connection(&self, caller: &Caller, event: ConnectionEvent) {
        self.log
            .lock()
            .unwrap()
            .push(format!("{event:?} {}", caller.cgroup_id));
    }
}

/// The audit log joins a connect's kernel event with its request however long
/// the request takes, once it knows the listener accepted the connection; and
/// writes it alone when the connection closes without one.
#[tokio::test]
async fn attributed_connections_are_reported_at_accept_and_close() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(Recording::default());
    let server = tokio::spawn(serve(
        listener,
        Arc::new(ByAddress),
        handler.clone(),
        ConnectionLimits {
            total: 8,
            per_caller: 8,
        },
    ));
    let answer = get(connect_from(5, addr).await).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    drop(connect_from(6, addr).await);
    let want = [
        "Accepted 5",
        "request 5",
        "Closed 5",
        "Accepted 6",
        "Closed 6",
    ];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = handler.log.lock().unwrap().clone();
        if log.len() >= want.len() || Instant::now() > deadline {
            assert_eq!(log, want);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.abort();
}

struct Slow200;

impl Handler for Slow200 {
    async fn handle(&self, _ctx: RequestContext, _req: Request<Incoming>) -> Response<Full<Bytes>> {
        tokio::time::sleep(Duration::from_millis(400)).await;
        text(StatusCode::OK, "slow ok")
    }
}

/// SIGTERM's drain: the request in flight is answered, idle keep-alive
/// connections are closed, new connections are not accepted, and the drain ends
/// as soon as nothing is open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_finishes_requests_in_flight_and_accepts_nothing_new() {
    use crate::http::drain::DrainHandle;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (handle, drain) = DrainHandle::new();
    let server = tokio::spawn(serve_until(
        listener,
        Arc::new(ByAddress),
        Arc::new(Slow200),
        ConnectionLimits::default(),
        drain,
    ));
    // An idle keep-alive connection, and one whose request is being served.
    let mut idle = connect_from(3, addr).await;
    let busy = tokio::spawn(get(connect_from(2, addr).await));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let left = handle.drain(Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert_eq!(left, 0);
    assert!(took < Duration::from_secs(2), "drain took {took:?}");
    let answer = busy.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("slow ok\n"), "{answer}");
    // The idle connection was closed without an answer.
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(2), idle.read_to_end(&mut buf))
        .await
        .expect("idle connection closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "{}", String::from_utf8_lossy(&buf));
    // The accept loop has ended: nothing new is accepted.
    tokio::time::timeout(Duration::from_secs(1), server)
        .await
        .expect("accept loop ended")
        .unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener still open"
    );
}
