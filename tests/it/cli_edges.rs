//! `ringport echo` and `ringport bench echo` at their edges (session 12's
//! review): connections past what `--max-in-flight` can serve are closed
//! while the others go on being served, a cap smaller than the accepts is a
//! clear error, a stdout nobody reads does not stop the server, and the bench
//! carries messages larger than the sockets' buffers and refuses durations
//! it cannot run.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ringport::BackendChoice;

use crate::common::{backend_flag, T};
use crate::echo::{run_bin, BIN};

/// A running `ringport echo`: killed and reaped if a failing test drops it
/// without `stop`, so no test leaves a server behind.
struct Echo(Option<Child>);

impl Drop for Echo {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `ringport echo --listen 127.0.0.1:0` on `choice`'s backend, stdout piped.
fn echo_command(choice: BackendChoice) -> Command {
    let mut c = Command::new(BIN);
    c.args([
        "echo",
        "--listen",
        "127.0.0.1:0",
        "--backend",
        backend_flag(choice),
    ])
    .stdout(Stdio::piped());
    c
}

/// `ringport echo` on 127.0.0.1:0 with `extra`; its address from the ready line.
fn spawn_echo(choice: BackendChoice, extra: &[&str]) -> (Echo, SocketAddr) {
    let mut child = echo_command(choice)
        .args(extra)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ringport echo");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split_whitespace()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (Echo(Some(child)), addr)
}

/// Stops the server with SIGTERM; it must exit 0.
fn stop(mut echo: Echo) {
    let mut child = echo.0.take().expect("running");
    // SAFETY: kill(2) on our own child's pid, with SIGTERM.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "ringport echo exited with {status}");
}

/// `ringport bench echo --target TARGET --conns 1 --json` with `extra`.
fn bench_one_conn(target: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "bench", "echo", "--target", target, "--conns", "1", "--json",
    ];
    args.extend_from_slice(extra);
    run_bin(&args)
}

/// One echo of `msg` on `s`: true if it came back whole.
fn echoes(s: &mut TcpStream, msg: &[u8]) -> bool {
    let mut got = vec![0; msg.len()];
    s.write_all(msg).is_ok() && s.read_exact(&mut got).is_ok() && got == msg
}

backend_test!(
    connections_past_the_cap_are_closed_and_the_others_still_served,
    |choice: BackendChoice| {
        // 24 operations, 16 of them accepts: 8 connections on the plain path
        // (one operation each), 4 on the multishot one (a receive and a send).
        // io_uring's default path is the multishot one, epoll's the plain one.
        let modes: [(&[&str], usize); 2] = match choice {
            BackendChoice::Epoll => [(&[], 8), (&["--multishot"], 4)],
            _ => [(&[], 4), (&["--plain-recv"], 8)],
        };
        for (extra, cap) in modes {
            let mut args = vec!["--max-in-flight", "24"];
            args.extend_from_slice(extra);
            let (child, addr) = spawn_echo(choice, &args);
            let mut socks: Vec<TcpStream> = (0..12)
                .map(|_| {
                    let s = TcpStream::connect_timeout(&addr, T).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    s
                })
                .collect();
            // Which ones are served is the order the workers admit them in,
            // not the order they connected: any `cap` of the 12.
            let served: Vec<usize> = (0..socks.len())
                .filter(|&i| echoes(&mut socks[i], b"ping"))
                .collect();
            assert_eq!(served.len(), cap, "{args:?}: connections served");
            // Those served are still served: nobody waits for room.
            for &i in &served {
                assert!(
                    echoes(&mut socks[i], b"again"),
                    "{args:?}: the server froze (connection {i})"
                );
            }
            stop(child);
        }
    }
);

#[test]
fn a_cap_smaller_than_the_accepts_is_a_clear_error() {
    let out = run_bin(&["echo", "--listen", "127.0.0.1:0", "--max-in-flight", "4"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--max-in-flight"), "{err}");
    let out = run_bin(&[
        "echo",
        "--async",
        "--listen",
        "127.0.0.1:0",
        "--accepts",
        "40000",
    ]);
    assert!(!out.status.success(), "--async --accepts 40000 started");
    // Room for the accepts but for no connection (the multishot path needs 2).
    let out = run_bin(&[
        "echo",
        "--multishot",
        "--backend",
        "epoll",
        "--listen",
        "127.0.0.1:0",
        "--max-in-flight",
        "17",
    ]);
    assert!(!out.status.success(), "started with room for no connection");
}

backend_test!(
    a_closed_stdout_does_not_stop_the_server,
    |choice: BackendChoice| {
        let mut child = echo_command(choice).stderr(Stdio::piped()).spawn().unwrap();
        drop(child.stdout.take()); // nobody reads the ready line
        let mut echo = Echo(Some(child));
        std::thread::sleep(Duration::from_millis(300));
        let running = echo.0.as_mut().unwrap().try_wait().unwrap().is_none();
        assert!(running, "the server exited when its stdout closed");
        stop(echo);
    }
);

backend_test!(
    the_bench_carries_messages_larger_than_the_socket_buffers,
    |choice: BackendChoice| {
        let (child, addr) = spawn_echo(choice, &[]);
        let target = addr.to_string();
        let out = bench_one_conn(&target, &["--size", "8388608", "--duration", "0.5"]);
        let json = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{json} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!json.contains("\"messages\":0,"), "{json}");
        assert!(json.contains("\"errors\":0,\"mismatches\":0"), "{json}");
        stop(child);
    }
);

#[test]
fn the_bench_refuses_durations_it_cannot_run() {
    // Each bench command's time flag: `nan`, `inf`, `1e300` and the like
    // once panicked in `Duration::from_secs_f64` (nop, file) or ran forever.
    let commands: [(&[&str], &str); 4] = [
        (&["bench", "echo", "--target", "127.0.0.1:9"], "--duration"),
        (&["bench", "nop", "--rounds", "1"], "--duration"),
        (
            &["bench", "file", "--path", "/etc/passwd", "--bs", "1"],
            "--duration",
        ),
        (&["bench", "idle", "--conns", "0"], "--hold"),
    ];
    for (command, flag) in commands {
        for d in ["nan", "inf", "-inf", "1e300", "-1", "86401", "five"] {
            let flag_value = format!("{flag}={d}");
            let mut args = command.to_vec();
            args.push(&flag_value);
            let out = run_bin(&args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            assert!(err.contains(flag), "{args:?}: {err}");
            assert!(!err.contains("panicked"), "{args:?}: {err}");
        }
    }
    let out = run_bin(&[
        "bench",
        "echo",
        "--target",
        "127.0.0.1:9",
        "--duration",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(2), "--duration 0");
    let out = run_bin(&["bench", "nop", "--depth", "100000000"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--depth"), "{err}");
    let out = run_bin(&[
        "bench",
        "echo",
        "--target",
        "127.0.0.1:9",
        "--conns",
        "100000000000",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--conns"), "{err}");
}

#[test]
fn info_exits_non_zero_when_no_backend_can_run() {
    let out = Command::new(BIN)
        .arg("info")
        .env("RINGPORT_BACKEND", "bogus")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("backend:      none"), "{text}");
    assert!(!out.status.success(), "info exited 0 without a backend");
}

backend_test!(addresses_may_name_a_host, |choice: BackendChoice| {
    let (child, addr) = spawn_echo(choice, &[]);
    let target = format!("localhost:{}", addr.port());
    let out = bench_one_conn(&target, &["--duration", "0.2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_bin(&["bench", "echo", "--target", "no-port-here"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("HOST:PORT"), "{err}");
    stop(child);
});

#[test]
fn echo_refuses_a_batch_it_cannot_take() {
    for b in ["0", "1025", "-1", "eight"] {
        let flag = format!("--batch={b}");
        let out = run_bin(&["echo", "--listen", "127.0.0.1:0", &flag]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--batch {b}: {err}");
        assert!(err.contains("--batch"), "--batch {b}: {err}");
    }
}
