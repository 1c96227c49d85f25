//! The accept loop pods' connections arrive at: each connection is attributed
//! through the kernel before any request is read, and the port is bounded.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::conn_limit::{ConnectionCounter, ConnectionLimits};
use super::drain::Drain;
use crate::{attribution::Caller, audit::ConnectionEvent};

/// Who connected, as the kernel tells it.
pub trait Attribute: Send + Sync + 'static {
    /// The caller of the connection `peer` → `local`; `Ok(None)` when the kernel
    /// has no record (the connection was not redirected by our programs).
    fn caller(&self, peer: SocketAddr, local: SocketAddr) -> Result<Option<Caller>, String>;
}

impl Attribute for crate::kernel::Kernel {
    fn caller(&self, peer: SocketAddr, local: SocketAddr) -> Result<Option<Caller>, String> {
        self.take_caller(peer, local).map_err(|e| e.to_string())
    }
}

/// Answers one attributed request.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        ctx: RequestContext,
        req: Request<Incoming>,
    ) -> impl std::future::Future<Output = Response<Full<Bytes>>> + Send;

    /// A connection without a kernel record was refused before any request was
    /// read (for the audit log).
    fn unattributed(&self, _peer: SocketAddr, _local: SocketAddr) {}

    /// An attributed connection was accepted (before any of its requests) or has
    /// ended. For the audit log ([`crate::audit::AccessSink::connection`], with
    /// `caller.socket_cookie`): a connect's kernel event then waits for the
    /// connection's request rather than for a fixed window. Default: nothing.
    fn connection(&self, _caller: &Caller, _event: ConnectionEvent) {}
}

/// The fixed answer to a connection the kernel did not redirect.
pub const UNATTRIBUTED_BODY: &str = "Access Denied. The kernel has no record of this connection: call http://169.254.170.23/v1/credentials from a pod on this node\n";

/// Refuse an unattributed connection without reading a request: write the 403,
/// stop writing, drain what the client sends for a moment (so closing does not
/// reset the connection under its reader), close. Returns whether the client sent
/// anything (a connection closed before sending a byte is not an access; its
/// kernel event, if any, is audited on its own).
async fn refuse_unattributed(mut stream: tokio::net::TcpStream) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let resp = format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain; charset=utf-8\r\nx-content-type-options: nosniff\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{UNATTRIBUTED_BODY}",
        UNATTRIBUTED_BODY.len()
    );
    let mut total = 0usize;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        stream.write_all(resp.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while total < 64 * 1024 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => total += n,
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    total > 0
}

/// What the accept loop knows about a connection.
#[derive(Clone, Debug)]
pub struct RequestContext {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// `Err` carries why attribution failed (no record, map error).
    pub caller: Result<Caller, Unattributed>,
}

/// Why a connection has no kernel identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unattributed {
    /// No record: a direct connection to the agent port, or a record evicted.
    NoRecord,
    /// The map lookup itself failed.
    LookupFailed(String),
}

/// Unattributed connections being refused at once (each for at most 1 s).
pub const MAX_REFUSING: usize = 256;
/// Time allowed for a request head to arrive.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Longest life of one connection (SDKs reconnect freely).
pub const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(300);

/// Serve `listener` until the task is dropped. Each connection is attributed once,
/// at accept; the identity holds for every request on that connection.
///
/// The accept loop never waits for a slot: a connection over the listener's total,
/// or over its caller's share, is closed at once, so one pod flooding the port can
/// neither hold the slots nor stall the backlog other pods' connections wait in.
pub async fn serve<A: Attribute, H: Handler>(
    listener: TcpListener,
    attr: Arc<A>,
    handler: Arc<H>,
    limits: ConnectionLimits,
) {
    serve_until(listener, attr, handler, limits, Drain::never()).await
}

/// [`serve`] until `drain` starts: then the listener stops accepting (it is
/// dropped when this returns) and each open connection finishes the request it is
/// serving and closes (hyper's graceful shutdown); `drain` counts them.
pub async fn serve_until<A: Attribute, H: Handler>(
    listener: TcpListener,
    attr: Arc<A>,
    handler: Arc<H>,
    limits: ConnectionLimits,
    drain: Drain,
) {
    // The agent port is reachable from the node's network: bound the connections
    // anyone can hold open, and how long a request head may take.
    let open = ConnectionCounter::new(limits);
    let refused = Arc::new(tokio::sync::Semaphore::new(MAX_REFUSING));
    loop {
        let accepted = tokio::select! {
            biased;
            () = drain.stopped() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off briefly rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let local = match stream.local_addr() {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "getsockname failed");
                continue;
            }
        };
        let caller = match attr.caller(peer, local) {
            Ok(Some(c)) => Ok(c),
            Ok(None) => {
                // Anyone on the node's network can reach this port: answer at once
                // from a small pool of its own, so they cannot hold the slots pods
                // need; beyond that pool, drop.
                match refused.clone().try_acquire_owned() {
                    Ok(p) => {
                        let handler = handler.clone();
                        tokio::spawn(async move {
                            let _p = p;
                            if refuse_unattributed(stream).await {
                                handler.unattributed(peer, local);
                            }
                        });
                    }
                    Err(_) => handler.unattributed(peer, local),
                }
                continue;
            }
            Err(e) => Err(Unattributed::LookupFailed(e)),
        };
        let slot = match open.admit(caller.as_ref().ok().map(|c| c.cgroup_id)) {
            Ok(slot) => slot,
            Err(full) => {
                tracing::debug!(%peer, ?full, "connection over its limit closed");
                continue;
            }
        };
        // A connection without a kernel record gets its 403 and is closed.
        let keep_alive = caller.is_ok();
        // Told before any request is read, so the audit log holds the connect's
        // kernel event for this connection's request, however long it takes.
        let attributed = caller.as_ref().ok().cloned();
        if let Some(c) = &attributed {
            handler.connection(c, ConnectionEvent::Accepted);
        }
        let ctx = RequestContext {
            peer,
            local,
            caller,
        };
        let handler = handler.clone();
        let closed = attributed.map(|caller| ClosedGuard {
            handler: handler.clone(),
            caller,
        });
        let inflight = drain.track();
        let drain = drain.clone();
        tokio::spawn(async move {
            let _inflight = inflight;
            let _slot = slot;
            // Reports the close however the task ends (also on a panic).
            let _closed = closed;
            // Idle keep-alive connections are closed after a while too.
            let served = serve_connection(TokioIo::new(stream), ctx, handler, keep_alive, drain);
            if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_LIFETIME, served).await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
}

/// Serve the requests of one accepted connection `io` (any byte stream: the
/// listener's TCP streams; in the fuzz target, an in-memory pipe) with `handler`,
/// HTTP/1.1 with the listener's bounds (request head size and read timeout). When
/// `drain` starts, the request in flight is finished and the connection closed.
pub async fn serve_connection<I, H>(
    io: I,
    ctx: RequestContext,
    handler: Arc<H>,
    keep_alive: bool,
    drain: Drain,
) -> Result<(), hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    H: Handler,
{
    let service = service_fn(move |req| {
        let handler = handler.clone();
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(handler.handle(ctx, req).await) }
    });
    let conn = http1::Builder::new()
        .max_buf_size(64 * 1024)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(keep_alive)
        .serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r,
        () = drain.stopped() => {
            // Finish the request in flight, then close.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}

/// Tells the handler that an attributed connection ended when dropped.
struct ClosedGuard<H: Handler> {
    handler: Arc<H>,
    caller: Caller,
}

impl<H: Handler> Drop for ClosedGuard<H> {
    fn drop(&mut self) {
        self.handler
            .connection(&self.caller, ConnectionEvent::Closed);
    }
}

#[cfg(test)]
mod tests;
