//! How often a refused pod gets a Kubernetes Event: at most one new Event per
//! (pod, reason) per window; repeats inside the window are counted and, when the
//! window ends, folded into that Event as a series (`series.count`). Pure: time is
//! passed in, nothing is sent from here.
//!
//! * First refusal of a (pod, reason): [`Verdict::Create`] — post a new Event.
//! * Repeats inside the window: [`Verdict::Suppressed`] — counted only.
//! * Window over ([`EventLimiter::due`]): with repeats, one series update (the
//!   Event's total count so far), and a new window; without, the key is forgotten
//!   and the next refusal creates a new Event.
//! * At most `max_keys` (pod, reason) pairs are tracked; beyond that a refusal is
//!   [`Verdict::Full`] (dropped and counted by the caller), so a flood of distinct
//!   pods cannot grow the agent's memory.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// What to do with one refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Post a new Event.
    Create,
    /// Counted into the current Event's series.
    Suppressed,
    /// Too many (pod, reason) pairs tracked: dropped.
    Full,
}

/// A series update that is due: the Event `name` has been observed `count` times
/// in all, the last time at `last_seen`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeriesUpdate<K> {
    pub key: K,
    pub name: String,
    pub count: u32,
    pub last_seen: Instant,
}

#[derive(Debug)]
struct Entry {
    window_end: Instant,
    /// The Event's name once it has been created (None: not created, or the
    /// create failed; then there is nothing to update).
    name: Option<String>,
    /// Occurrences in the Event so far, the first included.
    count: u32,
    /// Occurrences not yet published.
    pending: u32,
    last_seen: Instant,
}

/// Per-key rate limiter for Events (see the module docs).
#[derive(Debug)]
pub struct EventLimiter<K> {
    window: Duration,
    max_keys: usize,
    entries: HashMap<K, Entry>,
}

impl<K: Hash + Eq + Clone> EventLimiter<K> {
    /// One Event per key per `window`; at most `max_keys` keys tracked.
    pub fn new(window: Duration, max_keys: usize) -> Self {
        Self {
            window,
            max_keys,
            entries: HashMap::new(),
        }
    }

    /// A refusal for `key` at `now`.
    pub fn observe(&mut self, key: &K, now: Instant) -> Verdict {
        if let Some(e) = self.entries.get_mut(key) {
            if now < e.window_end || e.pending > 0 {
                // Inside the window, or a repeat still waiting for `due`.
                e.count = e.count.saturating_add(1);
                e.pending = e.pending.saturating_add(1);
                e.last_seen = now;
                return Verdict::Suppressed;
            }
            // The window ended without repeats: a new Event.
            self.entries.remove(key);
        }
        if self.entries.len() >= self.max_keys {
            return Verdict::Full;
        }
        self.entries.insert(
            key.clone(),
            Entry {
                window_end: now + self.window,
                name: None,
                count: 1,
                pending: 0,
                last_seen: now,
            },
        );
        Verdict::Create
    }

    /// The Event for `key` was created under `name`.
    pub fn created(&mut self, key: &K, name: String) {
        if let Some(e) = self.entries.get_mut(key) {
            e.name = Some(name);
        }
    }

    /// Windows that ended by `now`: series updates for those with repeats (their
    /// window starts again), and the others forgotten.
    pub fn due(&mut self, now: Instant) -> Vec<SeriesUpdate<K>> {
        let mut updates = Vec::new();
        let window = self.window;
        self.entries.retain(|key, e| {
            if now < e.window_end {
                return true;
            }
            match (&e.name, e.pending) {
                (Some(name), pending) if pending > 0 => {
                    updates.push(SeriesUpdate {
                        key: key.clone(),
                        name: name.clone(),
                        count: e.count,
                        last_seen: e.last_seen,
                    });
                    e.pending = 0;
                    e.window_end = now + window;
                    true
                }
                _ => false,
            }
        });
        updates
    }

    /// (pod, reason) pairs tracked.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Nothing tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests;
