"""What the lab needs to read of a torrent, of actorrent's resume data and
of a payload on disk, to check the faults' claims from the outside.

Only trusted input comes here (torrents the lab made, resume files of the
client under test, which the lab checks rather than believes).
"""

import hashlib
import os
import struct


def bdecode(data):
    """Decodes bencode; returns (value, info_span) where info_span is the
    (start, end) of the top-level `info` value, for the info-hash."""
    info_span = [None]

    def parse(i, depth):
        c = data[i : i + 1]
        if c == b"i":
            j = data.index(b"e", i)
            return int(data[i + 1 : j]), j + 1
        if c == b"l":
            i += 1
            out = []
            while data[i : i + 1] != b"e":
                v, i = parse(i, depth + 1)
                out.append(v)
            return out, i + 1
        if c == b"d":
            i += 1
            out = {}
            while data[i : i + 1] != b"e":
                k, i = parse(i, depth + 1)
                start = i
                v, i = parse(i, depth + 1)
                if depth == 0 and k == b"info":
                    info_span[0] = (start, i)
                out[k] = v
            return out, i + 1
        j = data.index(b":", i)
        n = int(data[i:j])
        return data[j + 1 : j + 1 + n], j + 1 + n

    value, end = parse(0, 0)
    if end != len(data):
        raise ValueError("trailing bytes after the bencoded value")
    return value, info_span[0]


class Torrent:
    """A v1 torrent: piece length, piece hashes, files (or raw extents)."""

    def __init__(self, path):
        raw = open(path, "rb").read()
        top, span = bdecode(raw)
        info = top[b"info"]
        self.info_hash = hashlib.sha1(raw[span[0] : span[1]]).hexdigest()
        self.name = info[b"name"].decode()
        self.piece_length = info[b"piece length"]
        p = info[b"pieces"]
        self.hashes = [p[i : i + 20] for i in range(0, len(p), 20)]
        if b"files" in info:
            self.files = [("/".join(c.decode() for c in f[b"path"]), f[b"length"]) for f in info[b"files"]]
        else:
            self.files = [(None, info[b"length"])]
        self.total_length = sum(length for _, length in self.files)

    def piece_size(self, i):
        if i < len(self.hashes) - 1:
            return self.piece_length
        return self.total_length - self.piece_length * (len(self.hashes) - 1)

    def missing_bytes(self, have):
        """Bytes of the pieces not in `have` (a set of indices)."""
        return sum(self.piece_size(i) for i in range(len(self.hashes)) if i not in have)


def stream_pieces(torrent, read_at):
    """Yields (index, bytes) of every piece, reading the torrent's files in
    order through `read_at(file_index, offset, length)`."""
    buf = bytearray()
    index = 0
    for fi, (_, length) in enumerate(torrent.files):
        off = 0
        while off < length:
            n = min(8 << 20, length - off)
            buf += read_at(fi, off, n)
            off += n
            while len(buf) >= torrent.piece_length:
                yield index, bytes(buf[: torrent.piece_length])
                del buf[: torrent.piece_length]
                index += 1
    if buf:
        yield index, bytes(buf)


def verified_pieces(torrent, paths):
    """Indices of the pieces whose bytes on disk hash right. `paths` is one
    path per file of the torrent, or (for raw mode) a (path, [offsets])
    pair naming one image and each extent's offset in it."""
    if isinstance(paths, tuple):
        image, offsets = paths
        fds = [os.open(image, os.O_RDONLY)] if os.path.exists(image) else [None]

        def read_at(fi, off, n):
            if fds[0] is None:
                return b"\0" * n
            b = os.pread(fds[0], n, offsets[fi] + off)
            return b + b"\0" * (n - len(b))

    else:
        fds = [os.open(p, os.O_RDONLY) if os.path.exists(p) else None for p in paths]

        def read_at(fi, off, n):
            fd = fds[fi]
            if fd is None:
                return b"\0" * n
            b = os.pread(fd, n, off)
            return b + b"\0" * (n - len(b))

    try:
        return {i for i, data in stream_pieces(torrent, read_at) if hashlib.sha1(data).digest() == torrent.hashes[i]}
    finally:
        for fd in fds:
            if fd is not None:
                os.close(fd)


def read_resume(path):
    """The pieces an actorrent resume file claims (a set), or None when it
    is missing or malformed (format: storage/src/resume.rs, versions 1 and
    2)."""
    try:
        b = open(path, "rb").read()
    except FileNotFoundError:
        return None
    header = 8 + 4 + 20 + 4 + 4
    if len(b) < header + 20 or b[:8] != b"ACTRRSM\0":
        return None
    if hashlib.sha1(b[:-20]).digest() != b[-20:]:
        return None
    (version,) = struct.unpack_from("<I", b, 8)
    pieces, targets = struct.unpack_from("<II", b, 32)
    if version == 1:
        bits = b[header + targets * 20 : -20]
    elif version == 2:
        # Then files, slots, refs; an optional stamp (present byte + 20) per
        # target and for the part file; a priority byte per file; 12 bytes
        # per slot and 4 per file index the slots name.
        if len(b) < header + 12 + 20:
            return None
        files, slots, refs = struct.unpack_from("<III", b, header)
        start = header + 12 + (targets + 1) * 21 + files + slots * 12 + refs * 4
        bits = b[start:-20]
    else:
        return None
    if len(bits) != (pieces + 7) // 8:
        return None
    return {i for i in range(pieces) if bits[i // 8] & (0x80 >> (i % 8))}
