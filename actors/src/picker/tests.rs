use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use proptest::strategy::Strategy;
use rand::SeedableRng;
use rand::rngs::SmallRng;

use super::Strategy as Order;
use super::*;

const B: u32 = BLOCK_SIZE;
const A: PeerId = PeerId(1);
const P2: PeerId = PeerId(2);
const P3: PeerId = PeerId(3);
const P4: PeerId = PeerId(4);

fn rng(seed: u64) -> SmallRng {
    SmallRng::seed_from_u64(seed)
}

fn make(pieces: u32, piece_length: u32, total: u64, config: PickerConfig, seed: u64) -> Picker {
    Picker::new(
        pieces,
        piece_length,
        total,
        &Bitfield::new(pieces),
        config,
        rng(seed),
    )
    .unwrap()
}

/// `pieces` pieces of `blocks` full blocks each.
fn uniform(pieces: u32, blocks: u32, config: PickerConfig) -> Picker {
    make(
        pieces,
        blocks * B,
        u64::from(pieces) * u64::from(blocks * B),
        config,
        7,
    )
}

fn bits(len: u32, set: &[u32]) -> Bitfield {
    let mut b = Bitfield::new(len);
    for &i in set {
        b.set(i, true);
    }
    b
}

/// The content of a block: every byte is a function of its position.
fn content(block: Block) -> Bytes {
    let v: Vec<u8> = (0..block.length)
        .map(|i| {
            let x = block.piece.wrapping_mul(31) ^ (block.begin + i).wrapping_mul(7);
            x as u8
        })
        .collect();
    Bytes::from(v)
}

fn accepted(r: Received) -> (Vec<PeerId>, Option<CompletePiece>) {
    match r {
        Received::Accepted { cancel, complete } => (cancel, complete),
        other => panic!("expected Accepted, got {other:?}"),
    }
}

fn now() -> Instant {
    Instant::now()
}

// ---- construction and geometry ---------------------------------------------

#[test]
fn layout_must_be_consistent() {
    let have = Bitfield::new(3);
    let c = PickerConfig::default();
    assert!(matches!(
        Picker::new(3, 0, 10, &have, c, rng(1)),
        Err(PickerError::Layout { .. })
    ));
    // 3 pieces of 16 KiB cannot make 16 KiB or 48 KiB + 1.
    assert!(Picker::new(3, B, u64::from(B), &have, c, rng(1)).is_err());
    assert!(Picker::new(3, B, 3 * u64::from(B) + 1, &have, c, rng(1)).is_err());
    assert!(Picker::new(3, B, 3 * u64::from(B), &have, c, rng(1)).is_ok());
    assert!(Picker::new(3, B, 2 * u64::from(B) + 1, &have, c, rng(1)).is_ok());
    assert_eq!(
        Picker::new(3, B, 3 * u64::from(B), &Bitfield::new(4), c, rng(1)).unwrap_err(),
        PickerError::BitfieldLength {
            got: 4,
            expected: 3
        }
    );
}

#[test]
fn empty_torrent_is_complete() {
    let p = make(0, B, 0, PickerConfig::default(), 1);
    assert!(p.is_complete());
    assert_eq!(p.missing_count(), 0);
    assert!(!p.in_endgame());
}

#[test]
fn short_last_piece_and_short_last_blocks_are_exact() {
    // Pieces of 40 000 bytes: blocks 16384 + 16384 + 7232.
    // Last piece 20 000 bytes: blocks 16384 + 3616.
    let total = 2 * 40_000 + 20_000;
    let mut p = make(3, 40_000, total, PickerConfig::default(), 1);
    assert_eq!(p.piece_size(0), 40_000);
    assert_eq!(p.piece_size(2), 20_000);
    assert_eq!(p.piece_size(3), 0);
    let lens = |i| p.blocks_of(i).iter().map(|b| b.length).collect::<Vec<_>>();
    assert_eq!(lens(0), vec![B, B, 7232]);
    assert_eq!(lens(1), vec![B, B, 7232]);
    assert_eq!(lens(2), vec![B, 3616]);
    assert_eq!(p.blocks_of(2)[1].begin, B);
    assert!(p.blocks_of(3).is_empty());

    p.peer_have_all(A);
    let picked = p.pick(A, 100, now());
    assert_eq!(picked.len(), 8);
    let total_bytes: u64 = picked.iter().map(|b| u64::from(b.length)).sum();
    assert_eq!(total_bytes, total);
    let mut completed = Vec::new();
    for b in picked {
        let (_, c) = accepted(p.block_received(A, b, content(b)));
        completed.extend(c);
    }
    completed.sort_by_key(|c| c.index);
    assert_eq!(completed.len(), 3);
    for c in &completed {
        let len: usize = c.blocks.iter().map(Bytes::len).sum();
        assert_eq!(len as u32, p.piece_size(c.index));
        // Blocks come back in order.
        let expected: Vec<Bytes> = p.blocks_of(c.index).into_iter().map(content).collect();
        assert_eq!(c.blocks, expected);
    }
    p.check_invariants();
}

#[test]
fn piece_shorter_than_a_block() {
    // Pieces of 1000 bytes, last one 1 byte.
    let mut p = make(3, 1000, 2001, PickerConfig::default(), 1);
    assert_eq!(
        p.blocks_of(2),
        vec![Block {
            piece: 2,
            begin: 0,
            length: 1
        }]
    );
    p.peer_have_all(A);
    let picked = p.pick(A, 10, now());
    assert_eq!(picked.len(), 3);
    assert!(picked.iter().all(|b| b.begin == 0));
}

#[test]
fn already_have_pieces_are_never_picked() {
    let have = bits(4, &[0, 2]);
    let mut p = Picker::new(
        4,
        B,
        4 * u64::from(B),
        &have,
        PickerConfig::default(),
        rng(3),
    )
    .unwrap();
    assert_eq!(p.missing_count(), 2);
    p.peer_have_all(A);
    let picked: BTreeSet<u32> = p.pick(A, 10, now()).iter().map(|b| b.piece).collect();
    assert_eq!(picked, BTreeSet::from([1, 3]));
}

// ---- availability and interest --------------------------------------------

#[test]
fn availability_tracks_bitfields_haves_seeds_and_departures() {
    let mut p = uniform(8, 1, PickerConfig::default());
    p.peer_bitfield(A, &bits(8, &[0, 1])).unwrap();
    assert!(p.peer_have(P2, 1).unwrap());
    assert!(!p.peer_have(P2, 1).unwrap(), "a repeated HAVE counts once");
    p.peer_have_all(P3);
    assert_eq!(p.availability(0), 2);
    assert_eq!(p.availability(1), 3);
    assert_eq!(p.availability(7), 1);
    assert_eq!(p.availability(99), 0);
    p.check_invariants();
    // A full bitfield is a seed.
    p.peer_bitfield(P4, &Bitfield::full(8)).unwrap();
    assert_eq!(p.availability(7), 2);
    // Replacing a bitfield.
    p.peer_bitfield(A, &bits(8, &[5])).unwrap();
    assert_eq!(p.availability(0), 2);
    assert_eq!(p.availability(5), 3);
    p.peer_have_none(P3);
    assert_eq!(p.availability(7), 1);
    p.check_invariants();
    p.peer_gone(P4);
    p.peer_gone(A);
    assert_eq!(p.availability(5), 0);
    assert_eq!(p.availability(1), 1);
    p.check_invariants();
}

#[test]
fn bad_indices_and_lengths_are_errors() {
    let mut p = uniform(8, 1, PickerConfig::default());
    assert_eq!(
        p.peer_have(A, 8),
        Err(PickerError::PieceOutOfRange {
            index: 8,
            pieces: 8
        })
    );
    assert_eq!(
        p.peer_bitfield(A, &Bitfield::new(9)),
        Err(PickerError::BitfieldLength {
            got: 9,
            expected: 8
        })
    );
    assert_eq!(p.piece_verified(0), Err(PickerError::NotAwaitingHash(0)));
    assert!(matches!(
        p.piece_failed(100),
        Err(PickerError::PieceOutOfRange { .. })
    ));
    p.check_invariants();
}

#[test]
fn interest_follows_what_we_lack() {
    let mut p = uniform(4, 1, PickerConfig::default());
    assert!(!p.interesting(A));
    p.peer_have_none(A);
    assert!(!p.interesting(A));
    p.peer_have(A, 2).unwrap();
    assert!(p.interesting(A));
    p.peer_have_all(P2);
    assert!(p.interesting(P2));
    // Get piece 2 from P2 and verify it: A has nothing we lack any more.
    let b = p.blocks_of(2)[0];
    let mut got = None;
    for _ in 0..4 {
        for blk in p.pick(P2, 1, now()) {
            let (_, c) = accepted(p.block_received(P2, blk, content(blk)));
            if let Some(c) = c {
                p.piece_verified(c.index).unwrap();
                if c.index == 2 {
                    got = Some(b);
                }
            }
        }
    }
    assert!(got.is_some());
    assert!(!p.interesting(A));
    assert!(p.is_complete());
    assert!(!p.interesting(P2));
    p.check_invariants();
}

// ---- picking order ----------------------------------------------------------

#[test]
fn rarest_first() {
    let mut p = uniform(10, 1, PickerConfig::default());
    // Every piece held by A, P2 and P3, except piece 7 held by A only.
    let common: Vec<u32> = (0..10).filter(|&i| i != 7).collect();
    p.peer_bitfield(A, &Bitfield::full(10)).unwrap();
    p.peer_bitfield(P2, &bits(10, &common)).unwrap();
    p.peer_bitfield(P3, &bits(10, &common)).unwrap();
    let picked = p.pick(A, 1, now());
    assert_eq!(picked, p.blocks_of(7));

    // Same with A a plain bitfield peer (not a seed).
    let mut p = uniform(10, 1, PickerConfig::default());
    let all_but_3: Vec<u32> = (0..10).filter(|&i| i != 3).collect();
    p.peer_bitfield(A, &bits(10, &all_but_3)).unwrap();
    p.peer_bitfield(P2, &bits(10, &common)).unwrap();
    p.peer_bitfield(P3, &bits(10, &common)).unwrap();
    assert_eq!(p.pick(A, 1, now()), p.blocks_of(7));
}

#[test]
fn rarest_first_orders_by_availability() {
    let mut p = uniform(3, 1, PickerConfig::default());
    // Piece 0 held by 3 peers, piece 1 by 2, piece 2 by 1 (A has them all).
    p.peer_bitfield(A, &bits(3, &[0, 1, 2])).unwrap();
    p.peer_bitfield(P2, &bits(3, &[0, 1])).unwrap();
    p.peer_bitfield(P3, &bits(3, &[0])).unwrap();
    let order: Vec<u32> = (0..3).map(|_| p.pick(A, 1, now())[0].piece).collect();
    assert_eq!(order, vec![2, 1, 0]);
}

#[test]
fn random_tie_break_is_seeded_and_spreads_peers() {
    let run = |seed| {
        let mut p = make(100, B, 100 * u64::from(B), PickerConfig::default(), seed);
        let mut order = Vec::new();
        for id in 0..10 {
            p.peer_have_all(PeerId(id));
            order.push(p.pick(PeerId(id), 1, now())[0].piece);
        }
        p.check_invariants();
        order
    };
    let a = run(42);
    assert_eq!(a, run(42), "same seed, same picks");
    assert_ne!(a, run(43), "another seed, other picks");
    // Not simply index order, and no two peers on the same piece.
    assert_ne!(a, (0..10).collect::<Vec<_>>());
    assert_eq!(a.iter().collect::<BTreeSet<_>>().len(), 10);
}

#[test]
fn sequential_picks_lowest_index_the_peer_has() {
    let config = PickerConfig {
        strategy: Order::Sequential,
        ..PickerConfig::default()
    };
    let mut p = uniform(10, 1, config);
    p.peer_bitfield(A, &bits(10, &[3, 5, 8])).unwrap();
    p.peer_have_all(P2);
    let a: Vec<u32> = p.pick(A, 2, now()).iter().map(|b| b.piece).collect();
    assert_eq!(a, vec![3, 5]);
    let b: Vec<u32> = p.pick(P2, 4, now()).iter().map(|b| b.piece).collect();
    assert_eq!(b, vec![0, 1, 2, 4]);
    // A failed piece comes back first.
    let blk = p.blocks_of(0)[0];
    let (_, c) = accepted(p.block_received(P2, blk, content(blk)));
    assert_eq!(c.unwrap().index, 0);
    p.piece_failed(0).unwrap();
    let again: Vec<u32> = p.pick(P2, 2, now()).iter().map(|b| b.piece).collect();
    assert_eq!(again, vec![0, 6]);
    p.check_invariants();
}

#[test]
fn partial_pieces_first() {
    let mut p = uniform(10, 4, PickerConfig::default());
    p.peer_have_all(A);
    p.peer_have_all(P2);
    let a = p.pick(A, 2, now());
    assert_eq!(a.len(), 2);
    let piece = a[0].piece;
    assert_eq!(a[1].piece, piece);
    // P2 first finishes A's piece, then starts another.
    let b = p.pick(P2, 3, now());
    assert_eq!(b[0].piece, piece);
    assert_eq!(b[1].piece, piece);
    assert_eq!(b[0].begin, 2 * B);
    assert_eq!(b[1].begin, 3 * B);
    assert_ne!(b[2].piece, piece);
    // A piece with a received block and a free one is also resumed first.
    p.request_timed_out(A, a[1]);
    let c = p.pick(P3, 1, now());
    assert!(c.is_empty(), "unknown peer gets nothing");
    p.peer_have_all(P3);
    assert_eq!(p.pick(P3, 1, now()), vec![a[1]]);
    p.check_invariants();
}

#[test]
fn partial_piece_the_peer_lacks_is_skipped() {
    let mut p = uniform(4, 4, PickerConfig::default());
    p.peer_have_all(A);
    let a = p.pick(A, 1, now());
    let started = a[0].piece;
    let other = (0..4).find(|&i| i != started).unwrap();
    p.peer_bitfield(P2, &bits(4, &[other])).unwrap();
    let b = p.pick(P2, 10, now());
    assert_eq!(b.len(), 4);
    assert!(b.iter().all(|blk| blk.piece == other));
}

#[test]
fn no_double_assignment_outside_endgame() {
    let mut p = uniform(20, 3, PickerConfig::default());
    for id in 0..5 {
        p.peer_have_all(PeerId(id));
    }
    let mut seen = BTreeSet::new();
    while !p.in_endgame() {
        for id in 0..5 {
            if p.in_endgame() {
                break;
            }
            let free = p.unassigned_blocks() as usize;
            let picked = p.pick(PeerId(id), 7, now());
            // Blocks nobody was asked for come first; only once they run out
            // does the same call go on with endgame duplicates.
            let fresh = free.min(7);
            for b in &picked[..fresh] {
                assert!(seen.insert(*b), "{b:?} assigned twice");
            }
            for b in &picked[fresh..] {
                assert!(seen.contains(b), "{b:?} duplicate of nothing");
            }
            p.check_invariants();
        }
    }
    assert_eq!(seen.len(), 60);
    assert_eq!(p.unassigned_blocks(), 0);
}

#[test]
fn peer_gets_only_pieces_it_has() {
    let mut p = uniform(50, 2, PickerConfig::default());
    let has: Vec<u32> = (0..50).filter(|i| i % 7 == 3).collect();
    p.peer_bitfield(A, &bits(50, &has)).unwrap();
    let picked = p.pick(A, 1000, now());
    assert_eq!(picked.len(), has.len() * 2);
    assert!(picked.iter().all(|b| has.contains(&b.piece)));
    // Nothing more, and not in endgame: other pieces are unrequested.
    assert!(p.pick(A, 10, now()).is_empty());
    assert!(!p.in_endgame());
}

#[test]
fn banned_and_zero_max_get_nothing() {
    let mut p = uniform(4, 1, PickerConfig::default());
    p.peer_have_all(A);
    assert!(p.pick(A, 0, now()).is_empty());
    assert_eq!(p.outstanding_for(A), 0);
}

// ---- endgame -----------------------------------------------------------------

#[test]
fn endgame_duplicates_are_bounded_and_cancels_listed() {
    let mut p = uniform(1, 2, PickerConfig::default());
    for id in 1..=5 {
        p.peer_have_all(PeerId(id));
    }
    let t = now();
    let a = p.pick(A, 10, t);
    assert_eq!(a.len(), 2);
    assert!(p.in_endgame());
    // Two extra requesters per block at most.
    assert_eq!(p.pick(P2, 10, t), a);
    assert_eq!(p.pick(P3, 10, t), a);
    assert!(p.pick(P4, 10, t).is_empty());
    // A peer is never asked twice for the same block.
    assert!(p.pick(A, 10, t).is_empty());
    p.check_invariants();

    // The first copy wins; the others are to be cancelled.
    let (mut cancel, complete) = accepted(p.block_received(P3, a[0], content(a[0])));
    cancel.sort();
    assert_eq!(cancel, vec![A, P2]);
    assert!(complete.is_none());
    assert_eq!(p.outstanding_for(A), 1);
    assert_eq!(p.outstanding_for(P2), 1);
    assert_eq!(p.outstanding_for(P3), 1);
    // A late copy from a cancelled peer is a duplicate, not a violation.
    assert_eq!(
        p.block_received(A, a[0], content(a[0])),
        Received::Duplicate
    );
    // The same peer sending it again is a violation.
    assert_eq!(
        p.block_received(A, a[0], content(a[0])),
        Received::Unrequested
    );
    p.check_invariants();

    let (cancel, complete) = accepted(p.block_received(A, a[1], content(a[1])));
    assert_eq!(cancel.len(), 2);
    assert_eq!(complete.unwrap().index, 0);
    for id in 1..=5 {
        assert_eq!(p.outstanding_for(PeerId(id)), 0);
    }
    p.piece_verified(0).unwrap();
    assert!(p.is_complete());
    assert!(!p.in_endgame());
    p.check_invariants();
}

#[test]
fn endgame_prefers_least_duplicated_then_oldest() {
    let mut p = uniform(1, 3, PickerConfig::default());
    for id in 1..=4 {
        p.peer_have_all(PeerId(id));
    }
    let t = now();
    let first = p.pick(A, 1, t);
    let second = p.pick(P2, 1, t + Duration::from_secs(1));
    let third = p.pick(P3, 1, t + Duration::from_secs(2));
    assert!(p.in_endgame());
    // P4 duplicates the oldest request first.
    assert_eq!(p.pick(P4, 1, t + Duration::from_secs(3)), first);
    // P3 then: least duplicated among those it does not hold, oldest first.
    assert_eq!(p.pick(P3, 1, t + Duration::from_secs(3)), second);
    assert_eq!(
        p.pick(A, 2, t + Duration::from_secs(3)),
        vec![third[0], second[0]]
    );
    p.check_invariants();
}

#[test]
fn endgame_needs_every_block_requested() {
    let mut p = uniform(2, 1, PickerConfig::default());
    p.peer_bitfield(A, &bits(2, &[0])).unwrap();
    p.pick(A, 10, now());
    // Piece 1 is unrequested (nobody has it): no endgame.
    assert!(!p.in_endgame());
    p.peer_have(P2, 0).unwrap();
    assert!(p.pick(P2, 10, now()).is_empty());
}

#[test]
fn no_endgame_duplicates_when_disabled() {
    let config = PickerConfig {
        endgame_extra_requesters: 0,
        ..PickerConfig::default()
    };
    let mut p = uniform(1, 1, config);
    p.peer_have_all(A);
    p.peer_have_all(P2);
    assert_eq!(p.pick(A, 1, now()).len(), 1);
    assert!(p.in_endgame());
    assert!(p.pick(P2, 1, now()).is_empty());
}

// ---- taking requests back ----------------------------------------------------------

#[test]
fn timeout_returns_block_and_late_answer_is_accepted() {
    let mut p = uniform(1, 2, PickerConfig::default());
    p.peer_have_all(A);
    p.peer_have_all(P2);
    let a = p.pick(A, 1, now());
    assert_eq!(p.outstanding_for(A), 1);
    assert!(p.request_timed_out(A, a[0]));
    assert!(!p.request_timed_out(A, a[0]), "only once");
    assert_eq!(p.outstanding_for(A), 0);
    p.check_invariants();
    // P2 picks it (partial first).
    assert_eq!(p.pick(P2, 1, now()), a);
    // A's late answer still counts; P2 is to be cancelled.
    let (cancel, _) = accepted(p.block_received(A, a[0], content(a[0])));
    assert_eq!(cancel, vec![P2]);
    assert_eq!(p.outstanding_for(P2), 0);
    p.check_invariants();
}

#[test]
fn late_answer_to_a_free_block_is_accepted() {
    let mut p = uniform(1, 2, PickerConfig::default());
    p.peer_have_all(A);
    let a = p.pick(A, 1, now());
    p.request_rejected(A, a[0]);
    assert_eq!(p.unassigned_blocks(), 2);
    let (cancel, _) = accepted(p.block_received(A, a[0], content(a[0])));
    assert!(cancel.is_empty());
    assert_eq!(p.unassigned_blocks(), 1);
    p.check_invariants();
}

#[test]
fn reject_choke_and_gone_return_blocks() {
    let mut p = uniform(4, 2, PickerConfig::default());
    p.peer_have_all(A);
    p.peer_have_all(P2);
    p.peer_have_all(P3);
    let a = p.pick(A, 2, now());
    let b = p.pick(P2, 2, now());
    let c = p.pick(P3, 2, now());
    assert_eq!(p.unassigned_blocks(), 2);

    assert!(p.request_rejected(A, a[0]));
    assert!(!p.request_rejected(A, b[0]), "not A's request");
    assert_eq!(p.unassigned_blocks(), 3);

    let mut choked = p.peer_choked(P2);
    choked.sort();
    let mut b_sorted = b.clone();
    b_sorted.sort();
    assert_eq!(choked, b_sorted);
    assert_eq!(p.outstanding_for(P2), 0);
    assert_eq!(p.unassigned_blocks(), 5);

    p.peer_gone(P3);
    assert_eq!(p.outstanding_for(P3), 0);
    assert_eq!(p.unassigned_blocks(), 7);
    p.check_invariants();

    // A gone peer's late block is unrequested (it is unknown now).
    assert_eq!(
        p.block_received(P3, c[0], content(c[0])),
        Received::Unrequested
    );
    // Everything can be picked again by A.
    let again = p.pick(A, 100, now());
    assert_eq!(again.len(), 7);
    assert!(p.peer_choked(PeerId(99)).is_empty());
    p.check_invariants();
}

#[test]
fn gone_in_endgame_keeps_block_with_other_requester() {
    let mut p = uniform(1, 1, PickerConfig::default());
    p.peer_have_all(A);
    p.peer_have_all(P2);
    let a = p.pick(A, 1, now());
    assert_eq!(p.pick(P2, 1, now()), a);
    p.peer_gone(A);
    // P2 still has it: not unassigned.
    assert_eq!(p.unassigned_blocks(), 0);
    let (cancel, complete) = accepted(p.block_received(P2, a[0], content(a[0])));
    assert!(cancel.is_empty());
    assert!(complete.is_some());
    p.check_invariants();
}

// ---- received blocks ---------------------------------------------------------------

#[test]
fn unrequested_and_malformed_blocks_are_detected() {
    let mut p = make(2, 40_000, 60_000, PickerConfig::default(), 1);
    p.peer_have_all(A);
    p.peer_have_all(P2);
    let a = p.pick(A, 1, now());
    let blk = a[0];
    // Never requested from P2.
    assert_eq!(
        p.block_received(P2, blk, content(blk)),
        Received::Unrequested
    );
    // Unknown peer.
    assert_eq!(
        p.block_received(PeerId(77), blk, content(blk)),
        Received::Unrequested
    );
    // Layout violations from A.
    let bad = [
        Block { piece: 2, ..blk },
        Block {
            begin: blk.begin + 1,
            ..blk
        },
        Block {
            length: blk.length - 1,
            ..blk
        },
        Block {
            piece: 1,
            begin: B,
            length: B,
        }, // piece 1 is 20 000 bytes: its second block is 3616
        Block {
            piece: 1,
            begin: 2 * B,
            length: 1,
        },
        Block {
            piece: u32::MAX,
            begin: u32::MAX,
            length: u32::MAX,
        },
    ];
    for b in bad {
        assert_eq!(
            p.block_received(A, b, Bytes::from(vec![0; b.length.min(100_000) as usize])),
            Received::Invalid,
            "{b:?}"
        );
    }
    // Data of the wrong length for a valid block.
    assert_eq!(
        p.block_received(A, blk, Bytes::from_static(b"short")),
        Received::Invalid
    );
    // Still outstanding after all that, and accepted properly.
    assert_eq!(p.outstanding_for(A), 1);
    accepted(p.block_received(A, blk, content(blk)));
    p.check_invariants();
}

#[test]
fn block_of_a_piece_we_have_is_duplicate() {
    let mut p = uniform(1, 1, PickerConfig::default());
    p.peer_have_all(A);
    p.peer_have_all(P2);
    let a = p.pick(A, 1, now());
    p.pick(P2, 1, now());
    let (cancel, c) = accepted(p.block_received(A, a[0], content(a[0])));
    assert_eq!(cancel, vec![P2]);
    // While hashing and after verification, P2's late copy is a duplicate.
    assert_eq!(c.unwrap().index, 0);
    p.piece_verified(0).unwrap();
    assert_eq!(
        p.block_received(P2, a[0], content(a[0])),
        Received::Duplicate
    );
    assert_eq!(p.piece_verified(0), Err(PickerError::NotAwaitingHash(0)));
}

#[test]
fn contributors_from_several_peers_get_no_strike_and_go_on_parole() {
    let mut p = uniform(1, 2, PickerConfig::default());
    p.peer_have_all(A);
    p.peer_have_all(P2);
    let a = p.pick(A, 1, now());
    let b = p.pick(P2, 1, now());
    accepted(p.block_received(A, a[0], content(a[0])));
    let (_, c) = accepted(p.block_received(P2, b[0], content(b[0])));
    assert!(c.is_some());
    let f = p.piece_failed(0).unwrap();
    assert_eq!(f.contributors, vec![A, P2]);
    assert!(f.newly_banned.is_empty());
    assert_eq!((p.strikes(A), p.strikes(P2), p.strikes(P3)), (0, 0, 0));
    assert!(p.on_parole(A) && p.on_parole(P2) && !p.on_parole(P3));
    // The piece is missing again, all its blocks free.
    assert!(!p.have(0));
    assert_eq!(p.unassigned_blocks(), 2);
    assert_eq!(p.piece_failed(0), Err(PickerError::NotAwaitingHash(0)));
    p.check_invariants();
}

#[test]
fn ban_at_strike_threshold() {
    let mut p = uniform(1, 1, PickerConfig::default());
    p.peer_have_all(A);
    for round in 1..=3 {
        let a = p.pick(A, 1, now());
        assert_eq!(a.len(), 1, "round {round}");
        let (_, c) = accepted(p.block_received(A, a[0], Bytes::from(vec![0xee; B as usize])));
        assert!(c.is_some());
        let f = p.piece_failed(0).unwrap();
        assert_eq!(f.contributors, vec![A]);
        if round < 3 {
            assert!(f.newly_banned.is_empty());
            assert!(!p.is_banned(A));
        } else {
            assert_eq!(f.newly_banned, vec![A]);
            assert!(p.is_banned(A));
        }
    }
    assert!(p.pick(A, 1, now()).is_empty());
    // The ban and strikes outlive the connection.
    p.peer_gone(A);
    assert!(p.is_banned(A));
    assert_eq!(p.strikes(A), 3);
    p.check_invariants();
}

#[test]
fn departed_sole_contributor_still_gets_strike() {
    let config = PickerConfig {
        max_strikes: 1,
        ..PickerConfig::default()
    };
    let mut p = uniform(1, 2, config);
    p.peer_have_all(A);
    let a = p.pick(A, 2, now());
    accepted(p.block_received(A, a[0], content(a[0])));
    let (_, c) = accepted(p.block_received(A, a[1], content(a[1])));
    assert!(c.is_some());
    p.peer_gone(A);
    let f = p.piece_failed(0).unwrap();
    assert_eq!(f.newly_banned, vec![A]);
}

#[test]
fn a_peer_on_parole_shares_pieces_when_it_has_nothing_of_its_own() {
    let mut p = uniform(1, 4, PickerConfig::default());
    for peer in [A, P2] {
        p.peer_have_all(peer);
    }
    // The only piece fails with blocks of both: both on parole.
    let a = p.pick(A, 2, now());
    let b = p.pick(P2, 2, now());
    for (who, blocks) in [(A, &a), (P2, &b)] {
        for blk in blocks.iter() {
            let _ = p.block_received(who, *blk, content(*blk));
        }
    }
    let done = p.partials.get(&0).is_some_and(|x| x.hashing);
    assert!(done, "the piece is complete");
    p.piece_failed(0).unwrap();
    assert!(p.on_parole(A) && p.on_parole(P2));
    // A starts it again alone; P2 has nothing of its own left, so it
    // shares rather than stall.
    assert_eq!(p.pick(A, 2, now()).len(), 2);
    assert_eq!(
        p.pick(P2, 2, now()).len(),
        2,
        "a peer on parole was starved"
    );
    assert!(p.on_parole(P2), "still on parole");
    p.check_invariants();
}

#[test]
fn a_peer_on_parole_gets_whole_pieces_to_itself() {
    let mut p = uniform(16, 2, PickerConfig::default());
    for peer in [A, P2, P3] {
        p.peer_have_all(peer);
    }
    // A and P2 share piece x, which fails: both on parole.
    let a = p.pick(A, 1, now());
    let b = p.pick(P2, 1, now());
    let x = a[0].piece;
    assert_eq!(b[0].piece, x);
    accepted(p.block_received(A, a[0], content(a[0])));
    let (_, done) = accepted(p.block_received(P2, b[0], content(b[0])));
    p.piece_failed_blocks(x, &done.unwrap().blocks).unwrap();
    assert!(p.on_parole(A) && p.on_parole(P2));
    // A starts a piece of its own; neither P2 (on parole) nor P3 may take
    // its free block.
    let mine = p.pick(A, 1, now());
    assert_eq!(mine.len(), 1);
    let own = mine[0].piece;
    for other in [P2, P3] {
        // Fresh pieces are left: no one needs A's.
        let got = p.pick(other, 4, now());
        assert!(got.iter().all(|b| b.piece != own), "{other:?} took {got:?}");
    }
    // A finishes it alone and it passes: parole over.
    let rest = p.pick(A, 8, now());
    assert!(rest.iter().any(|b| b.piece == own));
    accepted(p.block_received(A, mine[0], content(mine[0])));
    let last = *rest.iter().find(|b| b.piece == own).unwrap();
    let (_, done) = accepted(p.block_received(A, last, content(last)));
    assert!(done.is_some());
    p.piece_verified(own).unwrap();
    assert!(!p.on_parole(A));
    assert!(p.on_parole(P2));
    p.check_invariants();
}

#[test]
fn zero_max_strikes_never_bans() {
    let config = PickerConfig {
        max_strikes: 0,
        ..PickerConfig::default()
    };
    let mut p = uniform(1, 1, config);
    p.peer_have_all(A);
    for _ in 0..5 {
        let a = p.pick(A, 1, now());
        accepted(p.block_received(A, a[0], content(a[0])));
        assert!(p.piece_failed(0).unwrap().newly_banned.is_empty());
    }
    assert!(!p.is_banned(A));
    assert_eq!(p.strikes(A), 5);
}

#[test]
fn released_memory_is_bounded() {
    let config = PickerConfig {
        released_memory: 2,
        ..PickerConfig::default()
    };
    let mut p = uniform(1, 4, config);
    p.peer_have_all(A);
    let a = p.pick(A, 4, now());
    for b in &a {
        p.request_timed_out(A, *b);
    }
    // Only the two most recent are remembered.
    assert_eq!(
        p.block_received(A, a[0], content(a[0])),
        Received::Unrequested
    );
    accepted(p.block_received(A, a[3], content(a[3])));
    p.check_invariants();
}

// ---- completion ----------------------------------------------------------------------

#[test]
fn download_completes_from_several_peers() {
    let mut p = make(
        30,
        3 * B + 100,
        29 * u64::from(3 * B + 100) + 5,
        PickerConfig::default(),
        11,
    );
    for id in 0..4 {
        p.peer_have_all(PeerId(id));
    }
    let mut rounds = 0;
    let mut completed = BTreeSet::new();
    while !p.is_complete() {
        rounds += 1;
        assert!(rounds < 1000);
        for id in 0..4 {
            let peer = PeerId(id);
            for b in p.pick(peer, 5, now()) {
                match p.block_received(peer, b, content(b)) {
                    Received::Accepted { complete, .. } => {
                        if let Some(c) = complete {
                            assert!(completed.insert(c.index));
                            p.piece_verified(c.index).unwrap();
                        }
                    }
                    Received::Duplicate => {}
                    Received::Unrequested | Received::Invalid => panic!("{b:?} from {peer:?}"),
                }
            }
            p.check_invariants();
        }
    }
    assert_eq!(completed.len(), 30);
    assert_eq!(p.missing_count(), 0);
    assert!(!p.in_endgame());
    for id in 0..4 {
        assert!(!p.interesting(PeerId(id)));
        assert!(p.pick(PeerId(id), 10, now()).is_empty());
    }
}

// ---- property test ---------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Bitfield(u8, Vec<bool>),
    HaveAll(u8),
    HaveNone(u8),
    Have(u8, u32),
    Pick(u8, u8),
    /// Deliver the `n`th outstanding block of the peer, corrupted or not.
    Deliver(u8, u16, bool),
    /// Deliver an arbitrary block index (likely unrequested).
    DeliverAny(u8, u32),
    Timeout(u8, u16),
    Reject(u8, u16),
    Choke(u8),
    Gone(u8),
    /// Hash the `n`th piece awaiting a result.
    Hash(u16),
    /// New levels for every piece (0 skip .. 3 high).
    Levels(Vec<u8>),
    /// A new time-critical list (indices may be out of range or repeat).
    Critical(Vec<u32>),
}

const PEERS: u8 = 4;
const PIECES: u32 = 7;
const PIECE_LEN: u32 = 2 * B + 1000;
const TOTAL: u64 = 6 * (2 * B as u64 + 1000) + 5000;

fn op() -> impl Strategy<Value = Op> {
    let peer = 0..PEERS;
    prop_oneof![
        (
            peer.clone(),
            proptest::collection::vec(any::<bool>(), PIECES as usize)
        )
            .prop_map(|(p, v)| Op::Bitfield(p, v)),
        peer.clone().prop_map(Op::HaveAll),
        peer.clone().prop_map(Op::HaveNone),
        (peer.clone(), 0..PIECES + 1).prop_map(|(p, i)| Op::Have(p, i)),
        (peer.clone(), 0u8..6).prop_map(|(p, m)| Op::Pick(p, m)),
        (peer.clone(), any::<u16>(), proptest::bool::weighted(0.1))
            .prop_map(|(p, n, c)| Op::Deliver(p, n, c)),
        (peer.clone(), 0u32..40).prop_map(|(p, n)| Op::DeliverAny(p, n)),
        (peer.clone(), any::<u16>()).prop_map(|(p, n)| Op::Timeout(p, n)),
        (peer.clone(), any::<u16>()).prop_map(|(p, n)| Op::Reject(p, n)),
        peer.clone().prop_map(Op::Choke),
        peer.prop_map(Op::Gone),
        any::<u16>().prop_map(Op::Hash),
        proptest::collection::vec(0u8..4, PIECES as usize).prop_map(Op::Levels),
        proptest::collection::vec(0..PIECES + 2, 0..4).prop_map(Op::Critical),
    ]
}

/// Test-side record of one peer, to check the picker against.
#[derive(Default, Clone)]
struct Model {
    all: bool,
    has: BTreeSet<u32>,
    outstanding: BTreeSet<Block>,
}

impl Model {
    fn has(&self, piece: u32) -> bool {
        self.all || self.has.contains(&piece)
    }
}

struct Sim {
    p: Picker,
    peers: BTreeMap<PeerId, Model>,
    /// Pieces handed out for hashing, with whether their data is good.
    hashing: Vec<(u32, bool)>,
    /// Pieces that have had a block picked (started once).
    started: BTreeSet<u32>,
    t: Instant,
}

impl Sim {
    fn new(seed: u64, strategy: Order) -> Self {
        let config = PickerConfig {
            strategy,
            ..PickerConfig::default()
        };
        Self {
            p: make(PIECES, PIECE_LEN, TOTAL, config, seed),
            peers: BTreeMap::new(),
            hashing: Vec::new(),
            started: BTreeSet::new(),
            t: Instant::now(),
        }
    }

    fn nth_outstanding(&self, peer: PeerId, n: u16) -> Option<Block> {
        let m = self.peers.get(&peer)?;
        if m.outstanding.is_empty() {
            return None;
        }
        m.outstanding
            .iter()
            .nth(usize::from(n) % m.outstanding.len())
            .copied()
    }

    fn deliver(&mut self, peer: PeerId, b: Block, corrupt: bool) {
        let mut data = content(b).to_vec();
        if corrupt {
            data[0] ^= 1;
        }
        let was_outstanding = self
            .peers
            .get_mut(&peer)
            .is_some_and(|m| m.outstanding.remove(&b));
        match self.p.block_received(peer, b, Bytes::from(data)) {
            Received::Accepted { cancel, complete } => {
                for c in cancel {
                    assert_ne!(c, peer);
                    let m = self.peers.get_mut(&c).expect("cancelled peer known");
                    assert!(m.outstanding.remove(&b), "cancel for unrequested");
                }
                if let Some(c) = complete {
                    assert_eq!(c.index, b.piece);
                    let expected: Vec<Bytes> =
                        self.p.blocks_of(c.index).into_iter().map(content).collect();
                    assert_eq!(c.blocks.len(), expected.len());
                    self.hashing.push((c.index, c.blocks == expected));
                }
            }
            Received::Duplicate => {}
            Received::Unrequested | Received::Invalid => {
                assert!(!was_outstanding, "outstanding {b:?} unrequested")
            }
        }
    }

    fn apply(&mut self, op: Op) {
        self.t += Duration::from_millis(10);
        match op {
            Op::Bitfield(id, v) => {
                let peer = PeerId(id.into());
                let set: Vec<u32> = (0..PIECES).filter(|&i| v[i as usize]).collect();
                self.p.peer_bitfield(peer, &bits(PIECES, &set)).unwrap();
                let m = self.peers.entry(peer).or_default();
                m.all = false;
                m.has = set.into_iter().collect();
            }
            Op::HaveAll(id) => {
                let peer = PeerId(id.into());
                self.p.peer_have_all(peer);
                self.peers.entry(peer).or_default().all = true;
            }
            Op::HaveNone(id) => {
                let peer = PeerId(id.into());
                self.p.peer_have_none(peer);
                let m = self.peers.entry(peer).or_default();
                m.all = false;
                m.has.clear();
            }
            Op::Have(id, i) => {
                let peer = PeerId(id.into());
                let r = self.p.peer_have(peer, i);
                if i < PIECES {
                    r.unwrap();
                    self.peers.entry(peer).or_default().has.insert(i);
                } else {
                    assert!(r.is_err());
                }
            }
            Op::Pick(id, max) => {
                let peer = PeerId(id.into());
                let picked = self.p.pick(peer, max.into(), self.t);
                assert!(picked.len() <= max.into());
                let banned = self.p.is_banned(peer);
                let Some(m) = self.peers.get_mut(&peer) else {
                    assert!(picked.is_empty());
                    return;
                };
                if banned {
                    assert!(picked.is_empty());
                }
                for b in picked {
                    assert!(m.has(b.piece), "{peer:?} lacks piece of {b:?}");
                    assert!(!self.p.have(b.piece), "{b:?} of a piece we have");
                    assert!(
                        self.started.contains(&b.piece)
                            || self.p.piece_priority(b.piece) != Priority::Skip
                            || self.p.is_time_critical(b.piece),
                        "{b:?} of a skipped piece started"
                    );
                    self.started.insert(b.piece);
                    assert!(m.outstanding.insert(b), "{b:?} picked twice for {peer:?}");
                }
            }
            Op::Deliver(id, n, corrupt) => {
                let peer = PeerId(id.into());
                if let Some(b) = self.nth_outstanding(peer, n) {
                    self.deliver(peer, b, corrupt);
                }
            }
            Op::DeliverAny(id, n) => {
                let peer = PeerId(id.into());
                let piece = n % PIECES;
                let blocks = self.p.blocks_of(piece);
                let b = blocks[(n / PIECES) as usize % blocks.len()];
                self.deliver(peer, b, false);
            }
            Op::Timeout(id, n) | Op::Reject(id, n) => {
                let peer = PeerId(id.into());
                if let Some(b) = self.nth_outstanding(peer, n) {
                    let ok = if matches!(op, Op::Timeout(..)) {
                        self.p.request_timed_out(peer, b)
                    } else {
                        self.p.request_rejected(peer, b)
                    };
                    assert!(ok);
                    self.peers.get_mut(&peer).unwrap().outstanding.remove(&b);
                }
            }
            Op::Choke(id) => {
                let peer = PeerId(id.into());
                let returned: BTreeSet<Block> = self.p.peer_choked(peer).into_iter().collect();
                let m = self.peers.get_mut(&peer).map(std::mem::take);
                let expected = m
                    .as_ref()
                    .map(|m| m.outstanding.clone())
                    .unwrap_or_default();
                assert_eq!(returned, expected);
                if let Some(mut m) = m {
                    m.outstanding.clear();
                    self.peers.insert(peer, m);
                }
            }
            Op::Gone(id) => {
                let peer = PeerId(id.into());
                self.p.peer_gone(peer);
                self.peers.remove(&peer);
            }
            Op::Levels(v) => {
                let levels: Vec<Priority> = v
                    .iter()
                    .map(|l| Priority::from_level(*l).unwrap())
                    .collect();
                self.p.set_piece_priorities(&levels).unwrap();
                for (i, l) in levels.iter().enumerate() {
                    assert_eq!(self.p.piece_priority(i as u32), *l);
                }
            }
            Op::Critical(v) => {
                self.p.set_time_critical(&v);
                for i in 0..PIECES {
                    let expect = v.contains(&i) && !self.p.have(i);
                    assert_eq!(self.p.is_time_critical(i), expect, "critical {i}");
                }
            }
            Op::Hash(n) => {
                if self.hashing.is_empty() {
                    return;
                }
                let (piece, good) = self.hashing.remove(usize::from(n) % self.hashing.len());
                if good {
                    self.p.piece_verified(piece).unwrap();
                } else {
                    self.p.piece_failed(piece).unwrap();
                }
            }
        }
        self.p.check_invariants();
        for (peer, m) in &self.peers {
            assert_eq!(self.p.outstanding_for(*peer), m.outstanding.len());
        }
    }

    /// Disconnects everyone, then downloads the rest from one honest seed.
    fn finish(&mut self) {
        self.p
            .set_piece_priorities(&[Priority::Normal; PIECES as usize])
            .unwrap();
        self.p.set_time_critical(&[]);
        for id in 0..u64::from(PEERS) {
            self.p.peer_gone(PeerId(id));
        }
        self.peers.clear();
        while let Some((piece, good)) = self.hashing.pop() {
            if good {
                self.p.piece_verified(piece).unwrap();
            } else {
                self.p.piece_failed(piece).unwrap();
            }
        }
        let mut seed = PeerId(100);
        self.p.peer_have_all(seed);
        self.peers.insert(
            seed,
            Model {
                all: true,
                ..Model::default()
            },
        );
        for _ in 0..100 {
            if self.p.is_complete() {
                break;
            }
            if self.p.is_banned(seed) {
                // An honest seed is struck only for pieces it sent alone;
                // the model's seed never lies, but keep going regardless.
                self.p.peer_gone(seed);
                self.peers.remove(&seed);
                seed = PeerId(seed.0 + 1);
                self.p.peer_have_all(seed);
                self.peers.insert(
                    seed,
                    Model {
                        all: true,
                        ..Model::default()
                    },
                );
            }
            self.apply(Op::Pick(seed.0 as u8, 5));
            let outstanding: Vec<Block> = self.peers[&seed].outstanding.iter().copied().collect();
            for b in outstanding {
                self.deliver(seed, b, false);
            }
            // A piece may still hold a corrupt block from a departed peer.
            while let Some((piece, good)) = self.hashing.pop() {
                if good {
                    self.p.piece_verified(piece).unwrap();
                } else {
                    self.p.piece_failed(piece).unwrap();
                }
            }
            self.p.check_invariants();
        }
        assert!(self.p.is_complete());
        assert_eq!(self.p.missing_count(), 0);
        assert_eq!(self.p.unassigned_blocks(), 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_operations_keep_invariants_and_complete(
        seed in any::<u64>(),
        sequential in any::<bool>(),
        ops in proptest::collection::vec(op(), 0..200),
    ) {
        let strategy = if sequential { Order::Sequential } else { Order::RarestFirst };
        let mut sim = Sim::new(seed, strategy);
        for op in ops {
            sim.apply(op);
        }
        sim.finish();
    }
}

// ---- scale ---------------------------------------------------------------------------------

/// 100 000 pieces, 50 peers with random halves of the torrent plus 5 seeds:
/// a full download must stay far from quadratic. Run with
/// `cargo test -p actorrent-actors --release -- --ignored --nocapture scale`
/// to see the numbers.
#[test]
#[ignore = "measurement, run on demand"]
fn scale_100k_pieces() {
    use rand::Rng;
    let pieces = 100_000u32;
    let started = Instant::now();
    let mut p = make(
        pieces,
        B,
        u64::from(pieces) * u64::from(B),
        PickerConfig::default(),
        5,
    );
    let mut r = rng(9);
    for id in 0..50u64 {
        let mut bf = Bitfield::new(pieces);
        for i in 0..pieces {
            if r.random_bool(0.5) {
                bf.set(i, true);
            }
        }
        p.peer_bitfield(PeerId(id), &bf).unwrap();
    }
    for id in 50..55u64 {
        p.peer_have_all(PeerId(id));
    }
    let setup = started.elapsed();
    let t = Instant::now();
    let mut picks = 0u64;
    let mut blocks = 0u64;
    while !p.is_complete() {
        for id in 0..55u64 {
            let peer = PeerId(id);
            let got = p.pick(peer, 64, t);
            picks += 1;
            for b in got {
                blocks += 1;
                if let Received::Accepted {
                    complete: Some(c), ..
                } = p.block_received(peer, b, Bytes::from_static(&[0; B as usize]))
                {
                    p.piece_verified(c.index).unwrap();
                }
            }
        }
    }
    let run = t.elapsed();
    println!(
        "setup {setup:?}; {picks} picks, {blocks} blocks in {run:?} ({:?} per pick)",
        run / picks as u32
    );
}

#[test]
fn pick_partial_only_finishes_started_pieces() {
    let mut p = uniform(4, 4, PickerConfig::default());
    let a = PeerId(1);
    p.peer_have_all(a);
    assert!(
        p.pick_partial(a, 8, now()).is_empty(),
        "nothing started yet"
    );
    let first = p.pick(a, 2, now());
    assert_eq!(first.len(), 2);
    let piece = first[0].piece;
    assert!(first.iter().all(|b| b.piece == piece));
    let rest = p.pick_partial(a, 8, now());
    assert_eq!(rest.len(), 2, "only the started piece's two free blocks");
    assert!(rest.iter().all(|b| b.piece == piece));
    assert!(p.pick_partial(a, 8, now()).is_empty());
    p.check_invariants();
}

#[test]
fn smart_ban_convicts_the_bad_block_and_clears_the_good() {
    let mut p = uniform(1, 2, PickerConfig::default());
    let (bad, good, seed) = (PeerId(1), PeerId(2), PeerId(3));
    for peer in [bad, good, seed] {
        p.peer_have_all(peer);
    }
    // Piece 0: one block from the bad peer (corrupt), one from the good.
    let blocks = p.blocks_of(0);
    let b0 = p.pick(bad, 1, now());
    assert_eq!(b0, vec![blocks[0]]);
    let b1 = p.pick(good, 1, now());
    assert_eq!(b1, vec![blocks[1]]);
    let mut corrupt = content(blocks[0]).to_vec();
    corrupt[0] ^= 0xff;
    p.block_received(bad, blocks[0], Bytes::from(corrupt.clone()));
    let (_, done) = accepted(p.block_received(good, blocks[1], content(blocks[1])));
    let piece = done.expect("piece complete");
    let f = p.piece_failed_blocks(0, &piece.blocks).unwrap();
    assert_eq!(f.contributors, vec![bad, good]);
    assert!(f.newly_banned.is_empty());
    assert_eq!((p.strikes(bad), p.strikes(good)), (0, 0));
    // The seed fetches the whole piece again; it passes.
    let again = p.pick(seed, 2, now());
    assert_eq!(again, blocks);
    p.block_received(seed, blocks[0], content(blocks[0]));
    let (_, done) = accepted(p.block_received(seed, blocks[1], content(blocks[1])));
    let good_piece = done.expect("piece complete");
    let convicted = p.piece_passed(0, &good_piece.blocks);
    assert_eq!(convicted, vec![bad], "the sender of the differing block");
    assert!(p.is_banned(bad));
    assert!(!p.is_banned(good));
    assert_eq!(p.strikes(good), 0, "the sender of the matching block");
    p.piece_verified(0).unwrap();
    p.check_invariants();
}

#[test]
fn a_single_contributor_keeps_no_evidence() {
    let mut p = uniform(1, 2, PickerConfig::default());
    let a = PeerId(1);
    p.peer_have_all(a);
    let blocks = p.pick(a, 2, now());
    p.block_received(
        a,
        blocks[0],
        Bytes::from(vec![0u8; blocks[0].length as usize]),
    );
    let (_, done) = accepted(p.block_received(a, blocks[1], content(blocks[1])));
    let f = p.piece_failed_blocks(0, &done.unwrap().blocks).unwrap();
    assert_eq!(f.contributors, vec![a]);
    assert_eq!(p.strikes(a), 1);
    assert!(p.piece_passed(0, &[]).is_empty(), "nothing to judge");
}

// ---- priorities and time-critical pieces ---------------------------------

fn levels(v: &[u8]) -> Vec<Priority> {
    v.iter()
        .map(|l| Priority::from_level(*l).unwrap())
        .collect()
}

/// Pieces in the order a seed is given them, one block each.
fn order_for(p: &mut Picker, peer: PeerId, n: usize) -> Vec<u32> {
    (0..n)
        .flat_map(|_| p.pick(peer, 1, now()))
        .map(|b| b.piece)
        .collect()
}

#[test]
fn higher_levels_first_rarest_first_within_a_level() {
    let mut p = uniform(9, 1, PickerConfig::default());
    // 0-2 low, 3-5 high, 6-8 normal.
    p.set_piece_priorities(&levels(&[1, 1, 1, 3, 3, 3, 2, 2, 2]))
        .unwrap();
    // Availability: 5 and 8 and 0 rare (A only), the rest also at P2, P3.
    p.peer_bitfield(A, &Bitfield::full(9)).unwrap();
    let common = [1, 2, 3, 4, 6, 7];
    p.peer_bitfield(P2, &bits(9, &common)).unwrap();
    p.peer_bitfield(P3, &bits(9, &common)).unwrap();
    let order = order_for(&mut p, A, 9);
    assert_eq!(order[0], 5, "rarest high piece first");
    assert_eq!(
        order[..3].iter().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([3, 4, 5])
    );
    assert_eq!(order[3], 8, "rarest normal piece first");
    assert_eq!(
        order[3..6].iter().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([6, 7, 8])
    );
    assert_eq!(order[6], 0);
    p.check_invariants();
}

#[test]
fn sequential_within_levels() {
    let config = PickerConfig {
        strategy: Order::Sequential,
        ..PickerConfig::default()
    };
    let mut p = uniform(8, 1, config);
    p.set_piece_priorities(&levels(&[1, 2, 3, 1, 3, 2, 0, 2]))
        .unwrap();
    p.peer_have_all(A);
    assert_eq!(order_for(&mut p, A, 8), vec![2, 4, 1, 5, 7, 0, 3]);
    p.check_invariants();
}

#[test]
fn skipped_pieces_are_never_started_nor_interesting() {
    let mut p = uniform(6, 1, PickerConfig::default());
    p.set_piece_priorities(&levels(&[0, 0, 2, 0, 0, 0]))
        .unwrap();
    assert_eq!(p.missing_wanted(), 1);
    p.peer_bitfield(A, &bits(6, &[0, 1, 5])).unwrap();
    assert!(!p.interesting(A), "it has only pieces we skip");
    assert!(p.pick(A, 10, now()).is_empty());
    p.peer_have(A, 2).unwrap();
    assert!(p.interesting(A));
    let picked = p.pick(A, 10, now());
    assert_eq!(picked, p.blocks_of(2));
    let (_, c) = accepted(p.block_received(A, picked[0], content(picked[0])));
    p.piece_verified(c.unwrap().index).unwrap();
    assert!(p.wanted_complete());
    assert!(!p.is_complete());
    assert!(!p.interesting(A));
    assert!(!p.in_endgame(), "nothing wanted is missing");
    // Selecting more makes the peer interesting again.
    p.set_piece_priorities(&levels(&[0, 2, 2, 0, 0, 0]))
        .unwrap();
    assert!(p.interesting(A));
    assert!(!p.wanted_complete());
    p.check_invariants();
}

#[test]
fn a_started_piece_is_finished_after_being_skipped() {
    let mut p = uniform(3, 4, PickerConfig::default());
    p.peer_have_all(A);
    let first = p.pick(A, 2, now());
    let piece = first[0].piece;
    let mut all = vec![2u8; 3];
    all[piece as usize] = 0;
    p.set_piece_priorities(&levels(&all)).unwrap();
    // Its two free blocks are still handed out (their budget comes back
    // only when the piece completes), before other pieces.
    let rest = p.pick(A, 2, now());
    assert_eq!(rest.len(), 2);
    assert!(rest.iter().all(|b| b.piece == piece));
    p.check_invariants();
}

#[test]
fn time_critical_pieces_come_first_in_order_whatever_their_level() {
    let mut p = uniform(10, 1, PickerConfig::default());
    p.set_piece_priorities(&levels(&[3, 3, 3, 0, 0, 0, 0, 2, 2, 2]))
        .unwrap();
    p.peer_have_all(A);
    p.set_time_critical(&[6, 4, 99, 6]);
    assert!(p.is_time_critical(6) && p.is_time_critical(4));
    assert!(!p.is_time_critical(5));
    let order = order_for(&mut p, A, 10);
    assert_eq!(&order[..2], &[6, 4]);
    assert_eq!(
        order[2..5].iter().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([0, 1, 2])
    );
    assert_eq!(order.len(), 8, "3 and 5 skipped, not critical");
    p.check_invariants();
}

#[test]
fn clearing_the_critical_set_restores_levels_and_interest() {
    let mut p = uniform(4, 1, PickerConfig::default());
    p.set_piece_priorities(&levels(&[0, 0, 0, 0])).unwrap();
    p.peer_bitfield(A, &bits(4, &[1])).unwrap();
    assert!(!p.interesting(A));
    p.set_time_critical(&[1]);
    assert!(p.interesting(A), "a stream needs piece 1");
    p.check_invariants();
    p.set_time_critical(&[]);
    assert!(!p.interesting(A));
    assert!(p.pick(A, 4, now()).is_empty());
    // A critical piece that is verified leaves the set.
    p.set_time_critical(&[1]);
    let b = p.pick(A, 4, now());
    let (_, c) = accepted(p.block_received(A, b[0], content(b[0])));
    p.piece_verified(c.unwrap().index).unwrap();
    assert!(!p.is_time_critical(1));
    assert!(p.wanted_complete());
    p.check_invariants();
}

#[test]
fn priorities_of_the_wrong_length_are_refused() {
    let mut p = uniform(4, 1, PickerConfig::default());
    assert!(p.set_piece_priorities(&levels(&[2, 2, 2])).is_err());
    assert_eq!(p.piece_priority(9), Priority::Skip);
}
