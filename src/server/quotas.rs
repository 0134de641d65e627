//! Client quotas on the request path: each shard meters the requests it serves against
//! the broker's quotas (`storage::QuotaStore`, the model in `auth::quota`) and holds back a
//! client that went over.
//!
//! - **Per shard.** Rates are kept by the shard that serves the connection, in a
//!   `RefCell` only its thread touches: no lock, no atomic on the request path. A client
//!   whose connections land on several shards gets its quota on each of them.
//! - **What is counted.** Produce: the bytes of the request's record batches. Fetch: the
//!   bytes of the record batches in the response. Request time: how long the shard's
//!   thread spent running the request's handler (the time it was polled, not the time it
//!   waited for a disk, another shard or a long poll), as a percentage of one shard's time.
//! - **How a client is held back.** A request over a quota is answered at once, with
//!   `throttle_time_ms` where its Kafka response has the field; the client's next requests
//!   on this shard wait, unserved, until that time has passed (a timer on the request's own
//!   task: other connections and other clients go on). The hold starts as soon as the
//!   bytes are counted, before the request waits for its disk write, so requests the
//!   client pipelined behind it wait too. A Kafka client that honours the
//!   throttle time (KIP-219) waits by itself and never meets the hold; one that does not is
//!   slowed to its quota all the same. Nobody is disconnected.
//! - **Nothing to meter, nothing spent.** With no quota set, a request costs one atomic
//!   load of the quota set and an emptiness test.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::auth::quota::{QuotaKey, Quotas, Rate, RateWindow};
use crate::local::Notify;
use crate::storage::QuotaStore;

/// Whose traffic one rate counts: a quota key and the user and client id it is counted
/// for (empty when the matched entity does not name that part).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct MeterId {
    key: QuotaKey,
    user: String,
    client_id: String,
}

/// One shard's rates and holds.
pub(crate) struct QuotaMeters {
    window: RateWindow,
    rates: RefCell<HashMap<MeterId, Rate>>,
    /// (user, client id) → when the client may be served again on this shard.
    holds: RefCell<HashMap<(String, String), Instant>>,
    /// When idle rates and past holds are next dropped (so the maps are bounded by the
    /// clients seen within one window, not by every client id ever sent).
    next_sweep: Cell<Instant>,
}

impl QuotaMeters {
    pub(crate) fn new(window: RateWindow) -> QuotaMeters {
        QuotaMeters {
            window,
            rates: RefCell::new(HashMap::new()),
            holds: RefCell::new(HashMap::new()),
            next_sweep: Cell::new(Instant::now() + window.max_throttle()),
        }
    }

    fn held_until(&self, user: &str, client_id: &str) -> Option<Instant> {
        let holds = self.holds.borrow();
        // Few holds at a time: no allocation for the lookup's key on the common path.
        if holds.is_empty() {
            return None;
        }
        holds
            .get(&(user.to_string(), client_id.to_string()))
            .copied()
    }

    fn hold(&self, user: &str, client_id: &str, until: Instant) {
        let mut holds = self.holds.borrow_mut();
        let at = holds
            .entry((user.to_string(), client_id.to_string()))
            .or_insert(until);
        *at = (*at).max(until);
    }

    /// Records `value` of `key` for the client and returns how long it must wait for that
    /// rate to be back under its limit (zero without a limit).
    fn record(
        &self,
        quotas: &Quotas,
        user: &str,
        client_id: &str,
        key: QuotaKey,
        value: f64,
        now: Instant,
    ) -> Duration {
        let Some(limit) = quotas.limit(user, client_id, key) else {
            return Duration::ZERO;
        };
        let id = MeterId {
            key,
            user: if limit.per_user { user } else { "" }.to_string(),
            client_id: if limit.per_client_id { client_id } else { "" }.to_string(),
        };
        self.sweep(now);
        let mut rates = self.rates.borrow_mut();
        let rate = rates.entry(id).or_default();
        rate.record(now, value, self.window);
        rate.throttle(now, limit.value, self.window)
    }

    fn sweep(&self, now: Instant) {
        if now < self.next_sweep.get() {
            return;
        }
        self.next_sweep.set(now + self.window.max_throttle());
        self.rates
            .borrow_mut()
            .retain(|_, rate| !rate.is_idle(now, self.window));
        self.holds.borrow_mut().retain(|_, until| *until > now);
    }
}

/// One request's metering: made by [`admit`] when some quota is set.
pub(crate) struct Metering {
    quotas: Arc<Quotas>,
    user: String,
    client_id: String,
    /// Time the shard spent polling the request's handler in earlier polls
    /// ([`Metering::timed`]), and when the current poll started.
    busy: Cell<Duration>,
    poll_started: Cell<Option<Instant>>,
    /// The longest throttle a byte rate asked for.
    byte_throttle: Cell<Duration>,
}

/// Starts metering a request of `user` with `client_id`: `None` when no quota is set.
/// Waits first while the client is held back on this shard (or until `shutdown`).
pub(crate) async fn admit(
    meters: &QuotaMeters,
    store: &QuotaStore,
    shutdown: &Notify,
    user: &str,
    client_id: &str,
) -> Option<Metering> {
    let quotas = store.if_any()?;
    // Again after each wait: a request that went first may have extended the hold.
    while let Some(until) = meters.held_until(user, client_id) {
        let now = Instant::now();
        if until <= now {
            break;
        }
        let sleep = compio::time::sleep(until - now);
        futures_util::pin_mut!(sleep);
        let stop = shutdown.notified();
        futures_util::pin_mut!(stop);
        if let futures_util::future::Either::Right(_) =
            futures_util::future::select(sleep, stop).await
        {
            break;
        }
    }
    Some(Metering {
        quotas,
        user: user.to_string(),
        client_id: client_id.to_string(),
        busy: Cell::new(Duration::ZERO),
        poll_started: Cell::new(None),
        byte_throttle: Cell::new(Duration::ZERO),
    })
}

impl Metering {
    /// Runs `work`, adding the time spent polling it to the request's time.
    pub(crate) async fn timed<F: Future>(&self, work: F) -> F::Output {
        futures_util::pin_mut!(work);
        poll_fn(|cx| {
            let started = Instant::now();
            self.poll_started.set(Some(started));
            let out = work.as_mut().poll(cx);
            self.poll_started.set(None);
            self.busy.set(self.busy.get() + started.elapsed());
            match out {
                Poll::Ready(v) => Poll::Ready(v),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    fn bytes(&self, meters: &QuotaMeters, key: QuotaKey, bytes: u64) {
        if bytes == 0 {
            return;
        }
        #[allow(clippy::cast_precision_loss)] // byte counts far below 2^52
        let throttle = meters.record(
            &self.quotas,
            &self.user,
            &self.client_id,
            key,
            bytes as f64,
            Instant::now(),
        );
        self.byte_throttle
            .set(self.byte_throttle.get().max(throttle));
        if !throttle.is_zero() {
            // Held from now, not from the end of the request: requests the client pipelined
            // behind this one wait (they are admitted in arrival order, each before its
            // first wait, so the next one sees this hold).
            meters.hold(&self.user, &self.client_id, Instant::now() + throttle);
        }
    }

    /// Counts produced record-batch bytes.
    pub(crate) fn produced(&self, meters: &QuotaMeters, bytes: u64) {
        self.bytes(meters, QuotaKey::ProducerByteRate, bytes);
    }

    /// Counts fetched record-batch bytes.
    pub(crate) fn fetched(&self, meters: &QuotaMeters, bytes: u64) {
        self.bytes(meters, QuotaKey::ConsumerByteRate, bytes);
    }

    /// Counts the request's time and returns its throttle time in milliseconds (the
    /// longest any of its quotas asks for); the client's next requests on this shard wait
    /// that long.
    pub(crate) fn finish(&self, meters: &QuotaMeters) -> i32 {
        let now = Instant::now();
        // `finish` runs inside the handler: the poll under way counts up to now.
        let current = self
            .poll_started
            .get()
            .map_or(Duration::ZERO, |s| now.duration_since(s));
        let percent = (self.busy.get() + current).as_secs_f64() * 100.0;
        let request = meters.record(
            &self.quotas,
            &self.user,
            &self.client_id,
            QuotaKey::RequestPercentage,
            percent,
            now,
        );
        let throttle = request.max(self.byte_throttle.get());
        if throttle.is_zero() {
            return 0;
        }
        meters.hold(&self.user, &self.client_id, now + throttle);
        crate::metrics::shard::quota_throttled(throttle);
        tracing::debug!(
            user = %self.user,
            client_id = %self.client_id,
            throttle_ms = throttle.as_millis(),
            "client over its quota: held back"
        );
        i32::try_from(throttle.as_millis()).unwrap_or(i32::MAX)
    }
}
