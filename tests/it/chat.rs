//! `ringport chat` end to end (SPEC §6: a messenger with rooms and
//! broadcast): the real binary, real sockets on 127.0.0.1, every test on both
//! backends (`<test>::uring`, `<test>::epoll`). A backend the machine lacks
//! makes the server exit with "unsupported"; the test prints `skipped: …`.
//! Every server is stopped with SIGTERM and must exit 0; every socket read has
//! a timeout.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use crate::child::Spawned;
use crate::common::{gate, wait_until, T};
use crate::echo::BIN;

/// Generates `mod $name { fn uring(); fn epoll() }`, each starting `ringport
/// chat --backend B` with the extra flags, running the body, and stopping it.
macro_rules! chat_test {
    ($name:ident, [$($flag:expr),*], |$srv:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn body($srv: &Chat) $body

            #[test]
            fn uring() {
                super::run("uring", &[$($flag),*], concat!(module_path!(), "::uring"), body);
            }

            #[test]
            fn epoll() {
                super::run("epoll", &[$($flag),*], concat!(module_path!(), "::epoll"), body);
            }
        }
    };
}

fn run(backend: &str, flags: &[&str], test: &str, body: fn(&Chat)) {
    let _gate = gate(false);
    let Some(mut chat) = Chat::start(backend, flags, test) else {
        return;
    };
    body(&chat);
    chat.stop();
}

/// A running `ringport chat`.
pub(crate) struct Chat {
    proc: Spawned,
    addr: SocketAddr,
}

impl Chat {
    fn start(backend: &str, flags: &[&str], test: &str) -> Option<Chat> {
        let proc = Spawned::spawn(
            Command::new(BIN)
                .args(["chat", "--listen", "127.0.0.1:0", "--backend", backend])
                .args(flags),
        );
        match proc.first_line() {
            Ok(line) => {
                let addr = line
                    .strip_prefix("chat on ")
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                    .unwrap_or_else(|| panic!("{test}: ready line {line:?}"));
                assert_ne!(
                    addr.port(),
                    0,
                    "{test}: printed the port asked for, not the bound one"
                );
                assert!(
                    line.contains(&format!("backend {}", backend_name(backend))),
                    "{line}"
                );
                Some(Chat { proc, addr })
            }
            Err(_) => {
                let mut proc = proc;
                let status = proc.wait();
                let err = proc.stderr();
                if err.to_ascii_lowercase().contains("unsupported") {
                    eprintln!(
                        "skipped: {backend} unavailable here: {} [{test}]",
                        err.trim()
                    );
                    return None;
                }
                panic!("{test}: `ringport chat` exited with {status:?} before it was ready: {err}");
            }
        }
    }

    /// SIGTERM; exit 0 required.
    fn stop(&mut self) {
        self.proc.signal(libc::SIGTERM);
        let status = self.proc.wait();
        assert!(
            status.is_some_and(|s| s.success()),
            "chat exited with {status:?}; stderr:\n{}",
            self.proc.stderr()
        );
    }

    fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// A new member, past its `HELLO`: (client, its guest nickname).
    fn join(&self) -> (Client, String) {
        let mut c = Client::connect(self.addr);
        let hello = c.line();
        let mut w = hello.split(' ');
        assert_eq!(w.next(), Some("HELLO"), "{hello}");
        let nick = w.next().unwrap().to_string();
        assert_eq!(w.next(), Some("lobby"), "{hello}");
        (c, nick)
    }

    /// A member with a chosen nickname.
    fn named(&self, nick: &str) -> Client {
        let (mut c, _) = self.join();
        c.send(&format!("/nick {nick}"));
        assert_eq!(c.reply(), format!("OK nick {nick}"));
        c
    }
}

fn backend_name(b: &str) -> &str {
    if b == "uring" {
        "io_uring"
    } else {
        b
    }
}

/// One client connection, reading lines with a timeout.
pub(crate) struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        s.set_write_timeout(Some(T)).unwrap();
        Client {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
        }
    }

    fn send(&mut self, line: &str) {
        self.send_bytes(format!("{line}\n").as_bytes());
    }

    fn send_bytes(&mut self, b: &[u8]) {
        self.w.write_all(b).unwrap();
    }

    /// The next line (without its newline); panics at EOF or after `T`.
    fn line(&mut self) -> String {
        self.try_line().expect("the server closed the connection")
    }

    /// The next line, or `None` at EOF (or a reset).
    fn try_line(&mut self) -> Option<String> {
        let mut s = String::new();
        match self.r.read_line(&mut s) {
            Ok(0) => None,
            Ok(_) => {
                assert!(s.ends_with('\n'), "a line cut short: {s:?}");
                s.pop();
                Some(s)
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => None,
            Err(e) => panic!("read: {e}"),
        }
    }

    /// The next line that is not a room notice (`* …`).
    fn reply(&mut self) -> String {
        loop {
            let l = self.line();
            if !l.starts_with("* ") {
                return l;
            }
        }
    }

    /// Reads until EOF (at most `T`), returning what came.
    fn rest(&mut self) -> Vec<String> {
        let mut v = Vec::new();
        while let Some(l) = self.try_line() {
            v.push(l);
        }
        v
    }
}

chat_test!(rooms_keep_their_talk_apart, [], |chat| {
    let mut a = chat.named("alice");
    let mut b = chat.named("bob");
    let mut c = chat.named("carol");
    c.send("/join games");
    assert_eq!(c.reply(), "OK joined games (1 members)");
    a.send("hello lobby");
    assert_eq!(a.reply(), "[lobby] alice: hello lobby");
    assert_eq!(b.reply(), "[lobby] alice: hello lobby");
    c.send("hello games");
    assert_eq!(c.reply(), "[games] carol: hello games");
    // Nothing of games reached the lobby: the next line a and b see is the
    // reply to their own /who.
    for (cl, me) in [(&mut a, "alice"), (&mut b, "bob")] {
        cl.send("/who");
        assert_eq!(cl.reply(), "WHO lobby: alice bob", "{me}");
    }
    a.send("/rooms");
    assert_eq!(a.reply(), "ROOMS games(1) lobby(2)");
    // b joins games: carol is told, and b hears games from then on.
    b.send("/join games");
    assert_eq!(b.reply(), "OK joined games (2 members)");
    assert_eq!(c.line(), "* bob joined games");
    assert_eq!(a.line(), "* bob left lobby");
    c.send("//slash is text");
    assert_eq!(b.reply(), "[games] carol: /slash is text");
    assert_eq!(c.reply(), "[games] carol: /slash is text");
    // The last one out: the room is gone.
    a.send("/join games");
    assert_eq!(a.reply(), "OK joined games (3 members)");
    a.send("/rooms");
    assert_eq!(a.reply(), "ROOMS games(3)");
});

chat_test!(private_messages_and_nicknames, [], |chat| {
    let mut a = chat.named("alice");
    let (mut b, bnick) = chat.join();
    assert_eq!(a.line(), format!("* {bnick} joined lobby"));
    b.send("/nick alice");
    assert_eq!(b.reply(), "ERR nick alice is taken");
    // Not in another case either: no one can pose as alice.
    b.send("/nick ALICE");
    assert_eq!(b.reply(), "ERR nick ALICE is taken");
    b.send("/nick bob");
    assert_eq!(b.reply(), "OK nick bob");
    assert_eq!(a.line(), format!("* {bnick} is now bob"));
    b.send("/nick bob");
    assert_eq!(b.reply(), "OK nick bob");
    b.send("/msg alice psst  two spaces");
    assert_eq!(b.reply(), "OK msg alice");
    assert_eq!(a.reply(), "[pm] bob: psst  two spaces");
    b.send("/msg nobody hi");
    assert_eq!(b.reply(), "ERR no one is called nobody");
    // A freed nickname can be taken.
    a.send("/quit");
    assert_eq!(a.reply(), "BYE");
    assert_eq!(
        a.rest(),
        Vec::<String>::new(),
        "nothing after BYE, then EOF"
    );
    assert_eq!(b.line(), "* alice left lobby");
    b.send("/nick alice");
    assert_eq!(b.reply(), "OK nick alice");
});

chat_test!(
    bad_lines_get_an_error_and_lose_nothing,
    ["--max-line", "64"],
    |chat| {
        let mut a = chat.named("alice");
        let cases: &[(&[u8], &str)] = &[
            (
                b"/frobnicate now\n",
                "ERR unknown command /frobnicate (try /help)",
            ),
            (b"/nick\n", "ERR usage: /nick NAME"),
            (
                b"/nick two words\n",
                "ERR \"two words\" is not a valid name (1 to 32 of A-Z a-z 0-9 _ -)",
            ),
            (
                b"/join caf\xc3\xa9\n",
                "ERR \"caf\u{e9}\" is not a valid name (1 to 32 of A-Z a-z 0-9 _ -)",
            ),
            (b"/msg alice\n", "ERR usage: /msg NICK TEXT"),
            (b"/who now\n", "ERR usage: /who"),
            (b"\xff\xfe bytes\n", "ERR line is not UTF-8"),
            (
                b"clear \x1b[2J screen\n",
                "ERR line has a control or invisible formatting character",
            ),
            (
                // U+202E, a right-to-left override.
                b"innocent \xe2\x80\xaetxt.exe\n",
                "ERR line has a control or invisible formatting character",
            ),
        ];
        for (line, want) in cases {
            a.send_bytes(line);
            assert_eq!(a.reply(), *want, "{:?}", String::from_utf8_lossy(line));
        }
        // A line over the limit, sent in pieces, is refused once and skipped;
        // the line after it, in the same write as its end, is served.
        a.send_bytes(&[b'x'; 50]);
        a.send_bytes(&[b'y'; 50]);
        a.send_bytes(b"zzz\nstill here\r\n");
        assert_eq!(a.reply(), "ERR line too long (over 64 bytes)");
        assert_eq!(a.reply(), "[lobby] alice: still here");
        // Exactly the limit is fine.
        let max = "m".repeat(64);
        a.send(&max);
        assert_eq!(a.reply(), format!("[lobby] alice: {max}"));
        // Empty lines are nothing; /help answers.
        a.send_bytes(b"\n\r\n   \n/help\n");
        assert!(a.reply().starts_with("HELP "));
    }
);

chat_test!(every_member_sees_one_order, [], |chat| {
    const SENDERS: usize = 3;
    const EACH: usize = 300;
    let mut listeners: Vec<Client> = (0..2).map(|i| chat.named(&format!("l{i}"))).collect();
    let senders: Vec<Client> = (0..SENDERS).map(|i| chat.named(&format!("s{i}"))).collect();
    // Every member hears every room line: the senders too (read by a thread
    // each, so they keep up).
    let mut threads = Vec::new();
    for (i, mut s) in senders.into_iter().enumerate() {
        threads.push(std::thread::spawn(move || {
            let mut w = s.w.try_clone().unwrap();
            let writer = std::thread::spawn(move || {
                let mut all = String::new();
                for k in 0..EACH {
                    all.push_str(&format!("m {i} {k}\n"));
                }
                w.write_all(all.as_bytes()).unwrap();
            });
            let got = room_lines(&mut s, SENDERS * EACH);
            writer.join().unwrap();
            got
        }));
    }
    let mut seen = vec![];
    for l in &mut listeners {
        seen.push(room_lines(l, SENDERS * EACH));
    }
    for t in threads {
        seen.push(t.join().unwrap());
    }
    for (who, lines) in seen.iter().enumerate() {
        assert_eq!(lines, &seen[0], "member {who} saw another order");
    }
    // Each sender's lines in its own order.
    for i in 0..SENDERS {
        let ks: Vec<usize> = seen[0]
            .iter()
            .filter_map(|l| l.strip_prefix(&format!("[lobby] s{i}: m {i} ")))
            .map(|k| k.parse().unwrap())
            .collect();
        assert_eq!(ks, (0..EACH).collect::<Vec<_>>(), "sender {i}");
    }
});

/// The next `n` room lines (`[lobby] …`) this client hears, notices skipped.
fn room_lines(c: &mut Client, n: usize) -> Vec<String> {
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        let l = c.line();
        if l.starts_with("[lobby] ") {
            v.push(l);
        }
    }
    v
}

chat_test!(
    a_slow_reader_is_dropped_and_the_rest_get_everything,
    [],
    |chat| {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        // A member that never reads, with a small receive buffer.
        let slow = {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.set_recv_buffer_size(4096).unwrap();
            s.connect(&chat.addr.into()).unwrap();
            let s: TcpStream = s.into();
            s.set_read_timeout(Some(T)).unwrap();
            s
        };
        let mut fast = chat.named("fast");
        // 20,000 lines of ~200 bytes: ~4 MB, far past what the kernel buffers
        // and the default 1 MiB outbox hold for the slow member. The sender
        // keeps at most 2,000 lines (~400 KB) ahead of what it has heard back,
        // so its own outbox never fills however slowly this test reads.
        const N: usize = 20_000;
        const AHEAD: usize = 2_000;
        let heard = Arc::new(AtomicUsize::new(0));
        let text = "t".repeat(190);
        let mut w = fast.w.try_clone().unwrap();
        let h = heard.clone();
        let writer = std::thread::spawn(move || {
            let mut batch = String::new();
            for k in 0..N {
                while k >= h.load(Ordering::Acquire) + AHEAD {
                    std::thread::sleep(Duration::from_millis(1));
                }
                batch.push_str(&format!("{k} {text}\n"));
                if batch.len() > 32 * 1024 || k + 1 == N {
                    w.write_all(batch.as_bytes()).unwrap();
                    batch.clear();
                }
            }
        });
        let mut dropped = false;
        let prefix = "[lobby] fast: ";
        while heard.load(Ordering::Relaxed) < N {
            let l = fast.line();
            if let Some(rest) = l.strip_prefix(prefix) {
                let k: usize = rest.split(' ').next().unwrap().parse().unwrap();
                assert_eq!(k, heard.load(Ordering::Relaxed), "lines lost or reordered");
                heard.fetch_add(1, Ordering::Release);
            } else if l.ends_with(" left lobby (too slow)") {
                dropped = true;
            }
        }
        writer.join().unwrap();
        assert!(dropped, "the slow member was not dropped");
        fast.send("/who");
        assert_eq!(fast.reply(), "WHO lobby: fast");
        // The slow member's socket was shut: reading it now drains what the
        // kernel held and ends (EOF or reset), no hang.
        let mut slow = slow;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match slow.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                Err(e) => panic!("the slow member's socket was not closed: {e}"),
            }
        }
    }
);

chat_test!(
    past_the_cap_a_client_is_told_and_closed,
    ["--max-conns", "2"],
    |chat| {
        let (_a, _) = chat.join();
        let (mut b, _) = chat.join();
        let mut c = Client::connect(chat.addr);
        assert_eq!(c.rest(), vec!["ERR server full".to_string()]);
        // One leaves: there is room again.
        b.send("/quit");
        assert_eq!(b.reply(), "BYE");
        wait_until("room for one more", || {
            let mut d = Client::connect(chat.addr);
            d.line().starts_with("HELLO ")
        });
    }
);

chat_test!(vanishing_clients_leave_no_descriptor_behind, [], |chat| {
    let mut a = chat.named("alice");
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", chat.pid()))
            .unwrap()
            .count()
    };
    let before = fds();
    for i in 0..20 {
        let mut c = chat.named(&format!("v{i}"));
        // Half a line, then a reset (linger 0) or a plain close.
        c.send_bytes(b"half a li");
        if i % 2 == 0 {
            socket2::SockRef::from(&c.w)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
        drop(c);
        loop {
            let l = a.line();
            if l == format!("* v{i} left lobby") {
                break;
            }
            assert!(l.starts_with("* "), "{l}");
        }
    }
    wait_until("the server closed every vanished client's socket", || {
        fds() <= before
    });
    a.send("/who");
    assert_eq!(a.reply(), "WHO lobby: alice");
});

chat_test!(sigterm_says_bye_to_everyone, [], |chat| {
    let mut a = chat.named("alice");
    let mut b = chat.named("bob");
    chat.proc.signal(libc::SIGTERM);
    for c in [&mut a, &mut b] {
        let rest = c.rest();
        assert_eq!(
            rest.last().map(String::as_str),
            Some("BYE server stopping"),
            "{rest:?}"
        );
    }
    // `run` then checks the exit status (SIGTERM again is harmless).
});

#[test]
fn bad_flags_are_refused() {
    for args in [
        &["--max-line", "5"][..],
        &["--max-conns", "0"],
        &["--max-outbox", "10"],
        &["--listen", "nowhere"],
        &["--backend", "kqueue"],
    ] {
        let out = Command::new(BIN).arg("chat").args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
    // Valid each, but not together: a clear error, exit 1.
    let out = Command::new(BIN)
        .args(["chat", "--max-line", "65536", "--max-outbox", "4096"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--max-outbox 4096 is too small"), "{err}");
}

chat_test!(
    a_member_gone_but_not_yet_flushed_still_counts_against_the_cap,
    ["--max-conns", "2", "--max-outbox", "16777216"],
    |chat| {
        let (mut o, _) = chat.join();
        // A member asks for ~11 MB of replies (more than the kernel buffers
        // for a peer that does not read), never reads, and half-closes: it
        // leaves the hub, but its connection stays open while its writer
        // flushes what it queued.
        let (mut a, anick) = chat.join();
        assert_eq!(o.line(), format!("* {anick} joined lobby"));
        a.send_bytes("/help\n".repeat(120_000).as_bytes());
        a.w.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(o.line(), format!("* {anick} left lobby"));
        // Two connections are open: a third is refused, else a client could
        // pile up connections (and their outboxes) past --max-conns.
        let mut c = Client::connect(chat.addr);
        assert_eq!(c.line(), "ERR server full");
        assert_eq!(c.rest(), Vec::<String>::new());
        // Once a has read everything, its connection ends and frees its place.
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match a.r.get_mut().read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => panic!("read: {e}"),
            }
        }
        wait_until("room for one more", || {
            let mut d = Client::connect(chat.addr);
            d.line().starts_with("HELLO ")
        });
    }
);
chat_test!(bench_chat_measures_it_and_checks_every_line, [], |chat| {
    let out = Command::new(BIN)
        .args([
            "bench",
            "chat",
            "--json",
            "--clients",
            "12",
            "--rooms",
            "3",
            "--duration",
            "0.5",
        ])
        .args(["--target", &chat.addr.to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let field = |k: &str| -> f64 {
        let at = stdout
            .find(&format!("\"{k}\":"))
            .unwrap_or_else(|| panic!("{k} in {stdout}"));
        let rest = &stdout[at + k.len() + 3..];
        rest[..rest.find([',', '}']).unwrap()].parse().unwrap()
    };
    assert!(field("lines") > 0.0, "{stdout}");
    // Each line said reaches the 4 members of its room.
    let per_line = field("deliveries_per_s") / field("lines_per_s");
    assert!(
        (per_line - 4.0).abs() < 0.2,
        "{per_line} deliveries per line: {stdout}"
    );
    assert_eq!(field("gaps"), 0.0, "{stdout}");
    assert_eq!(field("errors"), 0.0, "{stdout}");
});

#[test]
fn bench_chat_without_a_server_fails_clearly() {
    let addr = crate::common::closed_addr();
    let out = Command::new(BIN)
        .args([
            "bench",
            "chat",
            "--duration",
            "0.2",
            "--target",
            &addr.to_string(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect"), "{err}");
}
