//! `ringport echo` and `ringport bench echo` at the edges session 17's review
//! found (notes/s17/review-echo.md; each test names its item there). Servers
//! run as child processes (`child.rs`), every wait is bounded, and nothing
//! here measures time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::thread;
use std::time::Duration;

use ringport::BackendChoice;

use crate::child::Spawned;
use crate::common::{backend_flag, gate, wait_until, T};
use crate::echo::{assert_echoes, connect, echo_once, raise_nofile, run_bin, BIN};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A running `ringport echo` (SIGTERM'd and reaped if a failing test drops it).
struct Srv {
    proc: Spawned,
    addr: SocketAddr,
}

/// Starts `ringport echo --listen 127.0.0.1:0 args...`, with its descriptor
/// limit (soft and hard) lowered to `nofile` if given. `None`
/// (and a `skipped:` line) if its backend cannot run here; a panic if it
/// exits before it is ready for any other reason.
fn start(args: &[&str], nofile: Option<u64>) -> Option<Srv> {
    let mut cmd = Command::new(BIN);
    cmd.args(["echo", "--listen", "127.0.0.1:0"]).args(args);
    if let Some(n) = nofile {
        // SAFETY: the closure only calls setrlimit (async-signal-safe) on a
        // struct of its own, between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: n as libc::rlim_t,
                    rlim_max: n as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut proc = Spawned::spawn(&mut cmd);
    match proc.first_line() {
        Ok(line) => {
            let addr = line
                .strip_prefix("listening on ")
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("{args:?}: no address in {line:?}"));
            Some(Srv { proc, addr })
        }
        Err(_) => {
            let status = proc.wait();
            let err = proc.stderr();
            if err.to_ascii_lowercase().contains("unsupported") {
                eprintln!("skipped: {args:?}: {}", err.trim());
                return None;
            }
            panic!("`ringport echo {args:?}` was not ready ({status:?}); stderr:\n{err}");
        }
    }
}

impl Srv {
    /// SIGTERM; it must exit 0 within `T`. Returns its stderr.
    fn stop(mut self) -> String {
        if let Some(st) = self.proc.exited() {
            panic!("the server died with {st}; stderr:\n{}", self.proc.stderr());
        }
        self.proc.signal(libc::SIGTERM);
        let status = self.proc.wait();
        let err = self.proc.stderr();
        assert!(
            status.is_some_and(|s| s.success()),
            "the server exited with {status:?} after SIGTERM; stderr:\n{err}"
        );
        err
    }
}

// ---------------------------------------------------------------------------
// `--max-in-flight` past what a ring can hold (review item 5)
// ---------------------------------------------------------------------------

backend_test!(the_largest_max_in_flight_serves, |choice: BackendChoice| {
    for extra in [&[][..], &["--async"][..], &["--plain-recv"][..]] {
        let mut args = vec!["--backend", backend_flag(choice)];
        args.extend_from_slice(extra);
        args.extend(["--max-in-flight", "18446744073709551615"]);
        let Some(srv) = start(&args, None) else {
            return;
        };
        assert_echoes(srv.addr, "with --max-in-flight 2^64-1");
        srv.stop();
    }
});

// ---------------------------------------------------------------------------
// `--async` under `--max-in-flight` (review item 6)
// ---------------------------------------------------------------------------

/// Connects, with every read and write bounded by `read`.
fn connect_with(addr: SocketAddr, read: Duration) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, T).unwrap_or_else(|e| panic!("connect: {e}"));
    s.set_read_timeout(Some(read)).unwrap();
    s.set_write_timeout(Some(T)).unwrap();
    s
}

/// One echo of `msg` on `s`: true if it came back whole.
fn echoes(s: &mut TcpStream, msg: &[u8]) -> bool {
    let mut got = vec![0; msg.len()];
    s.write_all(msg).is_ok() && s.read_exact(&mut got).is_ok() && got == msg
}

backend_test!(
    async_connections_past_the_cap_are_closed_and_the_others_still_served,
    |choice: BackendChoice| {
        // 24 operations, 16 of them accepts: 8 connections (a read or a
        // write in flight each).
        let args = [
            "--backend",
            backend_flag(choice),
            "--async",
            "--max-in-flight",
            "24",
        ];
        let Some(srv) = start(&args, None) else {
            return;
        };
        let mut socks: Vec<TcpStream> = (0..12)
            .map(|_| connect_with(srv.addr, Duration::from_secs(2)))
            .collect();
        let served: Vec<usize> = (0..socks.len())
            .filter(|&i| echoes(&mut socks[i], b"ping"))
            .collect();
        assert_eq!(served.len(), 8, "connections served");
        for &i in &served {
            assert!(
                echoes(&mut socks[i], b"again"),
                "the server froze (connection {i})"
            );
        }
        drop(socks);
        let err = srv.stop();
        assert!(
            err.contains("closing new ones (raise --max-in-flight)"),
            "no warning for the connections closed past the cap; stderr:\n{err}"
        );
    }
);

// ---------------------------------------------------------------------------
// Flags past what can start (review item 4)
// ---------------------------------------------------------------------------

backend_test!(
    more_threads_than_can_start_is_a_clear_error,
    |choice: BackendChoice| {
        let be = backend_flag(choice);
        for extra in [&[][..], &["--async"][..]] {
            let mut args = vec!["echo", "--listen", "127.0.0.1:0", "--backend", be];
            args.extend_from_slice(extra);
            args.extend(["--threads", "100000"]);
            let out = run_bin(&args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
            assert!(err.contains("--threads"), "{args:?}: {err}");
            assert!(!err.contains("panicked"), "{args:?}: {err}");
        }
        // Worker threads that cannot start (a stack no address space holds):
        // the error says which flag asked for them.
        for extra in [&[][..], &["--async"][..], &["--plain-recv"][..]] {
            let mut args = vec!["--backend", be, "--threads", "2"];
            args.extend_from_slice(extra);
            let mut cmd = Command::new(BIN);
            cmd.args(["echo", "--listen", "127.0.0.1:0"]).args(&args);
            crate::child::assert_workers_that_cannot_start_name_threads(
                &mut cmd,
                &format!("{args:?}"),
            );
        }
    }
);

backend_test!(
    a_receive_pool_too_big_to_allocate_names_its_flags,
    |choice: BackendChoice| {
        // 1024 buffers of 256 MiB: the multishot path's shared receive pool
        // (`--multishot`: emulated where the kernel lacks it, and on epoll).
        let args = [
            "echo",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            backend_flag(choice),
            "--multishot",
            "--buf-size",
            "268435455",
        ];
        let out = run_bin(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        if err.to_ascii_lowercase().contains("unsupported") {
            eprintln!("skipped: {args:?}: {}", err.trim());
            return;
        }
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("--buf-size"), "{args:?}: {err}");
    }
);

// ---------------------------------------------------------------------------
// The bench against a server that corrupts an echo, then closes or stalls
// (review item 2)
// ---------------------------------------------------------------------------

/// A one-connection server for `bench echo --size 64`: it echoes `n`
/// messages whole, then hands the connection to `then` (dropped after it:
/// closed).
fn echo_then(
    n: usize,
    then: impl FnOnce(&mut std::net::TcpStream) + Send + 'static,
) -> (SocketAddr, thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        let mut msg = [0u8; 64];
        for _ in 0..n {
            if s.read_exact(&mut msg).is_err() || s.write_all(&msg).is_err() {
                return;
            }
        }
        then(&mut s);
    });
    (addr, h)
}

/// It echoes three messages, then sends back the first half of the fourth
/// with its first byte flipped, and then closes (`stall` false) or waits for
/// the client to go (`stall` true: the bench's hard stop, 5 s after its
/// duration, ends it).
fn corrupt_then(stall: bool) -> (SocketAddr, thread::JoinHandle<()>) {
    echo_then(3, move |s| {
        let mut msg = [0u8; 64];
        if s.read_exact(&mut msg).is_err() {
            return;
        }
        msg[0] ^= 0x01;
        let _ = s.write_all(&msg[..32]);
        if stall {
            // Until the client shuts the connection down.
            let _ = s.read(&mut msg);
        }
    })
}

/// `bench echo --json` of one 64-byte connection for `duration` seconds
/// against `server`, which it then joins: stdout, stderr, exit status.
fn bench_one(
    (addr, server): (SocketAddr, thread::JoinHandle<()>),
    duration: &str,
) -> (String, String, Option<i32>) {
    let target = addr.to_string();
    let out = run_bin(&[
        "bench",
        "echo",
        "--target",
        &target,
        "--conns",
        "1",
        "--size",
        "64",
        "--duration",
        duration,
        "--json",
    ]);
    let _ = server.join();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code(),
    )
}

fn bench_against_corrupt(stall: bool) {
    let _gate = gate(false);
    let (json, err, code) = bench_one(corrupt_then(stall), "0.5");
    let what = if stall { "stalls" } else { "closes" };
    assert!(
        json.contains("\"messages\":3,"),
        "three messages came back whole: {json} {err}"
    );
    assert!(
        json.contains("\"errors\":1,\"mismatches\":1}"),
        "half an echo with a flipped byte, then the server {what}: not counted as a \
         mismatch: {json}"
    );
    assert_eq!(code, Some(1), "exit status; {json} {err}");
    assert!(err.contains("did not match"), "{err}");
}

#[test]
fn bench_fails_when_a_connection_is_lost_before_the_run_ends() {
    let _gate = gate(false);
    let (json, err, code) = bench_one(echo_then(5, |_| {}), "2");
    assert!(
        json.contains("\"messages\":5,") && json.contains("\"errors\":1,\"mismatches\":0}"),
        "five echoes, then the connection lost: still reported: {json} {err}"
    );
    assert_eq!(code, Some(1), "exit status; {json} {err}");
    assert!(err.contains("1 of 1 connections failed"), "{err}");
}

#[test]
fn bench_counts_a_corrupted_partial_echo_before_a_close() {
    bench_against_corrupt(false);
}

#[test]
fn bench_counts_a_corrupted_partial_echo_before_a_stall() {
    bench_against_corrupt(true);
}

// ---------------------------------------------------------------------------
// A burst of connects the server cannot accept yet (review item 3)
// ---------------------------------------------------------------------------

/// Generates one test per echo path: `uring` and `epoll` (each backend's
/// default), `uring_plain` (`--plain-recv`) and `epoll_multi` (`--multishot`).
/// The body gets the path's `ringport echo` flags.
macro_rules! paths_test {
    ($name:ident, |$args:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn body($args: &[&'static str]) $body

            #[test]
            fn uring() {
                body(&["--backend", "uring"]);
            }

            #[test]
            fn epoll() {
                body(&["--backend", "epoll"]);
            }

            #[test]
            fn uring_plain() {
                body(&["--backend", "uring", "--plain-recv"]);
            }

            #[test]
            fn epoll_multi() {
                body(&["--backend", "epoll", "--multishot"]);
            }
        }
    };
}

impl Srv {
    /// Waits (at most `T`) until the server has warned that accepting ran
    /// out of descriptors.
    fn wait_for_emfile(&self) {
        wait_until("the server ran out of descriptors accepting", || {
            self.proc.stderr().contains("backing off")
        });
    }
}

// While the server cannot accept (out of descriptors), connects wait in its
// listen queue: 600 of them must all complete their handshake. With std's
// backlog of 128 the queue overflowed after about 130, and each further
// connect's SYN was dropped (the client then retries after 1 s, 3 s, ...).
paths_test!(a_burst_of_connects_waits_in_a_deep_listen_queue, |args| {
    const CONNECTS: usize = 600;
    let _gate = gate(true);
    raise_nofile(4096);
    let Some(srv) = start(args, Some(64)) else {
        return;
    };
    let mut socks = Vec::with_capacity(CONNECTS);
    for i in 0..CONNECTS {
        match TcpStream::connect_timeout(&srv.addr, T) {
            Ok(s) => socks.push(s),
            Err(e) => panic!(
                "{args:?}: connect {i} of {CONNECTS} did not complete ({e}): the listen \
                 queue is full while the server cannot accept (backlog too small)"
            ),
        }
    }
    srv.wait_for_emfile();
    drop(socks);
    assert_echoes(srv.addr, "after the burst left");
    srv.stop();
});

// ---------------------------------------------------------------------------
// Out of descriptors (review item 1)
// ---------------------------------------------------------------------------

/// The pool workers (threads `echo-N`) of process `pid` that are in
/// `nanosleep`/`clock_nanosleep` right now, as "name (syscall)".
fn sleeping_workers(pid: u32) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for t in tasks.flatten() {
        let dir = t.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let comm = comm.trim();
        let worker = comm
            .strip_prefix("echo-")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !worker {
            continue;
        }
        // "NR arg..." in a system call, "running", or "-1 ..." (not in one).
        let sc = std::fs::read_to_string(dir.join("syscall")).unwrap_or_default();
        let nr: i64 = match sc.split_whitespace().next().and_then(|n| n.parse().ok()) {
            Some(nr) => nr,
            None => continue,
        };
        if nr == libc::SYS_nanosleep || nr == libc::SYS_clock_nanosleep {
            found.push(format!("{comm} (syscall {nr})"));
        }
    }
    found
}

// The server, limited to 64 descriptors and keeping 64 accepts outstanding,
// gets 100 more connections than it can hold: accepting fails with EMFILE
// over and over. No pool worker may sleep meanwhile (each failed accept's
// handler slept 10 ms in its worker, and every other connection waited behind
// up to 64 of those naps); a connection it already had still echoes; and once
// the extra clients leave, a new one is served again.
paths_test!(
    out_of_descriptors_no_worker_sleeps_and_the_server_recovers,
    |args| {
        let _gate = gate(true);
        raise_nofile(4096);
        let mut all = args.to_vec();
        all.extend(["--accepts", "64"]);
        let Some(srv) = start(&all, Some(64)) else {
            return;
        };
        let pid = srv.proc.child.id();
        if std::fs::read_to_string(format!("/proc/{pid}/syscall")).is_err() {
            // (Not readable without ptrace rights: nothing could be checked.)
            eprintln!("skipped: /proc/{pid}/syscall is not readable here [{args:?}]");
            return;
        }
        let mut kept = connect(srv.addr);
        echo_once(&mut kept, b"before").unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let extra: Vec<TcpStream> = (0..100).map(|_| connect(srv.addr)).collect();
        srv.wait_for_emfile();
        // Look at the workers 200 times, between echoes on the kept connection.
        for round in 0..20 {
            echo_once(&mut kept, format!("ping {round}").as_bytes()).unwrap_or_else(|e| {
                panic!("{args:?}: the kept connection, out of descriptors: {e}")
            });
            for _ in 0..10 {
                let asleep = sleeping_workers(pid);
                assert!(
                    asleep.is_empty(),
                    "{args:?}: pool workers asleep in a handler while accepting is out of \
                 descriptors (every other connection waits behind them): {asleep:?}"
                );
                thread::sleep(Duration::from_millis(1));
            }
        }
        drop(extra);
        assert_echoes(srv.addr, "after the extra clients left");
        echo_once(&mut kept, b"after").unwrap_or_else(|e| panic!("{args:?}: {e}"));
        drop(kept);
        srv.stop();
    }
);
