//! `eventflow-bench`: a load generator for Eventflow and Kafka.
//!
//! Producers send on an open-loop schedule (latency counts from the intended send time, so a
//! stalled broker cannot hide its stall), consumers check that every record arrives once,
//! every worker records into its own HdrHistogram and the histograms are merged, never
//! averaged. See the crate's README section in the repository README and `tuning/`.

pub mod broker;
pub mod ceiling;
pub mod clock;
pub mod compare;
pub mod machine;
pub mod peers;
pub mod plan;
pub mod report;
pub mod result;
pub mod run;
pub mod sweep;
pub mod target;
pub mod workload;
