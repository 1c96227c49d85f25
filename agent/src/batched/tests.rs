use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::*;

#[derive(Default)]
struct Record {
    items: Vec<u32>,
    /// Items taken at each flush.
    flushes: Vec<usize>,
    since_flush: usize,
}

impl Consumer<u32> for Record {
    fn take(&mut self, item: u32) {
        self.items.push(item);
        self.since_flush += 1;
    }
    fn flush(&mut self) {
        self.flushes.push(self.since_flush);
        self.since_flush = 0;
    }
}

#[test]
fn every_item_in_order_and_a_flush_at_the_end() {
    let (tx, rx) = mpsc::sync_channel(1000);
    for i in 0..1000 {
        tx.send(i).unwrap();
    }
    drop(tx);
    let mut r = Record::default();
    drain(&rx, &mut r, 64);
    assert_eq!(r.items, (0..1000).collect::<Vec<_>>());
    // Batches of at most 64, every item flushed.
    assert!(r.flushes.iter().all(|&n| n <= 64), "{:?}", r.flushes);
    assert_eq!(r.flushes.iter().sum::<usize>(), 1000);
    assert_eq!(r.since_flush, 0);
}

#[test]
fn a_busy_consumer_takes_items_in_batches() {
    let (tx, rx) = mpsc::sync_channel(10_000);
    let consumer = std::thread::spawn(move || {
        let mut r = Record::default();
        drain(&rx, &mut r, 10_000);
        r
    });
    // 2,000 items over ~200 ms: many arrive during each nap.
    let start = Instant::now();
    for i in 0..2000 {
        tx.send(i).unwrap();
        if i % 20 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    drop(tx);
    let r = consumer.join().unwrap();
    assert_eq!(r.items.len(), 2000);
    let non_empty = r.flushes.iter().filter(|&&n| n > 0).count();
    assert!(
        non_empty < 1000,
        "{non_empty} flushes for 2,000 items in {:?}",
        start.elapsed()
    );
}

#[test]
fn an_idle_consumer_blocks_and_still_sees_the_next_item_at_once() {
    let (tx, rx) = mpsc::sync_channel(10);
    let (seen_tx, seen_rx) = mpsc::channel();
    struct Forward(mpsc::Sender<Instant>);
    impl Consumer<Instant> for Forward {
        fn take(&mut self, _sent: Instant) {
            self.0.send(Instant::now()).unwrap();
        }
        fn flush(&mut self) {}
    }
    let consumer = std::thread::spawn(move || drain(&rx, &mut Forward(seen_tx), 16));
    // Long past IDLE_NAPS: the consumer is blocked in recv.
    std::thread::sleep(NAP * (IDLE_NAPS + 10) + Duration::from_millis(50));
    let sent = Instant::now();
    tx.send(sent).unwrap();
    let seen = seen_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(seen >= sent);
    drop(tx);
    consumer.join().unwrap();
}
