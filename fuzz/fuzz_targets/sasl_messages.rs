//! Fuzz target `sasl_messages`: see `eventflow::fuzzing::sasl_messages`.
#![no_main]

#[global_allocator]
static ALLOC: eventflow::fuzzing::LimitedAlloc = eventflow::fuzzing::LimitedAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| eventflow::fuzzing::sasl_messages(data));
