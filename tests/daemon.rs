//! `actorrent daemon` driven as its users drive it: the real
//! `transmission-remote` (Debian's transmission-cli) adds, lists, shows,
//! stops, starts, verifies, selects files and removes, while the download
//! really happens from an `actorrent seed` on 127.0.0.1 that dials the
//! daemon's listener; raw HTTP checks the RPC's guards against hostile
//! requests; a SIGTERM and a restart bring every torrent back without a
//! recheck, skipping only a corrupt state file; the watch directory adds
//! what is dropped in it.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::process::Actorrent;
use support::torrent::TestTorrent;
use support::wait_until;

const WAIT: Duration = Duration::from_secs(60);

/// A running daemon; killed when dropped.
struct Daemon {
    child: Child,
    log: PathBuf,
    rpc: SocketAddr,
    peers: SocketAddr,
}

impl Daemon {
    fn start(state: &Path, dl: &Path, extra: &[&str]) -> Daemon {
        // No DHT: its default routers are on the internet.
        Self::start_env(state, dl, extra, &[("ACTORRENT_DHT_ENABLED", "false")])
    }

    fn start_env(state: &Path, dl: &Path, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let log = state.with_extension(format!("log{}", rand::random::<u32>()));
        let err = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_actorrent"))
            .args(["daemon", "--state-dir"])
            .arg(state)
            .arg("--download-dir")
            .arg(dl)
            .args(["--rpc", "127.0.0.1:0", "--listen", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "info,actors::peer=warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn actorrent daemon");
        let mut d = Daemon {
            child,
            log,
            rpc: "0.0.0.0:0".parse().unwrap(),
            peers: "0.0.0.0:0".parse().unwrap(),
        };
        let found = wait_until(WAIT, || {
            let text = d.log();
            let grab = |prefix: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(prefix))
                    .and_then(|r| r.split('/').next())
                    .and_then(|a| a.trim().parse::<SocketAddr>().ok())
            };
            match (
                grab("actorrent: RPC at http://"),
                grab("actorrent: peers on "),
            ) {
                (Some(r), Some(p)) => {
                    d.rpc = r;
                    d.peers = p;
                    true
                }
                _ => false,
            }
        });
        if !found {
            d.fail("no RPC address on stderr");
        }
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn fail(&self, why: &str) -> ! {
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!("daemon: {why}\nlog tail:\n{}", tail.join("\n"))
    }

    /// `transmission-remote <rpc> <args>`: its stdout, asserting it exits 0.
    fn remote(&self, args: &[&str]) -> String {
        let out = Command::new("transmission-remote")
            .arg(self.rpc.to_string())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run transmission-remote (Debian package transmission-cli)");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            self.fail(&format!(
                "transmission-remote {args:?} failed: {}\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        stdout
    }

    /// One RPC call through the session-id handshake; the response JSON.
    fn call(&self, method: &str, arguments: Value) -> Value {
        let body = json!({ "method": method, "arguments": arguments, "tag": 5 }).to_string();
        let (code, headers, _) = http(self.rpc, "POST", &[], body.as_bytes());
        assert_eq!(code, 409, "a request without a session id gets 409");
        let id = header(&headers, "x-transmission-session-id").expect("409 carries the id");
        let (code, _, resp) = http(
            self.rpc,
            "POST",
            &[("X-Transmission-Session-Id", &id)],
            body.as_bytes(),
        );
        assert_eq!(code, 200, "{method}: {resp}");
        let v: Value = serde_json::from_str(&resp).expect("the RPC answers JSON");
        assert_eq!(v["tag"], 5, "the tag is echoed");
        v
    }

    fn torrents(&self, fields: &[&str]) -> Vec<Value> {
        let v = self.call("torrent-get", json!({ "fields": fields }));
        assert_eq!(v["result"], "success", "{v}");
        v["arguments"]["torrents"].as_array().unwrap().clone()
    }

    fn wait_torrent(&self, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let fields = [
            "id",
            "hashString",
            "name",
            "status",
            "percentDone",
            "error",
            "errorString",
            "leftUntilDone",
            "sizeWhenDone",
        ];
        let mut last = Vec::new();
        if wait_until(WAIT, || {
            last = self.torrents(&fields);
            last.iter().any(&cond)
        }) {
            return last.into_iter().find(cond).unwrap();
        }
        self.fail(&format!("no torrent {what}; last torrent-get: {last:?}"))
    }

    fn terminate(&mut self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -TERM");
        let mut status = None;
        wait_until(WAIT, || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        match status {
            Some(s) if s.success() => {}
            Some(s) => self.fail(&format!("exited with {s} after SIGTERM")),
            None => self.fail("did not stop within a minute of SIGTERM"),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn header(headers: &str, name: &str) -> Option<String> {
    headers.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// A minimal HTTP/1.1 request: status, header block, body.
fn http(
    addr: SocketAddr,
    method: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    http_raw(
        addr,
        method,
        "/transmission/rpc",
        headers,
        body,
        Some(body.len()),
    )
}

fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    content_length: Option<usize>,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the RPC");
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(n) = content_length {
        req.push_str(&format!("Content-Length: {n}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    // The server may answer (413) before reading a body it refuses.
    let _ = s.write_all(body);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {head:?}"));
    (code, head.to_owned(), body.to_owned())
}

fn three_files(dir: &Path, name: &str, seed: u64) -> TestTorrent {
    TestTorrent::multi(
        dir,
        name,
        16 * 1024,
        &[("a.bin", 200_000), ("sub/b.bin", 70_000), ("c.bin", 40_000)],
        seed,
    )
}

fn seed_for(t: &TestTorrent, data: &Path, daemon: &Daemon) -> Actorrent {
    t.write_payload(data);
    let peer = daemon.peers.to_string();
    Actorrent::seed("seed", &t.path, data, &["--peer", &peer])
}

#[test]
fn transmission_remote_drives_a_download() {
    let tmp = tempfile::tempdir().unwrap();
    let (state, dl, data) = (
        tmp.path().join("state"),
        tmp.path().join("dl"),
        tmp.path().join("seed"),
    );
    std::fs::create_dir_all(&dl).unwrap();
    std::fs::write(dl.join("not-ours"), b"keep me").unwrap();
    let t = three_files(tmp.path(), "payload", 1);
    let d = Daemon::start(&state, &dl, &[]);

    // Added paused, so the selection below applies before any file is
    // created.
    let out = d.remote(&["--start-paused", "-a", t.path.to_str().unwrap()]);
    assert!(out.contains("success"), "{out}");
    // The same torrent again: a duplicate, nothing changes.
    let bytes = std::fs::read(&t.path).unwrap();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let again = d.call("torrent-add", json!({ "metainfo": b64 }));
    assert_eq!(again["result"], "success", "{again}");
    assert_eq!(again["arguments"]["torrent-duplicate"]["id"], 1, "{again}");
    let hash = again["arguments"]["torrent-duplicate"]["hashString"]
        .as_str()
        .unwrap()
        .to_owned();

    // File 2 (c.bin) not wanted, before any data arrives.
    d.remote(&["-t", "1", "-G", "2"]);
    assert_eq!(d.torrents(&["status"])[0]["status"], 0, "paused");
    d.remote(&["-t", "1", "-s"]);
    let mut seed = seed_for(&t, &data, &d);
    // Seeding (status 6) comes once the last piece is written and synced;
    // percentDone reaches 1 when it is verified.
    d.wait_torrent("complete", |v| v["percentDone"] == 1.0 && v["status"] == 6);
    let list = d.remote(&["-l"]);
    assert!(list.contains("100%") && list.contains("payload"), "{list}");
    let info = d.remote(&["-t", "1", "-i"]);
    assert!(info.contains(&format!("Hash: {hash}")), "{info}");
    assert!(info.contains("Percent Done: 100%"), "{info}");
    let files = d.remote(&["-t", "1", "-f"]);
    let c_line = files
        .lines()
        .find(|l| l.contains("payload/c.bin"))
        .unwrap_or_else(|| panic!("{files}"));
    assert!(c_line.contains(" No "), "c.bin unwanted: {files}");
    let a_line = files.lines().find(|l| l.contains("payload/a.bin")).unwrap();
    assert!(
        a_line.contains("100%") && a_line.contains(" Yes "),
        "{files}"
    );
    // What was wanted is on disk, byte for byte; the unwanted file is not.
    for (path, want) in &t.files[..2] {
        let got = std::fs::read(path.iter().fold(dl.join("payload"), |p, c| p.join(c))).unwrap();
        assert!(got == *want, "{path:?} differs");
    }
    assert!(!dl.join("payload/c.bin").exists());

    // The table form: field names first, then one row per torrent.
    let table = d.call(
        "torrent-get",
        json!({ "format": "table", "fields": ["id", "name", "no-such-field"] }),
    );
    assert_eq!(
        table["arguments"]["torrents"],
        json!([["id", "name", "no-such-field"], [1, "payload", null]])
    );
    let by_hash = d.call("torrent-get", json!({ "ids": [hash], "fields": ["id"] }));
    assert_eq!(by_hash["arguments"]["torrents"], json!([{ "id": 1 }]));

    // Stop, start, a limit, verify.
    d.remote(&["-t", "1", "-S"]);
    assert!(d.remote(&["-l"]).contains("Stopped"));
    assert_eq!(d.torrents(&["status"])[0]["status"], 0);
    d.remote(&["-t", "1", "-s"]);
    d.wait_torrent("seeding again", |v| v["status"] == 6);
    d.remote(&["-t", "1", "-u", "50"]);
    assert!(
        d.remote(&["-t", "1", "-i"])
            .contains("Upload Limit: 50 kB/s")
    );
    d.remote(&["-t", "1", "-v"]);
    d.wait_torrent("verified complete", |v| {
        v["status"] == 6 && v["percentDone"] == 1.0
    });
    // Wanted again: c.bin comes from the seed.
    d.remote(&["-t", "1", "-g", "2"]);
    d.wait_torrent("complete with c.bin", |v| {
        v["percentDone"] == 1.0 && v["sizeWhenDone"] == 310_000 && v["status"] == 6
    });
    // Verified pieces reach the disk through the writer: wait for them.
    let c = &t.files[2].1;
    assert!(
        wait_until(WAIT, || std::fs::read(dl.join("payload/c.bin"))
            .is_ok_and(|b| b == *c)),
        "c.bin written"
    );
    t.assert_downloaded(&dl);

    // The data moved by hand: --find points the torrent there, and it
    // seeds from the new place without a recheck.
    let moved = tmp.path().join("moved");
    std::fs::create_dir_all(&moved).unwrap();
    d.remote(&["-t", "1", "-S"]);
    std::fs::rename(dl.join("payload"), moved.join("payload")).unwrap();
    d.remote(&["-t", "1", "--find", moved.to_str().unwrap()]);
    d.remote(&["-t", "1", "-s"]);
    d.wait_torrent("seeding from the new place", |v| {
        v["status"] == 6 && v["percentDone"] == 1.0
    });
    assert_eq!(
        d.torrents(&["downloadDir"])[0]["downloadDir"],
        moved.to_str().unwrap()
    );
    std::fs::rename(moved.join("payload"), dl.join("payload")).unwrap();
    d.remote(&["-t", "1", "-S"]);
    d.remote(&["-t", "1", "--find", dl.to_str().unwrap()]);

    // Remove with its data: exactly the torrent's files go.
    d.remote(&["-t", "1", "--remove-and-delete"]);
    assert!(d.torrents(&["id"]).is_empty());
    assert!(!dl.join("payload").exists(), "the torrent's tree is gone");
    assert_eq!(std::fs::read(dl.join("not-ours")).unwrap(), b"keep me");
    assert!(
        std::fs::read_dir(state.join("torrents"))
            .unwrap()
            .next()
            .is_none()
    );
    seed.stop(WAIT);
    let mut d = d;
    d.terminate();
}

#[test]
fn rpc_refuses_hostile_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        &tmp.path().join("state"),
        tmp.path(),
        &["--rpc-auth", "alice:s3cret"],
    );
    use base64::Engine;
    let enc = |s: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(s)
        )
    };
    let good = enc("alice:s3cret");
    let body = br#"{"method":"session-get"}"#;
    // No or wrong credentials: 401, asking for Basic.
    let (code, head, _) = http(d.rpc, "POST", &[], body);
    assert_eq!(code, 401);
    assert!(header(&head, "www-authenticate").is_some_and(|v| v.starts_with("Basic")));
    let (code, _, _) = http(
        d.rpc,
        "POST",
        &[("Authorization", &enc("alice:guess"))],
        body,
    );
    assert_eq!(code, 401);
    // A host name not on the list (DNS rebinding): refused.
    let (code, _, _) = http(
        d.rpc,
        "POST",
        &[("Host", "evil.example:9091"), ("Authorization", &good)],
        body,
    );
    assert_eq!(code, 421);
    // Right credentials, no session id: 409 with the id.
    let (code, head, _) = http(d.rpc, "POST", &[("Authorization", &good)], body);
    assert_eq!(code, 409);
    let sid = header(&head, "x-transmission-session-id").unwrap();
    let auth = [
        ("Authorization", good.as_str()),
        ("X-Transmission-Session-Id", sid.as_str()),
    ];
    // A stale id is refused the same way.
    let (code, _, _) = http(
        d.rpc,
        "POST",
        &[
            ("Authorization", &good),
            ("X-Transmission-Session-Id", "stale"),
        ],
        body,
    );
    assert_eq!(code, 409);
    let (code, _, resp) = http(d.rpc, "POST", &auth, body);
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&resp).unwrap();
    assert_eq!(v["result"], "success");
    assert_eq!(v["arguments"]["rpc-version"], 17);
    assert!(
        v["arguments"]["version"]
            .as_str()
            .unwrap()
            .starts_with("4.0.6 (actorrent")
    );
    // A body over the limit: 413 before it is read.
    let (code, _, _) = http_raw(
        d.rpc,
        "POST",
        "/transmission/rpc",
        &auth,
        b"{}",
        Some(100 << 20),
    );
    assert_eq!(code, 413);
    // Malformed JSON, wrong types, unknown methods and ids: an error
    // result, and the daemon still answers afterwards.
    for (body, needle) in [
        (&b"{not json"[..], "not JSON"),
        (b"[1,2]", "not a JSON object"),
        (
            br#"{"method":"torrent-get","arguments":{"fields":"id"}}"#,
            "fields",
        ),
        (
            br#"{"method":"torrent-get","arguments":{"fields":["id"],"ids":[{"x":1}]}}"#,
            "ids",
        ),
        (
            br#"{"method":"torrent-set","arguments":{"ids":[1],"files-wanted":"all"}}"#,
            "files-wanted",
        ),
        (
            br#"{"method":"torrent-add","arguments":{"metainfo":"bm90IGEgdG9ycmVudA=="}}"#,
            "torrent",
        ),
        (br#"{"method":"torrent-add","arguments":{}}"#, "filename"),
        (br#"{"method":"no-such-method"}"#, "not recognized"),
    ] {
        let (code, _, resp) = http(d.rpc, "POST", &auth, body);
        assert_eq!(code, 200, "{resp}");
        let v: Value = serde_json::from_str(&resp).unwrap_or_else(|e| panic!("{e}: {resp}"));
        let r = v["result"].as_str().unwrap();
        assert!(
            r != "success" && r.contains(needle),
            "{}: {r}",
            String::from_utf8_lossy(body)
        );
    }
    let (_, _, resp) = http(
        d.rpc,
        "POST",
        &auth,
        br#"{"method":"torrent-stop","arguments":{"ids":[999]}}"#,
    );
    assert!(
        resp.contains("success"),
        "unknown ids are ignored, as Transmission does: {resp}"
    );
    let (_, _, resp) = http(d.rpc, "POST", &auth, br#"{"method":"port-test"}"#);
    assert!(resp.contains(r#""port-is-open":false"#), "{resp}");
    // Metrics on the same server, behind the same auth.
    let (code, _, _) = http_raw(d.rpc, "GET", "/metrics", &[], b"", None);
    assert_eq!(code, 401);
    let (code, _, text) = http_raw(
        d.rpc,
        "GET",
        "/metrics",
        &[("Authorization", &good)],
        b"",
        None,
    );
    assert_eq!(code, 200);
    assert!(text.contains("actorrent_"), "{text}");
    // The web UI's files are served, nothing outside its directory.
    let (code, _, _) = http_raw(
        d.rpc,
        "GET",
        "/transmission/web/../../../etc/passwd",
        &auth,
        b"",
        None,
    );
    assert_eq!(code, 404);
    // Ten wrong passwords from one address lock it out: then even the
    // right one is refused, 429 with Retry-After, and the RPC stays shut.
    for i in 0..10 {
        let (code, _, _) = http(
            d.rpc,
            "POST",
            &[("Authorization", &enc(&format!("alice:guess{i}")))],
            body,
        );
        assert_eq!(code, 401, "attempt {i}");
    }
    let (code, head, _) = http(d.rpc, "POST", &auth, body);
    assert_eq!(code, 429);
    assert_eq!(header(&head, "retry-after").as_deref(), Some("300"));
    let (code, _, _) = http_raw(
        d.rpc,
        "GET",
        "/metrics",
        &[("Authorization", &good)],
        b"",
        None,
    );
    assert_eq!(code, 429);
}

#[test]
fn a_restart_brings_every_torrent_back_without_a_recheck() {
    let tmp = tempfile::tempdir().unwrap();
    let (state, dl, data) = (
        tmp.path().join("state"),
        tmp.path().join("dl"),
        tmp.path().join("seed"),
    );
    let done = three_files(tmp.path(), "done", 2);
    let paused = three_files(tmp.path(), "paused", 3);
    let broken = three_files(tmp.path(), "broken", 4);
    let mut d = Daemon::start(&state, &dl, &[]);
    d.remote(&["-a", done.path.to_str().unwrap()]);
    d.remote(&["--start-paused", "-a", paused.path.to_str().unwrap()]);
    d.remote(&["--start-paused", "-a", broken.path.to_str().unwrap()]);
    d.remote(&["-t", "1", "-G", "1"]);
    let mut seed = seed_for(&done, &data, &d);
    d.wait_torrent("complete", |v| {
        v["name"] == "done" && v["percentDone"] == 1.0 && v["status"] == 6
    });
    seed.stop(WAIT);
    let before = d.torrents(&[
        "id",
        "name",
        "status",
        "percentDone",
        "sizeWhenDone",
        "wanted",
        "downloadDir",
    ]);
    d.terminate();
    assert!(d.log().contains("daemon stopped"));

    // One torrent's settings file is damaged while the daemon is down.
    let broken_hash =
        protocol::metainfo::Metainfo::from_bytes(&std::fs::read(&broken.path).unwrap())
            .unwrap()
            .info_hash
            .to_hex();
    let bad = state.join("torrents").join(format!("{broken_hash}.json"));
    std::fs::write(&bad, b"{ this is not json").unwrap();

    let d = Daemon::start(&state, &dl, &[]);
    d.wait_torrent("seeding after restart", |v| {
        v["name"] == "done" && v["status"] == 6
    });
    let after = d.torrents(&[
        "id",
        "name",
        "status",
        "percentDone",
        "sizeWhenDone",
        "wanted",
        "downloadDir",
    ]);
    let log = d.log();
    assert!(
        log.contains(&bad.display().to_string()),
        "the corrupt file is named:\n{log}"
    );
    assert!(
        !log.contains("rechecking"),
        "no piece was rechecked:\n{log}"
    );
    assert_eq!(
        after.len(),
        2,
        "only the corrupt torrent is skipped: {after:?}"
    );
    let keep: Vec<&Value> = before.iter().filter(|v| v["name"] != "broken").collect();
    for (b, a) in keep.iter().zip(&after) {
        assert_eq!(*b, a, "same state after the restart");
    }
    assert!(bad.exists(), "the damaged file is left for the operator");

    // Killed outright: the state written so far is enough to come back,
    // the finished torrent seeding again from its resume data.
    let mut d = d;
    let _ = d.child.kill();
    let _ = d.child.wait();
    let d = Daemon::start(&state, &dl, &[]);
    d.wait_torrent("seeding after kill -9", |v| {
        v["name"] == "done" && v["status"] == 6
    });
    let again = d.torrents(&[
        "id",
        "name",
        "status",
        "percentDone",
        "sizeWhenDone",
        "wanted",
        "downloadDir",
    ]);
    assert_eq!(again, after, "same state after kill -9");
    assert!(
        !d.log().contains("rechecking"),
        "no recheck after kill -9:\n{}",
        d.log()
    );
}

#[test]
fn the_watch_directory_adds_what_is_dropped_in_it() {
    let tmp = tempfile::tempdir().unwrap();
    let watch = tmp.path().join("watch");
    std::fs::create_dir_all(&watch).unwrap();
    let t = three_files(tmp.path(), "watched", 5);
    let d = Daemon::start(
        &tmp.path().join("state"),
        tmp.path(),
        &["--watch", watch.to_str().unwrap()],
    );
    std::fs::copy(&t.path, watch.join("one.torrent")).unwrap();
    std::fs::write(watch.join("junk.torrent"), b"d4:infoi1ee").unwrap();
    let added = watch.join("one.torrent.added");
    let invalid = watch.join("junk.torrent.invalid");
    assert!(
        wait_until(WAIT, || added.exists() && invalid.exists()),
        "{}",
        d.log()
    );
    std::fs::copy(&t.path, watch.join("again.torrent")).unwrap();
    assert!(wait_until(WAIT, || watch
        .join("again.torrent.added")
        .exists()));
    std::fs::write(
        watch.join("link.magnet"),
        "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567&dn=from-a-link\n",
    )
    .unwrap();
    assert!(wait_until(WAIT, || watch
        .join("link.magnet.added")
        .exists()));
    let names: Vec<Value> = d
        .torrents(&["name"])
        .into_iter()
        .map(|v| v["name"].clone())
        .collect();
    assert_eq!(
        names,
        vec![json!("watched"), json!("from-a-link")],
        "the duplicate was not added twice"
    );
    assert!(
        d.log().contains("junk.torrent"),
        "the invalid file is named in the log"
    );
}

/// Where Debian's transmission-common puts the web UI.
fn web_ui_dir() -> PathBuf {
    [
        "/usr/share/transmission/public_html",
        "/usr/share/transmission/web",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|d| d.join("index.html").is_file())
    .expect("the Transmission web UI (Debian package transmission-common)")
}

/// Headless Chromium loads `url`, runs its scripts for a few seconds of
/// virtual time and prints the DOM (or, with `shot`, saves a screenshot).
fn chromium(url: &str, profile: &Path, shot: Option<&Path>) -> String {
    let mut cmd = Command::new("timeout");
    cmd.args([
        "60",
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
    ])
    .args([
        "--disable-background-networking",
        "--disable-component-update",
    ])
    .args([
        "--disable-sync",
        "--no-first-run",
        "--virtual-time-budget=5000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg("--window-size=1000,400");
    match shot {
        Some(p) => cmd.arg(format!("--screenshot={}", p.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("run chromium (Debian package chromium)");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_transmission_web_ui_lists_the_torrents() {
    let tmp = tempfile::tempdir().unwrap();
    let (state, dl, data) = (
        tmp.path().join("state"),
        tmp.path().join("dl"),
        tmp.path().join("seed"),
    );
    let web = web_ui_dir();
    let d = Daemon::start(&state, &dl, &["--web-ui", web.to_str().unwrap()]);
    let done = three_files(tmp.path(), "finished-one", 6);
    let waiting = three_files(tmp.path(), "waiting-one", 7);
    d.remote(&["-a", done.path.to_str().unwrap()]);
    d.remote(&["--start-paused", "-a", waiting.path.to_str().unwrap()]);
    let mut seed = seed_for(&done, &data, &d);
    d.wait_torrent("complete", |v| {
        v["name"] == "finished-one" && v["percentDone"] == 1.0
    });
    let url = format!("http://{}/transmission/web/", d.rpc);
    let dom = chromium(&url, &tmp.path().join("profile"), None);
    for name in ["finished-one", "waiting-one"] {
        assert!(
            dom.contains(&format!("torrent_name\">{name}<")),
            "{name} listed:\n{dom}"
        );
    }
    // The finished one shows its full size and a ratio, the paused one
    // none of its bytes.
    assert!(
        dom.contains("310.0 kB, uploaded"),
        "progress of the finished one:\n{dom}"
    );
    assert!(
        dom.contains("0 B of 310.0 kB (0.00%)"),
        "progress of the paused one:\n{dom}"
    );
    // A screenshot for a person to look at, kept with the test build.
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("daemon-web-ui.png");
    chromium(&url, &tmp.path().join("profile2"), Some(&shot));
    assert!(std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000));
    seed.stop(WAIT);
}

#[test]
fn a_magnet_link_fetches_its_metadata_downloads_and_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let (state, dl, data) = (
        tmp.path().join("state"),
        tmp.path().join("dl"),
        tmp.path().join("seed"),
    );
    let t = three_files(tmp.path(), "by-magnet", 8);
    t.write_payload(&data);
    let mut seed = Actorrent::seed("seed", &t.path, &data, &[]);
    let port = seed.listen_port(WAIT);
    let hash: String = t.info_hash.iter().map(|b| format!("{b:02x}")).collect();
    let mut d = Daemon::start(&state, &dl, &[]);
    let link = format!("magnet:?xt=urn:btih:{hash}&dn=hint&x.pe=127.0.0.1:{port}");
    assert!(d.remote(&["-a", &link]).contains("success"));
    // A second magnet, paused, whose metadata nobody has: kept as it is.
    let lonely = "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567&dn=lonely";
    d.remote(&["--start-paused", "-a", lonely]);
    let done = d.wait_torrent("downloaded by magnet", |v| {
        v["name"] == "by-magnet" && v["percentDone"] == 1.0 && v["status"] == 6
    });
    assert_eq!(done["hashString"], hash.as_str());
    t.assert_downloaded(&dl);
    let list = d.remote(&["-l"]);
    assert!(
        list.contains("by-magnet") && list.contains("lonely"),
        "{list}"
    );
    let lonely_now = d.call(
        "torrent-get",
        json!({ "ids": [2], "fields": ["name", "status", "metadataPercentComplete"] }),
    );
    assert_eq!(
        lonely_now["arguments"]["torrents"][0]["status"], 0,
        "{lonely_now}"
    );
    assert_eq!(
        lonely_now["arguments"]["torrents"][0]["metadataPercentComplete"],
        0.0
    );
    seed.stop(WAIT);
    d.terminate();

    // After a restart the first is a torrent like any other, the second
    // still a magnet link waiting for its metadata.
    let d = Daemon::start(&state, &dl, &[]);
    d.wait_torrent("seeding after restart", |v| {
        v["name"] == "by-magnet" && v["status"] == 6
    });
    let names: Vec<Value> = d
        .torrents(&["name"])
        .into_iter()
        .map(|v| v["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("by-magnet"), json!("lonely")]);
    assert!(
        state
            .join("torrents")
            .join(format!("{hash}.torrent"))
            .exists()
    );
    assert!(
        !state
            .join("torrents")
            .join(format!("{hash}.magnet"))
            .exists()
    );
    assert!(!d.log().contains("rechecking"), "{}", d.log());

    // Removed without its data: the downloaded files stay, the state goes.
    d.remote(&["-t", "1", "-r"]);
    d.remote(&["-t", "2", "-r"]);
    assert!(d.torrents(&["id"]).is_empty());
    t.assert_downloaded(&dl);
    assert!(
        std::fs::read_dir(state.join("torrents"))
            .unwrap()
            .next()
            .is_none()
    );
}

/// The daemon runs one DHT node (`dht-enabled` says so): a bare magnet link
/// (no `tr`, no `x.pe`) added by `transmission-remote` is looked up in it,
/// found at an `actorrent seed` that announced itself in a loopback DHT
/// (a router node run by the test), and downloaded.
#[test]
fn the_daemon_finds_a_bare_magnets_seed_through_the_dht() {
    let tmp = tempfile::tempdir().unwrap();
    let (state, dl, data) = (
        tmp.path().join("state"),
        tmp.path().join("dl"),
        tmp.path().join("seed"),
    );
    let t = three_files(tmp.path(), "by-dht", 9);
    t.write_payload(&data);
    let router = support::dht::Router::start();
    let config = support::dht::loopback_dht_config(tmp.path(), router.addr());
    let dht_on = [("ACTORRENT_DHT_ENABLED", "true")];
    let cfg = config.to_str().unwrap();
    let seed_args: Vec<&std::ffi::OsStr> = vec![
        "seed".as_ref(),
        t.path.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--config".as_ref(),
        cfg.as_ref(),
    ];
    let mut seed = Actorrent::spawn_env("actorrent seed", &seed_args, &dht_on);
    seed.listen_port(WAIT);
    if !router.wait_announced(WAIT) {
        seed.fail("the seed never announced itself to the router");
    }
    let d = Daemon::start_env(&state, &dl, &["--config", cfg], &dht_on);
    let session = d.call("session-get", json!({}));
    assert_eq!(session["arguments"]["dht-enabled"], true, "{session}");
    assert_eq!(session["arguments"]["pex-enabled"], true, "{session}");
    let hash: String = t.info_hash.iter().map(|b| format!("{b:02x}")).collect();
    let link = format!("magnet:?xt=urn:btih:{hash}");
    assert!(d.remote(&["-a", &link]).contains("success"));
    let done = d.wait_torrent("downloaded by a magnet found in the DHT", |v| {
        v["name"] == "by-dht" && v["percentDone"] == 1.0 && v["status"] == 6
    });
    assert_eq!(done["hashString"], hash.as_str());
    t.assert_downloaded(&dl);
    seed.stop(Duration::from_secs(30));
}

impl Daemon {
    /// Waits up to `timeout` for torrent `id` to satisfy `cond`; its
    /// `fields`.
    fn wait_id(
        &self,
        id: i64,
        fields: &[&str],
        timeout: Duration,
        what: &str,
        cond: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut last = Value::Null;
        let ok = wait_until(timeout, || {
            let v = self.call("torrent-get", json!({ "ids": [id], "fields": fields }));
            last = v["arguments"]["torrents"][0].clone();
            cond(&last)
        });
        if !ok {
            self.fail(&format!("torrent {id} not {what}; last: {last}"));
        }
        last
    }

    /// Sends the daemon SIGHUP.
    fn hup(&self) {
        let ok = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -HUP");
    }

    fn session(&self) -> Value {
        let v = self.call("session-get", json!({}));
        assert_eq!(v["result"], "success", "{v}");
        v["arguments"].clone()
    }
}

/// `actorrent download` of `t` from the daemon's listener into `out`.
fn leecher(t: &TestTorrent, out: &Path, daemon: &Daemon) -> Actorrent {
    Actorrent::download("leecher", &t.path, out, &[daemon.peers], &[])
}

const SEED_FIELDS: [&str; 6] = [
    "status",
    "isFinished",
    "uploadRatio",
    "seedRatioMode",
    "seedRatioLimit",
    "uploadedEver",
];

#[test]
fn seed_ratio_and_idle_limits_stop_seeding() {
    let tmp = tempfile::tempdir().unwrap();
    let (state, dl, out) = (
        tmp.path().join("state"),
        tmp.path().join("dl"),
        tmp.path().join("out"),
    );
    // Three torrents whose data is in place: the daemon seeds them.
    let ratio = TestTorrent::single(tmp.path(), "by-ratio", 16 * 1024, 300_000, 21);
    let idle = TestTorrent::single(tmp.path(), "by-idle", 16 * 1024, 50_000, 22);
    let global = TestTorrent::single(tmp.path(), "by-session", 16 * 1024, 50_000, 23);
    for t in [&ratio, &idle, &global] {
        t.write_payload(&dl);
    }
    let mut d = Daemon::start(&state, &dl, &[]);
    for t in [&ratio, &idle, &global] {
        d.remote(&["-a", t.path.to_str().unwrap()]);
    }
    for id in 1..=3 {
        d.wait_id(id, &SEED_FIELDS, WAIT, "seeding", |v| v["status"] == 6);
    }
    // 1: its own ratio of 1; 2: no ratio limit, idle for 1 minute; 3:
    // whatever the session says.
    d.remote(&["-t", "1", "-sr", "1"]);
    let v = d.call(
        "torrent-set",
        json!({ "ids": [2], "seedRatioMode": 2, "seedIdleMode": 1, "seedIdleLimit": 1 }),
    );
    assert_eq!(v["result"], "success", "{v}");
    let bad = d.call("torrent-set", json!({ "ids": [2], "seedRatioMode": 7 }));
    assert_ne!(bad["result"], "success", "mode 7 is refused: {bad}");
    let bad = d.call("torrent-set", json!({ "ids": [2], "seedRatioLimit": -1 }));
    assert_ne!(
        bad["result"], "success",
        "a negative ratio is refused: {bad}"
    );

    // The session's ratio limit of 0: a torrent in mode 0 is done at once,
    // the others keep their own.
    d.remote(&["-gsr", "0"]);
    let s = d.session();
    assert_eq!(s["seedRatioLimited"], true, "{s}");
    assert_eq!(s["seedRatioLimit"], 0.0, "{s}");
    d.wait_id(3, &SEED_FIELDS, WAIT, "stopped by the session ratio", |v| {
        v["status"] == 0 && v["isFinished"] == true
    });
    let one = d.torrents(&["id", "status", "isFinished"]);
    assert_eq!(one[0]["status"], 6, "{one:?}");
    assert_eq!(one[0]["isFinished"], false, "{one:?}");

    // A real leecher takes all of torrent 1: its ratio reaches 1 and it
    // stops seeding.
    let mut leech = leecher(&ratio, &out, &d);
    let v = d.wait_id(1, &SEED_FIELDS, WAIT, "stopped at ratio 1", |v| {
        v["status"] == 0 && v["isFinished"] == true
    });
    assert!(v["uploadRatio"].as_f64().unwrap() >= 1.0, "{v}");
    assert!(v["uploadedEver"].as_u64().unwrap() >= 300_000, "{v}");
    assert!(leech.wait_exit(WAIT).success(), "the leecher finished");
    ratio.assert_downloaded(&out);
    assert!(d.remote(&["-l"]).contains("Finished"), "listed as finished");
    // Started by hand past its ratio: it seeds on, its limit dropped (as
    // Transmission does).
    d.remote(&["-t", "1", "-s"]);
    let v = d.wait_id(1, &SEED_FIELDS, WAIT, "seeding again", |v| v["status"] == 6);
    assert_eq!(v["seedRatioMode"], 2, "{v}");
    assert_eq!(v["isFinished"], false, "{v}");

    // Torrent 2 had no peer for a minute.
    d.wait_id(
        2,
        &SEED_FIELDS,
        Duration::from_secs(150),
        "stopped for idling",
        |v| v["status"] == 0 && v["isFinished"] == true,
    );

    // All of it survives a restart.
    d.terminate();
    let d = Daemon::start(&state, &dl, &[]);
    let all = d.torrents(&["id", "status", "isFinished", "seedRatioMode"]);
    assert_eq!(
        all,
        vec![
            json!({ "id": 1, "status": 6, "isFinished": false, "seedRatioMode": 2 }),
            json!({ "id": 2, "status": 0, "isFinished": true, "seedRatioMode": 2 }),
            json!({ "id": 3, "status": 0, "isFinished": true, "seedRatioMode": 0 }),
        ]
        .into_iter()
        .map(|mut v| {
            // Torrent 1 may still be checking its data right after start.
            if v["id"] == 1 {
                v["status"] = all[0]["status"].clone();
            }
            v
        })
        .collect::<Vec<_>>()
    );
    assert_eq!(d.session()["seedRatioLimited"], true);
}

#[test]
fn session_set_applies_live_persists_and_sighup_reloads() {
    let tmp = tempfile::tempdir().unwrap();
    let (state, dl, out) = (
        tmp.path().join("state"),
        tmp.path().join("dl"),
        tmp.path().join("out"),
    );
    // 2 MB: at 10 kB/s, what is left after the limiter's 256 KiB burst
    // would take three minutes.
    let t = TestTorrent::single(tmp.path(), "limited", 64 * 1024, 2_000_000, 31);
    t.write_payload(&dl);
    let mut d = Daemon::start(&state, &dl, &[]);
    d.remote(&["-a", t.path.to_str().unwrap()]);
    d.wait_id(1, &SEED_FIELDS, WAIT, "seeding", |v| v["status"] == 6);

    // A session-wide upload limit of 10 kB/s, then a real leecher.
    d.remote(&["-u", "10"]);
    let s = d.session();
    assert_eq!(s["speed-limit-up"], 10, "{s}");
    assert_eq!(s["speed-limit-up-enabled"], true, "{s}");
    let started = Instant::now();
    let mut leech = leecher(&t, &out, &d);
    std::thread::sleep(Duration::from_secs(5));
    let v = d.torrents(&["uploadedEver"]);
    let up = v[0]["uploadedEver"].as_u64().unwrap();
    let secs = started.elapsed().as_secs();
    // At most the burst, the rate over the time, and blocks in flight.
    let bound = 262_144 + 10_000 * (secs + 1) + 4 * 16_384;
    assert!(up <= bound, "uploaded {up} in {secs} s under 10 kB/s");
    assert!(leech.running(), "still downloading under the limit");
    // Lifted while the leecher waits: it finishes well before the three
    // minutes the limit would need.
    d.remote(&["-U"]);
    assert!(
        leech.wait_exit(Duration::from_secs(90)).success(),
        "download finished once the limit was lifted"
    );
    t.assert_downloaded(&out);

    // The rest of what session-set changes: peer limits, alternative
    // speeds, seed limits, the download directory.
    let other = tmp.path().join("other");
    let v = d.call(
        "session-set",
        json!({
            "peer-limit-global": 7, "peer-limit-per-torrent": 3,
            "alt-speed-up": 20, "alt-speed-down": 30, "alt-speed-enabled": true,
            "idle-seeding-limit": 45, "idle-seeding-limit-enabled": true,
            "download-dir": other.to_str().unwrap(),
        }),
    );
    assert_eq!(v["result"], "success", "{v}");
    for bad in [
        json!({ "peer-limit-global": 0 }),
        json!({ "speed-limit-down": -5 }),
        json!({ "seedRatioLimit": "two" }),
        json!({ "alt-speed-time-enabled": true }),
    ] {
        let v = d.call("session-set", bad.clone());
        assert_ne!(v["result"], "success", "{bad} refused: {v}");
    }
    let check = |s: &Value| {
        assert_eq!(s["peer-limit-global"], 7, "{s}");
        assert_eq!(s["peer-limit-per-torrent"], 3, "{s}");
        assert_eq!(s["alt-speed-up"], 20, "{s}");
        assert_eq!(s["alt-speed-down"], 30, "{s}");
        assert_eq!(s["alt-speed-enabled"], true, "{s}");
        assert_eq!(s["idle-seeding-limit"], 45, "{s}");
        assert_eq!(s["idle-seeding-limit-enabled"], true, "{s}");
        assert_eq!(s["speed-limit-up"], 10, "{s}");
        assert_eq!(s["speed-limit-up-enabled"], false, "{s}");
        assert_eq!(s["download-dir"], other.to_str().unwrap(), "{s}");
    };
    check(&d.session());
    let info = d.remote(&["-si"]);
    assert!(info.contains("Peer limit: 7"), "{info}");

    // Kept across a restart.
    d.terminate();
    let mut d = Daemon::start(&state, &dl, &[]);
    check(&d.session());

    // SIGHUP reads settings.json again, as transmission-daemon does; a
    // broken file is reported and changes nothing.
    let path = state.join("settings.json");
    let mut file: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    file["peer_limit_global"] = json!(9);
    file["alt_speed_enabled"] = json!(false);
    std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
    d.hup();
    assert!(
        wait_until(WAIT, || d.session()["peer-limit-global"] == 9),
        "reloaded on SIGHUP"
    );
    assert_eq!(d.session()["alt-speed-enabled"], false);
    std::fs::write(&path, b"{ not json").unwrap();
    d.hup();
    assert!(
        wait_until(WAIT, || d.log().contains("session settings not reloaded")),
        "a broken file is reported"
    );
    assert_eq!(d.session()["peer-limit-global"], 9, "and changes nothing");
    d.terminate();
}

/// SIGHUP also re-reads `--config`: what can change at run time (rate and
/// connection limits) is applied, what cannot is named; a broken file
/// changes nothing.
#[test]
fn sighup_rereads_the_config_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (state, dl) = (tmp.path().join("state"), tmp.path().join("dl"));
    let cfg = tmp.path().join("actorrent.toml");
    std::fs::write(&cfg, "max_connections = 200\n").unwrap();
    let mut d = Daemon::start(&state, &dl, &["--config", cfg.to_str().unwrap()]);
    assert_eq!(d.session()["peer-limit-global"], 200);
    std::fs::write(&cfg, "max_connections = 150\nhash_workers = 1\n").unwrap();
    d.hup();
    assert!(
        wait_until(WAIT, || d.session()["peer-limit-global"] == 150),
        "the new limit was not applied:\n{}",
        d.log()
    );
    let log = d.log();
    assert!(log.contains("applied: max_connections"), "{log}");
    assert!(
        log.contains("only read at start (restart to apply): hash_workers"),
        "{log}"
    );
    std::fs::write(&cfg, "max_connections = \"many\"\n").unwrap();
    d.hup();
    assert!(
        wait_until(WAIT, || d.log().contains("not reloaded: config")),
        "a broken file is reported:\n{}",
        d.log()
    );
    assert_eq!(d.session()["peer-limit-global"], 150, "and changes nothing");
    d.terminate();
}

#[test]
fn torrent_get_lists_the_connected_peers() {
    let tmp = tempfile::tempdir().unwrap();
    let (state, dl, out) = (
        tmp.path().join("state"),
        tmp.path().join("dl"),
        tmp.path().join("out"),
    );
    let t = TestTorrent::single(tmp.path(), "watched", 64 * 1024, 1_000_000, 41);
    t.write_payload(&dl);
    let d = Daemon::start(&state, &dl, &[]);
    d.remote(&["-a", t.path.to_str().unwrap()]);
    d.wait_id(1, &SEED_FIELDS, WAIT, "seeding", |v| v["status"] == 6);
    // Slow enough that the leecher stays connected while we look.
    d.remote(&["-u", "20"]);
    let mut leech = leecher(&t, &out, &d);
    let fields = ["peers", "peersConnected"];
    let mut v = Value::Null;
    // When the peer was first and last listed (and how), for the failure
    // message: a peer listed with `rateToPeer` 0 is not a peer never seen.
    let start = Instant::now();
    let mut listed: Option<(Duration, Duration, Value)> = None;
    let serving = wait_until(WAIT, || {
        let r = d.call("torrent-get", json!({ "ids": [1], "fields": fields }));
        v = r["arguments"]["torrents"][0].clone();
        if v["peers"][0].is_object() {
            let now = start.elapsed();
            let first = listed.as_ref().map_or(now, |l| l.0);
            listed = Some((first, now, v["peers"][0].clone()));
        }
        v["peers"][0]["rateToPeer"].as_u64().is_some_and(|r| r > 0)
    });
    if !serving {
        let seen = match &listed {
            Some((first, last, p)) => format!("listed from {first:?} to {last:?}, last as {p}"),
            None => "never listed".into(),
        };
        // The leecher's side says why it is not there (its log).
        leech.fail(&format!(
            "the daemon never showed a rate to the peer it serves (peer {seen}); \
             last: {v}\ndaemon log:\n{}",
            d.log()
        ));
    }
    assert_eq!(v["peersConnected"], 1, "{v}");
    let p = &v["peers"][0];
    assert_eq!(p["address"], "127.0.0.1", "{p}");
    assert!(p["port"].as_u64().is_some_and(|x| x > 0), "{p}");
    assert!(
        p["clientName"].as_str().unwrap().starts_with("actorrent"),
        "{p}"
    );
    assert_eq!(p["isIncoming"], true, "the leecher dialled the daemon: {p}");
    assert_eq!(p["isUploadingTo"], true, "{p}");
    assert_eq!(p["peerIsInterested"], true, "{p}");
    let flags = p["flagStr"].as_str().unwrap();
    assert!(flags.contains('U') && flags.contains('I'), "{p}");
    let progress = p["progress"].as_f64().unwrap();
    assert!((0.0..1.0).contains(&progress), "{p}");
    // transmission-remote shows it too.
    let listing = d.remote(&["-t", "1", "-pi"]);
    assert!(listing.contains("127.0.0.1"), "{listing}");
    assert!(listing.contains("actorrent"), "{listing}");
    d.remote(&["-U"]);
    assert!(leech.wait_exit(WAIT).success());
    t.assert_downloaded(&out);
    let v = d.wait_id(1, &fields, WAIT, "without peers", |v| {
        v["peersConnected"] == 0
    });
    assert_eq!(v["peers"], json!([]), "{v}");
}

/// A tiny HTTP server on 127.0.0.1 for `.torrent` URLs: `/ok.torrent`
/// serves `torrent`, `/huge.torrent` claims 100 MB, `/endless.torrent`
/// streams bytes without a length, anything else is a 404. Serves
/// `count` requests, then its thread ends.
fn torrent_server(torrent: Vec<u8>, count: usize) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let join = std::thread::spawn(move || {
        for _ in 0..count {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            s.set_read_timeout(Some(WAIT)).unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 1];
            while !req.ends_with(b"\r\n\r\n") && req.len() < 16 * 1024 {
                match s.read(&mut b) {
                    Ok(1) => req.push(b[0]),
                    _ => break,
                }
            }
            let line = String::from_utf8_lossy(&req)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned();
            let path = line.split_whitespace().nth(1).unwrap_or("");
            let _ = match path {
                "/ok.torrent" => s
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            torrent.len()
                        )
                        .as_bytes(),
                    )
                    .and_then(|_| s.write_all(&torrent)),
                "/huge.torrent" => s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\nConnection: close\r\n\r\n",
                ),
                "/endless.torrent" => {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
                    let chunk = vec![b'x'; 64 * 1024];
                    // Until the daemon hangs up (it stops at its cap).
                    let mut sent = 0usize;
                    while sent < 64 << 20 && s.write_all(&chunk).is_ok() {
                        sent += chunk.len();
                    }
                    Ok(())
                }
                _ => s.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                ),
            };
        }
    });
    (addr, join)
}

#[test]
fn torrent_add_fetches_a_torrent_url() {
    let tmp = tempfile::tempdir().unwrap();
    let (state, dl) = (tmp.path().join("state"), tmp.path().join("dl"));
    let t = TestTorrent::single(tmp.path(), "from-url", 16 * 1024, 100_000, 51);
    t.write_payload(&dl);
    let (web, server) = torrent_server(std::fs::read(&t.path).unwrap(), 4);
    let d = Daemon::start(&state, &dl, &[]);

    // transmission-remote passes a URL on as `filename`.
    let out = d.remote(&["-a", &format!("http://{web}/ok.torrent")]);
    assert!(out.contains("success"), "{out}");
    let v = d.wait_id(1, &["name", "hashString", "status"], WAIT, "seeding", |v| {
        v["status"] == 6
    });
    assert_eq!(v["name"], "from-url");
    // Kept like any other torrent.
    assert!(state.join("torrents").read_dir().unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".torrent")
    }));

    for (path, want) in [
        ("missing.torrent", "404"),
        ("huge.torrent", "longer than"),
        ("endless.torrent", "longer than"),
    ] {
        let v = d.call(
            "torrent-add",
            json!({ "filename": format!("http://{web}/{path}") }),
        );
        let r = v["result"].as_str().unwrap();
        assert!(r.contains(want), "{path}: {r}");
    }
    server.join().unwrap();
    // Nobody listens there any more.
    let v = d.call(
        "torrent-add",
        json!({ "filename": format!("http://{web}/ok.torrent") }),
    );
    let r = v["result"].as_str().unwrap();
    assert!(r.starts_with("fetching http://"), "{r}");
    assert_eq!(d.torrents(&["id"]).len(), 1);
}

#[test]
fn torrent_set_location_moves_the_data_without_a_recheck() {
    let tmp = tempfile::tempdir().unwrap();
    let (state, dl) = (tmp.path().join("state"), tmp.path().join("dl"));
    let t = three_files(tmp.path(), "moving", 61);
    t.write_payload(&dl);
    std::fs::write(dl.join("moving/not-ours"), b"keep me").unwrap();
    let d = Daemon::start(&state, &dl, &[]);
    d.remote(&["-a", t.path.to_str().unwrap()]);
    d.wait_id(1, &SEED_FIELDS, WAIT, "seeding", |v| v["status"] == 6);

    // On the same filesystem (a rename), then to another one where there
    // is one (/dev/shm: copied, synced, removed).
    let same = tmp.path().join("same");
    let shm = tempfile::tempdir_in("/dev/shm").ok();
    let mut places = vec![same.clone()];
    if let Some(s) = &shm {
        places.push(s.path().join("other"));
    }
    let mut from = dl.clone();
    for to in places {
        d.remote(&["-t", "1", "--move", to.to_str().unwrap()]);
        let v = d.wait_id(
            1,
            &["status", "percentDone", "downloadDir"],
            WAIT,
            "seeding at the new place",
            |v| v["status"] == 6 && v["downloadDir"] == to.to_str().unwrap(),
        );
        assert_eq!(v["percentDone"], 1.0, "{v}");
        t.assert_downloaded(&to);
        for (path, _) in &t.files {
            let old = path.iter().fold(from.join("moving"), |p, c| p.join(c));
            assert!(!old.exists(), "{} left behind", old.display());
        }
        from = to;
    }
    assert_eq!(
        std::fs::read(dl.join("moving/not-ours")).unwrap(),
        b"keep me",
        "a file not in the torrent stays where it was"
    );
    // The one check is the first, of the data found at the add.
    assert_eq!(
        d.log().matches("rechecking").count(),
        1,
        "moved without a recheck: {}",
        d.log()
    );

    // Onto a file of the same name: refused, nothing moves, it seeds on.
    let back = dl.clone();
    std::fs::write(back.join("moving/a.bin"), b"in the way").unwrap();
    let v = d.call(
        "torrent-set-location",
        json!({ "ids": [1], "location": back.to_str().unwrap(), "move": true }),
    );
    let r = v["result"].as_str().unwrap();
    assert!(r.contains("exists already"), "{r}");
    let v = d.wait_id(1, &["status", "downloadDir"], WAIT, "seeding on", |v| {
        v["status"] == 6
    });
    assert_eq!(v["downloadDir"], from.to_str().unwrap());
    t.assert_downloaded(&from);
    let v = d.call(
        "torrent-set-location",
        json!({ "ids": [1], "location": "relative/dir", "move": true }),
    );
    assert_ne!(v["result"], "success", "{v}");
}

#[test]
fn session_set_changes_the_log_filter_at_run_time() {
    let tmp = tempfile::tempdir().unwrap();
    let (state, dl) = (tmp.path().join("state"), tmp.path().join("dl"));
    let mut d = Daemon::start(&state, &dl, &[]);
    let applied = |d: &Daemon| d.log().matches("session settings applied").count();
    let before = applied(&d);
    assert!(before >= 1, "info is logged at first: {}", d.log());
    // Down to warnings: the info line of this very call is not written,
    // nor that of the next one.
    let v = d.call("session-set", json!({ "log-filter": "warn" }));
    assert_eq!(v["result"], "success", "{v}");
    let v = d.call("session-set", json!({ "peer-limit-global": 20 }));
    assert_eq!(v["result"], "success", "{v}");
    assert_eq!(applied(&d), before, "{}", d.log());
    for bad in ["notalevel", "debug,[", ""] {
        let v = d.call("session-set", json!({ "log-filter": bad }));
        assert_ne!(v["result"], "success", "{bad:?}: {v}");
    }
    // Back to info: logged again; and the filter is kept across a restart.
    d.call("session-set", json!({ "log-filter": "info" }));
    assert!(
        wait_until(WAIT, || applied(&d) == before + 1),
        "{}",
        d.log()
    );
    d.call("session-set", json!({ "log-filter": "warn" }));
    d.terminate();
    let d = Daemon::start(&state, &dl, &[]);
    let v = d.call("session-set", json!({ "peer-limit-global": 30 }));
    assert_eq!(v["result"], "success", "{v}");
    assert_eq!(
        applied(&d),
        0,
        "the kept filter applies from the start on: {}",
        d.log()
    );
}
