//! `ringport serve` end to end, continued (see `serve.rs` for the harness):
//! traversal walls, limits and timeouts, the connection cap, the access log,
//! and large downloads, every test on both backends.

use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use ringport::BackendChoice;

use crate::common::T;
use crate::serve::*;

backend_test!(traversal_tricks_are_refused, |choice: BackendChoice| {
    let site = Site::new();
    let Some(srv) = Serve::start(choice, &site, &[]) else {
        return;
    };
    let tricks = [
        "/../secret.txt",
        "/sub/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E%2Fsecret.txt",
        "/sub/..%2f..%2fsecret.txt",
        "/.%2e/secret.txt",
        "/hello.txt%00.html",
        "/%00",
        "//etc/passwd",
        "/etc/passwd",
        "/out-link",
        "/up-link/secret.txt",
        "/etc-link/passwd",
        "/etc-link/",
        "http://t/../secret.txt",
        "http://t/%2e%2e/secret.txt",
    ];
    for t in tricks {
        let mut c = Client::connect(srv.addr);
        let r = c.get(t, "");
        assert!(
            r.status == 403 || r.status == 404,
            "{t}: status {} (must be 403 or 404)",
            r.status
        );
        let all = format!("{:?}{}", r.headers, r.text());
        assert!(
            !all.contains("TOP-SECRET") && !all.contains("root:"),
            "{t}: {all}"
        );
    }
    // Not a path at all: 400.
    for t in ["*", "secret.txt", "/%zz"] {
        assert_eq!(get(srv.addr, t).status, 400, "{t}");
    }
    srv.stop();
});

backend_test!(
    bad_requests_get_their_status_codes,
    |choice: BackendChoice| {
        let site = Site::new();
        let Some(srv) = Serve::start(choice, &site, &[]) else {
            return;
        };
        let a = srv.addr;
        // 400 and close: malformed, or HTTP/1.1 without Host.
        for raw in [
            "GARBAGE\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n",
        ] {
            let mut c = Client::connect(a);
            c.send(raw.as_bytes());
            assert_eq!(c.response(false).status, 400, "{raw:?}");
            assert!(c.closed_by_server(), "{raw:?}: open after 400");
        }
        // 405 with Allow.
        for m in ["POST", "DELETE", "PUT", "OPTIONS"] {
            let r = fetch(a, &format!("{m} /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n"));
            assert_eq!(r.status, 405, "{m}");
            assert_eq!(r.must("Allow"), "GET, HEAD");
        }
        // A small body on GET is read and ignored; the connection goes on.
        let mut c = Client::connect(a);
        c.send(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nabcde");
        assert_eq!(c.response(false).body, b"hello, world\n");
        assert_eq!(c.get("/hello.txt", "").status, 200);
        // A POST with a small body: 405, and the connection goes on.
        c.send(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc");
        assert_eq!(c.response(false).status, 405);
        assert_eq!(c.get("/hello.txt", "").status, 200);
        // 413: a large body on GET.
        let mut c = Client::connect(a);
        c.send(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\n\r\n");
        c.send(&[b'x'; 4096]);
        assert_eq!(c.response(false).status, 413);
        assert!(c.closed_by_server());
        // 414: a request line over 8 KiB.
        let long = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(9000));
        let mut c = Client::connect(a);
        c.send(long.as_bytes());
        assert_eq!(c.response(false).status, 414);
        // 431: too many headers, or too large a head.
        let many: String = (0..100).map(|i| format!("X-{i}: v\r\n")).collect();
        let r = fetch(a, &format!("GET / HTTP/1.1\r\nHost: t\r\n{many}\r\n"));
        assert_eq!(r.status, 431);
        let big = format!(
            "GET / HTTP/1.1\r\nHost: t\r\nX: {}\r\n\r\n",
            "v".repeat(20_000)
        );
        let mut c = Client::connect(a);
        c.send(big.as_bytes());
        assert_eq!(c.response(false).status, 431);
        // 505: an HTTP version other than 1.x.
        for v in ["HTTP/2.0", "HTTP/1.2", "HTTP/3.0"] {
            let r = fetch(a, &format!("GET / {v}\r\nHost: t\r\n\r\n"));
            assert_eq!(r.status, 505, "{v}");
        }
        // The server is still fine.
        assert_eq!(get(a, "/hello.txt").status, 200);
        srv.stop();
    }
);

backend_test!(
    a_slowloris_client_is_dropped_while_others_are_served,
    |choice: BackendChoice| {
        let site = Site::new();
        let Some(srv) = Serve::start(choice, &site, &["--header-timeout-ms", "400"]) else {
            return;
        };
        let addr = srv.addr;
        // Sends a head a few bytes at a time, never finishing it; returns whether
        // the server closed the connection (within `T`).
        let slow = thread::spawn(move || -> Result<usize, String> {
            let mut s = TcpStream::connect_timeout(&addr, T).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            s.write_all(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n")
                .map_err(|e| e.to_string())?;
            let deadline = Instant::now() + T;
            let mut sent = 0;
            while Instant::now() < deadline {
                if s.write_all(b"X: y\r\n").is_err() {
                    return Ok(sent);
                }
                sent += 1;
                let mut b = [0u8; 256];
                match s.read(&mut b) {
                    Ok(0) => return Ok(sent),
                    Ok(_) => return Err("the server answered an unfinished head".into()),
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock
                                | io::ErrorKind::TimedOut
                                | io::ErrorKind::Interrupted
                        ) => {}
                    Err(_) => return Ok(sent),
                }
            }
            Err(format!("still open after {T:?} and {sent} header lines"))
        });
        // Meanwhile, other clients are served.
        let mut served = 0;
        while !slow.is_finished() && served < 1000 {
            assert_eq!(get(addr, "/hello.txt").body, b"hello, world\n");
            served += 1;
        }
        match slow.join().unwrap() {
            Ok(lines) => assert!(lines < 10_000, "{lines} header lines"),
            Err(e) => panic!("slowloris: {e}"),
        }
        assert!(served > 0);
        assert_eq!(get(addr, "/hello.txt").status, 200);
        srv.stop();
    }
);

backend_test!(idle_connections_time_out, |choice: BackendChoice| {
    let site = Site::new();
    let Some(srv) = Serve::start(
        choice,
        &site,
        &["--idle-timeout-ms", "300", "--header-timeout-ms", "300"],
    ) else {
        return;
    };
    // Kept alive after a request, then idle.
    let mut c = Client::connect(srv.addr);
    assert_eq!(c.get("/hello.txt", "").status, 200);
    assert!(
        c.closed_by_server(),
        "an idle keep-alive connection stayed open"
    );
    // Connected, never sending anything.
    let mut c = Client::connect(srv.addr);
    assert!(c.closed_by_server(), "a silent connection stayed open");
    srv.stop();
});

backend_test!(open_connections_are_capped, |choice: BackendChoice| {
    let site = Site::new();
    let Some(srv) = Serve::start(choice, &site, &["--max-conns", "2"]) else {
        return;
    };
    let mut a = Client::connect(srv.addr);
    let mut b = Client::connect(srv.addr);
    assert_eq!(a.get("/hello.txt", "").status, 200);
    assert_eq!(b.get("/hello.txt", "").status, 200);
    // A third waits in the backlog...
    let mut c = Client::connect(srv.addr);
    c.send(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n");
    c.s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    match c.fill() {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) => {}
        other => panic!("a third connection was served over --max-conns 2: {other:?}"),
    }
    c.s.set_read_timeout(Some(T)).unwrap();
    // ...until one closes.
    drop(a);
    assert_eq!(c.response(false).status, 200);
    assert_eq!(b.get("/hello.txt", "").status, 200);
    srv.stop();
});

backend_test!(access_log_is_written_when_asked, |choice: BackendChoice| {
    let site = Site::new();
    let Some(srv) = Serve::start(choice, &site, &["--log"]) else {
        return;
    };
    assert_eq!(get(srv.addr, "/hello.txt").status, 200);
    assert_eq!(get(srv.addr, "/nothing").status, 404);
    // A head that does not parse: its 400 page is counted.
    assert_eq!(fetch(srv.addr, "GARBAGE\r\n\r\n").status, 400);
    // A response the client cuts off: logged too, without a status.
    write_random(&site.root.join("big.bin"), 8 << 20);
    let mut c = Client::connect(srv.addr);
    c.send(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n");
    c.fill().unwrap();
    drop(c); // unread bytes: a reset
    let stdout = srv.stdout();
    let deadline = Instant::now() + T;
    while !stdout
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("/big.bin"))
    {
        assert!(
            Instant::now() < deadline,
            "the cut-off response was not logged"
        );
        thread::sleep(Duration::from_millis(5));
    }
    srv.stop();
    let lines = stdout.lock().unwrap().clone();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"- -\" 400 ") && !l.ends_with(" 400 0")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"GET /big.bin HTTP/1.1\" - - (")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"GET /hello.txt HTTP/1.1\" 200 13")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"GET /nothing HTTP/1.1\" 404")),
        "{lines:?}"
    );
    // Off by default.
    let Some(srv) = Serve::start(choice, &site, &[]) else {
        return;
    };
    assert_eq!(get(srv.addr, "/hello.txt").status, 200);
    let stdout = srv.stdout();
    srv.stop();
    assert!(stdout.lock().unwrap().is_empty());
});

/// Downloads `path` with ureq, hashing as it goes: (bytes, SHA-256).
fn download(srv: &Serve, path: &str, limit: Duration) -> (u64, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(limit))
        .build()
        .into();
    let mut res = agent.get(&srv.url(path)).call().expect("GET a large file");
    assert_eq!(res.status(), 200);
    let mut r = res.body_mut().as_reader();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).expect("read the body");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
    (total, hex(&h.finalize()))
}

fn large_file(choice: BackendChoice, size: usize, limit: Duration) {
    let site = Site::new();
    let want = write_random(&site.root.join("large.bin"), size);
    let Some(srv) = Serve::start(choice, &site, &[]) else {
        return;
    };
    let (n, got) = download(&srv, "/large.bin", limit);
    assert_eq!(n, size as u64);
    assert_eq!(got, want, "SHA-256 of the download");
    // A range from the middle of it, streamed (too large for the cache).
    let mut c = Client::connect(srv.addr);
    let from = size / 2 - 100;
    let r = c.get(
        "/large.bin",
        &format!("Range: bytes={from}-{}\r\n", from + 300_000 - 1),
    );
    assert_eq!(r.status, 206);
    let file = std::fs::read(site.root.join("large.bin")).unwrap();
    assert_eq!(sha256_hex(&r.body), sha256_hex(&file[from..from + 300_000]));
    srv.stop();
}

backend_test!(
    a_64_mib_file_downloads_with_the_right_sha256,
    |choice: BackendChoice| {
        large_file(choice, 64 << 20, Duration::from_secs(120));
    }
);

// The full check: `cargo test --release -- --ignored serve_limits::a_1_gib`.
mod a_1_gib_file_downloads_with_the_right_sha256 {
    use super::*;

    #[test]
    #[ignore = "1 GiB on disk and over loopback: run by hand (issue 7's full check)"]
    fn uring() {
        crate::common::run(BackendChoice::Uring, "a_1_gib::uring", false, |c| {
            large_file(c, 1 << 30, Duration::from_secs(600))
        });
    }

    #[test]
    #[ignore = "1 GiB on disk and over loopback: run by hand (issue 7's full check)"]
    fn epoll() {
        crate::common::run(BackendChoice::Epoll, "a_1_gib::epoll", false, |c| {
            large_file(c, 1 << 30, Duration::from_secs(600))
        });
    }
}

backend_test!(
    shutdown_finishes_the_response_in_flight,
    |choice: BackendChoice| {
        let site = Site::new();
        let size = 32 << 20;
        let want = write_random(&site.root.join("large.bin"), size);
        let Some(srv) = Serve::start(choice, &site, &[]) else {
            return;
        };
        let mut idle = Client::connect(srv.addr);
        assert_eq!(idle.get("/hello.txt", "").status, 200);
        let mut c = Client::connect(srv.addr);
        c.send(b"GET /large.bin HTTP/1.1\r\nHost: t\r\n\r\n");
        while !c.buf.windows(4).any(|w| w == b"\r\n\r\n") {
            assert!(c.fill().unwrap() > 0, "closed before the head");
        }
        // The server is sending (and waits for us to read); now stop it.
        srv.signal(libc::SIGTERM);
        // The idle keep-alive connection is closed at once...
        assert!(
            idle.closed_by_server(),
            "an idle connection stayed open after SIGTERM"
        );
        // ...the download in flight finishes, whole, and says it is the last.
        let r = c.response(false);
        assert_eq!(r.status, 200);
        assert_eq!(sha256_hex(&r.body), want);
        assert!(c.closed_by_server());
        let addr = srv.addr;
        let err = srv.wait_exit();
        assert!(err.contains("stopped"), "{err}");
        assert!(
            TcpStream::connect_timeout(&addr, T).is_err(),
            "something still listens on {addr}"
        );
    }
);
