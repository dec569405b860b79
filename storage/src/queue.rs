//! The bounded mailbox shared by hash workers, disk writers and readers:
//! a lock-free `ArrayQueue` plus parking.
//!
//! Why not a channel: the queue must be bounded, consumers are OS threads
//! that should sleep when idle, and a busy consumer must not be woken per
//! job. Each consumer has a `sleeping` flag; a producer unparks a consumer
//! only if it finds one asleep (one atomic load per consumer when all are
//! busy, no syscall). The flag and the queue are checked in opposite order by
//! the two sides with SeqCst fences between, so a job pushed while a consumer
//! is falling asleep is always seen by one of them (Dekker-style).
//!
//! Producers that must wait for room (the blocking `push`) sleep on a
//! condition variable that consumers signal only when someone waits.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};
use std::sync::{Condvar, Mutex, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;

/// Why a job was not queued; the job comes back.
#[derive(Debug)]
pub enum SubmitError<T> {
    /// The queue is at capacity; try again after a completion.
    Full(T),
    /// The worker threads are shut down.
    Closed(T),
}

impl<T> SubmitError<T> {
    /// The job that was not queued.
    pub fn into_inner(self) -> T {
        match self {
            SubmitError::Full(t) | SubmitError::Closed(t) => t,
        }
    }
}

struct Sleeper {
    sleeping: AtomicBool,
    thread: OnceLock<Thread>,
}

pub(crate) struct WorkQueue<T> {
    queue: ArrayQueue<T>,
    sleepers: Box<[Sleeper]>,
    closed: AtomicBool,
    waiting_producers: AtomicUsize,
    room: Mutex<()>,
    room_cv: Condvar,
}

impl<T> WorkQueue<T> {
    /// A queue of `capacity` jobs for `consumers` threads.
    pub fn new(capacity: usize, consumers: usize) -> Self {
        WorkQueue {
            queue: ArrayQueue::new(capacity.max(1)),
            sleepers: (0..consumers.max(1))
                .map(|_| Sleeper {
                    sleeping: AtomicBool::new(false),
                    thread: OnceLock::new(),
                })
                .collect(),
            closed: AtomicBool::new(false),
            waiting_producers: AtomicUsize::new(0),
            room: Mutex::new(()),
            room_cv: Condvar::new(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.queue.capacity()
    }

    /// Jobs waiting (a racy snapshot, for metrics).
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether consumer `idx` is parked (or about to park) with nothing to
    /// do: a racy snapshot, for choosing who does a job, never for
    /// correctness.
    pub fn consumer_parked(&self, idx: usize) -> bool {
        self.sleepers[idx].sleeping.load(Ordering::SeqCst)
            && self.queue.is_empty()
            && !self.closed.load(Ordering::SeqCst)
    }

    /// Called once by consumer `idx` on its own thread before it pops.
    pub fn register(&self, idx: usize) {
        let _ = self.sleepers[idx].thread.set(std::thread::current());
    }

    /// Queues without waiting.
    pub fn try_push(&self, item: T) -> Result<(), SubmitError<T>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(SubmitError::Closed(item));
        }
        self.queue.push(item).map_err(SubmitError::Full)?;
        fence(Ordering::SeqCst);
        self.wake_one();
        Ok(())
    }

    fn wake_one(&self) {
        for s in self.sleepers.iter() {
            if s.sleeping.load(Ordering::Relaxed)
                && s.sleeping
                    .compare_exchange(true, false, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
            {
                if let Some(t) = s.thread.get() {
                    t.unpark();
                }
                return;
            }
        }
    }

    /// Queues, waiting for room if the queue is full. Fails only when closed.
    pub fn push(&self, mut item: T) -> Result<(), T> {
        loop {
            match self.try_push(item) {
                Ok(()) => return Ok(()),
                Err(SubmitError::Closed(t)) => return Err(t),
                Err(SubmitError::Full(t)) => item = t,
            }
            self.waiting_producers.fetch_add(1, Ordering::SeqCst);
            let guard = self.room.lock().unwrap_or_else(|e| e.into_inner());
            // Re-check under the lock: a consumer that popped before we
            // registered as waiting did not signal.
            if self.queue.is_full() && !self.closed.load(Ordering::SeqCst) {
                // The timeout is a belt-and-braces bound, not the mechanism.
                let _ = self
                    .room_cv
                    .wait_timeout(guard, Duration::from_millis(50))
                    .unwrap_or_else(|e| e.into_inner());
            } else {
                drop(guard);
            }
            self.waiting_producers.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn after_pop(&self) {
        fence(Ordering::SeqCst);
        if self.waiting_producers.load(Ordering::SeqCst) > 0 {
            let _g = self.room.lock().unwrap_or_else(|e| e.into_inner());
            self.room_cv.notify_all();
        }
    }

    /// Takes a job without waiting (used to drain a batch after a wake-up).
    pub fn pop(&self) -> Option<T> {
        let r = self.queue.pop();
        if r.is_some() {
            self.after_pop();
        }
        r
    }

    /// Takes a job, parking consumer `idx` while the queue is empty.
    /// Returns `None` once the queue is closed and drained.
    pub fn pop_or_park(&self, idx: usize) -> Option<T> {
        let me = &self.sleepers[idx];
        loop {
            if let Some(x) = self.pop() {
                return Some(x);
            }
            if self.closed.load(Ordering::SeqCst) {
                return self.pop();
            }
            me.sleeping.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if !self.queue.is_empty() || self.closed.load(Ordering::SeqCst) {
                me.sleeping.store(false, Ordering::Relaxed);
                continue;
            }
            std::thread::park();
            me.sleeping.store(false, Ordering::Relaxed);
        }
    }

    /// Refuses new jobs and wakes every consumer so it can drain and exit.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        for s in self.sleepers.iter() {
            if let Some(t) = s.thread.get() {
                t.unpark();
            }
        }
        let _g = self.room.lock().unwrap_or_else(|e| e.into_inner());
        self.room_cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn many_producers_two_consumers_nothing_lost() {
        let q = Arc::new(WorkQueue::<u64>::new(4, 2));
        let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let consumers: Vec<_> = (0..2)
            .map(|i| {
                let q = q.clone();
                let total = total.clone();
                std::thread::spawn(move || {
                    q.register(i);
                    while let Some(x) = q.pop_or_park(i) {
                        total.fetch_add(x, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let producers: Vec<_> = (0..3)
            .map(|_| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for x in 1..=10_000u64 {
                        q.push(x).unwrap();
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        q.close();
        for c in consumers {
            c.join().unwrap();
        }
        assert_eq!(total.load(Ordering::Relaxed), 3 * 10_000 * 10_001 / 2);
        assert!(matches!(q.try_push(1), Err(SubmitError::Closed(1))));
    }
}
