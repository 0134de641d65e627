//! Wake-up primitives for tasks that live on one shard.
//!
//! A shard is a single thread running one compio runtime, so the tasks it hosts never race:
//! these primitives are `Rc` + `Cell`/`RefCell`, with no atomics and no locks. They must not
//! cross threads (they are `!Send` by construction); crossing shards is the job of
//! [`crate::shard::mesh`].

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// Creates a single-use channel between two tasks of the same shard.
pub fn oneshot<T>() -> (OneshotSender<T>, OneshotReceiver<T>) {
    let slot = Rc::new(OneshotSlot {
        value: RefCell::new(None),
        waker: RefCell::new(None),
        closed: Cell::new(false),
    });
    (
        OneshotSender { slot: slot.clone() },
        OneshotReceiver { slot },
    )
}

struct OneshotSlot<T> {
    value: RefCell<Option<T>>,
    waker: RefCell<Option<Waker>>,
    /// Set when the sender is gone, with or without a value.
    closed: Cell<bool>,
}

/// The sending half of [`oneshot`].
pub struct OneshotSender<T> {
    slot: Rc<OneshotSlot<T>>,
}

impl<T> OneshotSender<T> {
    /// Delivers `value`. If the receiver is gone the value is dropped.
    pub fn send(self, value: T) {
        *self.slot.value.borrow_mut() = Some(value);
        // Drop runs next and wakes the receiver.
    }
}

impl<T> Drop for OneshotSender<T> {
    fn drop(&mut self) {
        self.slot.closed.set(true);
        if let Some(waker) = self.slot.waker.borrow_mut().take() {
            waker.wake();
        }
    }
}

/// The receiving half of [`oneshot`]: resolves to the value, or to [`Canceled`] if the sender
/// was dropped without sending.
pub struct OneshotReceiver<T> {
    slot: Rc<OneshotSlot<T>>,
}

/// The sender of a [`oneshot`] went away without sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Canceled;

impl<T> Future for OneshotReceiver<T> {
    type Output = Result<T, Canceled>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(value) = self.slot.value.borrow_mut().take() {
            return Poll::Ready(Ok(value));
        }
        if self.slot.closed.get() {
            return Poll::Ready(Err(Canceled));
        }
        *self.slot.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Wakes every task waiting on it when [`Notify::notify_all`] is called: "the log grew", "a
/// ring has room". A waiter registered after a notification waits for the next one.
///
/// A [`Notified`] future that is dropped before it fired takes its waker out again, so the
/// waiters are only the futures alive now: a notify that fires once per process (shutdown)
/// or rarely (an idle partition's appends) does not collect a waker from every connection
/// or long-poll that ever waited on it.
#[derive(Default)]
pub struct Notify {
    generation: Cell<u64>,
    /// Waiting futures by key. A `BTreeMap` rather than a slab: removal by key is what a
    /// dropped future needs, and the set is small (the waiters alive now).
    waiters: RefCell<std::collections::BTreeMap<u64, Waker>>,
    next_key: Cell<u64>,
}

impl Notify {
    /// Creates a notifier with no waiters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wakes every current waiter.
    pub fn notify_all(&self) {
        self.generation.set(self.generation.get().wrapping_add(1));
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for waker in waiters.into_values() {
            waker.wake();
        }
    }

    /// A future that resolves at the next [`Notify::notify_all`] after this call.
    pub fn notified(&self) -> Notified<'_> {
        Notified {
            notify: self,
            generation: self.generation.get(),
            key: None,
        }
    }

    /// Futures registered and still waiting (for tests of the no-leak promise).
    pub fn waiter_count(&self) -> usize {
        self.waiters.borrow().len()
    }
}

/// A count of bytes that tasks take before holding that much memory and give back when
/// done: the shard's budget for buffered requests. Takers that have to wait are served in
/// the order they came, so a large take is never passed forever by smaller ones; it
/// completes once enough is free, because no caller asks for more than the whole budget.
///
/// Except the small: a take of at most `passing` bytes goes at once whenever it fits, ahead
/// of waiting larger ones. A large take that waits for bytes held by a slow holder (a client
/// trickling a frame it announced) then blocks only takes as large as itself, not the small
/// requests of every other client; it is delayed by small takes only while they hold all
/// but less than it needs.
pub struct Budget {
    available: Cell<usize>,
    passing: usize,
    /// Tickets of the takers waiting, oldest first.
    waiting: RefCell<VecDeque<u64>>,
    next_ticket: Cell<u64>,
    changed: Notify,
}

impl Budget {
    /// A budget of `total` bytes, every take served in order.
    pub fn new(total: usize) -> Self {
        Budget::with_passing(total, 0)
    }

    /// A budget of `total` bytes where takes of at most `passing` bytes that fit go ahead
    /// of waiting larger ones.
    pub fn with_passing(total: usize, passing: usize) -> Self {
        Budget {
            passing,
            available: Cell::new(total),
            waiting: RefCell::new(VecDeque::new()),
            next_ticket: Cell::new(0),
            changed: Notify::new(),
        }
    }

    /// Takes `n` bytes, waiting (behind earlier waiters) until that much is free.
    pub async fn take(&self, n: usize) {
        let passes = n <= self.passing;
        if (passes || self.waiting.borrow().is_empty()) && self.available.get() >= n {
            self.available.set(self.available.get() - n);
            return;
        }
        let ticket = self.next_ticket.get();
        self.next_ticket.set(ticket.wrapping_add(1));
        self.waiting.borrow_mut().push_back(ticket);
        // Leaves the queue if this take is dropped while it waits.
        let queued = Queued {
            budget: self,
            ticket,
        };
        loop {
            let first = self.waiting.borrow().front() == Some(&ticket);
            if (first || passes) && self.available.get() >= n {
                self.available.set(self.available.get() - n);
                self.waiting.borrow_mut().retain(|&t| t != ticket);
                std::mem::forget(queued);
                // The next waiter may fit too.
                self.changed.notify_all();
                return;
            }
            self.changed.notified().await;
        }
    }

    /// Gives back `n` bytes taken earlier.
    pub fn give(&self, n: usize) {
        self.available.set(self.available.get() + n);
        self.changed.notify_all();
    }

    /// Bytes free now.
    pub fn available(&self) -> usize {
        self.available.get()
    }
}

/// A waiting take's place in the queue.
struct Queued<'a> {
    budget: &'a Budget,
    ticket: u64,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.budget
            .waiting
            .borrow_mut()
            .retain(|&t| t != self.ticket);
        self.budget.changed.notify_all();
    }
}

/// Future returned by [`Notify::notified`].
pub struct Notified<'a> {
    notify: &'a Notify,
    generation: u64,
    /// This future's entry among the waiters, once polled.
    key: Option<u64>,
}

impl Future for Notified<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.generation.get() != self.generation {
            // `notify_all` took every waker, ours included.
            self.key = None;
            return Poll::Ready(());
        }
        let notify = self.notify;
        let mut waiters = notify.waiters.borrow_mut();
        match self.key {
            Some(key) => match waiters.get_mut(&key) {
                Some(existing) if existing.will_wake(cx.waker()) => {}
                Some(existing) => existing.clone_from(cx.waker()),
                None => {
                    waiters.insert(key, cx.waker().clone());
                }
            },
            None => {
                let key = notify.next_key.get();
                notify.next_key.set(key.wrapping_add(1));
                waiters.insert(key, cx.waker().clone());
                drop(waiters);
                self.key = Some(key);
            }
        }
        Poll::Pending
    }
}

impl Drop for Notified<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.notify.waiters.borrow_mut().remove(&key);
        }
    }
}

/// Values opened on first use, once: a partition's log, a group bucket's offsets log, a
/// partition's share-state log. The first task that asks for a key claims it and runs the
/// open; tasks asking meanwhile wait for that open and take its value. If the opening task
/// is dropped before it finishes (a request that timed out), its claim is withdrawn and a
/// waiter opens instead; if the open fails, the key stays absent and the next ask tries
/// again. A key removed while it is being opened stays removed: the opener gets its value,
/// the map does not keep it.
pub struct OnceMap<K, V> {
    slots: RefCell<HashMap<K, OnceSlot<V>>>,
}

enum OnceSlot<V> {
    Opening(Rc<Notify>),
    Ready(V),
}

impl<K: Eq + Hash + Clone, V: Clone> Default for OnceMap<K, V> {
    fn default() -> Self {
        OnceMap {
            slots: RefCell::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> OnceMap<K, V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of `key` if it is open.
    pub fn get(&self, key: &K) -> Option<V> {
        match self.slots.borrow().get(key) {
            Some(OnceSlot::Ready(v)) => Some(v.clone()),
            _ => None,
        }
    }

    /// The value of `key`, opened with `open` if no task has opened it yet.
    pub async fn get_or_open<E, F, Fut>(&self, key: &K, open: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        loop {
            let opening = match self.slots.borrow().get(key) {
                Some(OnceSlot::Ready(v)) => return Ok(v.clone()),
                Some(OnceSlot::Opening(n)) => Some(n.clone()),
                None => None,
            };
            match opening {
                // Registered before we look again, so the opener's notify is not missed.
                Some(notify) => {
                    let opened = notify.notified();
                    let still_opening = matches!(
                        self.slots.borrow().get(key),
                        Some(OnceSlot::Opening(n)) if Rc::ptr_eq(n, &notify)
                    );
                    if still_opening {
                        opened.await;
                    }
                }
                None => break,
            }
        }
        let notify = Rc::new(Notify::new());
        self.slots
            .borrow_mut()
            .insert(key.clone(), OnceSlot::Opening(notify.clone()));
        let claim = Claim {
            map: self,
            key,
            notify: &notify,
        };
        let result = open().await;
        std::mem::forget(claim);
        {
            let mut slots = self.slots.borrow_mut();
            let ours = matches!(
                slots.get(key),
                Some(OnceSlot::Opening(n)) if Rc::ptr_eq(n, &notify)
            );
            if ours {
                match &result {
                    Ok(v) => {
                        slots.insert(key.clone(), OnceSlot::Ready(v.clone()));
                    }
                    Err(_) => {
                        slots.remove(key);
                    }
                }
            }
        }
        notify.notify_all();
        result
    }

    /// Removes `key` (open or being opened) and returns its value if it was open.
    pub fn remove(&self, key: &K) -> Option<V> {
        let slot = self.slots.borrow_mut().remove(key);
        match slot {
            Some(OnceSlot::Ready(v)) => Some(v),
            Some(OnceSlot::Opening(n)) => {
                n.notify_all();
                None
            }
            None => None,
        }
    }

    /// Removes every key that `doomed` picks and returns the open values among them.
    pub fn remove_where(&self, doomed: impl Fn(&K) -> bool) -> Vec<V> {
        let keys: Vec<K> = self
            .slots
            .borrow()
            .keys()
            .filter(|k| doomed(k))
            .cloned()
            .collect();
        keys.iter().filter_map(|k| self.remove(k)).collect()
    }

    /// The open values whose key `pick` accepts.
    pub fn values_where(&self, pick: impl Fn(&K) -> bool) -> Vec<V> {
        self.slots
            .borrow()
            .iter()
            .filter_map(|(k, slot)| match slot {
                OnceSlot::Ready(v) if pick(k) => Some(v.clone()),
                _ => None,
            })
            .collect()
    }

    /// Every open key with its value.
    pub fn entries(&self) -> Vec<(K, V)> {
        self.slots
            .borrow()
            .iter()
            .filter_map(|(k, slot)| match slot {
                OnceSlot::Ready(v) => Some((k.clone(), v.clone())),
                OnceSlot::Opening(_) => None,
            })
            .collect()
    }

    /// Every open value.
    pub fn values(&self) -> Vec<V> {
        self.values_where(|_| true)
    }
}

/// An opener's claim on its key, withdrawn (and the waiters woken) if the opener is dropped.
struct Claim<'a, K: Eq + Hash + Clone, V: Clone> {
    map: &'a OnceMap<K, V>,
    key: &'a K,
    notify: &'a Rc<Notify>,
}

impl<K: Eq + Hash + Clone, V: Clone> Drop for Claim<'_, K, V> {
    fn drop(&mut self) {
        let mut slots = self.map.slots.borrow_mut();
        let ours = matches!(
            slots.get(self.key),
            Some(OnceSlot::Opening(n)) if Rc::ptr_eq(n, self.notify)
        );
        if ours {
            slots.remove(self.key);
        }
        drop(slots);
        self.notify.notify_all();
    }
}

/// Yields once to the shard's executor so other ready tasks run (a task that drains a
/// queue in budgets calls this between budgets).
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oneshot_delivers_and_cancels() {
        compio::runtime::Runtime::new().unwrap().block_on(async {
            let (tx, rx) = oneshot();
            compio::runtime::spawn(async move { tx.send(7u32) }).detach();
            assert_eq!(rx.await, Ok(7));

            let (tx, rx) = oneshot::<u32>();
            drop(tx);
            assert_eq!(rx.await, Err(Canceled));
        });
    }

    #[test]
    fn notify_wakes_waiters_registered_before_it() {
        compio::runtime::Runtime::new().unwrap().block_on(async {
            let notify = Rc::new(Notify::new());
            let woken = Rc::new(Cell::new(0));
            for _ in 0..3 {
                let (notify, woken) = (notify.clone(), woken.clone());
                compio::runtime::spawn(async move {
                    notify.notified().await;
                    woken.set(woken.get() + 1);
                })
                .detach();
            }
            // Let the three tasks register.
            compio::time::sleep(std::time::Duration::from_millis(5)).await;
            assert_eq!(woken.get(), 0);
            notify.notify_all();
            compio::time::sleep(std::time::Duration::from_millis(5)).await;
            assert_eq!(woken.get(), 3);
        });
    }

    #[test]
    fn dropped_waiters_leave_nothing_behind() {
        // A million waits that end another way (a timeout, a closed connection) must not
        // grow the notifier: each dropped future takes its waker out again.
        let notify = Notify::new();
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..1_000_000 {
            let mut waiting = Box::pin(notify.notified());
            assert!(waiting.as_mut().poll(&mut cx).is_pending());
            assert!(waiting.as_mut().poll(&mut cx).is_pending());
            assert_eq!(notify.waiter_count(), 1);
        }
        assert_eq!(notify.waiter_count(), 0);
        // A fired waiter is gone too, and a live one still fires.
        let mut waiting = Box::pin(notify.notified());
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        notify.notify_all();
        assert_eq!(notify.waiter_count(), 0);
        assert!(waiting.as_mut().poll(&mut cx).is_ready());
        drop(waiting);
        assert_eq!(notify.waiter_count(), 0);
    }

    #[test]
    fn once_map_opens_once_and_a_dropped_opener_hands_over() {
        compio::runtime::Runtime::new().unwrap().block_on(async {
            let map: Rc<OnceMap<u32, u32>> = Rc::new(OnceMap::new());
            let opens = Rc::new(Cell::new(0));
            let gate = Rc::new(Notify::new());
            let open = |map: Rc<OnceMap<u32, u32>>, opens: Rc<Cell<u32>>, gate: Rc<Notify>| async move {
                map.get_or_open(&1, || async {
                    opens.set(opens.get() + 1);
                    gate.notified().await;
                    Ok::<u32, ()>(opens.get() * 10)
                })
                .await
            };
            // The first opener is dropped while it opens; the waiter takes over.
            let first = compio::runtime::spawn(open(map.clone(), opens.clone(), gate.clone()));
            compio::time::sleep(std::time::Duration::from_millis(5)).await;
            let second = compio::runtime::spawn(open(map.clone(), opens.clone(), gate.clone()));
            let third = compio::runtime::spawn(open(map.clone(), opens.clone(), gate.clone()));
            compio::time::sleep(std::time::Duration::from_millis(5)).await;
            assert_eq!(opens.get(), 1);
            drop(first);
            compio::time::sleep(std::time::Duration::from_millis(5)).await;
            assert_eq!(opens.get(), 2, "a waiter opens once the first opener is gone");
            gate.notify_all();
            assert_eq!(second.await.unwrap(), Ok(20));
            assert_eq!(third.await.unwrap(), Ok(20));
            assert_eq!(map.get(&1), Some(20));
            assert_eq!(opens.get(), 2);
            // A failed open leaves the key absent for the next try.
            let failed: Result<u32, &str> = map.get_or_open(&2, || async { Err("no") }).await;
            assert_eq!(failed, Err("no"));
            assert_eq!(map.get(&2), None);
            assert_eq!(map.remove_where(|k| *k == 1), vec![20]);
            assert!(map.values().is_empty());
        });
    }

    #[test]
    fn budget_makes_takers_wait_for_what_others_give_back() {
        compio::runtime::Runtime::new().unwrap().block_on(async {
            let budget = Rc::new(Budget::new(10));
            budget.take(6).await;
            let done = Rc::new(Cell::new(false));
            let (b, d) = (budget.clone(), done.clone());
            compio::runtime::spawn(async move {
                b.take(8).await;
                d.set(true);
            })
            .detach();
            compio::time::sleep(std::time::Duration::from_millis(5)).await;
            assert!(!done.get(), "8 of the 4 left cannot be taken");
            budget.give(6);
            compio::time::sleep(std::time::Duration::from_millis(5)).await;
            assert!(done.get());
            assert_eq!(budget.available(), 2);
        });
    }

    #[test]
    fn budget_lets_a_small_take_pass_a_waiting_large_one() {
        compio::runtime::Runtime::new().unwrap().block_on(async {
            let budget = Rc::new(Budget::with_passing(10, 2));
            budget.take(6).await;
            let large = Rc::new(Cell::new(false));
            let (b, l) = (budget.clone(), large.clone());
            compio::runtime::spawn(async move {
                b.take(8).await;
                l.set(true);
            })
            .detach();
            compio::time::sleep(std::time::Duration::from_millis(5)).await;
            assert!(!large.get());
            // The 8 wait for the 6 held; a take of 2 goes meanwhile, one of 3 does not.
            budget.take(2).await;
            assert_eq!(budget.available(), 2);
            let medium = Rc::new(Cell::new(false));
            let (b, m) = (budget.clone(), medium.clone());
            compio::runtime::spawn(async move {
                b.take(3).await;
                m.set(true);
            })
            .detach();
            budget.give(6);
            budget.give(2);
            compio::time::sleep(std::time::Duration::from_millis(5)).await;
            assert!(large.get(), "the large take was first in line");
            assert!(!medium.get(), "2 left: the 3 wait");
            budget.give(8);
            compio::time::sleep(std::time::Duration::from_millis(5)).await;
            assert!(medium.get());
            assert_eq!(budget.available(), 7);
        });
    }

    #[test]
    fn budget_serves_waiters_in_order_and_forgets_a_dropped_one() {
        compio::runtime::Runtime::new().unwrap().block_on(async {
            let budget = Rc::new(Budget::new(10));
            budget.take(10).await;
            let order = Rc::new(RefCell::new(Vec::new()));
            // A dropped waiter first: it must not block the others.
            let dropped = compio::runtime::spawn({
                let budget = budget.clone();
                async move { budget.take(1).await }
            });
            for (name, n) in [("large", 8usize), ("small", 1)] {
                let (budget, order) = (budget.clone(), order.clone());
                compio::runtime::spawn(async move {
                    budget.take(n).await;
                    order.borrow_mut().push(name);
                })
                .detach();
            }
            compio::time::sleep(std::time::Duration::from_millis(5)).await;
            drop(dropped);
            // 2 free: the small take would fit, but the large one came first.
            budget.give(2);
            compio::time::sleep(std::time::Duration::from_millis(5)).await;
            assert!(order.borrow().is_empty());
            budget.give(8);
            compio::time::sleep(std::time::Duration::from_millis(5)).await;
            assert_eq!(*order.borrow(), vec!["large", "small"]);
            assert_eq!(budget.available(), 1);
        });
    }
}
