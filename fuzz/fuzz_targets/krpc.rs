//! KRPC (BEP 5) decoding of arbitrary datagrams: never panics, and whatever
//! decodes encodes again to a datagram that decodes to the same message.
#![no_main]
use libfuzzer_sys::fuzz_target;
use protocol::krpc::{Limits, decode};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(msg) = decode(data, &limits) {
        let again = decode(&msg.encode(), &Limits {
            max_packet: usize::MAX,
            ..limits
        });
        assert_eq!(again.as_ref(), Ok(&msg));
    }
});
