//! Metrics: what each shard counts, and the Prometheus text exposition of it.
//!
//! Every count is kept by the shard thread that makes it, in thread-local cells
//! ([`shard`]) that only that thread ever writes or reads: the data path pays a few `Cell`
//! updates per request, per group-commit round and per fdatasync — no atomic, no lock, no
//! cache line shared with another core. Nothing here is read from another thread: when
//! `/metrics` is scraped, each shard builds a [`snapshot::ShardSnapshot`] of its own state
//! (plain, `Send` data) on its own thread and hands it over; the HTTP thread merges the
//! shards' snapshots (histograms bucket by bucket, counters by sum) and renders them
//! ([`exposition`]). So a scrape costs each shard one snapshot, and a slow or frequent
//! scraper costs the shards nothing more.
//!
//! This module depends on nothing else of the crate: storage and the server both record
//! into it.

pub mod exposition;
pub mod histogram;
pub mod labels;
pub mod process;
pub mod shard;
pub mod snapshot;
