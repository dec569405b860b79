//! Message Stream Encryption (MSE, also called PE): the obfuscated handshake
//! libtorrent, Transmission and Vuze speak before the BitTorrent handshake,
//! as a sans-IO state machine for both roles.
//!
//! This module owns the byte layout and the cryptography of the exchange
//! (768-bit Diffie-Hellman, the SHA-1 derived hashes and RC4 keys) and the
//! bounds on what a peer may send during it. It opens no socket, reads no
//! clock and draws randomness only from the [`Secrets`] it is given, so a
//! test with fixed secrets sees the same bytes on every run. The tokio
//! adapter around it lives in the actors crate (`mse_stream`).
//!
//! # The exchange
//!
//! ```text
//! 1 A->B  Ya, PadA
//! 2 B->A  Yb, PadB
//! 3 A->B  HASH('req1', S), HASH('req2', SKEY) xor HASH('req3', S),
//!         ENCRYPT(VC, crypto_provide, len(PadC), PadC, len(IA)), ENCRYPT(IA)
//! 4 B->A  ENCRYPT(VC, crypto_select, len(PadD), PadD), ENCRYPT2(payload)
//! 5 A->B  ENCRYPT2(payload)
//! ```
//!
//! `Y = 2^X mod P` with the 768-bit prime `P` ([`P_HEX`]) and 160-bit private keys,
//! `S` the shared secret (96 bytes, big-endian), `SKEY` the torrent's
//! info-hash, `HASH` SHA-1, `VC` eight zero bytes. `ENCRYPT` is RC4 keyed
//! with `HASH('keyA', S, SKEY)` from A to B and `HASH('keyB', S, SKEY)` from
//! B to A, the first 1024 bytes of each keystream discarded. `ENCRYPT2` is
//! the same RC4 stream continued, or nothing, as `crypto_select` says. The
//! initial payload (IA) is where an initiator puts its BitTorrent handshake
//! (libtorrent and Transmission do) so the exchange costs no extra round
//! trip; it may also be empty.
//!
//! # Inputs and outputs
//!
//! [`Initiator`] (we dial: SKEY is the torrent we dial for) and
//! [`Responder`] (incoming: SKEY is found through a [`SkeyLookup`] from the
//! `req2` hash, so a daemon with thousands of torrents does one map lookup)
//! follow quinn's contract: bytes read from the socket go in through
//! `handle_input`, which consumes exactly the bytes of the handshake and no
//! more; bytes to send come out of `poll_transmit`; once
//! [`take_established`](Initiator::take_established) returns the result,
//! input not consumed is payload, to be decrypted with its
//! [`Ciphers::decrypt`] if RC4 was selected.
//!
//! # Byte budgets
//!
//! Each state reads a fixed number of bytes or searches a bounded window, so
//! a hostile peer can make neither side buffer more than about 1.2 KiB:
//!
//! | role | state | bytes |
//! |---|---|---|
//! | both | the peer's public key | 96 |
//! | initiator | PadB, then ENCRYPT(VC) found by search | at most 512 + 8 |
//! | initiator | crypto_select, len(PadD) | 6 |
//! | initiator | PadD | len(PadD), at most 512 |
//! | responder | PadA, then HASH('req1', S) found by search | at most 512 + 20 |
//! | responder | HASH('req2', SKEY) xor HASH('req3', S) | 20 |
//! | responder | VC, crypto_provide, len(PadC) | 14 |
//! | responder | PadC | len(PadC), at most 512 |
//! | responder | len(IA), IA | 2 + len(IA), at most [`MAX_IA_LEN`] |
//!
//! The two searches are bounded as libtorrent bounds them; a peer that puts
//! garbage where its public key should be is caught there (any 96 bytes are
//! a number; only 0, 1, P-1 and values past P are rejected on sight).

use std::collections::HashMap;

use crypto_bigint::modular::ConstMontyForm;
use crypto_bigint::{U192, U768};
use rand_core::RngCore;
use rc4::consts::U20;
use rc4::{KeyInit, Rc4, StreamCipher};
use sha1::{Digest, Sha1};

/// Bytes of a Diffie-Hellman public key or shared secret on the wire.
pub const KEY_LEN: usize = 96;

/// Bytes of a private key: 160 bits, as libtorrent, Transmission and Vuze
/// use (the specification asks for at least 128; more only costs time).
pub const PRIVATE_KEY_LEN: usize = 20;

/// The longest padding any of PadA, PadB, PadC and PadD may have.
pub const MAX_PAD: usize = 512;

/// Bytes of the verification constant (all zero).
pub const VC_LEN: usize = 8;

/// Keystream bytes discarded after keying RC4, against its weak first bytes.
pub const DISCARD: usize = 1024;

/// The longest initial payload a responder accepts. Every client we know
/// sends one BitTorrent handshake (68 bytes) or nothing, and libtorrent
/// refuses more than 68; 1 KiB leaves room for a handshake followed by a
/// few messages and keeps the buffer small.
pub const MAX_IA_LEN: usize = 1024;

/// The 768-bit prime of the specification (the first Oakley group, RFC 2409
/// section 6.1), as big-endian hex.
pub const P_HEX: &str = "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A63A36210000000000090563";

const P_MODULUS: U768 = U768::from_be_hex(P_HEX);

mod modulus {
    // The macro defines a public marker type; keep it out of the public API.
    // It calls itself unqualified, so it must be in scope by name.
    use crypto_bigint::impl_modulus;
    impl_modulus!(Prime, crypto_bigint::U768, super::P_HEX);
}

/// A residue modulo P in Montgomery form; its `pow_bounded_exp` runs in
/// time independent of the exponent's value.
type Residue = ConstMontyForm<modulus::Prime, { U768::LIMBS }>;

/// Everything that makes a peer's handshake invalid. Each variant is a
/// reason to drop the connection, to be logged and counted.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum MseError {
    /// The peer's Diffie-Hellman key is 0, 1, P-1 or not below P: garbage,
    /// or a key chosen to force a known shared secret.
    #[error("the peer's Diffie-Hellman key is not in 2..P-2")]
    InvalidPublicKey,
    /// Initiator: ENCRYPT(VC) did not appear within PadB's 512-byte limit
    /// after the responder's key (garbage for its key, or not MSE).
    #[error("no verification constant within {scanned} bytes after the peer's key")]
    VcNotFound {
        /// Bytes searched.
        scanned: usize,
    },
    /// Responder: HASH('req1', S) did not appear within PadA's 512-byte
    /// limit after the initiator's key (garbage for its key, or not MSE).
    #[error("no synchronisation hash within {scanned} bytes after the peer's key")]
    SyncHashNotFound {
        /// Bytes searched.
        scanned: usize,
    },
    /// Responder: the SKEY hash names no torrent we serve.
    #[error("the peer asked for a torrent we do not have (unknown SKEY hash)")]
    UnknownSkey,
    /// Responder: the verification constant did not decrypt to zeros.
    #[error("the verification constant decrypted to {found:02x?}, not zeros")]
    BadVc {
        /// What it decrypted to.
        found: [u8; VC_LEN],
    },
    /// PadC or PadD declared longer than 512 bytes.
    #[error("padding of {len} bytes exceeds the limit of {MAX_PAD}")]
    PadTooLong {
        /// Declared length.
        len: usize,
    },
    /// Responder: the initial payload is longer than [`MAX_IA_LEN`].
    #[error("initial payload of {len} bytes exceeds the limit of {MAX_IA_LEN}")]
    IaTooLong {
        /// Declared length.
        len: usize,
    },
    /// Responder: crypto_provide offers nothing we accept.
    #[error("the peer offers crypto {provided:#x}, we accept only {accepted:#x}")]
    NoCommonCrypto {
        /// The peer's crypto_provide.
        provided: u32,
        /// What we accept.
        accepted: u32,
    },
    /// Initiator: crypto_select is not exactly one of the methods offered.
    #[error("the peer selected crypto {selected:#x}, we offered {offered:#x}")]
    SelectNotOffered {
        /// The peer's crypto_select.
        selected: u32,
        /// Our crypto_provide.
        offered: u32,
    },
    /// Our own arguments were unusable: an empty crypto set, padding longer
    /// than 512 bytes or an initial payload longer than 65535 bytes.
    #[error("invalid handshake parameters: {0}")]
    InvalidParameters(&'static str),
}

/// One payload encryption method of `crypto_provide` / `crypto_select`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Crypto {
    /// The payload after the handshake is sent as is (only the handshake
    /// was obfuscated).
    Plaintext,
    /// The payload is RC4-encrypted, continuing the handshake's keystreams.
    Rc4,
}

impl Crypto {
    /// The method's bit in `crypto_provide` / `crypto_select`.
    pub fn bit(self) -> u32 {
        match self {
            Crypto::Plaintext => 0x01,
            Crypto::Rc4 => 0x02,
        }
    }
}

/// A set of [`Crypto`] methods, as the `crypto_provide` bit field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CryptoSet(u32);

impl CryptoSet {
    /// Plaintext payload only.
    pub const PLAINTEXT: CryptoSet = CryptoSet(0x01);
    /// RC4 payload only.
    pub const RC4: CryptoSet = CryptoSet(0x02);
    /// Either.
    pub const BOTH: CryptoSet = CryptoSet(0x03);

    /// The bit field as sent.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// Whether `c` is in the set.
    pub fn contains(self, c: Crypto) -> bool {
        self.0 & c.bit() != 0
    }

    fn is_empty(self) -> bool {
        self.0 & Self::BOTH.0 == 0
    }
}

/// Maps the 20-byte `HASH('req2', SKEY)` a responder receives to the
/// info-hash it stands for. The caller precomputes [`req2_hash`] of each
/// torrent's info-hash (a `HashMap` implements this trait), so an incoming
/// connection costs one lookup, not a hash per torrent.
pub trait SkeyLookup {
    /// The info-hash whose `req2` hash is `req2`, if we serve it.
    fn find(&self, req2: &[u8; 20]) -> Option<[u8; 20]>;
}

impl<S: std::hash::BuildHasher> SkeyLookup for HashMap<[u8; 20], [u8; 20], S> {
    fn find(&self, req2: &[u8; 20]) -> Option<[u8; 20]> {
        self.get(req2).copied()
    }
}

impl<F: Fn(&[u8; 20]) -> Option<[u8; 20]>> SkeyLookup for F {
    fn find(&self, req2: &[u8; 20]) -> Option<[u8; 20]> {
        self(req2)
    }
}

/// `HASH('req2', info_hash)`: the key under which a responder's
/// [`SkeyLookup`] finds the torrent.
pub fn req2_hash(info_hash: &[u8; 20]) -> [u8; 20] {
    hash(&[b"req2", info_hash])
}

/// What the first bytes of an incoming connection are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// `\x13BitTorrent protocol`: a plaintext BitTorrent handshake.
    Plaintext,
    /// Anything else: the start of an MSE public key.
    Encrypted,
    /// A prefix of the plaintext header so far; this many more bytes decide.
    NeedMore(usize),
}

/// Tells a plaintext BitTorrent handshake from an MSE one by the first
/// bytes of an incoming connection, as libtorrent and Transmission do: an
/// MSE key starts with `\x13BitTorrent protocol` with probability 2^-160.
/// Decides on the first byte unless it is 19, and on at most 20 bytes.
pub fn detect(first: &[u8]) -> Detected {
    let header = crate::wire::PROTOCOL;
    let want = 1 + header.len();
    if first.is_empty() {
        return Detected::NeedMore(want);
    }
    if first[0] != header.len() as u8 {
        return Detected::Encrypted;
    }
    let have = first.len().min(want);
    if first[1..have] != header[..have - 1] {
        return Detected::Encrypted;
    }
    if have < want {
        Detected::NeedMore(want - have)
    } else {
        Detected::Plaintext
    }
}

/// The randomness of one handshake, drawn before it starts: a private key
/// and the padding this side sends (PadA and PadC for an initiator, PadB
/// and PadD for a responder). Tests build it from fixed bytes.
#[derive(Clone)]
pub struct Secrets {
    private_key: [u8; PRIVATE_KEY_LEN],
    pad_key: Vec<u8>,
    pad_crypto: Vec<u8>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("Secrets")
            .field("pad_key", &self.pad_key.len())
            .field("pad_crypto", &self.pad_crypto.len())
            .finish_non_exhaustive()
    }
}

impl Secrets {
    /// A fresh private key and random paddings of 0..=512 bytes each, as
    /// libtorrent sends.
    pub fn generate<R: RngCore + ?Sized>(rng: &mut R) -> Secrets {
        let mut private_key = [0u8; PRIVATE_KEY_LEN];
        rng.fill_bytes(&mut private_key);
        let pad = |rng: &mut R| {
            let mut v = vec![0u8; rng.next_u32() as usize % (MAX_PAD + 1)];
            rng.fill_bytes(&mut v);
            v
        };
        let pad_key = pad(rng);
        let pad_crypto = pad(rng);
        Secrets {
            private_key,
            pad_key,
            pad_crypto,
        }
    }

    /// Explicit secrets: `pad_key` follows our public key, `pad_crypto` is
    /// PadC (initiator) or PadD (responder). Each at most 512 bytes.
    pub fn new(
        private_key: [u8; PRIVATE_KEY_LEN],
        pad_key: Vec<u8>,
        pad_crypto: Vec<u8>,
    ) -> Result<Secrets, MseError> {
        if pad_key.len() > MAX_PAD || pad_crypto.len() > MAX_PAD {
            return Err(MseError::InvalidParameters("padding longer than 512 bytes"));
        }
        Ok(Secrets {
            private_key,
            pad_key,
            pad_crypto,
        })
    }

    /// Our public key `2^X mod P`, 96 bytes big-endian.
    pub fn public_key(&self) -> [u8; KEY_LEN] {
        Residue::new(&U768::from_u8(2))
            .pow_bounded_exp(&self.exponent(), 8 * PRIVATE_KEY_LEN as u32)
            .retrieve()
            .to_be_bytes()
    }

    /// The shared secret `Y^X mod P` with the peer's public key, after
    /// checking that key is in 2..P-2.
    pub fn shared_secret(&self, remote: &[u8; KEY_LEN]) -> Result<[u8; KEY_LEN], MseError> {
        let y = U768::from_be_slice(remote);
        // Public values: a variable-time comparison leaks nothing.
        let p_minus_1 = P_MODULUS.wrapping_sub(&U768::ONE);
        if y <= U768::ONE || y >= p_minus_1 {
            return Err(MseError::InvalidPublicKey);
        }
        Ok(Residue::new(&y)
            .pow_bounded_exp(&self.exponent(), 8 * PRIVATE_KEY_LEN as u32)
            .retrieve()
            .to_be_bytes())
    }

    fn exponent(&self) -> U192 {
        let mut b = [0u8; 24];
        b[24 - PRIVATE_KEY_LEN..].copy_from_slice(&self.private_key);
        U192::from_be_slice(&b)
    }
}

/// One direction's RC4 keystream, its first 1024 bytes already discarded.
pub struct KeyStream(Rc4<U20>);

impl KeyStream {
    /// RC4 keyed with `key` (an MSE key is a 20-byte SHA-1), after the
    /// 1024-byte discard.
    pub fn new(key: &[u8; 20]) -> KeyStream {
        let mut rc4 = Rc4::<U20>::new(key.into());
        let mut discard = [0u8; DISCARD];
        rc4.apply_keystream(&mut discard);
        KeyStream(rc4)
    }

    /// Encrypts or decrypts `data` in place (RC4 is its own inverse),
    /// advancing the keystream by `data.len()` bytes.
    pub fn apply(&mut self, data: &mut [u8]) {
        self.0.apply_keystream(data);
    }
}

impl std::fmt::Debug for KeyStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyStream(..)")
    }
}

/// The two keystreams of a connection, from our point of view.
#[derive(Debug)]
pub struct Ciphers {
    /// Encrypts what we send.
    pub encrypt: KeyStream,
    /// Decrypts what we receive.
    pub decrypt: KeyStream,
}

/// The keys both sides derive from the shared secret and the info-hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerivedKeys {
    /// `HASH('req1', S)`: the initiator's synchronisation hash.
    pub req1: [u8; 20],
    /// `HASH('req2', SKEY) xor HASH('req3', S)`: the obfuscated SKEY hash.
    pub req2_xor_req3: [u8; 20],
    /// `HASH('keyA', S, SKEY)`: RC4 key from initiator to responder.
    pub key_a: [u8; 20],
    /// `HASH('keyB', S, SKEY)`: RC4 key from responder to initiator.
    pub key_b: [u8; 20],
}

impl DerivedKeys {
    /// Derives every key of the exchange from `S` and `SKEY`.
    pub fn new(secret: &[u8; KEY_LEN], info_hash: &[u8; 20]) -> DerivedKeys {
        DerivedKeys {
            req1: hash(&[b"req1", secret]),
            req2_xor_req3: xor(&req2_hash(info_hash), &hash(&[b"req3", secret])),
            key_a: hash(&[b"keyA", secret, info_hash]),
            key_b: hash(&[b"keyB", secret, info_hash]),
        }
    }
}

/// The outcome of a completed handshake.
#[derive(Debug)]
pub struct Established {
    /// The torrent (SKEY) the connection is for.
    pub info_hash: [u8; 20],
    /// The payload method both sides agreed on.
    pub crypto: Crypto,
    /// The keystreams for the payload, when `crypto` is RC4.
    pub ciphers: Option<Ciphers>,
    /// Responder: the initiator's initial payload, decrypted (usually its
    /// BitTorrent handshake); it precedes the payload. Initiator: empty.
    pub initial_payload: Vec<u8>,
}

fn hash(parts: &[&[u8]]) -> [u8; 20] {
    let mut h = Sha1::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn xor(a: &[u8; 20], b: &[u8; 20]) -> [u8; 20] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// Moves bytes from `input` into `buf` until it holds `want`; returns the
/// bytes taken and whether `buf` is complete.
fn fill(buf: &mut Vec<u8>, input: &[u8], want: usize) -> (usize, bool) {
    let take = want.saturating_sub(buf.len()).min(input.len());
    buf.extend_from_slice(&input[..take]);
    (take, buf.len() >= want)
}

enum Scan {
    /// The pattern ends after this many bytes of the input.
    Found(usize),
    /// Not yet; all the input was taken.
    More(usize),
    /// The window is full and holds no match.
    Exhausted,
}

/// Appends `input` to `buf` up to `window` bytes and looks for `pattern`.
/// Bytes after a match are left in `input`: they belong to the next state.
fn scan(buf: &mut Vec<u8>, input: &[u8], pattern: &[u8], window: usize) -> Scan {
    let old = buf.len();
    let take = (window - old).min(input.len());
    buf.extend_from_slice(&input[..take]);
    // A match not found before must end in the new bytes.
    let from = old.saturating_sub(pattern.len() - 1);
    if let Some(at) = buf[from..]
        .windows(pattern.len())
        .position(|w| w == pattern)
    {
        let end = from + at + pattern.len();
        buf.clear();
        return Scan::Found(end - old);
    }
    if buf.len() >= window {
        Scan::Exhausted
    } else {
        Scan::More(take)
    }
}

fn be_u16(b: &[u8]) -> usize {
    usize::from(u16::from_be_bytes([b[0], b[1]]))
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// The bytes a state needs, and the state after it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Failed(MseError),
    Done,
    // Initiator.
    ReadYb,
    ScanVc,
    ReadSelect,
    ReadPadD(Crypto, usize),
    // Responder.
    ReadYa,
    ScanReq1,
    ReadReq2,
    ReadProvide,
    ReadPadC(Crypto, usize),
    ReadIaLen(Crypto),
    ReadIa(Crypto, usize),
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::Failed(_) => "failed",
            Phase::Done => "done",
            Phase::ReadYb | Phase::ReadYa => "reading the peer's key",
            Phase::ScanVc => "searching for the verification constant",
            Phase::ReadSelect => "reading crypto_select",
            Phase::ReadPadD(..) => "reading PadD",
            Phase::ScanReq1 => "searching for the synchronisation hash",
            Phase::ReadReq2 => "reading the SKEY hash",
            Phase::ReadProvide => "reading crypto_provide",
            Phase::ReadPadC(..) => "reading PadC",
            Phase::ReadIaLen(_) => "reading len(IA)",
            Phase::ReadIa(..) => "reading the initial payload",
        }
    }
}

/// What both roles share: the phase, the input buffer, the output queue.
struct Core {
    secrets: Secrets,
    phase: Phase,
    buf: Vec<u8>,
    out: Vec<u8>,
    ciphers: Option<Ciphers>,
    established: Option<Established>,
}

impl Core {
    fn new(secrets: Secrets, phase: Phase) -> Core {
        Core {
            secrets,
            phase,
            buf: Vec::with_capacity(KEY_LEN),
            out: Vec::new(),
            ciphers: None,
            established: None,
        }
    }

    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        (!self.out.is_empty()).then(|| std::mem::take(&mut self.out))
    }

    /// Runs `step` over `input` until it is used up or the handshake ends.
    /// Every step takes at least one byte or changes the phase.
    fn drive(
        &mut self,
        input: &[u8],
        mut step: impl FnMut(&mut Core, &[u8]) -> Result<usize, MseError>,
    ) -> Result<usize, MseError> {
        let mut used = 0;
        loop {
            match &self.phase {
                Phase::Failed(e) => return Err(e.clone()),
                Phase::Done => return Ok(used),
                _ if used == input.len() => return Ok(used),
                _ => {}
            }
            match step(self, &input[used..]) {
                Ok(n) => used += n,
                Err(e) => {
                    self.phase = Phase::Failed(e.clone());
                    return Err(e);
                }
            }
        }
    }

    /// Decrypts the buffer in place with the receive keystream.
    fn decrypt_buf(&mut self) {
        if let Some(c) = &mut self.ciphers {
            c.decrypt.apply(&mut self.buf);
        }
    }

    fn finish(&mut self, info_hash: [u8; 20], crypto: Crypto, initial_payload: Vec<u8>) {
        let ciphers = self.ciphers.take();
        self.established = Some(Established {
            info_hash,
            crypto,
            ciphers: if crypto == Crypto::Rc4 { ciphers } else { None },
            initial_payload,
        });
        self.phase = Phase::Done;
        self.buf = Vec::new();
    }
}

/// The outputs both roles share, over their [`Core`].
macro_rules! role_methods {
    ($role:ident) => {
        impl $role {
            /// Bytes to send, if any: take them all and write them in order.
            pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
                self.core.poll_transmit()
            }

            /// Whether the handshake is complete (a responder's last message
            /// is then queued for `poll_transmit`).
            pub fn is_established(&self) -> bool {
                self.core.phase == Phase::Done
            }

            /// The result, once established (only the first call returns it).
            pub fn take_established(&mut self) -> Option<Established> {
                self.core.established.take()
            }

            /// The current state, for logs.
            pub fn state(&self) -> &'static str {
                self.core.phase.name()
            }
        }
    };
}

/// The side that dials: knows the torrent, speaks first.
pub struct Initiator {
    core: Core,
    info_hash: [u8; 20],
    provide: CryptoSet,
    ia: Vec<u8>,
    /// ENCRYPT(VC) as the responder's keystream makes it.
    vc_pattern: [u8; VC_LEN],
}

impl Initiator {
    /// Starts a handshake for `info_hash` offering `provide`, with `ia` (our
    /// BitTorrent handshake, or nothing) as the initial payload. Ya and PadA
    /// are queued for [`poll_transmit`](Self::poll_transmit) at once.
    pub fn new(
        info_hash: [u8; 20],
        provide: CryptoSet,
        ia: &[u8],
        secrets: Secrets,
    ) -> Result<Initiator, MseError> {
        if provide.is_empty() {
            return Err(MseError::InvalidParameters("no crypto method to provide"));
        }
        if ia.len() > usize::from(u16::MAX) {
            return Err(MseError::InvalidParameters(
                "initial payload over 65535 bytes",
            ));
        }
        let mut core = Core::new(secrets, Phase::ReadYb);
        core.out.extend_from_slice(&core.secrets.public_key());
        core.out.extend_from_slice(&core.secrets.pad_key);
        Ok(Initiator {
            core,
            info_hash,
            provide,
            ia: ia.to_vec(),
            vc_pattern: [0; VC_LEN],
        })
    }

    /// Feeds bytes read from the peer. Returns how many belong to the
    /// handshake: all of them until it is established, after which the rest
    /// are payload. Once it fails, every call returns the same error.
    pub fn handle_input(&mut self, input: &[u8]) -> Result<usize, MseError> {
        let (info_hash, provide) = (self.info_hash, self.provide);
        let (ia, vc_pattern) = (&self.ia, &mut self.vc_pattern);
        self.core.drive(input, |core, input| {
            initiator_step(core, input, &info_hash, provide, ia, vc_pattern)
        })
    }
}

role_methods!(Initiator);

fn initiator_step(
    core: &mut Core,
    input: &[u8],
    info_hash: &[u8; 20],
    provide: CryptoSet,
    ia: &[u8],
    vc_pattern: &mut [u8; VC_LEN],
) -> Result<usize, MseError> {
    match core.phase.clone() {
        Phase::ReadYb => {
            let (n, full) = fill(&mut core.buf, input, KEY_LEN);
            if full {
                let yb: [u8; KEY_LEN] = core.buf[..].try_into().expect("96 bytes");
                core.buf.clear();
                let s = core.secrets.shared_secret(&yb)?;
                let keys = DerivedKeys::new(&s, info_hash);
                let mut ciphers = Ciphers {
                    encrypt: KeyStream::new(&keys.key_a),
                    decrypt: KeyStream::new(&keys.key_b),
                };
                // The responder's first encrypted bytes are its VC.
                ciphers.decrypt.apply(vc_pattern);
                let pad = &core.secrets.pad_crypto;
                let out = &mut core.out;
                out.extend_from_slice(&keys.req1);
                out.extend_from_slice(&keys.req2_xor_req3);
                let start = out.len();
                out.extend_from_slice(&[0; VC_LEN]);
                out.extend_from_slice(&provide.bits().to_be_bytes());
                out.extend_from_slice(&(pad.len() as u16).to_be_bytes());
                out.extend_from_slice(pad);
                out.extend_from_slice(&(ia.len() as u16).to_be_bytes());
                out.extend_from_slice(ia);
                ciphers.encrypt.apply(&mut out[start..]);
                core.ciphers = Some(ciphers);
                core.phase = Phase::ScanVc;
            }
            Ok(n)
        }
        Phase::ScanVc => match scan(&mut core.buf, input, vc_pattern, MAX_PAD + VC_LEN) {
            Scan::Found(n) => {
                core.phase = Phase::ReadSelect;
                Ok(n)
            }
            Scan::More(n) => Ok(n),
            Scan::Exhausted => Err(MseError::VcNotFound {
                scanned: MAX_PAD + VC_LEN,
            }),
        },
        Phase::ReadSelect => {
            let (n, full) = fill(&mut core.buf, input, 6);
            if full {
                core.decrypt_buf();
                let selected = be_u32(&core.buf[..4]);
                let pad = be_u16(&core.buf[4..6]);
                core.buf.clear();
                // Exactly one method, and one we offered.
                let crypto = [Crypto::Plaintext, Crypto::Rc4]
                    .into_iter()
                    .find(|c| selected == c.bit() && provide.contains(*c))
                    .ok_or(MseError::SelectNotOffered {
                        selected,
                        offered: provide.bits(),
                    })?;
                if pad > MAX_PAD {
                    return Err(MseError::PadTooLong { len: pad });
                }
                core.phase = Phase::ReadPadD(crypto, pad);
                if pad == 0 {
                    core.finish(*info_hash, crypto, Vec::new());
                }
            }
            Ok(n)
        }
        Phase::ReadPadD(crypto, len) => {
            let (n, full) = fill(&mut core.buf, input, len);
            if full {
                // Keeps the keystream in step; PadD's content is meaningless.
                core.decrypt_buf();
                core.finish(*info_hash, crypto, Vec::new());
            }
            Ok(n)
        }
        other => unreachable!("initiator in responder phase {other:?}"),
    }
}

/// The side that accepts: learns the torrent from the SKEY hash.
pub struct Responder {
    core: Core,
    accept: CryptoSet,
    req1: [u8; 20],
    secret: [u8; KEY_LEN],
    info_hash: [u8; 20],
}

impl Responder {
    /// Waits for an initiator's key; will select RC4 if it is offered and in
    /// `accept`, else plaintext if offered and accepted.
    pub fn new(accept: CryptoSet, secrets: Secrets) -> Result<Responder, MseError> {
        if accept.is_empty() {
            return Err(MseError::InvalidParameters("no crypto method to accept"));
        }
        Ok(Responder {
            core: Core::new(secrets, Phase::ReadYa),
            accept,
            req1: [0; 20],
            secret: [0; KEY_LEN],
            info_hash: [0; 20],
        })
    }

    /// Feeds bytes read from the peer (the bytes [`detect`] looked at
    /// included). Returns how many belong to the handshake: all of them
    /// until it is established, after which the rest are payload. `lookup`
    /// is asked once, when the SKEY hash has arrived. Once it fails, every
    /// call returns the same error.
    pub fn handle_input<L: SkeyLookup + ?Sized>(
        &mut self,
        input: &[u8],
        lookup: &L,
    ) -> Result<usize, MseError> {
        let accept = self.accept;
        let (req1, secret, info_hash) = (&mut self.req1, &mut self.secret, &mut self.info_hash);
        self.core.drive(input, |core, input| {
            responder_step(core, input, accept, lookup, req1, secret, info_hash)
        })
    }
}

role_methods!(Responder);

fn responder_step<L: SkeyLookup + ?Sized>(
    core: &mut Core,
    input: &[u8],
    accept: CryptoSet,
    lookup: &L,
    req1: &mut [u8; 20],
    secret: &mut [u8; KEY_LEN],
    info_hash: &mut [u8; 20],
) -> Result<usize, MseError> {
    match core.phase.clone() {
        Phase::ReadYa => {
            let (n, full) = fill(&mut core.buf, input, KEY_LEN);
            if full {
                let ya: [u8; KEY_LEN] = core.buf[..].try_into().expect("96 bytes");
                core.buf.clear();
                *secret = core.secrets.shared_secret(&ya)?;
                *req1 = hash(&[b"req1", secret]);
                core.out.extend_from_slice(&core.secrets.public_key());
                core.out.extend_from_slice(&core.secrets.pad_key);
                core.phase = Phase::ScanReq1;
            }
            Ok(n)
        }
        Phase::ScanReq1 => match scan(&mut core.buf, input, req1, MAX_PAD + 20) {
            Scan::Found(n) => {
                core.phase = Phase::ReadReq2;
                Ok(n)
            }
            Scan::More(n) => Ok(n),
            Scan::Exhausted => Err(MseError::SyncHashNotFound {
                scanned: MAX_PAD + 20,
            }),
        },
        Phase::ReadReq2 => {
            let (n, full) = fill(&mut core.buf, input, 20);
            if full {
                let got: [u8; 20] = core.buf[..].try_into().expect("20 bytes");
                core.buf.clear();
                let req2 = xor(&got, &hash(&[b"req3", secret]));
                *info_hash = lookup.find(&req2).ok_or(MseError::UnknownSkey)?;
                let keys = DerivedKeys::new(secret, info_hash);
                core.ciphers = Some(Ciphers {
                    encrypt: KeyStream::new(&keys.key_b),
                    decrypt: KeyStream::new(&keys.key_a),
                });
                core.phase = Phase::ReadProvide;
            }
            Ok(n)
        }
        Phase::ReadProvide => {
            let (n, full) = fill(&mut core.buf, input, VC_LEN + 4 + 2);
            if full {
                core.decrypt_buf();
                let vc: [u8; VC_LEN] = core.buf[..VC_LEN].try_into().expect("8 bytes");
                if vc != [0; VC_LEN] {
                    return Err(MseError::BadVc { found: vc });
                }
                let provided = be_u32(&core.buf[VC_LEN..VC_LEN + 4]);
                let pad = be_u16(&core.buf[VC_LEN + 4..]);
                core.buf.clear();
                let offered = CryptoSet(provided & accept.bits());
                let crypto = if offered.contains(Crypto::Rc4) {
                    Crypto::Rc4
                } else if offered.contains(Crypto::Plaintext) {
                    Crypto::Plaintext
                } else {
                    return Err(MseError::NoCommonCrypto {
                        provided,
                        accepted: accept.bits(),
                    });
                };
                if pad > MAX_PAD {
                    return Err(MseError::PadTooLong { len: pad });
                }
                core.phase = if pad == 0 {
                    Phase::ReadIaLen(crypto)
                } else {
                    Phase::ReadPadC(crypto, pad)
                };
            }
            Ok(n)
        }
        Phase::ReadPadC(crypto, len) => {
            let (n, full) = fill(&mut core.buf, input, len);
            if full {
                core.decrypt_buf();
                core.buf.clear();
                core.phase = Phase::ReadIaLen(crypto);
            }
            Ok(n)
        }
        Phase::ReadIaLen(crypto) => {
            let (n, full) = fill(&mut core.buf, input, 2);
            if full {
                core.decrypt_buf();
                let len = be_u16(&core.buf);
                core.buf.clear();
                if len > MAX_IA_LEN {
                    return Err(MseError::IaTooLong { len });
                }
                core.phase = Phase::ReadIa(crypto, len);
                if len == 0 {
                    respond(core, *info_hash, crypto, Vec::new());
                }
            }
            Ok(n)
        }
        Phase::ReadIa(crypto, len) => {
            let (n, full) = fill(&mut core.buf, input, len);
            if full {
                core.decrypt_buf();
                let ia = std::mem::take(&mut core.buf);
                respond(core, *info_hash, crypto, ia);
            }
            Ok(n)
        }
        other => unreachable!("responder in initiator phase {other:?}"),
    }
}

/// Queues step 4, ENCRYPT(VC, crypto_select, len(PadD), PadD), and ends.
fn respond(core: &mut Core, info_hash: [u8; 20], crypto: Crypto, ia: Vec<u8>) {
    let pad = &core.secrets.pad_crypto;
    let out = &mut core.out;
    let start = out.len();
    out.extend_from_slice(&[0; VC_LEN]);
    out.extend_from_slice(&crypto.bit().to_be_bytes());
    out.extend_from_slice(&(pad.len() as u16).to_be_bytes());
    out.extend_from_slice(pad);
    if let Some(c) = &mut core.ciphers {
        c.encrypt.apply(&mut out[start..]);
    }
    core.finish(info_hash, crypto, ia);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prime_is_the_oakley_group_1_prime() {
        let p = P_MODULUS.to_be_bytes();
        assert_eq!(p[..8], [0xff; 8]);
        assert_eq!(p[KEY_LEN - 8..], [0, 0, 0, 0, 0, 0x09, 0x05, 0x63]);
        assert_eq!(P_MODULUS.bits(), 768);
    }

    #[test]
    fn scan_leaves_bytes_after_the_match() {
        let mut buf = b"xxab".to_vec();
        match scan(&mut buf, b"cdyy", b"abcd", 16) {
            Scan::Found(n) => assert_eq!(n, 2),
            _ => panic!("no match"),
        }
        assert!(buf.is_empty());
    }
}
