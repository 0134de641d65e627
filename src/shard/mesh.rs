//! The full mesh of rings between shards, and how a sleeping shard is woken.
//!
//! For `n` shards there are `n·(n-1)` rings, one per ordered pair, so every ring has exactly
//! one producer thread and one consumer thread. [`mesh`] hands each shard its
//! [`ShardLinks`]: the producing ends of the rings towards every other shard and the
//! consuming ends of the rings from them.
//!
//! Wake-ups: a shard with nothing to do parks its ring-draining task and marks its [`Inbox`]
//! as sleeping. A sender that pushes into a ring checks that mark and, only if it is set,
//! wakes the task through its `Waker`, which compio turns into an eventfd write that ends
//! the shard's `io_uring_enter`. Under load the receiver is awake and senders pay one
//! atomic load per message, not a syscall. The mark and the ring indices follow the
//! store → fence → load pattern on both sides, so a wake-up is never lost.

use std::future::poll_fn;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;

use futures_util::task::AtomicWaker;

use super::ring::{ring, Consumer, Producer};
use super::ShardId;

/// The wake-up point of one shard.
#[derive(Default)]
pub struct Inbox {
    waker: AtomicWaker,
    sleeping: AtomicBool,
    /// Something other than a ring message wants attention (room in a ring, shutdown).
    signaled: AtomicBool,
}

impl Inbox {
    /// Called by other threads after pushing to this shard's ring.
    fn wake_if_sleeping(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::SeqCst) {
            self.waker.wake();
        }
    }

    /// Wakes the shard for a reason other than a message.
    pub fn signal(&self) {
        self.signaled.store(true, Ordering::SeqCst);
        self.wake_if_sleeping();
    }
}

/// One shard's ends of the mesh.
pub struct ShardLinks<T> {
    id: ShardId,
    /// `outgoing[j]`: ring from this shard to shard `j` (`None` for itself).
    outgoing: Vec<Option<Producer<T>>>,
    /// `incoming[i]`: ring from shard `i` to this shard (`None` for itself).
    incoming: Vec<Option<Consumer<T>>>,
    inboxes: Arc<[Inbox]>,
}

/// Builds the rings for `shards` shards with `capacity` slots each; element `i` of the
/// result belongs to shard `i`.
pub fn mesh<T: Send>(shards: u16, capacity: usize) -> Vec<ShardLinks<T>> {
    let n = shards as usize;
    let inboxes: Arc<[Inbox]> = (0..n).map(|_| Inbox::default()).collect();
    let mut links: Vec<ShardLinks<T>> = (0..n)
        .map(|i| ShardLinks {
            id: i as ShardId,
            outgoing: (0..n).map(|_| None).collect(),
            incoming: (0..n).map(|_| None).collect(),
            inboxes: inboxes.clone(),
        })
        .collect();
    for from in 0..n {
        for to in 0..n {
            if from != to {
                let (p, c) = ring(capacity);
                links[from].outgoing[to] = Some(p);
                links[to].incoming[from] = Some(c);
            }
        }
    }
    links
}

impl<T> ShardLinks<T> {
    /// This shard's id.
    pub fn id(&self) -> ShardId {
        self.id
    }

    /// Number of shards in the mesh.
    pub fn shard_count(&self) -> u16 {
        self.inboxes.len() as u16
    }

    /// Pushes `msg` to shard `to` and wakes it if it sleeps. A full ring hands the message
    /// back: the caller keeps it in order behind the ring (the server's overflow queue)
    /// and tries again when the consumer signals that it made room.
    ///
    /// # Panics
    /// If `to` is this shard or out of range: a routing bug, not an input error.
    pub fn try_send(&mut self, to: ShardId, msg: T) -> Result<(), T> {
        let producer = self.outgoing[to as usize]
            .as_mut()
            .expect("no ring from a shard to itself");
        let msg = match producer.push(msg) {
            Ok(()) => {
                self.inboxes[to as usize].wake_if_sleeping();
                return Ok(());
            }
            Err(msg) => msg,
        };
        // Full: ask for a signal when there is room, then retry once in case the consumer
        // drained between our push and the request.
        producer.set_waiting();
        match producer.push(msg) {
            Ok(()) => {
                self.inboxes[to as usize].wake_if_sleeping();
                Ok(())
            }
            Err(msg) => Err(msg),
        }
    }

    /// Pops up to `budget` messages from the incoming rings, round-robin, passing each with
    /// its sender to `f`. Returns how many were handled. Senders that were blocked on a full
    /// ring are signalled.
    pub fn drain(&mut self, budget: usize, mut f: impl FnMut(ShardId, T)) -> usize {
        let mut handled = 0;
        loop {
            let mut progressed = false;
            for (from, consumer) in self.incoming.iter_mut().enumerate() {
                let Some(consumer) = consumer else { continue };
                if let Some(msg) = consumer.pop() {
                    f(from as ShardId, msg);
                    handled += 1;
                    progressed = true;
                    if consumer.take_producer_waiting() {
                        self.inboxes[from].signal();
                    }
                }
                if handled == budget {
                    return handled;
                }
            }
            if !progressed {
                return handled;
            }
        }
    }

    /// Wakes every shard (used at shutdown).
    pub fn signal_all(&self) {
        for inbox in self.inboxes.iter() {
            inbox.signal();
        }
    }

    /// A handle other threads use to wake every shard.
    pub fn remote(&self) -> MeshRemote {
        MeshRemote {
            inboxes: self.inboxes.clone(),
        }
    }

    /// A handle that can wait for this shard's inbox without borrowing the links.
    pub fn waiter(&self) -> InboxWaiter<T> {
        InboxWaiter {
            id: self.id,
            inboxes: self.inboxes.clone(),
            _marker: std::marker::PhantomData,
        }
    }

    /// Messages waiting in the incoming rings, and their slots, over all senders.
    pub fn incoming_occupancy(&self) -> (usize, usize) {
        self.incoming
            .iter()
            .flatten()
            .fold((0, 0), |(len, cap), c| (len + c.len(), cap + c.capacity()))
    }

    /// Whether any incoming ring holds a message.
    pub fn has_incoming(&self) -> bool {
        self.incoming.iter().flatten().any(|c| !c.is_empty())
    }
}

/// Wakes shards from any thread (shutdown).
#[derive(Clone)]
pub struct MeshRemote {
    inboxes: Arc<[Inbox]>,
}

impl MeshRemote {
    /// Signals every shard.
    pub fn signal_all(&self) {
        for inbox in self.inboxes.iter() {
            inbox.signal();
        }
    }
}

/// Waits until this shard has messages or a signal; see [`ShardLinks::waiter`].
pub struct InboxWaiter<T> {
    id: ShardId,
    inboxes: Arc<[Inbox]>,
    _marker: std::marker::PhantomData<fn() -> T>,
}

impl<T> InboxWaiter<T> {
    /// Resolves when a message may be waiting in `links` or someone signalled this shard.
    /// Returns whether a signal (rather than only a message) arrived.
    pub async fn wait(&self, links: &std::cell::RefCell<ShardLinks<T>>) -> bool {
        let inbox = &self.inboxes[self.id as usize];
        poll_fn(|cx| {
            if inbox.signaled.swap(false, Ordering::SeqCst) {
                return Poll::Ready(true);
            }
            inbox.waker.register(cx.waker());
            inbox.sleeping.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            let has = links.borrow().has_incoming();
            if has || inbox.signaled.load(Ordering::SeqCst) {
                inbox.sleeping.store(false, Ordering::SeqCst);
                return Poll::Ready(inbox.signaled.swap(false, Ordering::SeqCst));
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn messages_cross_threads_and_wake_the_receiver() {
        let mut links = mesh::<u64>(2, 8);
        let l1 = RefCell::new(links.pop().unwrap());
        let mut l0 = links.pop().unwrap();
        const N: u64 = 10_000;
        let receiver = std::thread::spawn(move || {
            compio::runtime::Runtime::new()
                .unwrap()
                .block_on(async move {
                    let waiter = l1.borrow().waiter();
                    let mut got = Vec::new();
                    while got.len() < N as usize {
                        l1.borrow_mut().drain(64, |from, v| {
                            assert_eq!(from, 0);
                            got.push(v);
                        });
                        if got.len() < N as usize {
                            waiter.wait(&l1).await;
                        }
                    }
                    got
                })
        });
        let sender_waiter = l0.waiter();
        let l0cell = RefCell::new(l0);
        compio::runtime::Runtime::new().unwrap().block_on(async {
            for i in 0..N {
                let mut v = i;
                loop {
                    let r = l0cell.borrow_mut().try_send(1, v);
                    match r {
                        Ok(()) => break,
                        // Full: the receiver signals us when it frees room.
                        Err(back) => {
                            v = back;
                            sender_waiter.wait(&l0cell).await;
                        }
                    }
                }
            }
        });
        l0 = l0cell.into_inner();
        let got = receiver.join().unwrap();
        assert_eq!(got, (0..N).collect::<Vec<_>>());
        assert_eq!(l0.id(), 0);
    }
}
