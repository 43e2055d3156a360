//! Inputs that once made a fuzz target panic, each replayed on every run.
//! A new crash goes here as the driver prints it, with a line on the bug.

use netsy::fuzzing;

#[test]
fn empty_and_tiny_inputs() {
    for target in fuzzing::TARGETS {
        for input in [&b""[..], b"\0", b"\xff", b"{", b"\0\0\0\0\0\0"] {
            (target.run)(input);
        }
    }
}

/// `grpc::timeout::parse` split a value one byte before its end, inside a
/// multi-byte last character. (The server only passes it ASCII header
/// values, so no request could reach this.)
#[test]
fn grpc_timeout_ending_in_a_multibyte_character() {
    fuzzing::grpc_frames(b"\x02x\x9c");
}

/// The Elector gave a new node max + 1 as its member id, which overflowed
/// when members.json held u64::MAX (a panic in a debug build, id 0 in a
/// release one). Now it refuses with an error naming members.json.
#[test]
fn members_json_holding_the_largest_id() {
    fuzzing::election_json(b"{\"cluster_id\":\"\",\"members\":{\"\":1,\"\":18446744073709551615}}");
    fuzzing::election_json(br#"{"cluster_id":"c","members":{"n1":18446744073709551615}}"#);
}

/// grpc-message decoding took "%+a" for an escape (`u8::from_str_radix`
/// accepts a sign) and made it a newline; the spec keeps it as it is.
#[test]
fn grpc_message_escape_with_a_sign() {
    fuzzing::grpc_frames(b"nd%+a");
}
