#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| netsy::fuzzing::etcd_requests(data));
