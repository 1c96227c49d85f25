//! Bounds on what callers can make the audit log write.
//!
//! The agent port is reachable from the node's network, and a pod chooses its
//! paths, `Host` headers and process names: left alone, anyone could rotate the
//! real records out of the log in seconds. So:
//!
//! * every string field of a record is cut to [`MAX_FIELD_BYTES`] (the method to
//!   [`MAX_METHOD_BYTES`]), with a marker naming the original length;
//! * records other than `credentials-served` are flood-controlled per source (the
//!   caller's cgroup, else the peer address, IPv6 by /64): in each
//!   [`SUMMARY_INTERVAL`] the first [`RECORDS_PER_SOURCE`] of one kind (action and
//!   reason) are written, at most [`RECORDS_PER_INTERVAL`] from all sources
//!   together; the rest are counted, and one `records-summarised` record per
//!   source and kind says how many there were. At most [`MAX_SOURCES`] sources
//!   are told apart per interval; beyond that they share one summary.

use std::{
    collections::HashMap,
    fmt::Write as _,
    net::IpAddr,
    time::{Duration, Instant, SystemTime},
};

use serde_json::Value;

/// Longest string field written (bytes, before the truncation marker).
pub const MAX_FIELD_BYTES: usize = 1024;
/// Longest HTTP method written.
pub const MAX_METHOD_BYTES: usize = 32;
/// Longest refusal reason told apart by the flood control.
const MAX_REASON_KEY_BYTES: usize = 64;

/// Interval of the flood control: per source and kind, the first records of an
/// interval are written, the rest counted into one `records-summarised` record.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);
/// Records of one kind written one by one per source and interval.
pub const RECORDS_PER_SOURCE: u32 = 10;
/// Flood-controlled records written one by one per interval, all sources together.
pub const RECORDS_PER_INTERVAL: u32 = 500;
/// Sources told apart per interval; beyond this, new sources share one summary.
pub const MAX_SOURCES: usize = 256;

/// Cut `s` to at most `max` bytes (at a character boundary) followed by
/// `…[truncated, N bytes]`, N the original length. Returns whether it was cut.
/// A string already cut (to `max` or less) is left as it is.
pub fn cap_string(s: &mut String, max: usize) -> bool {
    match capped(s, max) {
        std::borrow::Cow::Borrowed(_) => false,
        std::borrow::Cow::Owned(cut) => {
            *s = cut;
            true
        }
    }
}

/// [`cap_string`] without copying what needs no cut.
pub fn capped(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max || is_capped(s, max) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = String::with_capacity(cut + 32);
    out.push_str(&s[..cut]);
    let _ = write!(out, "{TRUNCATED}{} bytes]", s.len());
    std::borrow::Cow::Owned(out)
}

const TRUNCATED: &str = "…[truncated, ";

/// Whether `s` is the output of a cut to `max` bytes or less.
fn is_capped(s: &str, max: usize) -> bool {
    let Some(at) = s.rfind(TRUNCATED) else {
        return false;
    };
    let tail = &s[at + TRUNCATED.len()..];
    at <= max
        && tail
            .strip_suffix(" bytes]")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// [`cap_string`] on every string in `v`; returns how many were cut.
pub fn cap_strings(v: &mut Value, max: usize) -> u64 {
    match v {
        Value::String(s) => u64::from(cap_string(s, max)),
        Value::Array(items) => items.iter_mut().map(|i| cap_strings(i, max)).sum(),
        Value::Object(map) => map.values_mut().map(|i| cap_strings(i, max)).sum(),
        _ => 0,
    }
}

/// Whom a flood-controlled record is charged to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// An attributed caller: its cgroup.
    Cgroup(u64),
    /// An unattributed peer: its IPv4 address, or its IPv6 /64 (one host can use
    /// every address of its prefix).
    Peer(IpAddr),
    /// Sources beyond [`MAX_SOURCES`] in one interval, or records naming none.
    Many,
}

impl Source {
    /// The source of a record from `peer`.
    pub fn peer(peer: IpAddr) -> Source {
        match peer.to_canonical() {
            IpAddr::V6(v6) => {
                let mut o = v6.octets();
                o[8..].fill(0);
                Source::Peer(IpAddr::from(o))
            }
            v4 => Source::Peer(v4),
        }
    }

    /// How the summary names the source.
    pub fn describe(&self) -> String {
        match self {
            Source::Cgroup(id) => format!("cgroup {id}"),
            Source::Peer(ip @ IpAddr::V6(_)) => format!("peer {ip}/64"),
            Source::Peer(ip) => format!("peer {ip}"),
            Source::Many => "many sources".to_owned(),
        }
    }

    /// `pod_identity.summary.source`: `cgroup`, `peer` or `many`.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Cgroup(_) => "cgroup",
            Source::Peer(_) => "peer",
            Source::Many => "many",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    source: Source,
    action: &'static str,
    reason: String,
}

struct Tally {
    written: u32,
    suppressed: u64,
    first: SystemTime,
    last: SystemTime,
    /// Identifying fields of the first record not written (pod, peer, cgroup).
    context: Value,
}

/// Records of one source and kind that were counted instead of written.
#[derive(Debug)]
pub struct Summary {
    pub source: Source,
    pub action: &'static str,
    pub reason: String,
    pub count: u64,
    pub first: SystemTime,
    pub last: SystemTime,
    pub context: Value,
}

/// Per-source flood control over one interval at a time.
pub struct FloodControl {
    started: Instant,
    written: u32,
    tallies: HashMap<Key, Tally>,
}

impl FloodControl {
    pub fn new(now: Instant) -> Self {
        FloodControl {
            started: now,
            written: 0,
            tallies: HashMap::new(),
        }
    }

    /// If the interval is over, start a new one and return the summaries of the
    /// one that ended (sources that had records counted rather than written).
    pub fn roll(&mut self, now: Instant) -> Vec<Summary> {
        if now.saturating_duration_since(self.started) < SUMMARY_INTERVAL {
            return Vec::new();
        }
        self.started = now;
        self.written = 0;
        self.tallies
            .drain()
            .filter(|(_, t)| t.suppressed > 0)
            .map(|(k, t)| Summary {
                source: k.source,
                action: k.action,
                reason: k.reason,
                count: t.suppressed,
                first: t.first,
                last: t.last,
                context: t.context,
            })
            .collect()
    }

    /// Whether to write a record of `action` and `reason` from `source` now;
    /// if not, it is counted, and `context` (called for the first record counted
    /// of its source and kind) gives the fields its summary will show.
    pub fn admit(
        &mut self,
        source: Source,
        action: &'static str,
        reason: &str,
        now: SystemTime,
        context: impl FnOnce() -> Value,
    ) -> bool {
        let mut reason = reason.to_owned();
        cap_string(&mut reason, MAX_REASON_KEY_BYTES);
        let mut key = Key {
            source,
            action,
            reason,
        };
        if self.tallies.len() >= MAX_SOURCES && !self.tallies.contains_key(&key) {
            key.source = Source::Many;
        }
        let tally = self.tallies.entry(key).or_insert_with(|| Tally {
            written: 0,
            suppressed: 0,
            first: now,
            last: now,
            context: Value::Null,
        });
        if tally.written < RECORDS_PER_SOURCE && self.written < RECORDS_PER_INTERVAL {
            tally.written += 1;
            self.written += 1;
            return true;
        }
        if tally.suppressed == 0 {
            tally.first = now;
            tally.context = context();
            cap_strings(&mut tally.context, MAX_FIELD_BYTES);
        }
        tally.suppressed += 1;
        tally.last = now;
        false
    }
}

#[cfg(test)]
mod tests;
