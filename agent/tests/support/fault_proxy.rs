//! A fault-injecting HTTP proxy in front of an upstream (moto's STS, or the EKS
//! Auth stand-in), for `upstream_faults.rs`. It is test support, not a mock of
//! either API: in [`Fault::Pass`] it forwards every request to the real upstream
//! byte for byte, and the faults are the shapes the real services (and networks)
//! produce.
//!
//! The proxy runs on its own thread that first moves into the node's network
//! namespace, so its listener (on the node's loopback) and its upstream connections
//! live where the agent's do. The fault can be switched at any time
//! ([`FaultProxy::set`]); [`FaultProxy::calls`] counts the requests that reached it.
//!
//! One request per connection: the proxy asks the upstream to close after its
//! answer and passes `Connection: close` on (the SDK clients handle that as any
//! server's close).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with the next connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward to the upstream unchanged.
    Pass,
    /// The listener is closed: `connect()` fails with `ECONNREFUSED`.
    Refuse,
    /// Accept and read the request, then reset the connection (RST).
    Reset,
    /// Accept and read the request, never answer (held until the fault changes).
    BlackHole,
    /// The API's throttling error: STS `Throttling` (400, XML), EKS Auth
    /// `ThrottlingException` (429, JSON).
    Throttle,
    /// The API's server error: STS `ServiceUnavailable` (503, XML), EKS Auth
    /// `InternalServerException` (500, JSON).
    ServerError,
    /// A 200 whose body is not the API's document.
    Malformed,
    /// The upstream's real answer, cut in the middle of its body (the
    /// `Content-Length` promises more), then the connection closes.
    Truncated,
    /// The upstream's real answer with the credentials' expiration rewritten to
    /// now plus this long.
    ShortLived(Duration),
}

impl Fault {
    /// Short name for reports.
    pub fn name(self) -> String {
        match self {
            Fault::ShortLived(d) => format!("short-lived ({}s)", d.as_secs()),
            other => format!("{other:?}"),
        }
    }
}

/// Which API the proxy fronts: decides the error shapes and the expiration field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// STS (query protocol, XML), as moto's server speaks it.
    Sts,
    /// EKS Auth `AssumeRoleForPodIdentity` (restJson1), as the stand-in speaks it.
    EksAuth,
}

struct Shared {
    calls: AtomicU64,
}

/// Connections handled at once (black-holed ones included); more are closed at once.
const MAX_CONNECTIONS: usize = 256;
/// Largest request or upstream response the proxy reads.
const MAX_MESSAGE: usize = 1 << 20;
/// How long a black-holed connection is held at most.
const HOLD: Duration = Duration::from_secs(60);

/// The running proxy; stops (and closes its listener) on drop.
pub struct FaultProxy {
    addr: SocketAddr,
    fault: watch::Sender<Fault>,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts the proxy in the network namespace at `netns_path` (`/run/netns/…`),
    /// listening on 127.0.0.1 there, forwarding to `upstream` (an address in
    /// that namespace).
    pub fn start(netns_path: &str, upstream: SocketAddr, api: Api) -> FaultProxy {
        let (fault, rx) = watch::channel(Fault::Pass);
        let shared = Arc::new(Shared {
            calls: AtomicU64::new(0),
        });
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let netns = std::fs::File::open(netns_path)
            .unwrap_or_else(|e| panic!("open network namespace {netns_path}: {e}"));
        let sh = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || {
                // This thread only: its sockets are created in the node's namespace.
                rustix::thread::move_into_link_name_space(
                    std::os::fd::AsFd::as_fd(&netns),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .expect("setns into the node's network namespace");
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("fault proxy runtime");
                rt.block_on(async move {
                    let listener = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
                        .expect("fault proxy listener");
                    let addr = listener.local_addr().expect("fault proxy address");
                    addr_tx.send(addr).expect("report the proxy address");
                    serve(listener, addr, rx, sh, upstream, api).await;
                });
            })
            .expect("spawn the fault proxy thread");
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the fault proxy did not start");
        FaultProxy {
            addr,
            fault,
            shared,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:<port>` in the node's namespace.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Switches the fault; connections already held by a black hole are closed.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// Requests that reached the proxy (in every mode but [`Fault::Refuse`], which
    /// accepts nothing).
    pub fn calls(&self) -> u64 {
        self.shared.calls.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Closing the channel stops the accept loop; held connections end with it.
        let (tx, _) = watch::channel(Fault::Pass);
        drop(std::mem::replace(&mut self.fault, tx));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = tokio::net::TcpSocket::new_v4()?;
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(128)
}

async fn serve(
    listener: TcpListener,
    addr: SocketAddr,
    mut rx: watch::Receiver<Fault>,
    shared: Arc<Shared>,
    upstream: SocketAddr,
    api: Api,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut listener = Some(listener);
    loop {
        let fault = *rx.borrow_and_update();
        if fault == Fault::Refuse {
            // Closed: the kernel refuses connects until the fault changes.
            listener = None;
            if rx.changed().await.is_err() {
                return;
            }
            continue;
        }
        if listener.is_none() {
            match bind(addr) {
                Ok(l) => listener = Some(l),
                Err(e) => panic!("fault proxy: rebinding {addr}: {e}"),
            }
        }
        let Some(l) = &listener else { continue };
        tokio::select! {
            accepted = l.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                    continue; // over the bound: dropped (closed) at once
                };
                let (shared, rx) = (Arc::clone(&shared), rx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let _ = handle(stream, fault, rx, &shared, upstream, api).await;
                });
            }
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

async fn handle(
    mut stream: TcpStream,
    fault: Fault,
    mut rx: watch::Receiver<Fault>,
    shared: &Shared,
    upstream: SocketAddr,
    api: Api,
) -> std::io::Result<()> {
    let request = tokio::time::timeout(Duration::from_secs(10), read_request(&mut stream))
        .await
        .map_err(|_| std::io::Error::other("request head timed out"))??;
    shared.calls.fetch_add(1, Ordering::SeqCst);
    match fault {
        Fault::Pass => {
            let answer = forward(&request, upstream).await?;
            stream.write_all(&answer).await?;
        }
        Fault::Refuse | Fault::Reset => {
            // Linger 0: close sends RST instead of FIN.
            stream.set_zero_linger()?;
        }
        Fault::BlackHole => {
            rx.mark_unchanged();
            let _ = tokio::time::timeout(HOLD, rx.changed()).await;
        }
        Fault::Throttle | Fault::ServerError | Fault::Malformed => {
            stream.write_all(&canned(fault, api)).await?;
        }
        Fault::Truncated => {
            let answer = forward(&request, upstream).await?;
            let (head, body) = split(&answer);
            stream.write_all(head).await?;
            stream.write_all(&body[..body.len() / 2]).await?;
        }
        Fault::ShortLived(left) => {
            let answer = forward(&request, upstream).await?;
            stream.write_all(&short_lived(&answer, left, api)).await?;
        }
    }
    stream.shutdown().await
}

/// The request head and its `Content-Length` body, bounded.
async fn read_request(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                buf.truncate(end + 4 + len);
                return Ok(buf);
            }
        }
        if buf.len() > MAX_MESSAGE {
            return Err(std::io::Error::other("request too large"));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other("closed before a whole request"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Sends `request` to the upstream with `Connection: close`; its whole answer.
async fn forward(request: &[u8], upstream: SocketAddr) -> std::io::Result<Vec<u8>> {
    let (head, body) = split(request);
    let head = String::from_utf8_lossy(head);
    let mut out = String::new();
    for line in head.split("\r\n").filter(|l| !l.is_empty()) {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut up = TcpStream::connect(upstream).await?;
    up.write_all(out.as_bytes()).await?;
    up.write_all(body).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        (&mut up).take(MAX_MESSAGE as u64).read_to_end(&mut answer),
    )
    .await
    .map_err(|_| std::io::Error::other("upstream answer timed out"))??;
    Ok(answer)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// (head including the blank line, body).
fn split(message: &[u8]) -> (&[u8], &[u8]) {
    match find(message, b"\r\n\r\n") {
        Some(end) => message.split_at(end + 4),
        None => (message, &[]),
    }
}

/// An answer with `status`, the given extra headers and `body`, closing.
fn response(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// STS's query-protocol error document (`ErrorResponse`).
fn sts_error(kind: &str, code: &str, message: &str, id: &str) -> String {
    format!(
        "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>{kind}</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>{id}</RequestId></ErrorResponse>"
    )
}

/// The canned answers (error shapes and a malformed 200).
fn canned(fault: Fault, api: Api) -> Vec<u8> {
    let id = request_id();
    match (fault, api) {
        (Fault::Throttle, Api::Sts) => response(
            "400 Bad Request",
            &[("Content-Type", "text/xml"), ("x-amzn-RequestId", &id)],
            sts_error("Sender", "Throttling", "Rate exceeded", &id).as_bytes(),
        ),
        (Fault::ServerError, Api::Sts) => response(
            "503 Service Unavailable",
            &[("Content-Type", "text/xml"), ("x-amzn-RequestId", &id)],
            sts_error(
                "Receiver",
                "ServiceUnavailable",
                "Service is unable to handle request.",
                &id,
            )
            .as_bytes(),
        ),
        (Fault::Malformed, Api::Sts) => response(
            "200 OK",
            &[("Content-Type", "text/xml"), ("x-amzn-RequestId", &id)],
            b"<html><body>upstream proxy error</body></html",
        ),
        (Fault::Throttle, Api::EksAuth) => response(
            "429 Too Many Requests",
            &[
                ("content-type", "application/json"),
                ("x-amzn-requestid", &id),
                ("x-amzn-errortype", "ThrottlingException"),
            ],
            br#"{"message":"Rate exceeded"}"#,
        ),
        (Fault::ServerError, Api::EksAuth) => response(
            "500 Internal Server Error",
            &[
                ("content-type", "application/json"),
                ("x-amzn-requestid", &id),
                ("x-amzn-errortype", "InternalServerException"),
            ],
            br#"{"message":"An internal error occurred"}"#,
        ),
        (Fault::Malformed, Api::EksAuth) => response(
            "200 OK",
            &[
                ("content-type", "application/json"),
                ("x-amzn-requestid", &id),
            ],
            br#"{"credentials": {"accessKeyId": "#,
        ),
        (other, _) => unreachable!("no canned answer for {other:?}"),
    }
}

/// `answer` with the credentials' expiration set to now + `left` (and its
/// `Content-Length` fixed).
fn short_lived(answer: &[u8], left: Duration, api: Api) -> Vec<u8> {
    let (head, body) = split(answer);
    let at = SystemTime::now() + left;
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs();
    let body = String::from_utf8_lossy(body).into_owned();
    let new_body = match api {
        Api::Sts => {
            let (Some(start), Some(end)) = (body.find("<Expiration>"), body.find("</Expiration>"))
            else {
                return answer.to_vec(); // an error answer: passed on as it is
            };
            let stamp = aws_smithy_types::DateTime::from_secs(secs as i64)
                .fmt(aws_smithy_types::date_time::Format::DateTime)
                .expect("format the expiration");
            format!("{}<Expiration>{stamp}{}", &body[..start], &body[end..])
        }
        Api::EksAuth => {
            let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&body) else {
                return answer.to_vec();
            };
            match v.pointer_mut("/credentials/expiration") {
                Some(e) => *e = serde_json::json!(secs),
                None => return answer.to_vec(),
            }
            v.to_string()
        }
    };
    let head = String::from_utf8_lossy(head);
    let mut out = String::new();
    for line in head.split("\r\n").filter(|l| !l.is_empty()) {
        let lower = line.to_ascii_lowercase();
        if !lower.starts_with("content-length:") && !lower.starts_with("connection:") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        new_body.len()
    ));
    let mut out = out.into_bytes();
    out.extend_from_slice(new_body.as_bytes());
    out
}
