//! How many connections the credentials listener holds, in total and per caller.
//!
//! Connections are attributed at accept, so the per-caller count is by the kernel's
//! cgroup id: one pod holding many idle connections uses up its own share, never
//! the slots other pods need.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

/// Connection limits of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections served at once; more are closed as soon as they are accepted.
    pub total: usize,
    /// Connections one caller (cgroup) may hold at once.
    pub per_caller: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            total: 4096,
            per_caller: 128,
        }
    }
}

/// Counts open connections; a [`Slot`] is one of them, released on drop.
#[derive(Debug)]
pub struct ConnectionCounter {
    limits: ConnectionLimits,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    total: usize,
    by_caller: HashMap<u64, usize>,
}

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    /// The listener holds its total.
    Listener,
    /// This caller holds its share.
    Caller,
}

impl ConnectionCounter {
    pub fn new(limits: ConnectionLimits) -> Arc<Self> {
        Arc::new(ConnectionCounter {
            limits,
            state: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admit a connection of `caller` (`None`: not attributed, counted in the total
    /// only).
    pub fn admit(self: &Arc<Self>, caller: Option<u64>) -> Result<Slot, Full> {
        let mut s = self.lock();
        if s.total >= self.limits.total {
            return Err(Full::Listener);
        }
        if let Some(id) = caller {
            let n = s.by_caller.entry(id).or_default();
            if *n >= self.limits.per_caller {
                return Err(Full::Caller);
            }
            *n += 1;
        }
        s.total += 1;
        Ok(Slot {
            counter: self.clone(),
            caller,
        })
    }

    /// Connections open now (total, distinct callers).
    pub fn open(&self) -> (usize, usize) {
        let s = self.lock();
        (s.total, s.by_caller.len())
    }
}

/// One admitted connection.
#[derive(Debug)]
pub struct Slot {
    counter: Arc<ConnectionCounter>,
    caller: Option<u64>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.counter.lock();
        s.total -= 1;
        if let Some(id) = self.caller {
            if let Some(n) = s.by_caller.get_mut(&id) {
                *n -= 1;
                if *n == 0 {
                    s.by_caller.remove(&id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_caller_cannot_take_the_listener() {
        let c = ConnectionCounter::new(ConnectionLimits {
            total: 4,
            per_caller: 2,
        });
        let a1 = c.admit(Some(1)).unwrap();
        let _a2 = c.admit(Some(1)).unwrap();
        assert_eq!(c.admit(Some(1)).unwrap_err(), Full::Caller);
        let _b = c.admit(Some(2)).unwrap();
        let _u = c.admit(None).unwrap();
        assert_eq!(c.admit(Some(3)).unwrap_err(), Full::Listener);
        drop(a1);
        assert_eq!(c.open(), (3, 2));
        let _a3 = c.admit(Some(1)).unwrap();
        drop(_b);
        assert_eq!(c.open(), (3, 1), "callers with no connection are forgotten");
    }
}
