//! The MSE/PE handshake parser, both roles: arbitrary bytes fed to an
//! initiator or a responder in arbitrary chunks, and an honest pair whose
//! messages are corrupted in flight at chosen bytes (so the fuzzer reaches
//! the states behind the DH exchange: crypto_provide, padding lengths, IA).
//! Never panics; never consumes more than it is given; consumes nothing
//! once established; an uncorrupted pair always agrees.
#![no_main]
use libfuzzer_sys::fuzz_target;
use protocol::mse::{CryptoSet, Initiator, Responder, Secrets, detect, req2_hash};

const INFO_HASH: [u8; 20] = [0x11; 20];

fn secrets(seed: u8, pad_key: usize, pad_crypto: usize) -> Secrets {
    Secrets::new(
        [seed | 1; 20],
        vec![seed; pad_key % 513],
        vec![seed ^ 0xff; pad_crypto % 513],
    )
    .expect("pads within 512")
}

fn set(b: u8) -> CryptoSet {
    [CryptoSet::PLAINTEXT, CryptoSet::RC4, CryptoSet::BOTH][usize::from(b % 3)]
}

fn lookup(req2: &[u8; 20]) -> Option<[u8; 20]> {
    (*req2 == req2_hash(&INFO_HASH)).then_some(INFO_HASH)
}

/// Feeds `input` in chunks of `chunk` bytes; checks the consumption rules.
fn feed(mut handle: impl FnMut(&[u8]) -> Result<usize, ()>, done: impl Fn() -> bool, input: &[u8], chunk: usize) {
    for c in input.chunks(chunk.max(1)) {
        let was_done = done();
        match handle(c) {
            Ok(n) => {
                assert!(n <= c.len());
                assert!(!was_done || n == 0, "input consumed after the end");
                assert!(done() || n == c.len(), "input left over before the end");
            }
            Err(()) => return,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let _ = detect(rest);
    let chunk = usize::from(mode >> 2) + 1;
    match mode & 3 {
        0 => {
            let mut r = Responder::new(CryptoSet::BOTH, secrets(mode, 7, 9)).unwrap();
            feed(
                |c| r.handle_input(c, &lookup).map_err(|_| ()),
                || false,
                rest,
                chunk,
            );
            let _ = r.poll_transmit();
        }
        1 => {
            let mut i = Initiator::new(INFO_HASH, CryptoSet::BOTH, b"ia", secrets(mode, 3, 5)).unwrap();
            let _ = i.poll_transmit();
            feed(|c| i.handle_input(c).map_err(|_| ()), || false, rest, chunk);
        }
        _ => honest_pair(mode, rest, chunk),
    }
});

/// `rest` = 6 bytes of parameters, then corruptions as
/// (message 0..4, offset u16, xor) quadruples.
fn honest_pair(mode: u8, rest: &[u8], chunk: usize) {
    if rest.len() < 6 {
        return;
    }
    let (params, edits) = rest.split_at(6);
    let mut init = Initiator::new(
        INFO_HASH,
        set(params[0]),
        &vec![0x13; usize::from(params[1]) * 4],
        secrets(params[2], usize::from(params[3]) * 2, usize::from(params[4]) * 2),
    )
    .unwrap();
    let mut resp = Responder::new(set(params[5]), secrets(mode, usize::from(params[4]), usize::from(params[3]))).unwrap();
    let corrupt = |msg: usize, bytes: &mut Vec<u8>| -> bool {
        let mut hit = false;
        for e in edits.chunks_exact(4) {
            if usize::from(e[0] % 4) == msg && !bytes.is_empty() && e[3] != 0 {
                let at = usize::from(u16::from_be_bytes([e[1], e[2]])) % bytes.len();
                bytes[at] ^= e[3];
                hit = true;
            }
        }
        hit
    };
    let mut corrupted = false;
    let mut failed = false;
    for round in 0..2 {
        if let Some(mut m) = init.poll_transmit() {
            corrupted |= corrupt(2 * round, &mut m);
            for c in m.chunks(chunk) {
                match resp.handle_input(c, &lookup) {
                    Ok(n) => assert!(n == c.len() || resp.is_established()),
                    Err(_) => failed = true,
                }
            }
        }
        if let Some(mut m) = resp.poll_transmit() {
            corrupted |= corrupt(2 * round + 1, &mut m);
            for c in m.chunks(chunk) {
                match init.handle_input(c) {
                    Ok(n) => assert!(n <= c.len()),
                    Err(_) => failed = true,
                }
            }
        }
    }
    let common = set(params[0]).bits() & set(params[5]).bits();
    if !corrupted && common != 0 {
        assert!(!failed, "an honest pair failed");
        let (a, b) = (init.take_established().unwrap(), resp.take_established().unwrap());
        assert_eq!(a.crypto, b.crypto);
        assert_eq!(b.info_hash, INFO_HASH);
    }
}
