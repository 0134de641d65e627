//! Typed calls between shards.
//!
//! Work for a partition (or group, or topic) another shard owns is a value of a type that
//! implements [`ShardCall`]: the call says what runs on the owner and what it answers, so a
//! caller of [`Rpc::call`] gets exactly `C::Reply` back and cannot be handed another
//! operation's answer. A call to this shard runs inline, without boxing; a call to another
//! shard is boxed into an [`Envelope`], pushed into the ring to the owner, run there as its
//! own task, and its reply comes back through the ring the other way.
//!
//! Cancellation is part of every call: a caller whose future is dropped before the answer
//! (a long-poll whose client went away, a produce past its timeout) sends the owner a
//! cancel, and the owner drops the running call at its next wait, so nothing keeps waiting
//! for a caller that is gone.
//!
//! Several calls to one shard from one request travel as one envelope: a `Vec<C>` is itself
//! a call, whose reply is the vector of replies (see [`Rpc::call_grouped`]).
//!
//! The module is generic over the shard's state `S`, so it imports nothing of the services
//! that implement calls.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use futures_util::future::{join_all, select, Either};

use crate::local::{oneshot, OneshotReceiver, OneshotSender};
use crate::shard::mesh::{InboxWaiter, ShardLinks};
use crate::shard::ShardId;

/// The state of a shard that runs calls: it knows its own [`Rpc`], through which a call
/// running on it answers.
pub(crate) trait MeshShard: Sized + 'static {
    /// This shard's side of the mesh.
    fn rpc(&self) -> &Rpc<Self>;
}

/// An operation one shard runs for another.
pub(crate) trait ShardCall<S>: Send + 'static {
    /// What the owner answers.
    type Reply: Send + 'static;

    /// Runs on the owning shard.
    fn run(self, shard: Rc<S>) -> impl Future<Output = Self::Reply>;
}

/// Calls to one shard gathered into one envelope; the replies keep the calls' order.
impl<S: 'static, C: ShardCall<S>> ShardCall<S> for Vec<C> {
    type Reply = Vec<C::Reply>;

    async fn run(self, shard: Rc<S>) -> Vec<C::Reply> {
        join_all(self.into_iter().map(|call| call.run(shard.clone()))).await
    }
}

/// The owner of a call went away without answering (its shard is stopping). Reaches a
/// client as an internal error, with a log line on the caller's shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lost;

type BoxedReply = Box<dyn Any + Send>;
type LocalBoxFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// A call with its type erased, so calls of every type share the rings.
trait ErasedCall<S>: Send {
    fn run(self: Box<Self>, shard: Rc<S>) -> LocalBoxFuture<BoxedReply>;
}

impl<S: 'static, C: ShardCall<S>> ErasedCall<S> for C {
    fn run(self: Box<Self>, shard: Rc<S>) -> LocalBoxFuture<BoxedReply> {
        Box::pin(async move { Box::new((*self).run(shard).await) as BoxedReply })
    }
}

/// What travels in the rings.
pub(crate) struct Envelope<S>(Message<S>);

enum Message<S> {
    /// Run `call` and answer with the same token.
    Call {
        token: u64,
        call: Box<dyn ErasedCall<S>>,
    },
    /// The answer to an earlier call of ours.
    Reply { token: u64, reply: BoxedReply },
    /// The caller of `token` is gone: stop working on it.
    Cancel { token: u64 },
}

/// One shard's side of the mesh: its rings, the calls it awaits answers for and the calls
/// it runs for others.
pub(crate) struct Rpc<S> {
    id: ShardId,
    links: RefCell<ShardLinks<Envelope<S>>>,
    waiter: InboxWaiter<Envelope<S>>,
    /// Envelopes for shard `j` that found its ring full, oldest first. Sending goes through
    /// here whenever it is non-empty, so messages to one shard keep their order (a produce
    /// pipelined behind a blocked one cannot overtake it). Its size is bounded by the
    /// connections' in-flight limits: a connection with that many unanswered requests is not
    /// read.
    overflow: RefCell<Vec<VecDeque<Envelope<S>>>>,
    /// Our calls awaiting an answer, by token.
    pending: RefCell<HashMap<u64, OneshotSender<BoxedReply>>>,
    next_token: Cell<u64>,
    /// Calls running here for other shards, by (caller, token): dropping the sender cancels
    /// the call.
    running: RefCell<HashMap<(ShardId, u64), OneshotSender<()>>>,
}

impl<S: MeshShard> Rpc<S> {
    pub(crate) fn new(links: ShardLinks<Envelope<S>>) -> Rpc<S> {
        let shards = links.shard_count();
        Rpc {
            id: links.id(),
            waiter: links.waiter(),
            links: RefCell::new(links),
            overflow: RefCell::new((0..shards).map(|_| VecDeque::new()).collect()),
            pending: RefCell::new(HashMap::new()),
            next_token: Cell::new(0),
            running: RefCell::new(HashMap::new()),
        }
    }

    /// Runs `call` on shard `owner`: inline if that is this shard, else through the rings.
    pub(crate) async fn call<C: ShardCall<S>>(
        &self,
        shard: &Rc<S>,
        owner: ShardId,
        call: C,
    ) -> Result<C::Reply, Lost> {
        if owner == self.id {
            return Ok(call.run(shard.clone()).await);
        }
        let (token, rx) = self.send_call(owner, Box::new(call));
        let waiting = Waiting {
            rpc: self,
            owner,
            token,
            answered: false,
        };
        let reply = rx.await;
        waiting.answered();
        // (A closure: `Box::downcast` is ambiguous between the `Any` and `Any + Send` impls.)
        #[allow(clippy::redundant_closure_for_method_calls)]
        let reply = reply.map(|r| r.downcast::<C::Reply>());
        match reply {
            Ok(Ok(reply)) => Ok(*reply),
            Ok(Err(_)) => {
                // Cannot happen: the token names the call whose reply this is.
                tracing::error!(shard = self.id, owner, "a reply of the wrong type");
                Err(Lost)
            }
            Err(_) => Err(Lost),
        }
    }

    /// Runs calls on their owners, one envelope per owner, and returns the replies in the
    /// order of `calls`.
    pub(crate) async fn call_grouped<C: ShardCall<S>>(
        &self,
        shard: &Rc<S>,
        calls: Vec<(ShardId, C)>,
    ) -> Vec<Result<C::Reply, Lost>> {
        let mut by_owner: Vec<(ShardId, Vec<usize>, Vec<C>)> = Vec::new();
        let count = calls.len();
        for (i, (owner, call)) in calls.into_iter().enumerate() {
            match by_owner.iter_mut().find(|(o, _, _)| *o == owner) {
                Some((_, index, group)) => {
                    index.push(i);
                    group.push(call);
                }
                None => by_owner.push((owner, vec![i], vec![call])),
            }
        }
        let (owners, groups): (Vec<_>, Vec<_>) = by_owner
            .into_iter()
            .map(|(owner, index, group)| ((owner, index), group))
            .unzip();
        let replies = join_all(
            owners
                .iter()
                .zip(groups)
                .map(|((owner, _), group)| self.call(shard, *owner, group)),
        )
        .await;
        let mut out: Vec<Option<Result<C::Reply, Lost>>> = (0..count).map(|_| None).collect();
        for ((_, index), reply) in owners.into_iter().zip(replies) {
            match reply {
                Ok(replies) => {
                    for (i, r) in index.into_iter().zip(replies) {
                        out[i] = Some(Ok(r));
                    }
                }
                Err(Lost) => {
                    for i in index {
                        out[i] = Some(Err(Lost));
                    }
                }
            }
        }
        out.into_iter().map(|r| r.unwrap_or(Err(Lost))).collect()
    }

    fn send_call(
        &self,
        owner: ShardId,
        call: Box<dyn ErasedCall<S>>,
    ) -> (u64, OneshotReceiver<BoxedReply>) {
        let token = self.next_token.get();
        self.next_token.set(token.wrapping_add(1));
        let (tx, rx) = oneshot();
        self.pending.borrow_mut().insert(token, tx);
        self.send(owner, Envelope(Message::Call { token, call }));
        (token, rx)
    }

    /// Pushes into the ring to `to`, or behind the envelopes already waiting for room in it.
    fn send(&self, to: ShardId, envelope: Envelope<S>) {
        let mut overflow = self.overflow.borrow_mut();
        let queue = &mut overflow[to as usize];
        if !queue.is_empty() {
            queue.push_back(envelope);
        } else if let Err(back) = self.links.borrow_mut().try_send(to, envelope) {
            queue.push_back(back);
        }
    }

    /// Moves waiting envelopes into rings that have room again, in order.
    pub(crate) fn flush_overflow(&self) {
        let mut overflow = self.overflow.borrow_mut();
        let mut links = self.links.borrow_mut();
        for (to, queue) in overflow.iter_mut().enumerate() {
            while let Some(envelope) = queue.pop_front() {
                if let Err(back) = links.try_send(to as ShardId, envelope) {
                    // Still full: the consumer signals us when it frees room.
                    queue.push_front(back);
                    break;
                }
            }
        }
    }

    /// Takes up to `budget` envelopes from the incoming rings: answers complete our calls,
    /// calls from others start as tasks of this shard. Returns how many were taken.
    pub(crate) fn drain(&self, shard: &Rc<S>, budget: usize) -> usize {
        // Handling an envelope never sends one (a started call runs as its own task), so
        // the rings stay borrowed while each is handled.
        self.links
            .borrow_mut()
            .drain(budget, |from, Envelope(message)| match message {
                Message::Reply { token, reply } => {
                    if let Some(tx) = self.pending.borrow_mut().remove(&token) {
                        tx.send(reply);
                    }
                }
                Message::Cancel { token } => {
                    // Dropping the sender ends the call's task at its next wait.
                    self.running.borrow_mut().remove(&(from, token));
                }
                Message::Call { token, call } => self.start(shard, from, token, call),
            })
    }

    fn start(&self, shard: &Rc<S>, from: ShardId, token: u64, call: Box<dyn ErasedCall<S>>) {
        let (cancel, canceled) = oneshot::<()>();
        self.running.borrow_mut().insert((from, token), cancel);
        let work = call.run(shard.clone());
        let shard = shard.clone();
        compio::runtime::spawn(async move {
            let reply = match select(work, canceled).await {
                Either::Left((reply, _)) => Some(reply),
                // The caller is gone: nobody waits for an answer.
                Either::Right(_) => None,
            };
            let rpc = shard.rpc();
            rpc.running.borrow_mut().remove(&(from, token));
            if let Some(reply) = reply {
                rpc.send(from, Envelope(Message::Reply { token, reply }));
            }
        })
        .detach();
    }

    /// Calls waiting in the rings towards this shard, and their slots.
    pub(crate) fn ring_occupancy(&self) -> (usize, usize) {
        self.links.borrow().incoming_occupancy()
    }

    /// Wakes every shard (to start shutdown or to report quiescence).
    pub(crate) fn signal_all(&self) {
        self.links.borrow().signal_all();
    }

    /// Sleeps until an incoming ring has something (or a signal came).
    pub(crate) async fn wait(&self) {
        self.waiter.wait(&self.links).await;
    }
}

/// A call sent and not yet answered: if the caller drops it, the owner is told to stop.
struct Waiting<'a, S: MeshShard> {
    rpc: &'a Rpc<S>,
    owner: ShardId,
    token: u64,
    answered: bool,
}

impl<S: MeshShard> Waiting<'_, S> {
    fn answered(mut self) {
        self.answered = true;
    }
}

impl<S: MeshShard> Drop for Waiting<'_, S> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        if self.rpc.pending.borrow_mut().remove(&self.token).is_some() {
            self.rpc
                .send(self.owner, Envelope(Message::Cancel { token: self.token }));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::shard::mesh::mesh;

    struct TestShard {
        rpc: Rpc<TestShard>,
        /// Park calls running on this shard now.
        parked: Arc<AtomicUsize>,
    }

    impl MeshShard for TestShard {
        fn rpc(&self) -> &Rpc<TestShard> {
            &self.rpc
        }
    }

    struct Double(u32);

    impl ShardCall<TestShard> for Double {
        type Reply = u32;

        async fn run(self, _: Rc<TestShard>) -> u32 {
            self.0 * 2
        }
    }

    /// Waits forever, counted in `parked` while it runs.
    struct Park;

    struct Counted(Arc<AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl ShardCall<TestShard> for Park {
        type Reply = ();

        async fn run(self, shard: Rc<TestShard>) {
            shard.parked.fetch_add(1, Ordering::SeqCst);
            let _counted = Counted(shard.parked.clone());
            std::future::pending::<()>().await;
        }
    }

    /// The mesh loop of a test shard, until `stop`.
    async fn serve(shard: Rc<TestShard>, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::SeqCst) {
            shard.rpc.drain(&shard, 256);
            shard.rpc.flush_overflow();
            let wait = shard.rpc.wait();
            let tick = compio::time::sleep(Duration::from_millis(10));
            futures_util::pin_mut!(wait, tick);
            let _ = select(wait, tick).await;
        }
    }

    async fn wait_until(what: &str, check: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            compio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[test]
    fn calls_get_their_own_replies_and_a_dropped_caller_cancels_the_owner() {
        let mut links = mesh::<Envelope<TestShard>>(2, 4).into_iter();
        let (links0, links1) = (links.next().unwrap(), links.next().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let parked = Arc::new(AtomicUsize::new(0));
        let owner = {
            let (stop, parked) = (stop.clone(), parked.clone());
            std::thread::spawn(move || {
                compio::runtime::Runtime::new()
                    .unwrap()
                    .block_on(async move {
                        let shard = Rc::new(TestShard {
                            rpc: Rpc::new(links1),
                            parked,
                        });
                        serve(shard, stop).await;
                    });
            })
        };
        compio::runtime::Runtime::new().unwrap().block_on(async {
            let shard = Rc::new(TestShard {
                rpc: Rpc::new(links0),
                parked: Arc::new(AtomicUsize::new(0)),
            });
            let serving = compio::runtime::spawn(serve(shard.clone(), stop.clone()));

            // Across the ring and inline, each call gets its own type of reply.
            assert_eq!(shard.rpc.call(&shard, 1, Double(21)).await, Ok(42));
            assert_eq!(shard.rpc.call(&shard, 0, Double(4)).await, Ok(8));
            // More calls than the ring has slots, grouped per owner, replies in call order.
            let calls: Vec<(ShardId, Double)> =
                (0..20).map(|i| ((i % 2) as ShardId, Double(i))).collect();
            let replies = shard.rpc.call_grouped(&shard, calls).await;
            let expected: Vec<Result<u32, Lost>> = (0..20).map(|i| Ok(i * 2)).collect();
            assert_eq!(replies, expected);

            // A caller that goes away stops the owner's work on its behalf.
            for _ in 0..3 {
                let caller = {
                    let shard = shard.clone();
                    compio::runtime::spawn(async move { shard.rpc.call(&shard, 1, Park).await })
                };
                wait_until("the owner runs the call", || {
                    parked.load(Ordering::SeqCst) == 1
                })
                .await;
                drop(caller);
                wait_until("the owner dropped the call", || {
                    parked.load(Ordering::SeqCst) == 0
                })
                .await;
            }
            assert!(shard.rpc.pending.borrow().is_empty());
            stop.store(true, Ordering::SeqCst);
            shard.rpc.signal_all();
            let _ = serving.await;
        });
        owner.join().unwrap();
    }
}
