//! Consumer groups and share groups (queues), as pure state machines: no I/O, no runtime.
//! The server's services drive them (`server/group_coordinator.rs` and
//! `server/share_coordinator.rs`): one [`membership::Groups`] per coordinator shard and one
//! [`share::SharePartition`] per (share group, partition) on the partition's owner shard,
//! feeds them requests and the clock, and persists what they say must survive a restart.

pub mod classic;
pub mod membership;
pub mod share;
