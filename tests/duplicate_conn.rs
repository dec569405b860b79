//! Two connections to one peer (issue 14): actorrent dials a scripted peer
//! while that peer dials actorrent with the same peer id. Exactly one
//! connection must survive, and it must be the one libtorrent keeps too (the
//! connection opened by the peer with the greater peer id), so that both
//! ends close the same half. Checked in both orderings of the two ids, on
//! real sockets on 127.0.0.1.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use protocol::wire::{Decoded, Handshake, Limits, Message, decode_message};
use support::process::Actorrent;
use support::torrent::TestTorrent;

/// Bound on one step (a connect, a handshake, a close): far above what
/// loopback needs, low enough that a hung client fails the test.
const STEP: Duration = Duration::from_secs(30);
const START: Duration = Duration::from_secs(120);

fn read_handshake(s: &mut TcpStream, deadline: Instant) -> Handshake {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    loop {
        if let Ok(Decoded::Complete(h)) = Handshake::decode(&buf) {
            return h;
        }
        assert!(Instant::now() < deadline, "no handshake within {STEP:?}");
        match s.read(&mut chunk) {
            Ok(0) => panic!("closed before its handshake"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("reading a handshake: {e}"),
        }
    }
}

/// Reads what is there on `s` (frames kept in `buf`); true when the client
/// closed it.
fn poll_closed(s: &mut TcpStream, buf: &mut BytesMut) -> bool {
    let mut chunk = [0u8; 4096];
    match s.read(&mut chunk) {
        Ok(0) => true,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            false
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(_) => true,
    }
}

/// Runs one crossed pair with our peer id `ours`; returns (the connection
/// actorrent dialled was closed, the one we dialled was closed), after
/// checking the survivor still works (it answers a full bitfield with
/// interest).
fn crossed_pair(ours: [u8; 20]) -> (bool, bool, [u8; 20]) {
    let dir = tempfile::tempdir().unwrap();
    let t = TestTorrent::single(dir.path(), "dup", 64 * 1024, 256 * 1024, 14);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer: SocketAddr = listener.local_addr().unwrap();
    let out = dir.path().join("out");
    let peer_s = peer.to_string();
    let args: Vec<&std::ffi::OsStr> = [
        "download".as_ref(),
        t.path.as_os_str(),
        "--output".as_ref(),
        out.as_os_str(),
        "--peer".as_ref(),
        peer_s.as_ref(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--encryption".as_ref(),
        "disable".as_ref(),
    ]
    .to_vec();
    let mut client = Actorrent::spawn("actorrent download", &args);
    let port = client.listen_port(START);

    // Its dial, answered with our id.
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + STEP;
    let mut theirs_dial = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    client.fail("actorrent never dialled the peer it was given");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    theirs_dial.set_nonblocking(false).unwrap();
    theirs_dial
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let their_hs = read_handshake(&mut theirs_dial, Instant::now() + STEP);
    let client_id = their_hs.peer_id;
    theirs_dial
        .write_all(&Handshake::new([0; 8], t.info_hash, ours).to_bytes())
        .unwrap();

    // Our dial, with the same id.
    let mut our_dial =
        TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), STEP).unwrap();
    our_dial
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    our_dial
        .write_all(&Handshake::new([0; 8], t.info_hash, ours).to_bytes())
        .unwrap();
    let _ = read_handshake(&mut our_dial, Instant::now() + STEP);

    let (mut b1, mut b2) = (BytesMut::new(), BytesMut::new());
    let deadline = Instant::now() + STEP;
    let (c1, c2) = loop {
        let c1 = poll_closed(&mut theirs_dial, &mut b1);
        let c2 = poll_closed(&mut our_dial, &mut b2);
        if c1 || c2 {
            break (c1, c2);
        }
        if Instant::now() >= deadline {
            client.fail("both connections to one peer are still open");
        }
    };
    // The survivor is in use: a full bitfield makes the client interested.
    let (survivor, buf) = if c1 {
        (&mut our_dial, &mut b2)
    } else {
        (&mut theirs_dial, &mut b1)
    };
    let n = t.piece_count() as usize;
    let mut bits = vec![0u8; n.div_ceil(8)];
    for i in 0..n {
        bits[i / 8] |= 0x80 >> (i % 8);
    }
    let mut frame = BytesMut::new();
    Message::Bitfield(bits.into()).encode(&mut frame);
    survivor.write_all(&frame).unwrap();
    let limits = Limits {
        piece_count: Some(t.piece_count()),
        ..Limits::default()
    };
    let deadline = Instant::now() + STEP;
    loop {
        match decode_message(buf, &limits) {
            Ok(Decoded::Complete(Message::Interested)) => break,
            Ok(Decoded::Complete(_)) => continue,
            Ok(Decoded::NeedMore(_)) => {}
            Err(e) => client.fail(&format!("bad frame from the client: {e}")),
        }
        if poll_closed(survivor, buf) {
            client.fail("the surviving connection was closed too");
        }
        if Instant::now() >= deadline {
            client.fail("no interest on the surviving connection");
        }
    }
    (c1, c2, client_id)
}

#[test]
fn lower_remote_id_keeps_the_connection_actorrent_opened() {
    let ours = [0x01; 20];
    let (their_dial_closed, our_dial_closed, client_id) = crossed_pair(ours);
    assert!(
        client_id > ours,
        "actorrent's id {client_id:?} is not above ours"
    );
    assert!(
        !their_dial_closed && our_dial_closed,
        "kept the wrong half: actorrent's dial closed {their_dial_closed}, ours closed {our_dial_closed}"
    );
}

#[test]
fn higher_remote_id_keeps_the_connection_the_peer_opened() {
    let ours = [0xfe; 20];
    let (their_dial_closed, our_dial_closed, client_id) = crossed_pair(ours);
    assert!(
        client_id < ours,
        "actorrent's id {client_id:?} is not below ours"
    );
    assert!(
        their_dial_closed && !our_dial_closed,
        "kept the wrong half: actorrent's dial closed {their_dial_closed}, ours closed {our_dial_closed}"
    );
}
