//! HTTP/2 abuse a hostile client can try in a few bytes: rapid reset (open streams and cancel them
//! at once, CVE-2023-44487), a CONTINUATION flood (a header block that never ends, CVE-2024-27316
//! class), a SETTINGS flood (frames that each demand an acknowledgement, CVE-2019-9515). Each must
//! leave the server's memory bounded and other clients served.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use gatehouse_tests::{Gatehouse, client, resident, site, static_config};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// `GET /` in HPACK from the static table, authority as a literal.
fn get_block() -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x84, 0x41, 9];
    block.extend_from_slice(b"localhost");
    block
}

fn serve() -> (tempfile::TempDir, Gatehouse) {
    let dir = site(&[("index.html", b"hello")]);
    let gh = Gatehouse::start(dir.path(), &static_config("", ""));
    (dir, gh)
}

/// Another client is served promptly.
fn still_serving(gh: &Gatehouse) {
    let started = Instant::now();
    let r = client().get(gh.url("/")).send().expect("get");
    assert_eq!(r.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// Writes `bytes` until done, the server closes, or `wait` passes; true if the server closed the
/// connection before everything was written.
fn write_until_closed(
    stream: &mut TcpStream,
    chunks: impl Iterator<Item = Vec<u8>>,
    wait: Duration,
) -> bool {
    stream
        .set_write_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let deadline = Instant::now() + wait;
    for chunk in chunks {
        if Instant::now() > deadline {
            return false;
        }
        if stream.write_all(&chunk).is_err() {
            return true;
        }
    }
    false
}

/// Reads what the server sends until it closes or `wait` passes; true if it closed.
fn drain_until_closed(stream: &mut TcpStream, wait: Duration) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 65536];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) if Instant::now() >= deadline => return false,
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn rapid_reset_is_cut_off_and_others_are_served() {
    let (_dir, gh) = serve();
    let before = resident(gh.pid());
    let mut s = TcpStream::connect(gh.addr()).expect("connect");
    s.write_all(PREFACE).expect("preface");
    s.write_all(&frame(SETTINGS, 0, 0, &[])).expect("settings");
    // 20,000 streams, each opened and cancelled at once: the server never gets to answer them.
    let block = get_block();
    let frames = (0..20_000u32).map(|i| {
        let id = 1 + 2 * i;
        let mut f = frame(HEADERS, END_HEADERS | END_STREAM, id, &block);
        f.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
        f
    });
    let closed_early = write_until_closed(&mut s, frames, Duration::from_secs(20));
    let closed = closed_early || drain_until_closed(&mut s, Duration::from_secs(5));
    assert!(
        closed,
        "the server kept a connection that reset 20,000 streams"
    );
    still_serving(&gh);
    let grew = resident(gh.pid()).saturating_sub(before);
    assert!(grew < 64 << 20, "grew by {grew} bytes");
}

#[test]
fn a_header_block_that_never_ends_is_refused_within_the_header_limit() {
    let (_dir, gh) = serve();
    let before = resident(gh.pid());
    let mut s = TcpStream::connect(gh.addr()).expect("connect");
    s.write_all(PREFACE).expect("preface");
    s.write_all(&frame(SETTINGS, 0, 0, &[])).expect("settings");
    s.write_all(&frame(HEADERS, 0, 1, &get_block()))
        .expect("headers");
    // Each CONTINUATION carries 16 KiB of small literal fields (`a: b`, 5 bytes each) and none
    // ends the block: 256 MiB in all if the server took it.
    let mut fields = Vec::with_capacity(16 << 10);
    while fields.len() + 5 <= 16 << 10 {
        fields.extend_from_slice(&[0x00, 0x01, b'a', 0x01, b'b']);
    }
    let flood = (0..16_384).map(|_| frame(CONTINUATION, 0, 1, &fields));
    let closed_early = write_until_closed(&mut s, flood, Duration::from_secs(20));
    let closed = closed_early || drain_until_closed(&mut s, Duration::from_secs(5));
    assert!(closed, "the server read an endless header block");
    still_serving(&gh);
    let grew = resident(gh.pid()).saturating_sub(before);
    assert!(grew < 64 << 20, "grew by {grew} bytes");
}

#[test]
fn a_settings_flood_from_a_client_that_reads_nothing_stays_bounded() {
    let (_dir, gh) = serve();
    let before = resident(gh.pid());
    let mut s = TcpStream::connect(gh.addr()).expect("connect");
    s.write_all(PREFACE).expect("preface");
    // 500,000 SETTINGS frames, each owed an acknowledgement the client never reads.
    let setting = frame(SETTINGS, 0, 0, &[0x00, 0x03, 0x00, 0x00, 0x00, 0x64]);
    let flood = (0..500).map(|_| setting.repeat(1000));
    let _ = write_until_closed(&mut s, flood, Duration::from_secs(20));
    still_serving(&gh);
    let grew = resident(gh.pid()).saturating_sub(before);
    assert!(grew < 64 << 20, "grew by {grew} bytes");
    drop(s);
    still_serving(&gh);
}

/// CPU time (user + system) the process has used so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // The fields after the command (which may hold spaces) start after its closing parenthesis.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the state.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

#[test]
fn a_client_that_never_answers_the_closing_ping_is_dropped_without_spinning() {
    // A keep-alive close of an HTTP/2 connection sends GOAWAY and a PING, and waits for the PING's
    // answer. A client that never gives it must neither hold the connection for ever nor keep the
    // connection's task awake in a loop meanwhile.
    let dir = site(&[("index.html", b"hello")]);
    let gh = Gatehouse::start(
        dir.path(),
        &static_config(
            "",
            "[server.limits]\nkeepalive_timeout = \"1s\"\nsend_timeout = \"2s\"",
        ),
    );
    let mut s = TcpStream::connect(gh.addr()).expect("connect");
    s.write_all(PREFACE).expect("preface");
    s.write_all(&frame(SETTINGS, 0, 0, &[])).expect("settings");
    s.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &get_block()))
        .expect("request");
    let before = cpu_ticks(gh.pid());
    let started = Instant::now();
    // Reads everything (the response, GOAWAY, the PING) and answers nothing.
    let closed = drain_until_closed(&mut s, Duration::from_secs(10));
    let waited = started.elapsed();
    assert!(closed, "the connection was still open after {waited:?}");
    // The close is graceful: the client has send_timeout to answer after keepalive_timeout.
    assert!(
        waited >= Duration::from_millis(2800),
        "closed after {waited:?}, before keepalive_timeout + send_timeout"
    );
    let used = cpu_ticks(gh.pid()) - before;
    // A task woken in a loop for the whole wait would use about as many ticks as the wait has
    // (100 a second); a parked one, next to none.
    let budget = (waited.as_millis() / 10 / 4) as u64;
    assert!(
        used <= budget,
        "{used} clock ticks of CPU in {waited:?} for one waiting client"
    );
    still_serving(&gh);
}
