//! What `/healthz` and `/readyz` check: the truth about the serving path, cheaply
//! and within bounds, so that neither can kill or unready a working agent under
//! load (stock agent issue #26: a probe through the loaded path timed out and the
//! kubelet killed agents that were serving fine).
//!
//! * `/healthz` (liveness): the runtime's heartbeat is recent. A wedged runtime
//!   stops answering altogether; a busy one still beats.
//! * `/readyz` (readiness), each check bounded, the result kept for a second:
//!   1. the sources have synced (and the agent has not handed over, is not draining);
//!   2. every program is attached to the attach cgroup, as the kernel says
//!      (`BPF_PROG_QUERY`), not as the agent remembers;
//!   3. the maps answer;
//!   4. the credentials listener answers a request the agent makes to itself (an
//!      unattributed connection: its fixed 403 is served from a pool of its own,
//!      so pods' load does not delay it); two failures in a row are needed, so a
//!      single slow moment does not flap readiness.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest a `/readyz` result is reused.
const READY_CACHE: Duration = Duration::from_secs(1);
/// Budget of the listener self-check.
const SELF_CHECK_TIMEOUT: Duration = Duration::from_millis(800);
/// `/healthz` fails when the heartbeat is older than this.
const HEARTBEAT_STALE: Duration = Duration::from_secs(10);
const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);

/// The kernel side, as the probes see it (the [`Kernel`](crate::kernel::Kernel)
/// in production; fakes in tests).
pub trait KernelProbe: Send + Sync + 'static {
    /// Names of programs that are not attached.
    fn missing_programs(&self) -> Result<Vec<&'static str>, String>;
    /// Whether the maps answer.
    fn maps_reachable(&self) -> Result<(), String>;
}

impl KernelProbe for crate::kernel::Kernel {
    fn missing_programs(&self) -> Result<Vec<&'static str>, String> {
        crate::kernel::Kernel::missing_programs(self).map_err(|e| e.to_string())
    }
    fn maps_reachable(&self) -> Result<(), String> {
        crate::kernel::Kernel::maps_reachable(self).map_err(|e| e.to_string())
    }
}

/// Sources synced, not handed over, not draining: `None` when ready, else why not.
pub type SourcesCheck = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// The probes' checks.
pub struct Health {
    sources: SourcesCheck,
    kernel: Arc<dyn KernelProbe>,
    /// The credentials listener, for the self-check.
    listener: Option<SocketAddr>,
    heartbeat: Arc<AtomicU64>,
    epoch: Instant,
    self_failures: AtomicUsize,
    cache: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Health {
    /// Checks with a heartbeat task on the current runtime.
    pub fn new(
        sources: SourcesCheck,
        kernel: Arc<dyn KernelProbe>,
        listener: Option<SocketAddr>,
    ) -> Arc<Self> {
        let h = Arc::new(Health {
            sources,
            kernel,
            listener,
            heartbeat: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
            self_failures: AtomicUsize::new(0),
            cache: Mutex::new(None),
        });
        let (beat, epoch) = (h.heartbeat.clone(), h.epoch);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
            loop {
                tick.tick().await;
                beat.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
            }
        });
        h
    }

    /// `/healthz`.
    pub fn live(&self) -> Result<(), String> {
        let beat = Duration::from_millis(self.heartbeat.load(Ordering::Relaxed));
        let age = self.epoch.elapsed().saturating_sub(beat);
        if age > HEARTBEAT_STALE {
            return Err(format!("runtime heartbeat {age:?} old"));
        }
        Ok(())
    }

    /// `/readyz`.
    pub async fn ready(&self) -> Result<(), String> {
        if let Some((at, r)) = &*self.cache.lock().unwrap_or_else(|p| p.into_inner()) {
            if at.elapsed() < READY_CACHE {
                return r.clone();
            }
        }
        let r = self.check().await;
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), r.clone()));
        r
    }

    async fn check(&self) -> Result<(), String> {
        if let Some(why) = (self.sources)() {
            return Err(why);
        }
        let kernel = self.kernel.clone();
        let kernel_check = tokio::task::spawn_blocking(move || {
            let missing = kernel.missing_programs()?;
            if !missing.is_empty() {
                return Err(format!("programs not attached: {}", missing.join(", ")));
            }
            kernel.maps_reachable()
        });
        match tokio::time::timeout(Duration::from_secs(1), kernel_check).await {
            Ok(Ok(r)) => r?,
            Ok(Err(_)) => return Err("kernel check failed".into()),
            Err(_) => return Err("kernel check timed out".into()),
        }
        if let Some(addr) = self.listener {
            match self_check(addr).await {
                Ok(()) => self.self_failures.store(0, Ordering::Relaxed),
                Err(e) => {
                    if self.self_failures.fetch_add(1, Ordering::Relaxed) + 1 >= 2 {
                        return Err(format!("credentials listener {addr}: {e}"));
                    }
                }
            }
        }
        Ok(())
    }
}

/// A kernel whose programs are always attached (tests).
#[cfg(any(test, feature = "testing"))]
pub struct AttachedKernel;

#[cfg(any(test, feature = "testing"))]
impl KernelProbe for AttachedKernel {
    fn missing_programs(&self) -> Result<Vec<&'static str>, String> {
        Ok(Vec::new())
    }
    fn maps_reachable(&self) -> Result<(), String> {
        Ok(())
    }
}

#[cfg(any(test, feature = "testing"))]
impl Health {
    /// Ready whenever `sources` says so, with no kernel and no listener (tests).
    pub fn for_sources(sources: SourcesCheck) -> Arc<Self> {
        Health::new(sources, Arc::new(AttachedKernel), None)
    }
}

/// One request to the listener from the agent itself: any HTTP answer will do.
async fn self_check(addr: SocketAddr) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: self-check\r\nconnection: close\r\n\r\n")
            .await?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await?;
        Ok::<_, std::io::Error>(head)
    };
    match tokio::time::timeout(SELF_CHECK_TIMEOUT, attempt).await {
        Ok(Ok(head)) if head.starts_with(b"HTTP/1.1 ") => Ok(()),
        Ok(Ok(_)) => Err("not an HTTP answer".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {SELF_CHECK_TIMEOUT:?}")),
    }
}

#[cfg(test)]
mod tests;
