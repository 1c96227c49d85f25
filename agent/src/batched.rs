//! A consumer thread that takes what producers queue in batches, without the
//! producers waking it for each item.
//!
//! A blocking `recv` makes every `send` into an idle consumer a futex wake-up and
//! a context switch: on a loaded node that was most of an access line's cost. So
//! while items keep coming the consumer naps [`NAP`] between drains (a `send` to
//! a napping consumer wakes no one), and only after [`IDLE_NAPS`] empty naps does
//! it block. Busy: one wake-up per nap, whatever the rate. Idle: none.

use std::{
    sync::mpsc::{Receiver, TryRecvError},
    time::Duration,
};

/// How long the consumer naps between drains while items keep coming: also the
/// most an item waits when the consumer is busy.
pub const NAP: Duration = Duration::from_millis(1);
/// Empty naps in a row after which the consumer blocks until the next item.
pub const IDLE_NAPS: u32 = 20;

/// What a batched consumer does with its items.
pub trait Consumer<M> {
    /// One item.
    fn take(&mut self, item: M);
    /// The queue ran dry (or `max_batch` items were taken): write out.
    fn flush(&mut self);
}

/// Run `consumer` over `rx` until every sender is gone, then flush a last time.
pub fn drain<M>(rx: &Receiver<M>, consumer: &mut impl Consumer<M>, max_batch: usize) {
    let mut idle = IDLE_NAPS;
    loop {
        let mut taken = 0usize;
        loop {
            let item = if idle >= IDLE_NAPS && taken == 0 {
                // Quiet for a while: block until something comes.
                match rx.recv() {
                    Ok(item) => item,
                    Err(_) => return consumer.flush(),
                }
            } else {
                match rx.try_recv() {
                    Ok(item) => item,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return consumer.flush(),
                }
            };
            consumer.take(item);
            taken += 1;
            if taken >= max_batch.max(1) {
                consumer.flush();
                taken = 0;
            }
            idle = 0;
        }
        if taken > 0 {
            consumer.flush();
        }
        idle = idle.saturating_add(1);
        std::thread::sleep(NAP);
    }
}

#[cfg(test)]
mod tests;
