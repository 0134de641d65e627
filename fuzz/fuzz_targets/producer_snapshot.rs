//! Fuzz target `producer_snapshot`: see `eventflow::fuzzing::producer_snapshot`.
#![no_main]

#[global_allocator]
static ALLOC: eventflow::fuzzing::LimitedAlloc = eventflow::fuzzing::LimitedAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| eventflow::fuzzing::producer_snapshot(data));
