//! A bounded multi-producer, multi-consumer queue for the daemon's worker threads that never
//! spins: a worker with nothing to do sleeps on a condition variable at once, and a sender
//! wakes one sleeper.
//!
//! crossbeam's channels spin and then call `sched_yield` up to several times before they
//! block. Idle workers did that after every batch of work: during a cold sequential read the
//! two prefetchers made 10,000 `sched_yield` calls a second, 11 % of the daemon's CPU, and on a
//! machine with two CPUs every yield that finds another runnable thread is a context switch
//! taken from the threads doing the work.

use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::Arc;

struct Shared<T> {
    inner: Mutex<Inner<T>>,
    /// Signalled when an item arrives or the last sender goes.
    items: Condvar,
    /// Signalled when room appears or the last receiver goes.
    room: Condvar,
    cap: usize,
}

struct Inner<T> {
    queue: VecDeque<T>,
    senders: usize,
    receivers: usize,
}

/// Creates a queue that holds at most `cap` items (at least 1).
pub fn bounded<T>(cap: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            queue: VecDeque::new(),
            senders: 1,
            receivers: 1,
        }),
        items: Condvar::new(),
        room: Condvar::new(),
        cap: cap.max(1),
    });
    (Sender(shared.clone()), Receiver(shared))
}

pub struct Sender<T>(Arc<Shared<T>>);

pub struct Receiver<T>(Arc<Shared<T>>);

/// Why an item was not queued; the item comes back.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError<T> {
    /// The queue is full (only from `try_send`).
    Full(T),
    /// Every receiver is gone.
    Closed(T),
}

impl<T> Sender<T> {
    /// Queues `item`, waiting while the queue is full; fails once every receiver is gone.
    pub fn send(&self, item: T) -> Result<(), SendError<T>> {
        let s = &*self.0;
        let mut inner = s.inner.lock();
        loop {
            if inner.receivers == 0 {
                return Err(SendError::Closed(item));
            }
            if inner.queue.len() < s.cap {
                inner.queue.push_back(item);
                drop(inner);
                s.items.notify_one();
                return Ok(());
            }
            s.room.wait(&mut inner);
        }
    }

    /// Queues `item` if there is room now.
    pub fn try_send(&self, item: T) -> Result<(), SendError<T>> {
        let s = &*self.0;
        let mut inner = s.inner.lock();
        if inner.receivers == 0 {
            return Err(SendError::Closed(item));
        }
        if inner.queue.len() >= s.cap {
            return Err(SendError::Full(item));
        }
        inner.queue.push_back(item);
        drop(inner);
        s.items.notify_one();
        Ok(())
    }
}

impl<T> Sender<T> {
    /// Queues items from `items` while there is room, under one lock; returns how many.
    pub fn try_send_many(&self, items: impl IntoIterator<Item = T>) -> usize {
        let s = &*self.0;
        let mut inner = s.inner.lock();
        if inner.receivers == 0 {
            return 0;
        }
        let room = s.cap.saturating_sub(inner.queue.len());
        let before = inner.queue.len();
        inner.queue.extend(items.into_iter().take(room));
        let n = inner.queue.len() - before;
        drop(inner);
        match n {
            0 => {}
            1 => {
                s.items.notify_one();
            }
            _ => {
                s.items.notify_all();
            }
        }
        n
    }
}

impl<T> Receiver<T> {
    /// The next item, waiting for one; `None` once the queue is empty and every sender gone.
    pub fn recv(&self) -> Option<T> {
        let s = &*self.0;
        let mut inner = s.inner.lock();
        loop {
            if let Some(item) = inner.queue.pop_front() {
                drop(inner);
                s.room.notify_one();
                return Some(item);
            }
            if inner.senders == 0 {
                return None;
            }
            s.items.wait(&mut inner);
        }
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.0.inner.lock().senders += 1;
        Sender(self.0.clone())
    }
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        self.0.inner.lock().receivers += 1;
        Receiver(self.0.clone())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let last = {
            let mut inner = self.0.inner.lock();
            inner.senders -= 1;
            inner.senders == 0
        };
        if last {
            self.0.items.notify_all();
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let last = {
            let mut inner = self.0.inner.lock();
            inner.receivers -= 1;
            inner.receivers == 0
        };
        if last {
            self.0.room.notify_all();
        }
    }
}

impl<T> Iterator for Receiver<T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.recv()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn items_come_out_in_order_and_the_end_when_senders_go() {
        let (tx, rx) = bounded(4);
        let tx2 = tx.clone();
        tx.send(1).unwrap();
        tx2.try_send(2).unwrap();
        drop(tx);
        assert_eq!(rx.recv(), Some(1));
        drop(tx2);
        assert_eq!(rx.recv(), Some(2), "queued items outlive their senders");
        assert_eq!(rx.recv(), None);
    }

    #[test]
    fn a_full_queue_refuses_try_send_and_blocks_send_until_room() {
        let (tx, rx) = bounded(2);
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        assert_eq!(tx.try_send(3), Err(SendError::Full(3)));
        let t = std::thread::spawn(move || tx.send(3).map(|()| std::time::Instant::now()));
        std::thread::sleep(Duration::from_millis(100));
        let took = std::time::Instant::now();
        assert_eq!(rx.recv(), Some(1));
        let sent_at = t.join().unwrap().unwrap();
        assert!(sent_at >= took, "send returned before there was room");
        assert_eq!(rx.collect::<Vec<_>>(), vec![2, 3]);
    }

    #[test]
    fn try_send_many_queues_what_fits() {
        let (tx, rx) = bounded(3);
        tx.send(0).unwrap();
        assert_eq!(tx.try_send_many(1..10), 2);
        assert_eq!(tx.try_send_many(10..20), 0);
        drop(tx);
        assert_eq!(rx.collect::<Vec<_>>(), vec![0, 1, 2]);
        let (tx, rx) = bounded::<u8>(3);
        drop(rx);
        assert_eq!(tx.try_send_many([1, 2]), 0, "no receiver");
    }

    #[test]
    fn senders_learn_when_every_receiver_is_gone() {
        let (tx, rx) = bounded(1);
        tx.send(1).unwrap();
        let rx2 = rx.clone();
        drop(rx);
        tx.try_send(9).unwrap_err();
        drop(rx2);
        assert_eq!(tx.try_send(2), Err(SendError::Closed(2)));
        // A sender blocked on a full queue is released by the last receiver going.
        let (tx, rx) = bounded(1);
        tx.send(1).unwrap();
        let t = std::thread::spawn(move || tx.send(2));
        std::thread::sleep(Duration::from_millis(50));
        drop(rx);
        assert_eq!(t.join().unwrap(), Err(SendError::Closed(2)));
    }

    #[test]
    fn many_workers_each_item_exactly_once() {
        let (tx, rx) = bounded(8);
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let rx = rx.clone();
                std::thread::spawn(move || rx.collect::<Vec<u32>>())
            })
            .collect();
        drop(rx);
        let producers: Vec<_> = (0..3u32)
            .map(|p| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        tx.send(p * 10_000 + i).unwrap();
                    }
                })
            })
            .collect();
        drop(tx);
        for p in producers {
            p.join().unwrap();
        }
        let mut all: Vec<u32> = workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..30_000).collect::<Vec<_>>());
    }
}
