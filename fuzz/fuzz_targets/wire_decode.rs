//! Peer wire decoding of an arbitrary stream: never panics, never errors on a
//! prefix of a valid stream, and every decoded message re-encodes.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use protocol::wire::{self, Decoded, Limits};

fuzz_target!(|data: &[u8]| {
    let (piece_count, rest) = match data.split_first() {
        Some((n, rest)) => (Some(u32::from(*n) * 7 + 1), rest),
        None => return,
    };
    let _ = wire::Handshake::decode(rest);
    let limits = Limits { piece_count, ..Limits::default() };
    let mut buf = BytesMut::from(rest);
    // Every message consumes at least its 4-byte prefix, so this terminates.
    loop {
        match wire::decode_message(&mut buf, &limits) {
            Ok(Decoded::Complete(msg)) => {
                let mut out = BytesMut::new();
                msg.encode(&mut out);
            }
            Ok(Decoded::NeedMore(_)) | Err(_) => break,
        }
    }
});
