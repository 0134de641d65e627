//! Fuzz target `native_frames`: see `eventflow::fuzzing::native_frames`.
#![no_main]

#[global_allocator]
static ALLOC: eventflow::fuzzing::LimitedAlloc = eventflow::fuzzing::LimitedAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| eventflow::fuzzing::native_frames(data));
