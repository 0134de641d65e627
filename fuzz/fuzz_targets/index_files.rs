//! Fuzz target `index_files`: see `eventflow::fuzzing::index_files`.
#![no_main]

#[global_allocator]
static ALLOC: eventflow::fuzzing::LimitedAlloc = eventflow::fuzzing::LimitedAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| eventflow::fuzzing::index_files(data));
