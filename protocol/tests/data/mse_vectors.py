#!/usr/bin/env python3
"""Independent MSE/PE vectors for protocol/src/mse.rs.

Uses nothing but the standard library (hashlib, pow) and a textbook ARC4, so
it shares no code with the Rust implementation. For fixed private keys,
paddings and info-hashes it derives the shared secret, the req hashes and
RC4 keys, and the exact bytes of the four handshake messages plus a payload
in each direction, and prints them as `case.name = hex` lines. The output is
committed beside this script as mse_vectors.txt; protocol/tests/mse.rs
checks the Rust machine against that file and that this script still prints
it.

    python3 protocol/tests/data/mse_vectors.py > protocol/tests/data/mse_vectors.txt
"""

import hashlib

P = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA6"
    "3B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245"
    "E485B576625E7EC6F44C42E9A63A36210000000000090563",
    16,
)
G = 2


class Arc4:
    def __init__(self, key, discard=0):
        s = list(range(256))
        j = 0
        for i in range(256):
            j = (j + s[i] + key[i % len(key)]) % 256
            s[i], s[j] = s[j], s[i]
        self.s, self.i, self.j = s, 0, 0
        self.apply(bytes(discard))

    def apply(self, data):
        s, out = self.s, bytearray()
        for b in data:
            self.i = (self.i + 1) % 256
            self.j = (self.j + s[self.i]) % 256
            s[self.i], s[self.j] = s[self.j], s[self.i]
            out.append(b ^ s[(s[self.i] + s[self.j]) % 256])
        return bytes(out)


# RFC 6229, 128-bit key 0x0102...10, keystream at offset 1024 (0x400): the
# offset MSE starts at. Checks this ARC4 before it is trusted below.
assert Arc4(bytes(range(1, 17)), 1024).apply(bytes(16)) == bytes.fromhex(
    "bdf0324e6083dcc6d3cedd3ca8c53c16"
)


def sha1(*parts):
    return hashlib.sha1(b"".join(parts)).digest()


def xor(a, b):
    return bytes(x ^ y for x, y in zip(a, b))


def be(n, width):
    return n.to_bytes(width, "big")


def pattern(seed, n):
    return bytes((seed + 7 * i) % 256 for i in range(n))


def case(name, xa, xb, pad_a, pad_b, pad_c, pad_d, info_hash, provide, accept, ia):
    out = []

    def emit(key, value):
        out.append(f"{name}.{key} = {value.hex() if isinstance(value, bytes) else value}")

    ya = be(pow(G, int.from_bytes(xa, "big"), P), 96)
    yb = be(pow(G, int.from_bytes(xb, "big"), P), 96)
    s = be(pow(int.from_bytes(yb, "big"), int.from_bytes(xa, "big"), P), 96)
    assert s == be(pow(int.from_bytes(ya, "big"), int.from_bytes(xb, "big"), P), 96)
    req1 = sha1(b"req1", s)
    req2 = sha1(b"req2", info_hash)
    req3 = sha1(b"req3", s)
    key_a = sha1(b"keyA", s, info_hash)
    key_b = sha1(b"keyB", s, info_hash)
    a2b = Arc4(key_a, 1024)  # what A sends, B receives
    b2a = Arc4(key_b, 1024)
    selected = 0x02 if provide & accept & 0x02 else 0x01
    msg1 = ya + pad_a
    msg2 = yb + pad_b
    msg3 = req1 + xor(req2, req3) + a2b.apply(
        bytes(8) + be(provide, 4) + be(len(pad_c), 2) + pad_c + be(len(ia), 2) + ia
    )
    msg4 = b2a.apply(bytes(8) + be(selected, 4) + be(len(pad_d), 2) + pad_d)
    payload_a, payload_b = b"payload from the initiator", b"payload from the responder"
    if selected == 0x02:
        wire_a, wire_b = a2b.apply(payload_a), b2a.apply(payload_b)
    else:
        wire_a, wire_b = payload_a, payload_b
    for key, value in [
        ("xa", xa), ("xb", xb), ("pad_a", pad_a), ("pad_b", pad_b),
        ("pad_c", pad_c), ("pad_d", pad_d), ("info_hash", info_hash),
        ("provide", be(provide, 4)), ("accept", be(accept, 4)), ("ia", ia),
        ("ya", ya), ("yb", yb), ("s", s), ("req1", req1), ("req2", req2),
        ("req3", req3), ("req2_xor_req3", xor(req2, req3)),
        ("key_a", key_a), ("key_b", key_b),
        ("keystream_a", Arc4(key_a, 1024).apply(bytes(32))),
        ("keystream_b", Arc4(key_b, 1024).apply(bytes(32))),
        ("msg1", msg1), ("msg2", msg2), ("msg3", msg3), ("msg4", msg4),
        ("selected", be(selected, 4)),
        ("payload_a", payload_a), ("wire_a", wire_a),
        ("payload_b", payload_b), ("wire_b", wire_b),
    ]:
        emit(key, value)
    return out


handshake = (
    b"\x13BitTorrent protocol" + bytes([0, 0, 0, 0, 0, 0x10, 0, 0x05])
    + pattern(3, 20) + b"-AT0001-" + pattern(9, 12)
)
lines = []
# RC4 selected, a BitTorrent handshake as IA, short paddings.
lines += case(
    "rc4", pattern(1, 20), pattern(101, 20), pattern(11, 13), pattern(21, 300),
    pattern(31, 5), pattern(41, 17), pattern(3, 20), 0x03, 0x03, handshake,
)
# Plaintext selected (the responder accepts only plaintext), no IA, the
# longest paddings and an empty one.
lines += case(
    "plain", pattern(201, 20), pattern(77, 20), pattern(51, 512), b"",
    pattern(61, 512), pattern(71, 512), pattern(5, 20), 0x03, 0x01, b"",
)
print("\n".join(lines))
