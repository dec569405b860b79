//! Metainfo parsing: hand-built torrents checked against info-hashes
//! computed independently with Python's hashlib, geometry validation, and
//! every unsafe file-name form.

use protocol::bencode::{Bencode, DecodeError};
use protocol::metainfo::{FileEntry, Info, InfoHash, Metainfo, MetainfoError, PathError};

/// Single file "a.txt", 20 bytes, 16-byte pieces: two pieces, the last 4 bytes.
fn single_info() -> Vec<u8> {
    [
        &b"d6:lengthi20e4:name5:a.txt12:piece lengthi16e6:pieces40:"[..],
        &[b'A'; 20],
        &[b'B'; 20],
        b"e",
    ]
    .concat()
}
// python3 -c 'import hashlib; print(hashlib.sha1(b"d6:lengthi20e4:name5:a.txt12:piece lengthi16e6:pieces40:" + b"A"*20 + b"B"*20 + b"e").hexdigest())'
const SINGLE_HASH: &str = "cf00bf9a418afc400e913d0f74ff9e3e2dc4a641";

/// Multi-file "root": dir/f1 (10 bytes), empty.txt (0 bytes), dir/f2 (30
/// bytes, spanning all three pieces); 16-byte pieces, the last 8 bytes.
fn multi_info() -> Vec<u8> {
    [
        &b"d5:filesld6:lengthi10e4:pathl3:dir2:f1eed6:lengthi0e4:pathl9:empty.txteed6:lengthi30e4:pathl3:dir2:f2eee4:name4:root12:piece lengthi16e6:pieces60:"[..],
        &[b'A'; 20],
        &[b'B'; 20],
        &[b'C'; 20],
        b"e",
    ]
    .concat()
}
// python3 -c 'import hashlib; print(hashlib.sha1(b"d5:filesld6:lengthi10e4:pathl3:dir2:f1eed6:lengthi0e4:pathl9:empty.txteed6:lengthi30e4:pathl3:dir2:f2eee4:name4:root12:piece lengthi16e6:pieces60:" + b"A"*20 + b"B"*20 + b"C"*20 + b"e").hexdigest())'
const MULTI_HASH: &str = "f1a141c57932412a8a4bbeee74bfa6b435a43c36";

/// Unsorted keys, private flag set: the hash must cover the bytes as given.
fn unsorted_private_info() -> Vec<u8> {
    [
        &b"d4:name5:a.txt6:lengthi16e12:piece lengthi16e6:pieces20:"[..],
        &[b'A'; 20],
        b"7:privatei1ee",
    ]
    .concat()
}
// python3 -c 'import hashlib; print(hashlib.sha1(b"d4:name5:a.txt6:lengthi16e12:piece lengthi16e6:pieces20:" + b"A"*20 + b"7:privatei1ee").hexdigest())'
const UNSORTED_HASH: &str = "62e519b7b5368d8631696638c580ee47a2c4a9a4";

/// Wraps an info dictionary in a torrent with the given extra top-level
/// entries (already bencoded, keys in order before "info").
fn torrent(before_info: &[u8], info: &[u8], after_info: &[u8]) -> Vec<u8> {
    [&b"d"[..], before_info, b"4:info", info, after_info, b"e"].concat()
}

#[test]
fn single_file_torrent() {
    let info = single_info();
    let bytes = torrent(
        b"8:announce13:http://t/ann17:comment5:hello10:created by4:test13:creation datei1700000000e",
        &info,
        b"",
    );
    let m = Metainfo::from_bytes(&bytes).unwrap();
    assert_eq!(m.info_hash.to_hex(), SINGLE_HASH);
    assert_eq!(m.info_hash, InfoHash::from_hex(SINGLE_HASH).unwrap());
    assert_eq!(m.info_bytes, info);
    assert_eq!(m.announce.as_deref(), Some("http://t/ann1"));
    assert_eq!(m.trackers, vec![vec!["http://t/ann1".to_string()]]);
    assert_eq!(m.comment.as_deref(), Some("hello"));
    assert_eq!(m.created_by.as_deref(), Some("test"));
    assert_eq!(m.creation_date, Some(1_700_000_000));
    assert!(m.url_list.is_empty());

    let i = &m.info;
    assert_eq!(i.name, "a.txt");
    assert!(!i.multi_file && !i.private);
    assert_eq!(i.piece_length, 16);
    assert_eq!(i.total_length, 20);
    assert_eq!(i.piece_count(), 2);
    assert_eq!((i.piece_len(0), i.piece_len(1), i.piece_len(2)), (16, 4, 0));
    assert_eq!(i.piece_hash(0), Some(&[b'A'; 20]));
    assert_eq!(i.piece_hash(1), Some(&[b'B'; 20]));
    assert_eq!(i.piece_hash(2), None);
    assert_eq!(
        i.files,
        vec![FileEntry {
            path: vec!["a.txt".into()],
            length: 20,
            offset: 0,
            padding: false
        }]
    );
    // The bare info dictionary parses the same way.
    assert_eq!(&Info::from_bytes(&info).unwrap(), i);
}

#[test]
fn multi_file_torrent_with_spanning_and_empty_files() {
    let info = multi_info();
    let m = Metainfo::from_bytes(&torrent(b"", &info, b"")).unwrap();
    assert_eq!(m.info_hash.to_string(), MULTI_HASH);
    assert_eq!(format!("{:?}", m.info_hash), MULTI_HASH);
    assert!(m.announce.is_none() && m.trackers.is_empty());
    let i = &m.info;
    assert_eq!(i.name, "root");
    assert!(i.multi_file);
    assert_eq!(i.total_length, 40);
    assert_eq!(i.piece_count(), 3);
    assert_eq!(
        (i.piece_len(0), i.piece_len(1), i.piece_len(2)),
        (16, 16, 8)
    );
    let files: Vec<(String, u64, u64)> = i
        .files
        .iter()
        .map(|f| (f.path.join("/"), f.length, f.offset))
        .collect();
    assert_eq!(
        files,
        vec![
            ("dir/f1".into(), 10, 0),
            ("empty.txt".into(), 0, 10),
            ("dir/f2".into(), 30, 10), // bytes 10..40: pieces 0, 1 and 2
        ]
    );
}

#[test]
fn hash_covers_raw_bytes_of_unsorted_info() {
    let m = Metainfo::from_bytes(&torrent(b"", &unsorted_private_info(), b"")).unwrap();
    assert_eq!(m.info_hash.to_hex(), UNSORTED_HASH);
    assert!(m.info.private);
    assert_eq!(m.info.piece_count(), 1);
    assert_eq!(m.info.piece_len(0), 16);
}

#[test]
fn announce_list_tiers_url_list_and_utf8_fields() {
    let bytes = torrent(
        b"8:announce5:http0\
          13:announce-listll5:http15:http2el5:http3i7eeleli5eel0:ee\
          13:comment.utf-84:good7:comment3:bad",
        &single_info(),
        b"8:url-listl9:http://ws0:i1ee",
    );
    let m = Metainfo::from_bytes(&bytes).unwrap();
    assert_eq!(m.announce.as_deref(), Some("http0"));
    // Non-string entries, non-list tiers, empty strings and empty tiers go.
    assert_eq!(
        m.trackers,
        vec![
            vec!["http1".to_string(), "http2".into()],
            vec!["http3".into()]
        ]
    );
    assert_eq!(m.url_list, vec!["http://ws".to_string()]);
    assert_eq!(m.comment.as_deref(), Some("good"));

    // An announce-list that ends up empty falls back to announce.
    let m = Metainfo::from_bytes(&torrent(
        b"8:announce5:http013:announce-listllee",
        &single_info(),
        b"",
    ))
    .unwrap();
    assert_eq!(m.trackers, vec![vec!["http0".to_string()]]);

    // url-list may be a single string; malformed informational fields are dropped.
    let m = Metainfo::from_bytes(&torrent(
        b"7:comment2:\xff\xfe10:created byi1e13:creation date3:now",
        &single_info(),
        b"8:url-list9:http://ws",
    ))
    .unwrap();
    assert_eq!(m.url_list, vec!["http://ws".to_string()]);
    assert_eq!(
        (m.comment, m.created_by, m.creation_date),
        (None, None, None)
    );
}

#[test]
fn wrong_types_of_depended_on_fields_are_errors() {
    let e = Metainfo::from_bytes(&torrent(b"13:announce-list5:http1", &single_info(), b""));
    assert_eq!(
        e,
        Err(MetainfoError::WrongType {
            key: "announce-list".into(),
            expected: "a list of lists"
        })
    );
    let e = Metainfo::from_bytes(&torrent(b"8:announcei1e", &single_info(), b""));
    assert!(matches!(e, Err(MetainfoError::WrongType { key, .. }) if key == "announce"));
    let e = Metainfo::from_bytes(&torrent(b"", b"le", b""));
    assert!(matches!(e, Err(MetainfoError::WrongType { key, .. }) if key == "info"));
    assert_eq!(
        Metainfo::from_bytes(b"d8:announce1:xe"),
        Err(MetainfoError::MissingKey { key: "info".into() })
    );
    assert!(matches!(
        Metainfo::from_bytes(b"li1ee"),
        Err(MetainfoError::WrongType { key, .. }) if key == "(root)"
    ));
    assert_eq!(
        Metainfo::from_bytes(b"d4:infod"),
        Err(MetainfoError::Bencode(DecodeError::UnexpectedEnd {
            offset: 8
        }))
    );
}

#[test]
fn name_utf8_and_path_utf8_are_preferred() {
    let info = [
        &b"d5:filesld6:lengthi4e4:pathl2:\xff\xfee10:path.utf-8l5:\xc3\xa9t\xc3\xa9eee4:name2:\xff\xfe10:name.utf-84:r\xc3\xa9s12:piece lengthi4e6:pieces20:"[..],
        &[b'A'; 20],
        b"e",
    ]
    .concat();
    let i = Info::from_bytes(&info).unwrap();
    assert_eq!(i.name, "rés");
    assert_eq!(i.files[0].path, vec!["été".to_string()]);
}

// --- builders for the invalid cases -------------------------------------

fn b(s: &str) -> Bencode {
    Bencode::from(s)
}

fn d(entries: Vec<(&str, Bencode)>) -> Bencode {
    Bencode::Dict(
        entries
            .into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v))
            .collect(),
    )
}

fn file(path: &[&str], length: i64) -> Bencode {
    d(vec![
        ("length", Bencode::Int(length)),
        ("path", Bencode::List(path.iter().map(|c| b(c)).collect())),
    ])
}

fn pieces(n: usize) -> Bencode {
    Bencode::Bytes(vec![7; 20 * n])
}

fn multi(name: &str, files: Vec<Bencode>, piece_length: i64, n_pieces: usize) -> Vec<u8> {
    d(vec![
        ("name", b(name)),
        ("piece length", Bencode::Int(piece_length)),
        ("pieces", pieces(n_pieces)),
        ("files", Bencode::List(files)),
    ])
    .encode()
}

fn single(name: &str, length: i64, piece_length: i64, pieces: Bencode) -> Vec<u8> {
    d(vec![
        ("name", b(name)),
        ("piece length", Bencode::Int(piece_length)),
        ("pieces", pieces),
        ("length", Bencode::Int(length)),
    ])
    .encode()
}

fn path_error(info: &[u8]) -> (String, PathError) {
    match Info::from_bytes(info) {
        Err(MetainfoError::InvalidPath { file, reason }) => (file, reason),
        other => panic!("expected InvalidPath, got {other:?}"),
    }
}

#[test]
fn every_path_traversal_form_is_rejected_naming_the_file() {
    let cases: &[(&[&str], PathError)] = &[
        (&["..", "etc", "passwd"], PathError::ParentDir),
        (&["a", "..", "..", "x"], PathError::ParentDir),
        (&["a", ".", "x"], PathError::CurrentDir),
        (&["a", "", "x"], PathError::Empty),
        (&["/etc", "passwd"], PathError::Absolute),
        (&["\\windows", "x"], PathError::Absolute),
        (&["a/../../x"], PathError::ContainsSeparator),
        (&["a\\..\\x"], PathError::ContainsSeparator),
        (&["a\0.txt"], PathError::ContainsNul),
        (&["C:", "x"], PathError::DrivePrefix),
        (&["c:x.txt"], PathError::DrivePrefix),
        (&["dir", "CON"], PathError::ReservedName),
        (&["dir", "con.txt"], PathError::ReservedName),
        (&["Nul.tar.gz"], PathError::ReservedName),
        (&["aux"], PathError::ReservedName),
        (&["PRN"], PathError::ReservedName),
        (&["com1"], PathError::ReservedName),
        (&["LPT9.log"], PathError::ReservedName),
        (&["..."], PathError::OnlyDotsAndSpaces),
        (&[". ."], PathError::OnlyDotsAndSpaces),
        (&[], PathError::NoComponents),
    ];
    for (path, reason) in cases {
        let info = multi("root", vec![file(&["ok"], 1), file(path, 1)], 16, 1);
        assert_eq!(path_error(&info), (path.join("/"), *reason), "{path:?}");
    }
}

#[test]
fn bad_torrent_names_are_rejected() {
    for (name, reason) in [
        ("..", PathError::ParentDir),
        (".", PathError::CurrentDir),
        ("", PathError::Empty),
        ("/abs", PathError::Absolute),
        ("a/b", PathError::ContainsSeparator),
        ("CON", PathError::ReservedName),
        ("D:stuff", PathError::DrivePrefix),
    ] {
        let info = single(name, 1, 16, pieces(1));
        assert_eq!(path_error(&info), (name.to_string(), reason), "{name:?}");
        let info = multi(name, vec![file(&["f"], 1)], 16, 1);
        assert_eq!(path_error(&info), (name.to_string(), reason), "{name:?}");
    }
    // Non-UTF-8 names are refused, shown lossily.
    let info = d(vec![
        ("name", Bencode::Bytes(b"\xffbad".to_vec())),
        ("piece length", Bencode::Int(16)),
        ("pieces", pieces(1)),
        ("length", Bencode::Int(1)),
    ])
    .encode();
    assert_eq!(
        path_error(&info),
        ("\u{fffd}bad".to_string(), PathError::NotUtf8)
    );
    let info = multi("r", vec![], 16, 1);
    assert_eq!(Info::from_bytes(&info), Err(MetainfoError::NoFiles));
}

#[test]
fn error_message_names_the_file() {
    let info = multi("root", vec![file(&["sub", "..", "..", "evil"], 1)], 16, 1);
    assert_eq!(
        Info::from_bytes(&info).unwrap_err().to_string(),
        "invalid file path \"sub/../../evil\": component `..` (parent directory)"
    );
}

#[test]
fn duplicate_and_conflicting_paths_are_rejected() {
    let dup = multi("r", vec![file(&["a", "b"], 1), file(&["a", "b"], 1)], 16, 1);
    assert_eq!(
        Info::from_bytes(&dup),
        Err(MetainfoError::DuplicatePath { file: "a/b".into() })
    );
    let file_then_dir = multi("r", vec![file(&["a"], 1), file(&["a", "b"], 1)], 16, 1);
    assert_eq!(
        Info::from_bytes(&file_then_dir),
        Err(MetainfoError::DuplicatePath { file: "a/b".into() })
    );
    let dir_then_file = multi("r", vec![file(&["a", "b"], 1), file(&["a"], 1)], 16, 1);
    assert_eq!(
        Info::from_bytes(&dir_then_file),
        Err(MetainfoError::DuplicatePath { file: "a".into() })
    );
}

#[test]
fn padding_files_are_flagged_and_may_share_names() {
    let pad = |len| {
        d(vec![
            ("attr", b("p")),
            ("length", Bencode::Int(len)),
            ("path", Bencode::List(vec![b(".pad"), b("6")])),
        ])
    };
    let info = multi(
        "r",
        vec![
            file(&["a"], 10),
            pad(6),
            file(&["b"], 10),
            pad(6),
            file(&["c"], 1),
        ],
        16,
        3,
    );
    let i = Info::from_bytes(&info).unwrap();
    let flags: Vec<(bool, u64)> = i.files.iter().map(|f| (f.padding, f.offset)).collect();
    assert_eq!(
        flags,
        vec![(false, 0), (true, 10), (false, 16), (true, 26), (false, 32)]
    );
    assert_eq!(i.total_length, 33);
}

#[test]
fn piece_geometry_is_validated() {
    // 40 bytes in 16-byte pieces need 3 hashes.
    assert_eq!(
        Info::from_bytes(&single("a", 40, 16, pieces(2))),
        Err(MetainfoError::PieceCountMismatch {
            expected: 3,
            got: 2
        })
    );
    assert_eq!(
        Info::from_bytes(&single("a", 40, 16, pieces(4))),
        Err(MetainfoError::PieceCountMismatch {
            expected: 3,
            got: 4
        })
    );
    assert_eq!(
        Info::from_bytes(&single("a", 40, 16, Bencode::Bytes(vec![0; 59]))),
        Err(MetainfoError::PiecesNotMultipleOf20 { len: 59 })
    );
    for bad in [0, -16, 256 * 1024 * 1024 + 1, i64::MAX] {
        assert_eq!(
            Info::from_bytes(&single("a", 40, bad, pieces(3))),
            Err(MetainfoError::BadPieceLength { got: bad }),
            "{bad}"
        );
    }
    // Not a power of two, and the 256 MiB maximum, are both fine.
    assert!(Info::from_bytes(&single("a", 40, 15, pieces(3))).is_ok());
    assert!(Info::from_bytes(&single("a", 40, 256 * 1024 * 1024, pieces(1))).is_ok());
    // Exact multiple: no short last piece.
    let i = Info::from_bytes(&single("a", 32, 16, pieces(2))).unwrap();
    assert_eq!((i.piece_len(0), i.piece_len(1)), (16, 16));
}

#[test]
fn lengths_are_validated() {
    assert_eq!(
        Info::from_bytes(&single("a", 0, 16, pieces(0))),
        Err(MetainfoError::EmptyTorrent)
    );
    let all_empty = multi("r", vec![file(&["x"], 0), file(&["y"], 0)], 16, 0);
    assert_eq!(
        Info::from_bytes(&all_empty),
        Err(MetainfoError::EmptyTorrent)
    );
    assert_eq!(
        Info::from_bytes(&single("a", -1, 16, pieces(1))),
        Err(MetainfoError::NegativeLength {
            file: "a".into(),
            length: -1
        })
    );
    let neg = multi("r", vec![file(&["x", "y"], -5)], 16, 1);
    assert_eq!(
        Info::from_bytes(&neg),
        Err(MetainfoError::NegativeLength {
            file: "x/y".into(),
            length: -5
        })
    );
    let overflow = multi(
        "r",
        vec![
            file(&["x"], i64::MAX),
            file(&["y"], i64::MAX),
            file(&["z"], i64::MAX),
        ],
        16,
        1,
    );
    assert_eq!(
        Info::from_bytes(&overflow),
        Err(MetainfoError::TotalLengthOverflow)
    );
}

#[test]
fn layout_keys_are_validated() {
    let both = d(vec![
        ("name", b("a")),
        ("piece length", Bencode::Int(16)),
        ("pieces", pieces(1)),
        ("length", Bencode::Int(1)),
        ("files", Bencode::List(vec![file(&["x"], 1)])),
    ])
    .encode();
    assert_eq!(
        Info::from_bytes(&both),
        Err(MetainfoError::BothLengthAndFiles)
    );
    let neither = d(vec![
        ("name", b("a")),
        ("piece length", Bencode::Int(16)),
        ("pieces", pieces(1)),
    ])
    .encode();
    assert!(matches!(
        Info::from_bytes(&neither),
        Err(MetainfoError::MissingKey { .. })
    ));
    for key in ["name", "piece length", "pieces"] {
        let mut entries = vec![
            ("name", b("a")),
            ("piece length", Bencode::Int(16)),
            ("pieces", pieces(1)),
            ("length", Bencode::Int(1)),
        ];
        entries.retain(|(k, _)| *k != key);
        assert_eq!(
            Info::from_bytes(&d(entries).encode()),
            Err(MetainfoError::MissingKey {
                key: format!("info.{key}")
            })
        );
    }
    let bad_entry = multi("r", vec![Bencode::Int(1)], 16, 1);
    assert_eq!(
        Info::from_bytes(&bad_entry),
        Err(MetainfoError::WrongType {
            key: "info.files[0]".into(),
            expected: "a dictionary"
        })
    );
    let bad_path = multi(
        "r",
        vec![d(vec![("length", Bencode::Int(1)), ("path", b("x"))])],
        16,
        1,
    );
    assert!(matches!(
        Info::from_bytes(&bad_path),
        Err(MetainfoError::WrongType { key, .. }) if key == "info.files[0].path"
    ));
    let no_length = multi(
        "r",
        vec![d(vec![("path", Bencode::List(vec![b("x")]))])],
        16,
        1,
    );
    assert_eq!(
        Info::from_bytes(&no_length),
        Err(MetainfoError::MissingKey {
            key: "info.files[0].length".into()
        })
    );
}

#[test]
fn truncated_torrents_never_panic() {
    let full = torrent(b"8:announce5:http0", &multi_info(), b"");
    assert!(Metainfo::from_bytes(&full).is_ok());
    for cut in 0..full.len() {
        assert!(Metainfo::from_bytes(&full[..cut]).is_err());
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Byte edits of a valid torrent reach every validation branch;
        /// none may panic, and whatever parses is self-consistent.
        #[test]
        fn mutated_torrents_never_panic(
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        ) {
            let mut bytes = torrent(b"8:announce5:http0", &multi_info(), b"");
            for (at, byte) in edits {
                let i = at % bytes.len();
                bytes[i] = byte;
            }
            if let Ok(m) = Metainfo::from_bytes(&bytes) {
                let i = &m.info;
                prop_assert_eq!(i.pieces.len() as u64, i.total_length.div_ceil(u64::from(i.piece_length)));
                let sum: u64 = (0..i.piece_count()).map(|p| u64::from(i.piece_len(p))).sum();
                prop_assert_eq!(sum, i.total_length);
                prop_assert_eq!(m.info_hash, InfoHash::of(&m.info_bytes));
            }
        }
    }
}
