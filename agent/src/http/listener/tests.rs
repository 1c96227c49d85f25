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
        Ok(Some(Caller {
            cgroup_id: u64::from(ip.octets()[3]),
            pid: 1,
            tid: 1,
            uid: 0,
            gid: 0,
            comm: "test".into(),
            netns_cookie: 0,
            socket_cookie: 0,
            original_destination: "169.254.170.23:80".parse().unwrap(),
            connect_ktime_ns: 0,
        }))
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
