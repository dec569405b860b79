"""Loads each .torrent given with libtorrent (python3-libtorrent) and prints
one JSON object per file: libtorrent's verdict and, when it accepts, what it
read (name, files, sizes, pieces, v1 info-hash)."""
import json
import sys

import libtorrent as lt

for path in sys.argv[1:]:
    out = {"file": path.rsplit("/", 1)[-1]}
    try:
        ti = lt.torrent_info(path)
        fs = ti.files()
        out.update(
            ok=True,
            name=ti.name(),
            num_files=fs.num_files(),
            total_size=ti.total_size(),
            num_pieces=ti.num_pieces(),
            piece_length=ti.piece_length(),
            v1=ti.info_hashes().has_v1(),
            info_hash=str(ti.info_hashes().v1) if ti.info_hashes().has_v1() else None,
        )
    except Exception as e:  # libtorrent raises RuntimeError with its message
        out.update(ok=False, error=str(e))
    print(json.dumps(out), flush=True)
