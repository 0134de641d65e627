//! Fuzz target `recovery`: see `eventflow::fuzzing::recovery`.
#![no_main]

#[global_allocator]
static ALLOC: eventflow::fuzzing::LimitedAlloc = eventflow::fuzzing::LimitedAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| eventflow::fuzzing::recovery(data));
