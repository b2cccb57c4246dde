//! `ringport serve` when what surrounds it changes or misbehaves: a reader
//! of the access log that stops reading, a directory moved out of DIR and
//! linked back, a client that sends an empty line after its request. Found
//! by the session 17 review; each test failed before its fix, on both
//! backends.

use std::time::Duration;

use ringport::BackendChoice;

use crate::common::*;
use crate::serve::*;

// With `--log`, a stdout nobody reads fills its pipe; the workers used to
// write each line themselves and all stopped in write(2): after ~850
// requests nothing was answered. Now lines wait in a queue for a logger
// thread (one that does not fit is dropped and counted), and the server
// goes on.
backend_test!(
    an_unread_access_log_does_not_stop_the_server,
    |choice: BackendChoice| {
        let site = Site::new();
        let Some(mut srv) = Serve::start_unread(choice, &site, &["--log"]) else {
            return;
        };
        // 4,000 lines of ~90 bytes: several times a pipe's 64 KiB.
        let mut c = Client::connect(srv.addr);
        for i in 0..4000 {
            let r = c.get("/hello.txt", "");
            assert_eq!(r.status, 200, "request {i}");
        }
        // Nothing was lost meanwhile: once read again, every line comes out.
        let stdout = srv.stdout();
        srv.release_stdout();
        wait_until("4,000 access-log lines", || {
            stdout.lock().unwrap().len() >= 4000
        });
        srv.stop();
    }
);

// A cached file (kept in memory, or kept open when large) is served only if
// its path, resolved beneath DIR as a request's is, still leads to it. A
// plain stat followed symlinks out of DIR: a directory moved out and linked
// back kept its cached files served, while its other files got 403.
backend_test!(
    a_directory_moved_out_of_dir_is_not_served_from_the_cache,
    |choice: BackendChoice| {
        let site = Site::new();
        std::fs::create_dir_all(site.root.join("pub")).unwrap();
        site.write("pub/small.txt", b"small\n");
        site.write("pub/big.bin", &pattern(100_000));
        site.write("pub/other.txt", b"other\n");
        let Some(srv) = Serve::start(choice, &site, &["--cache-file-kib", "32"]) else {
            return;
        };
        let mut c = Client::connect(srv.addr);
        for _ in 0..2 {
            assert_eq!(c.get("/pub/small.txt", "").status, 200);
            assert_eq!(c.get("/pub/big.bin", "").status, 200);
        }
        let outside = site.base.join("pub-outside");
        std::fs::rename(site.root.join("pub"), &outside).unwrap();
        std::os::unix::fs::symlink(&outside, site.root.join("pub")).unwrap();
        for path in ["/pub/small.txt", "/pub/big.bin", "/pub/other.txt"] {
            assert_eq!(c.get(path, "").status, 403, "{path}: leads out of DIR now");
        }
        // The same for files right in DIR (whose check takes a shorter way):
        // moved out and linked back, they are the same files, and refused.
        site.write("top.txt", b"top\n");
        site.write("top.bin", &pattern(100_000));
        for name in ["top.txt", "top.bin"] {
            for _ in 0..2 {
                assert_eq!(c.get(&format!("/{name}"), "").status, 200);
            }
            let out = site.base.join(name);
            std::fs::rename(site.root.join(name), &out).unwrap();
            std::os::unix::fs::symlink(&out, site.root.join(name)).unwrap();
            assert_eq!(c.get(&format!("/{name}"), "").status, 403, "/{name}");
        }
        // A link that stays inside DIR is still followed, cached or not.
        for _ in 0..3 {
            let r = c.get("/in-link", "");
            assert_eq!((r.status, r.text()), (200, "hello, world\n".to_string()));
        }
        srv.stop();
    }
);

// RFC 9112 §2.2: empty lines before a request line are ignored. One sent
// after a request used to start the next head's timeout, so the kept-alive
// connection was closed after the header timeout instead of the idle one.
backend_test!(
    an_empty_line_after_a_request_leaves_the_connection_idle,
    |choice: BackendChoice| {
        let site = Site::new();
        let Some(srv) = Serve::start(
            choice,
            &site,
            &["--header-timeout-ms", "200", "--idle-timeout-ms", "30000"],
        ) else {
            return;
        };
        let mut c = Client::connect(srv.addr);
        c.send(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n\r\n");
        assert_eq!(c.response(false).status, 200);
        // Well past the header timeout, well within the idle one.
        std::thread::sleep(Duration::from_millis(1000));
        let r = std::io::Write::write_all(&mut c.s, b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n")
            .and_then(|_| c.try_response(false));
        assert_eq!(
            r.map(|r| r.status).ok(),
            Some(200),
            "the connection was closed as if a head were late"
        );
        // Endless empty lines are not idleness: they meet the header timeout.
        let mut d = Client::connect(srv.addr);
        d.send(&b"\r\n".repeat(64));
        assert!(
            d.closed_by_server(),
            "64 empty lines kept the connection open"
        );
        srv.stop();
    }
);

// Flags and folders `serve` cannot run with: each ends at once with exit
// code 1 and an error that names what was wrong. `--threads 100000` used to
// start threads until the process ran out of memory and aborted in a
// thread's start-up (a panic that could not unwind); a pool whose threads
// cannot start said only "Resource temporarily unavailable".
backend_test!(
    flags_and_folders_it_cannot_serve_are_clear_errors,
    |choice: BackendChoice| {
        let be = backend_flag(choice);
        let site = Site::new();
        let dir = site.root.to_str().unwrap().to_string();
        let file = format!("{dir}/hello.txt");
        let cases: [(&[&str], &str); 5] = [
            (&[dir.as_str(), "--listen=127.0.0.1:99999"], "--listen"),
            (&[dir.as_str(), "--threads", "100000"], "--threads"),
            (&[dir.as_str(), "--max-conns", "0"], "--max-conns"),
            (&["/nonexistent-ringport-dir"], "/nonexistent-ringport-dir"),
            (&[file.as_str()], "not a directory"),
        ];
        for (args, says) in cases {
            let mut all = vec!["serve", "--backend", be];
            all.extend_from_slice(args);
            if !args.iter().any(|a| a.starts_with("--listen")) {
                all.extend(["--listen", "127.0.0.1:0"]);
            }
            let out = crate::echo::run_bin(&all);
            let err = String::from_utf8_lossy(&out.stderr);
            // 2: clap's usage error, for a value it parses itself.
            let code = if says == "--listen" { 2 } else { 1 };
            assert_eq!(out.status.code(), Some(code), "{all:?}: {err}");
            assert!(err.contains(says), "{all:?}: {err}");
            assert!(!err.contains("panicked"), "{all:?}: {err}");
        }
        // Worker threads that cannot start (a stack no address space holds).
        let mut cmd = std::process::Command::new(crate::echo::BIN);
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            be,
            "--threads",
            "2",
        ])
        .arg(&dir);
        crate::child::assert_workers_that_cannot_start_name_threads(&mut cmd, "serve");
    }
);
