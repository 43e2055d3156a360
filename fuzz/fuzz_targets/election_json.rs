#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| netsy::fuzzing::election_json(data));
