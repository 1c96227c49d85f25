//! Handing the listening sockets from a running agent to the next one, so that a
//! second agent (a DaemonSet rolling update with `maxSurge`, a manual second run)
//! never turns the credential path off and no pod connection is refused.
//!
//! The serving agent listens on an abstract Unix socket named after its bpffs pin
//! directory. A starting agent reads the serving agent's nonce from the pinned
//! `CONFIG` map, then loads the programs (writing its own random nonce there),
//! connects, and sends its nonce; the serving agent checks it against the map and
//! answers with its listening sockets (`SCM_RIGHTS`, only TCP listeners are
//! accepted) and its own nonce, which the new agent checks against the one it read.
//! Both sides prove they can read the agent's pins, so a process that merely took
//! the socket name gets nothing and gives nothing. The accept queue is the same
//! kernel object throughout, so nothing queued is lost. The serving agent releases
//! the name at once (the new one serves handovers next); it stops accepting when
//! the new agent confirms, which it does once it is ready, and then idles (not
//! ready) until terminated.
//!
//! Without a serving agent nothing answers, and the new agent binds the port
//! itself, as on a first start.

use std::{
    io::{IoSlice, IoSliceMut, Read, Write},
    mem::MaybeUninit,
    net::SocketAddr,
    os::{
        fd::{AsFd, OwnedFd},
        linux::net::SocketAddrExt,
        unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream},
    },
    path::Path,
    sync::Arc,
    time::Duration,
};

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tokio::sync::watch;

use crate::kernel::Kernel;

/// Listening sockets one agent has: the pods' endpoint and the IMDS front (IPv4,
/// and IPv6 when the node has it), the probes and the metrics; room to spare.
const MAX_LISTENERS: usize = 8;
/// How long either side waits for the other's request or sockets.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the serving agent keeps accepting while the new one starts up
/// (attaching, sources) before it must confirm; without a confirmation the
/// serving agent goes on alone.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(60);

/// Sockets taken over; [`TakenOver::confirm`] once this agent accepts on them,
/// which is when the old agent stops.
pub struct TakenOver {
    pub listeners: Vec<std::net::TcpListener>,
    ack: UnixStream,
}

impl TakenOver {
    /// Tell the old agent to stop accepting: this agent serves now.
    pub fn confirm(mut self) {
        if let Err(e) = self.ack.write_all(b"K") {
            tracing::warn!(error = %e, "could not confirm the handover; both agents accept until the old one exits");
        }
    }
}

/// A failed handover. The new agent then stops: binding the port itself would fail
/// while the old agent holds it.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("handover socket {name}: {source}")]
    Io {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the serving agent refused the handover (nonce not accepted)")]
    Refused,
    #[error("the peer on the handover socket is not the serving agent (wrong nonce)")]
    NotTheAgent,
    #[error("the serving agent passed something that is not a listening TCP socket")]
    NotAListener,
}

/// The abstract socket name for agents sharing `pin_dir`.
pub fn socket_name(pin_dir: &Path) -> String {
    format!("pod-identity-agent/handover{}", pin_dir.display())
}

fn io_err(name: &str) -> impl FnOnce(std::io::Error) -> HandoverError + '_ {
    move |source| HandoverError::Io {
        name: name.to_owned(),
        source,
    }
}

/// Ask a serving agent for its listening sockets. `Ok(None)`: no agent is serving.
/// `nonce` is the one this agent wrote into the pinned config map, `serving_nonce`
/// the one it found there before (the serving agent's); `expected` are the
/// addresses this agent would bind (a socket on any other is refused).
pub fn take_over(
    pin_dir: &Path,
    nonce: u64,
    serving_nonce: u64,
    expected: &[SocketAddr],
) -> Result<Option<TakenOver>, HandoverError> {
    let name = socket_name(pin_dir);
    let addr = UnixAddr::from_abstract_name(name.as_bytes()).map_err(io_err(&name))?;
    let mut stream = match UnixStream::connect_addr(&addr) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(None),
        Err(e) => return Err(io_err(&name)(e)),
    };
    stream
        .set_read_timeout(Some(EXCHANGE_TIMEOUT))
        .map_err(io_err(&name))?;
    stream
        .set_write_timeout(Some(EXCHANGE_TIMEOUT))
        .map_err(io_err(&name))?;
    stream
        .write_all(&nonce.to_le_bytes())
        .map_err(io_err(&name))?;

    let mut answer = [0u8; 9];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_LISTENERS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = recvmsg(
        stream.as_fd(),
        &mut [IoSliceMut::new(&mut answer)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|e| io_err(&name)(e.into()))?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = msg {
            fds.extend(rights);
        }
    }
    if got.bytes != answer.len() || answer[0] != b'H' || fds.is_empty() {
        return Err(HandoverError::Refused);
    }
    let mut theirs = [0u8; 8];
    theirs.copy_from_slice(&answer[1..]);
    if u64::from_le_bytes(theirs) != serving_nonce {
        return Err(HandoverError::NotTheAgent);
    }
    let mut listeners = Vec::new();
    for fd in fds {
        let listening = rustix::net::sockopt::socket_acceptconn(&fd).unwrap_or(false);
        let stream_type = rustix::net::sockopt::socket_type(&fd)
            .is_ok_and(|t| t == rustix::net::SocketType::STREAM);
        if !(listening && stream_type) {
            return Err(HandoverError::NotAListener);
        }
        let l = std::net::TcpListener::from(fd);
        let found = l.local_addr().map_err(io_err(&name))?;
        if !expected.contains(&found) {
            // A socket this agent would not bind (a port changed between
            // versions): closed here, the serving agent's copy closes with it.
            tracing::warn!(socket = %found, expected = ?expected, "not taking over a listener this agent does not serve");
            continue;
        }
        l.set_nonblocking(true).map_err(io_err(&name))?;
        listeners.push(l);
    }
    Ok(Some(TakenOver {
        listeners,
        ack: stream,
    }))
}

/// The serving side: answers one successful handover, then reports it.
pub struct HandoverServer {
    listener: UnixListener,
    name: String,
}

impl HandoverServer {
    /// Listen for a successor. Retries for a moment: the agent that handed its
    /// sockets to us releases the name just after.
    pub fn bind(pin_dir: &Path) -> Result<HandoverServer, HandoverError> {
        let name = socket_name(pin_dir);
        let addr = UnixAddr::from_abstract_name(name.as_bytes()).map_err(io_err(&name))?;
        let mut tries = 0;
        loop {
            match UnixListener::bind_addr(&addr) {
                Ok(listener) => return Ok(HandoverServer { listener, name }),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 40 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(io_err(&name)(e)),
            }
        }
    }

    /// Serve handover requests until one succeeds; then `handed_over` becomes true,
    /// and this agent's copies of the sockets are released. The name is released
    /// as soon as the sockets are sent, so the new agent can take it; the task
    /// then never ends (ending would read as a stopped task).
    pub async fn run(
        self,
        kernel: Arc<Kernel>,
        listeners: Vec<std::net::TcpListener>,
        handed_over: watch::Sender<bool>,
    ) {
        let name = self.name;
        let unix = match self
            .listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixListener::from_std(self.listener))
        {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(socket = %name, error = %e, "handover socket unusable");
                return std::future::pending().await;
            }
        };
        let listeners = Arc::new(listeners);
        let mut unix = Some(unix);
        loop {
            let Some(server) = unix.as_ref() else {
                return std::future::pending().await;
            };
            let stream = match server.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(socket = %name, error = %e, "handover accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (l, k) = (listeners.clone(), kernel.clone());
            // Bounded: every read and write has a timeout.
            let sent = tokio::task::spawn_blocking(move || {
                let stream = stream.into_std()?;
                stream.set_nonblocking(false)?;
                send_sockets(stream, &l, &k)
            })
            .await;
            let stream = match sent {
                Ok(Ok(Some(stream))) => stream,
                Ok(Ok(None)) => {
                    tracing::warn!(socket = %name, "handover refused: wrong nonce");
                    continue;
                }
                Ok(Err(e)) => {
                    tracing::warn!(socket = %name, error = %e, "handover request failed");
                    continue;
                }
                Err(e) => {
                    tracing::error!(socket = %name, error = %e, "handover task failed");
                    continue;
                }
            };
            // The new agent serves handovers from now on: free the name for it.
            drop(unix.take());
            let confirmed = tokio::task::spawn_blocking(move || wait_confirmed(stream))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(false);
            if confirmed {
                tracing::info!(socket = %name, "listening sockets handed to the next agent");
                let _ = handed_over.send(true);
                drop(listeners);
                return std::future::pending().await;
            }
            // The new agent went away before serving: keep serving, and offer the
            // sockets again if the name is still free.
            tracing::warn!(socket = %name, "the next agent did not confirm the handover; still serving");
            let pin_name = name.clone();
            unix = tokio::task::spawn_blocking(move || {
                UnixAddr::from_abstract_name(pin_name.as_bytes())
                    .and_then(|a| UnixListener::bind_addr(&a))
                    .and_then(|l| {
                        l.set_nonblocking(true)?;
                        tokio::net::UnixListener::from_std(l)
                    })
            })
            .await
            .ok()
            .and_then(Result::ok);
        }
    }
}

/// One request: the sockets and this agent's nonce when the peer knows the nonce
/// now in the pinned map (and is not us); `None` otherwise.
fn send_sockets(
    mut stream: UnixStream,
    listeners: &[std::net::TcpListener],
    kernel: &Kernel,
) -> std::io::Result<Option<UnixStream>> {
    stream.set_read_timeout(Some(EXCHANGE_TIMEOUT))?;
    stream.set_write_timeout(Some(EXCHANGE_TIMEOUT))?;
    let mut nonce = [0u8; 8];
    stream.read_exact(&mut nonce)?;
    let nonce = u64::from_le_bytes(nonce);
    let current = kernel
        .current_handover_nonce()
        .map_err(std::io::Error::other)?;
    if nonce != current || nonce == kernel.handover_nonce() {
        return Ok(None);
    }
    let fds: Vec<_> = listeners.iter().map(|l| l.as_fd()).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_LISTENERS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(std::io::Error::other("too many listeners for the handover"));
    }
    let mut answer = [0u8; 9];
    answer[0] = b'H';
    answer[1..].copy_from_slice(&kernel.handover_nonce().to_le_bytes());
    sendmsg(
        stream.as_fd(),
        &[IoSlice::new(&answer)],
        &mut control,
        SendFlags::empty(),
    )?;
    Ok(Some(stream))
}

/// Both accept on the sockets until the new agent confirms it is serving.
fn wait_confirmed(mut stream: UnixStream) -> std::io::Result<bool> {
    stream.set_read_timeout(Some(CONFIRM_TIMEOUT))?;
    let mut ack = [0u8; 1];
    stream.read_exact(&mut ack)?;
    Ok(ack[0] == b'K')
}
