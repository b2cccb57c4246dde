//! `ringport serve`, continued (see `serve.rs` for the harness): how files are
//! opened beneath DIR (`openat2` with `RESOLVE_BENEATH`, and the canonical
//! path it falls back to, forced with `--no-openat2`), the inline send
//! path (head with `MSG_MORE`, non-blocking `sendfile`, waiting for room), and
//! `--stats`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::symlink;
use std::time::Duration;

use ringport::BackendChoice;

use crate::common::T;
use crate::serve::{get, sha256_hex, write_random, Client, Serve, Site};

/// Both ways of opening a file.
const MODES: [&[&str]; 2] = [&[], &["--no-openat2"]];

/// Links beyond `Site`'s: a symlinked directory, an absolute link inside DIR,
/// a loop, a chain, and a link climbing out through a directory.
fn more_links(site: &Site) {
    let r = &site.root;
    symlink("sub", r.join("dir-link")).unwrap();
    symlink(r.join("hello.txt"), r.join("abs-in-link")).unwrap();
    symlink("loop-b", r.join("loop-a")).unwrap();
    symlink("loop-a", r.join("loop-b")).unwrap();
    symlink("in-link", r.join("chain-link")).unwrap();
    symlink("..", r.join("sub/up")).unwrap();
    symlink("../..", r.join("sub/up2")).unwrap();
}

backend_test!(
    symlinks_inside_dir_are_followed_and_loops_are_404,
    |choice: BackendChoice| {
        let site = Site::new();
        more_links(&site);
        for mode in MODES {
            let Some(srv) = Serve::start(choice, &site, mode) else {
                return;
            };
            let hello = b"hello, world\n";
            for t in [
                "/hello.txt",
                "/in-link",
                "/chain-link",
                "/abs-in-link",
                "/sub/up/hello.txt",
                "/dir-link/up/in-link",
            ] {
                let r = get(srv.addr, t);
                assert_eq!(
                    (r.status, r.body.as_slice()),
                    (200, &hello[..]),
                    "{t} {mode:?}"
                );
            }
            let r = get(srv.addr, "/dir-link/index.html");
            assert_eq!(r.status, 200, "through a symlinked directory {mode:?}");
            assert_eq!(r.body, b"<h1>sub index</h1>\n");
            assert_eq!(get(srv.addr, "/dir-link/").status, 200, "{mode:?}");
            assert_eq!(get(srv.addr, "/dir-link").status, 301, "{mode:?}");
            assert_eq!(get(srv.addr, "/loop-a").status, 404, "a loop {mode:?}");
            assert_eq!(get(srv.addr, "/loop-b/x").status, 404, "{mode:?}");
            for t in [
                "/sub/up2/secret.txt",
                "/dir-link/up2/secret.txt",
                "/out-link",
                "/up-link/secret.txt",
                "/etc-link/passwd",
            ] {
                let r = get(srv.addr, t);
                assert!(
                    r.status == 403 || r.status == 404,
                    "{t} {mode:?}: {}",
                    r.status
                );
                assert!(
                    !String::from_utf8_lossy(&r.body).contains("TOP-SECRET"),
                    "{t} {mode:?}"
                );
            }
            srv.stop();
        }
    }
);

backend_test!(
    a_link_swapped_to_outside_is_refused_after_it_was_served,
    |choice: BackendChoice| {
        let site = Site::new();
        // Large enough not to be kept in memory: opened for every request.
        let big = vec![b'x'; 100 << 10];
        site.write("big.bin", &big);
        symlink("big.bin", site.root.join("swap")).unwrap();
        for mode in MODES {
            let Some(srv) = Serve::start(choice, &site, mode) else {
                return;
            };
            assert_eq!(get(srv.addr, "/swap").body, big, "{mode:?}");
            std::fs::remove_file(site.root.join("swap")).unwrap();
            symlink("../secret.txt", site.root.join("swap")).unwrap();
            let r = get(srv.addr, "/swap");
            assert!(r.status == 403 || r.status == 404, "{mode:?}: {}", r.status);
            std::fs::remove_file(site.root.join("swap")).unwrap();
            symlink("big.bin", site.root.join("swap")).unwrap();
            srv.stop();
        }
    }
);

backend_test!(
    pipelined_large_responses_keep_heads_and_bodies_in_order,
    |choice: BackendChoice| {
        let site = Site::new();
        let a: Vec<u8> = (0..100_000).map(|i| (i % 253) as u8).collect();
        let b: Vec<u8> = (0..300_000).map(|i| (i % 241) as u8).collect();
        site.write("a.bin", &a);
        site.write("b.bin", &b);
        let Some(srv) = Serve::start(choice, &site, &[]) else {
            return;
        };
        let mut c = Client::connect(srv.addr);
        let mut reqs = Vec::new();
        for name in ["a", "b", "a", "b", "a"] {
            reqs.extend_from_slice(
                format!("GET /{name}.bin HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
            );
        }
        reqs.extend_from_slice(b"HEAD /b.bin HTTP/1.1\r\nHost: t\r\n\r\n");
        reqs.extend_from_slice(b"GET /b.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=1000-1999\r\n\r\n");
        c.send(&reqs);
        for want in [&a, &b, &a, &b, &a] {
            let r = c.response(false);
            assert_eq!(r.status, 200);
            assert_eq!(r.body.len(), want.len());
            assert!(r.body == *want, "a body out of place");
        }
        let r = c.response(true);
        assert_eq!((r.status, r.must("Content-Length")), (200, "300000"));
        let r = c.response(false);
        assert_eq!(r.status, 206);
        assert_eq!(r.body, &b[1000..2000]);
        srv.stop();
    }
);

backend_test!(a_slow_reader_gets_every_byte, |choice: BackendChoice| {
    let site = Site::new();
    let size = 12 << 20;
    let want = write_random(&site.root.join("large.bin"), size);
    let Some(srv) = Serve::start(choice, &site, &[]) else {
        return;
    };
    let mut s = TcpStream::connect_timeout(&srv.addr, T).expect("connect");
    s.set_read_timeout(Some(T)).unwrap();
    // A small receive buffer, read in small pieces with pauses: the
    // server's socket fills again and again, and it waits for room.
    let _ = socket2::SockRef::from(&s).set_recv_buffer_size(16 << 10);
    s.write_all(b"GET /large.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut all = Vec::with_capacity(size + 512);
    let mut buf = vec![0u8; 32 << 10];
    let mut reads = 0u64;
    loop {
        let n = s.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
        reads += 1;
        if reads % 16 == 0 && all.len() < 4 << 20 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    assert!(all.starts_with(b"HTTP/1.1 200 "));
    assert_eq!(all.len() - end, size);
    assert_eq!(sha256_hex(&all[end..]), want);
    srv.stop();
});

backend_test!(
    a_large_file_edited_gets_fresh_headers,
    |choice: BackendChoice| {
        let site = Site::new();
        // Too large to be kept in memory: its headers are kept instead.
        let one = vec![b'1'; 100 << 10];
        let two = vec![b'2'; 150 << 10];
        site.write("grow.bin", &one);
        let Some(srv) = Serve::start(choice, &site, &[]) else {
            return;
        };
        let mut c = Client::connect(srv.addr);
        let r = c.get("/grow.bin", "");
        assert_eq!((r.must("Content-Length"), r.body == one), ("102400", true));
        let etag = r.must("ETag").to_string();
        assert_eq!(c.get("/grow.bin", "").must("ETag"), etag, "the same file");
        site.write("grow.bin", &two);
        let r = c.get("/grow.bin", "");
        assert_eq!(r.must("Content-Length"), "153600");
        assert!(r.body == two, "the new bytes");
        assert_ne!(r.must("ETag"), etag, "a new ETag for the new version");
        let r = c.get("/grow.bin", &format!("If-None-Match: {etag}\r\n"));
        assert_eq!(r.status, 200, "the old ETag no longer matches");
        srv.stop();
    }
);

backend_test!(
    a_file_kept_open_is_opened_again_once_it_changes,
    |choice: BackendChoice| {
        // Files too large to keep in memory are kept open between requests
        // (`serve/cache.rs`): a path that leads to another file, or a file
        // that changed, must never be answered from what was kept.
        let site = Site::new();
        let root = &site.root;
        let v1: Vec<u8> = (0..100_000).map(|i| (i % 251) as u8).collect();
        let v2: Vec<u8> = (0..100_000).map(|i| (i % 239) as u8).collect();
        site.write("big.bin", &v1);
        let Some(srv) = Serve::start(choice, &site, &[]) else {
            return;
        };
        let mut c = Client::connect(srv.addr);
        for _ in 0..3 {
            let r = c.get("/big.bin", "");
            assert_eq!((r.status, r.body.len()), (200, v1.len()));
            assert!(r.body == v1, "the first version");
        }
        // Replaced by a rename: same length, another file.
        std::fs::write(root.join("big.new"), &v2).unwrap();
        std::fs::rename(root.join("big.new"), root.join("big.bin")).unwrap();
        let r = c.get("/big.bin", "");
        assert_eq!(r.status, 200);
        assert!(r.body == v2, "a file renamed over the kept one is served");
        // Grown in place: same file, new length.
        std::fs::OpenOptions::new()
            .append(true)
            .open(root.join("big.bin"))
            .unwrap()
            .write_all(b"tail")
            .unwrap();
        let r = c.get("/big.bin", "");
        assert_eq!(r.body.len(), v2.len() + 4, "the grown file is served whole");
        assert_eq!(&r.body[v2.len()..], b"tail");
        // Removed: 404, though its descriptor was kept.
        std::fs::remove_file(root.join("big.bin")).unwrap();
        assert_eq!(c.get("/big.bin", "").status, 404);
        // Back, and a range of it from the kept descriptor.
        site.write("big.bin", &v1);
        assert!(c.get("/big.bin", "").body == v1);
        let r = c.get("/big.bin", "Range: bytes=10-19\r\n");
        assert_eq!((r.status, r.body.as_slice()), (206, &v1[10..20]));
        // An index page too large to keep in memory, kept under its
        // directory's URL: removing it brings the listing back.
        std::fs::write(root.join("sub/index.html"), vec![b'i'; 100_000]).unwrap();
        for _ in 0..2 {
            let r = c.get("/sub/", "");
            assert_eq!(r.body.len(), 100_000);
            // Typed by the index's name, also when served from what was kept.
            assert!(r
                .header("Content-Type")
                .is_some_and(|t| t.starts_with("text/html")));
        }
        std::fs::remove_file(root.join("sub/index.html")).unwrap();
        let r = c.get("/sub/", "");
        assert_eq!(r.status, 200);
        assert!(r.body.len() < 100_000, "the listing, not the removed index");
        srv.stop();
    }
);

// `--stats` prints the port's counters at exit, per request: three requests
// served, and a line that counts them. Without the flag, no such line.
backend_test!(stats_at_exit_count_the_requests, |choice: BackendChoice| {
    let site = Site::new();
    let Some(srv) = Serve::start(choice, &site, &["--stats"]) else {
        return;
    };
    for _ in 0..3 {
        assert_eq!(get(srv.addr, "/hello.txt").status, 200);
    }
    let err = srv.stop();
    let line = err
        .lines()
        .find(|l| l.contains("hand-offs"))
        .unwrap_or_else(|| panic!("no stats line; stderr:\n{err}"));
    assert!(line.starts_with("serve: 3 requests; "), "{line}");
    for part in [
        "poll take-overs",
        "stalls",
        "most running at once",
        "task run",
    ] {
        assert!(line.contains(part), "{part:?} missing: {line}");
    }
    let modes: &[&str] = if choice == BackendChoice::Epoll {
        &["task run none"]
    } else {
        &["task run coop", "task run default"]
    };
    assert!(modes.iter().any(|m| line.ends_with(m)), "{line}");

    let Some(srv) = Serve::start(choice, &site, &[]) else {
        return;
    };
    assert_eq!(get(srv.addr, "/hello.txt").status, 200);
    let err = srv.stop();
    assert!(!err.contains("hand-offs"), "stats without --stats:\n{err}");
});

/// Sets `pid`'s soft `RLIMIT_NOFILE`; returns the limits it had.
fn set_nofile(pid: u32, soft: u64, hard: Option<u64>) -> libc::rlimit {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit reads nothing when `new` is null and writes the old
    // limits into `old`, which we own.
    let r = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            std::ptr::null(),
            &mut old,
        )
    };
    assert_eq!(r, 0, "prlimit (read): {}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard.unwrap_or(old.rlim_max),
    };
    // SAFETY: prlimit reads `new`, which lives for the call.
    let r = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &new,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(r, 0, "prlimit (set): {}", std::io::Error::last_os_error());
    old
}

backend_test!(
    a_file_that_cannot_be_opened_for_want_of_descriptors_answers_503,
    |choice: BackendChoice| {
        // The server out of descriptors (its RLIMIT_NOFILE lowered from
        // outside to 0: every new descriptor is refused, whatever it closes
        // meanwhile) cannot open a file it has not seen before: that is a
        // 503 with Retry-After on a closed connection, not a 404 (the file
        // is there) — for a GET, a GET first in a pipeline (nothing after it
        // is answered) and a HEAD (no body) — and it serves the file again
        // once descriptors are back.
        let site = Site::new();
        let body = vec![b'z'; 100 << 10];
        for (i, mode) in MODES.iter().enumerate() {
            let name = format!("/fresh-{i}.bin");
            site.write(&name[1..], &body);
            let Some(srv) = Serve::start(choice, &site, mode) else {
                return;
            };
            let pid = srv.pid();
            let mut conns: Vec<Client> = (0..3).map(|_| Client::connect(srv.addr)).collect();
            for c in &mut conns {
                assert_eq!(c.get("/hello.txt", "").status, 200, "{mode:?}");
            }
            let old = set_nofile(pid, 0, None);
            let plain = conns[0].get(&name, "");
            conns[1].send(
                format!(
                    "GET {name} HTTP/1.1\r\nHost: t\r\n\r\nGET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n"
                )
                .as_bytes(),
            );
            let piped = conns[1].response(false);
            let after = conns[1].try_response(false).map(|r| r.status);
            conns[2].send(format!("HEAD {name} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
            let head = conns[2].response(true);
            set_nofile(pid, old.rlim_cur, Some(old.rlim_max));
            for (what, r) in [("get", &plain), ("pipelined", &piped), ("head", &head)] {
                assert_eq!(r.status, 503, "{mode:?} {what}");
                assert_eq!(r.header("retry-after"), Some("1"), "{mode:?} {what}");
                assert_eq!(r.header("connection"), Some("close"), "{mode:?} {what}");
            }
            assert!(after.is_err(), "{mode:?}: answered after a 503: {after:?}");
            assert!(head.body.is_empty(), "{mode:?}: a HEAD's 503 has no body");
            for (k, c) in conns.iter_mut().enumerate() {
                assert!(c.closed_by_server(), "{mode:?}: connection {k} stays open");
            }
            let again = get(srv.addr, &name);
            assert_eq!(again.status, 200, "{mode:?}");
            assert!(again.body == body, "{mode:?}: the body after the 503");
            srv.stop();
        }
    }
);
