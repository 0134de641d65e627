//! Fuzz target `internal_log`: see `eventflow::fuzzing::internal_log`.
#![no_main]

#[global_allocator]
static ALLOC: eventflow::fuzzing::LimitedAlloc = eventflow::fuzzing::LimitedAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| eventflow::fuzzing::internal_log(data));
