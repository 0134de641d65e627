//! Consumer groups and share groups (queues), as pure state machines: no I/O, no runtime.
//! The server keeps one [`group::Groups`] per coordinator shard and one
//! [`share::SharePartition`] per (share group, partition) on the partition's owner shard,
//! feeds them requests and the clock, and persists what they say must survive a restart.

pub mod group;
pub mod share;
