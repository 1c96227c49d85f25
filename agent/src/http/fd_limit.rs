//! The agent's file-descriptor limit (`RLIMIT_NOFILE`) against what its listeners
//! may hold.
//!
//! Every connection a listener holds is a descriptor. Container runtimes commonly
//! start processes with a soft limit of 1024 (containerd 2, systemd's default)
//! under a much higher hard one: below a single listener's own bound
//! ([`ConnectionLimits::total`](super::conn_limit::ConnectionLimits)). A few pods
//! holding their share of idle connections would then run the agent out of
//! descriptors, and `accept` would fail for every pod until theirs time out. Go
//! programs (the stock agent among them) raise the soft limit to the hard one at
//! start; so does this agent, and it says when even the hard limit is short.

use super::conn_limit::ConnectionLimits;

/// Descriptors the agent needs besides its listeners' connections: the eBPF maps,
/// programs and links, the runtime, the audit log, upstream connections.
pub const RESERVE: u64 = 256;

/// A process's `RLIMIT_NOFILE` (`None`: unlimited).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nofile {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// Why the limit could not be raised.
#[derive(Debug, thiserror::Error)]
#[error("raising the soft RLIMIT_NOFILE from {from:?} to {to:?}")]
pub struct FdLimitError {
    from: Option<u64>,
    to: Option<u64>,
    #[source]
    source: std::io::Error,
}

/// Descriptors `listeners` pods' listeners (credentials and IMDS front), each
/// bounded by `limits` plus its pool refusing unattributed connections, and
/// `probe_listeners` probe listeners may hold at once, plus [`RESERVE`].
pub fn needed(limits: ConnectionLimits, listeners: usize, probe_listeners: usize) -> u64 {
    let per_listener = limits.total + super::listener::MAX_REFUSING;
    (listeners * per_listener + probe_listeners * super::probes::MAX_PROBE_CONNECTIONS) as u64
        + RESERVE
}

/// The soft limit to ask for: the hard one (never lower than the soft one).
pub fn raised(now: Nofile) -> Option<u64> {
    match (now.soft, now.hard) {
        (None, _) => None,
        (Some(s), Some(h)) => Some(s.max(h)),
        (Some(_), None) => None,
    }
}

/// Whether `limit` covers `needed` descriptors.
pub fn covers(limit: Option<u64>, needed: u64) -> bool {
    limit.is_none_or(|l| l >= needed)
}

/// Raise this process's soft `RLIMIT_NOFILE` to its hard limit; the limits after.
pub fn raise() -> Result<Nofile, FdLimitError> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let now = getrlimit(Resource::Nofile);
    let now = Nofile {
        soft: now.current,
        hard: now.maximum,
    };
    let to = raised(now);
    if to == now.soft {
        return Ok(now);
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: to,
            maximum: now.hard,
        },
    )
    .map_err(|e| FdLimitError {
        from: now.soft,
        to,
        source: e.into(),
    })?;
    Ok(Nofile {
        soft: to,
        hard: now.hard,
    })
}

#[cfg(test)]
mod tests;
