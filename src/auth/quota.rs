//! Client quotas in Kafka's model, free of I/O: which limits an entity (a user, a client
//! id, or both, each possibly `<default>`) has, which entity's limit applies to a request
//! ([`Quotas::limit`]), and how far over its limit a client is ([`Rate`]).
//!
//! A limit is found per key, by the most specific entity that sets that key, in this order
//! (Kafka's): user and client id, user and default client id, user, default user and
//! client id, default user and default client id, default user, client id, default client
//! id. The entity that matched also says whose traffic is counted together: a limit set on
//! `user=alice` is shared by all of alice's client ids, one on `user=alice,client-id=etl`
//! by that pair only, one on the default user by each user on its own.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// The name `<default>` stands for in the CLI and in listings.
pub const DEFAULT_NAME: &str = "<default>";

/// One part of an entity: a named user or client id, or the default one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntityName {
    /// That user or client id only.
    Named(String),
    /// Every user or client id without a more specific entity.
    Default,
}

impl EntityName {
    /// `Some(name)`, or `None` for the default (Kafka's null entity name).
    pub fn as_named(&self) -> Option<&str> {
        match self {
            EntityName::Named(n) => Some(n),
            EntityName::Default => None,
        }
    }

    fn matches(&self, actual: &str) -> bool {
        match self {
            EntityName::Named(n) => n == actual,
            EntityName::Default => true,
        }
    }
}

impl fmt::Display for EntityName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntityName::Named(n) => f.write_str(n),
            EntityName::Default => f.write_str(DEFAULT_NAME),
        }
    }
}

/// What a quota applies to: a user, a client id, or a user's client id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QuotaEntity {
    /// The user part (`None`: any user, the entity names a client id only).
    pub user: Option<EntityName>,
    /// The client-id part (`None`: any client id).
    pub client_id: Option<EntityName>,
}

/// Kafka's entity type name of the user part.
pub const USER: &str = "user";
/// Kafka's entity type name of the client-id part.
pub const CLIENT_ID: &str = "client-id";

impl QuotaEntity {
    /// Builds an entity from its parts, as Kafka's APIs send them: (type, name), a null
    /// name meaning the default. Each type at most once, at least one of them.
    pub fn from_parts<'a>(
        parts: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
    ) -> Result<QuotaEntity, String> {
        let mut entity = QuotaEntity {
            user: None,
            client_id: None,
        };
        for (kind, name) in parts {
            let name = match name {
                Some(n) => EntityName::Named(n.to_string()),
                None => EntityName::Default,
            };
            let slot = match kind {
                USER => &mut entity.user,
                CLIENT_ID => &mut entity.client_id,
                other => {
                    return Err(format!(
                        "unknown or unsupported quota entity type `{other}` (use `{USER}` or `{CLIENT_ID}`)"
                    ))
                }
            };
            if slot.replace(name).is_some() {
                return Err(format!("the entity type `{kind}` is given twice"));
            }
        }
        entity.validate()?;
        Ok(entity)
    }

    /// The entity's parts as (type, name), the user first; `None`: the default.
    pub fn parts(&self) -> Vec<(&'static str, Option<&str>)> {
        let mut out = Vec::with_capacity(2);
        if let Some(u) = &self.user {
            out.push((USER, u.as_named()));
        }
        if let Some(c) = &self.client_id {
            out.push((CLIENT_ID, c.as_named()));
        }
        out
    }

    /// Whether the broker accepts the entity: at least one part, no empty user name.
    pub fn validate(&self) -> Result<(), String> {
        if self.user.is_none() && self.client_id.is_none() {
            return Err("a quota entity names a user, a client id, or both".into());
        }
        if self.user == Some(EntityName::Named(String::new())) {
            return Err("a quota's user name must not be empty".into());
        }
        Ok(())
    }

    /// How specific the entity is for a request of `user` with `client_id`: 0 is the most
    /// specific (Kafka's order, see the module doc); `None` if it does not match.
    fn rank(&self, user: &str, client_id: &str) -> Option<u8> {
        use EntityName::{Default, Named};
        let matches = self.user.as_ref().is_none_or(|u| u.matches(user))
            && self.client_id.as_ref().is_none_or(|c| c.matches(client_id));
        if !matches {
            return None;
        }
        Some(match (&self.user, &self.client_id) {
            (Some(Named(_)), Some(Named(_))) => 0,
            (Some(Named(_)), Some(Default)) => 1,
            (Some(Named(_)), None) => 2,
            (Some(Default), Some(Named(_))) => 3,
            (Some(Default), Some(Default)) => 4,
            (Some(Default), None) => 5,
            (None, Some(Named(_))) => 6,
            (None, Some(Default)) => 7,
            (None, None) => return None,
        })
    }
}

impl fmt::Display for QuotaEntity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .parts()
            .into_iter()
            .map(|(kind, name)| format!("{kind}={}", name.unwrap_or(DEFAULT_NAME)))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// The limits a quota entity may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QuotaKey {
    /// Bytes of record batches produced per second.
    ProducerByteRate,
    /// Bytes of record batches fetched per second.
    ConsumerByteRate,
    /// Percent of one shard's time spent serving the client's requests (100: a whole core).
    RequestPercentage,
}

impl QuotaKey {
    /// Every key.
    pub const ALL: [QuotaKey; 3] = [
        QuotaKey::ProducerByteRate,
        QuotaKey::ConsumerByteRate,
        QuotaKey::RequestPercentage,
    ];

    /// Kafka's name of the key.
    pub fn name(self) -> &'static str {
        match self {
            QuotaKey::ProducerByteRate => "producer_byte_rate",
            QuotaKey::ConsumerByteRate => "consumer_byte_rate",
            QuotaKey::RequestPercentage => "request_percentage",
        }
    }

    /// Whether `value` is a limit the key accepts: a finite number above zero.
    pub fn validate(self, value: f64) -> Result<(), String> {
        if value.is_finite() && value > 0.0 {
            Ok(())
        } else {
            Err(format!(
                "{} must be a number above 0, not {value}",
                self.name()
            ))
        }
    }
}

impl fmt::Display for QuotaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for QuotaKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        QuotaKey::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown or unsupported quota key `{s}` (use producer_byte_rate, \
                     consumer_byte_rate or request_percentage)"
                )
            })
    }
}

/// The limits one entity sets.
pub type QuotaValues = BTreeMap<QuotaKey, f64>;

/// Which limit applies to a request, and whose traffic it is counted with.
#[derive(Debug, Clone, PartialEq)]
pub struct Limit {
    /// The limit (bytes per second, or percent of a shard's time).
    pub value: f64,
    /// Whether the matched entity names a user: the traffic is counted per user.
    pub per_user: bool,
    /// Whether it names a client id: the traffic is counted per client id.
    pub per_client_id: bool,
}

/// Every entity's limits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Quotas {
    entries: BTreeMap<QuotaEntity, QuotaValues>,
}

impl Quotas {
    /// A set of `entries` (entities without values are left out).
    pub fn new(entries: BTreeMap<QuotaEntity, QuotaValues>) -> Quotas {
        let mut quotas = Quotas { entries };
        quotas.entries.retain(|_, v| !v.is_empty());
        quotas
    }

    /// Whether no entity has a limit: nothing is metered then.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every entity and its limits, in order.
    pub fn entries(&self) -> &BTreeMap<QuotaEntity, QuotaValues> {
        &self.entries
    }

    /// Sets (`Some`) or removes (`None`) one limit of `entity`.
    pub fn alter(&mut self, entity: &QuotaEntity, key: QuotaKey, value: Option<f64>) {
        match value {
            Some(v) => {
                self.entries
                    .entry(entity.clone())
                    .or_default()
                    .insert(key, v);
            }
            None => {
                if let Some(values) = self.entries.get_mut(entity) {
                    values.remove(&key);
                    if values.is_empty() {
                        self.entries.remove(entity);
                    }
                }
            }
        }
    }

    /// The limit of `key` for a request of `user` with `client_id`: the most specific
    /// entity that sets it (see the module doc). A scan of the entries: there are few.
    pub fn limit(&self, user: &str, client_id: &str, key: QuotaKey) -> Option<Limit> {
        let mut best: Option<(u8, &QuotaEntity, f64)> = None;
        for (entity, values) in &self.entries {
            let Some(&value) = values.get(&key) else {
                continue;
            };
            let Some(rank) = entity.rank(user, client_id) else {
                continue;
            };
            if best.is_none_or(|(r, _, _)| rank < r) {
                best = Some((rank, entity, value));
            }
        }
        best.map(|(_, entity, value)| Limit {
            value,
            per_user: entity.user.is_some(),
            per_client_id: entity.client_id.is_some(),
        })
    }
}

/// How a filter matches one part of an entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameMatch {
    /// That name exactly.
    Exact(String),
    /// The default entity.
    Default,
    /// Any name, or the default.
    Any,
}

impl NameMatch {
    fn matches(&self, name: &EntityName) -> bool {
        match (self, name) {
            (NameMatch::Any, _) | (NameMatch::Default, EntityName::Default) => true,
            (NameMatch::Exact(want), EntityName::Named(have)) => want == have,
            _ => false,
        }
    }
}

/// Which entities a listing shows (Kafka's DescribeClientQuotas components): an entity
/// matches when it has each part the filter names, matched as asked; with `strict`, it may
/// have no other part.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QuotaFilter {
    /// How the user part must match (`None`: any, or none).
    pub user: Option<NameMatch>,
    /// How the client-id part must match (`None`: any, or none).
    pub client_id: Option<NameMatch>,
    /// Whether entities with parts the filter does not name are left out.
    pub strict: bool,
}

impl QuotaFilter {
    /// Adds a component: an entity type and how its name matches. Each type once.
    pub fn add(&mut self, kind: &str, name: NameMatch) -> Result<(), String> {
        let slot = match kind {
            USER => &mut self.user,
            CLIENT_ID => &mut self.client_id,
            other => {
                return Err(format!(
                    "unknown or unsupported quota entity type `{other}` (use `{USER}` or `{CLIENT_ID}`)"
                ))
            }
        };
        if slot.replace(name).is_some() {
            return Err(format!("the entity type `{kind}` is given twice"));
        }
        Ok(())
    }

    /// Whether `entity` is one the filter shows.
    pub fn matches(&self, entity: &QuotaEntity) -> bool {
        let part = |want: &Option<NameMatch>, have: &Option<EntityName>| match (want, have) {
            (Some(m), Some(name)) => m.matches(name),
            (Some(_), None) => false,
            (None, Some(_)) => !self.strict,
            (None, None) => true,
        };
        part(&self.user, &entity.user) && part(&self.client_id, &entity.client_id)
    }
}

/// The window a rate is measured over: `samples` windows of `sample` each (Kafka's
/// `quota.window.num` and `quota.window.size.seconds`; 11 × 1 s by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateWindow {
    /// How many sample windows are kept.
    pub samples: u32,
    /// The length of one.
    pub sample: Duration,
}

impl RateWindow {
    /// Kafka's default: 11 windows of one second.
    pub const DEFAULT: RateWindow = RateWindow {
        samples: 11,
        sample: Duration::from_secs(1),
    };

    /// The longest a client is held back at once: the whole window.
    pub fn max_throttle(&self) -> Duration {
        self.sample * self.samples
    }
}

/// A windowed rate: what was recorded in the last few sample windows. The rate is the
/// total over the time those windows span (at least one sample window, so a client's first
/// burst is measured over a second, not over the microseconds it took).
#[derive(Debug, Clone, Default)]
pub struct Rate {
    /// (start, total) of each live sample window, oldest first.
    samples: std::collections::VecDeque<(Instant, f64)>,
}

impl Rate {
    /// Forgets the sample windows that ended before the window of `now`.
    fn expire(&mut self, now: Instant, window: RateWindow) {
        let span = window.max_throttle();
        while let Some(&(start, _)) = self.samples.front() {
            if start + span <= now {
                self.samples.pop_front();
            } else {
                break;
            }
        }
    }

    /// Adds `value` at `now`.
    pub fn record(&mut self, now: Instant, value: f64, window: RateWindow) {
        self.expire(now, window);
        match self.samples.back_mut() {
            Some((start, total)) if now < *start + window.sample => *total += value,
            _ => {
                if self.samples.len() >= window.samples as usize {
                    self.samples.pop_front();
                }
                self.samples.push_back((now, value));
            }
        }
    }

    /// Whether nothing was recorded within the window of `now` (the rate can be dropped).
    pub fn is_idle(&self, now: Instant, window: RateWindow) -> bool {
        self.samples
            .back()
            .is_none_or(|&(start, _)| start + window.max_throttle() <= now)
    }

    /// How long the client must wait, from `now`, for the rate to fall back to `limit`:
    /// the total over the window divided by the limit is the time the traffic should have
    /// taken, less the time it did take. Zero when under the limit (measured over at least
    /// one sample window); at most the whole window.
    pub fn throttle(&mut self, now: Instant, limit: f64, window: RateWindow) -> Duration {
        self.expire(now, window);
        let Some(&(oldest, _)) = self.samples.front() else {
            return Duration::ZERO;
        };
        let total: f64 = self.samples.iter().map(|&(_, v)| v).sum();
        let elapsed = now.duration_since(oldest);
        let needed = total / limit;
        if !needed.is_finite() || needed <= elapsed.max(window.sample).as_secs_f64() {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(needed - elapsed.as_secs_f64()).min(window.max_throttle())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entity(user: Option<&str>, client: Option<&str>) -> QuotaEntity {
        let part = |p: Option<&str>| {
            p.map(|n| {
                if n == DEFAULT_NAME {
                    EntityName::Default
                } else {
                    EntityName::Named(n.into())
                }
            })
        };
        QuotaEntity {
            user: part(user),
            client_id: part(client),
        }
    }

    #[test]
    fn the_most_specific_entity_wins_per_key() {
        let mut q = Quotas::default();
        let p = QuotaKey::ProducerByteRate;
        q.alter(&entity(None, Some(DEFAULT_NAME)), p, Some(8.0));
        q.alter(&entity(None, Some("etl")), p, Some(7.0));
        q.alter(&entity(Some(DEFAULT_NAME), None), p, Some(6.0));
        q.alter(
            &entity(Some(DEFAULT_NAME), Some(DEFAULT_NAME)),
            p,
            Some(5.0),
        );
        q.alter(&entity(Some(DEFAULT_NAME), Some("etl")), p, Some(4.0));
        q.alter(&entity(Some("alice"), None), p, Some(3.0));
        q.alter(&entity(Some("alice"), Some(DEFAULT_NAME)), p, Some(2.0));
        q.alter(&entity(Some("alice"), Some("etl")), p, Some(1.0));
        let value = |q: &Quotas, u, c| q.limit(u, c, p).map(|l| l.value);
        let order: [(Option<&str>, Option<&str>); 8] = [
            (Some("alice"), Some("etl")),
            (Some("alice"), Some(DEFAULT_NAME)),
            (Some("alice"), None),
            (Some(DEFAULT_NAME), Some("etl")),
            (Some(DEFAULT_NAME), Some(DEFAULT_NAME)),
            (Some(DEFAULT_NAME), None),
            (None, Some("etl")),
            (None, Some(DEFAULT_NAME)),
        ];
        for (i, (u, c)) in order.iter().enumerate() {
            assert_eq!(value(&q, "alice", "etl"), Some(i as f64 + 1.0), "{i}");
            q.alter(&entity(*u, *c), p, None);
        }
        assert!(q.is_empty());
        assert_eq!(value(&q, "alice", "etl"), None);
    }

    #[test]
    fn keys_resolve_independently_and_say_how_traffic_is_counted() {
        let mut q = Quotas::default();
        q.alter(
            &entity(Some("alice"), None),
            QuotaKey::ProducerByteRate,
            Some(100.0),
        );
        q.alter(
            &entity(None, Some(DEFAULT_NAME)),
            QuotaKey::ConsumerByteRate,
            Some(50.0),
        );
        let produce = q.limit("alice", "x", QuotaKey::ProducerByteRate).unwrap();
        assert!(produce.per_user && !produce.per_client_id);
        let fetch = q.limit("alice", "x", QuotaKey::ConsumerByteRate).unwrap();
        assert_eq!(fetch.value, 50.0);
        assert!(!fetch.per_user && fetch.per_client_id);
        assert!(q.limit("bob", "x", QuotaKey::ProducerByteRate).is_none());
        assert!(q.limit("bob", "", QuotaKey::RequestPercentage).is_none());
    }

    #[test]
    fn entities_are_checked() {
        let e = QuotaEntity::from_parts([(USER, Some("alice")), (CLIENT_ID, None)]).unwrap();
        assert_eq!(e.to_string(), "user=alice,client-id=<default>");
        assert_eq!(e.parts(), vec![(USER, Some("alice")), (CLIENT_ID, None)]);
        assert!(QuotaEntity::from_parts([]).is_err());
        assert!(QuotaEntity::from_parts([(USER, Some("a")), (USER, Some("b"))]).is_err());
        assert!(QuotaEntity::from_parts([("ip", Some("127.0.0.1"))]).is_err());
        assert!(QuotaEntity::from_parts([(USER, Some(""))]).is_err());
        assert!(QuotaKey::ProducerByteRate.validate(0.0).is_err());
        assert!(QuotaKey::ProducerByteRate.validate(f64::NAN).is_err());
        assert!("bogus".parse::<QuotaKey>().is_err());
    }

    #[test]
    fn filters_match_as_kafka_describes() {
        let alice = entity(Some("alice"), None);
        let alice_etl = entity(Some("alice"), Some("etl"));
        let default_user = entity(Some(DEFAULT_NAME), None);
        let etl = entity(None, Some("etl"));
        let mut f = QuotaFilter::default();
        f.add(USER, NameMatch::Exact("alice".into())).unwrap();
        assert!(f.matches(&alice) && f.matches(&alice_etl));
        assert!(!f.matches(&default_user) && !f.matches(&etl));
        f.strict = true;
        assert!(f.matches(&alice) && !f.matches(&alice_etl));
        let mut any_user = QuotaFilter::default();
        any_user.add(USER, NameMatch::Any).unwrap();
        assert!(any_user.matches(&default_user) && !any_user.matches(&etl));
        let mut defaults = QuotaFilter::default();
        defaults.add(USER, NameMatch::Default).unwrap();
        assert!(defaults.matches(&default_user) && !defaults.matches(&alice));
        assert!(QuotaFilter::default().matches(&etl));
        assert!(defaults.add(USER, NameMatch::Any).is_err());
        assert!(defaults.add("ip", NameMatch::Any).is_err());
    }

    #[test]
    fn throttle_is_the_time_until_the_rate_is_back_under_the_limit() {
        let w = RateWindow::DEFAULT;
        let t0 = Instant::now();
        let mut rate = Rate::default();
        assert_eq!(rate.throttle(t0, 100.0, w), Duration::ZERO);
        // 300 bytes at once against 100 B/s: they should have taken 3 s.
        rate.record(t0, 300.0, w);
        let wait = rate.throttle(t0, 100.0, w);
        assert_eq!(wait, Duration::from_secs(3));
        assert_eq!(
            rate.throttle(t0 + Duration::from_secs(1), 100.0, w),
            Duration::from_secs(2)
        );
        // After waiting that long, the rate is the limit: no more throttle.
        assert_eq!(rate.throttle(t0 + wait, 100.0, w), Duration::ZERO);
        // Under the limit: none.
        assert_eq!(rate.throttle(t0, 1000.0, w), Duration::ZERO);
        // Capped at the window.
        rate.record(t0, 1e9, w);
        assert_eq!(rate.throttle(t0, 1.0, w), w.max_throttle());
        // Old samples expire.
        let later = t0 + w.max_throttle() + Duration::from_secs(1);
        assert!(rate.is_idle(later, w));
        assert_eq!(rate.throttle(later, 1.0, w), Duration::ZERO);
    }

    #[test]
    fn samples_roll_over() {
        let w = RateWindow {
            samples: 3,
            sample: Duration::from_millis(100),
        };
        let t0 = Instant::now();
        let mut rate = Rate::default();
        for i in 0..10 {
            rate.record(t0 + Duration::from_millis(100 * i), 10.0, w);
        }
        assert!(rate.samples.len() <= 3);
        // 30 units over ≥ 200 ms: 150/s at most; limit 100/s: some wait.
        let now = t0 + Duration::from_millis(950);
        assert!(rate.throttle(now, 100.0, w) > Duration::ZERO);
        assert_eq!(rate.throttle(now, 1000.0, w), Duration::ZERO);
    }
}
