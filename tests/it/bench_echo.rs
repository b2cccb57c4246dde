//! `ringport bench echo` against servers that misbehave: one that corrupts a
//! byte, and an address where nothing listens — the command must fail, and
//! say why.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crate::common::{closed_addr, gate, T};
use crate::echo::*;

/// An echo server that flips one bit in the first byte of every chunk it echoes.
struct Corrupter {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<Vec<JoinHandle<()>>>>,
}

impl Corrupter {
    fn start() -> Corrupter {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let acceptor = thread::spawn(move || {
            let mut conns = Vec::new();
            for s in l.incoming() {
                if stop2.load(Ordering::Acquire) {
                    break;
                }
                let Ok(mut s) = s else { continue };
                let _ = s.set_read_timeout(Some(T));
                let _ = s.set_write_timeout(Some(T));
                conns.push(thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    loop {
                        let n = match s.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        buf[0] ^= 0x01;
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }));
            }
            conns
        });
        Corrupter {
            addr,
            stop,
            acceptor: Some(acceptor),
        }
    }
}

impl Drop for Corrupter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the acceptor so it sees `stop`.
        let _ = TcpStream::connect_timeout(&self.addr, T);
        if let Some(a) = self.acceptor.take() {
            if let Ok(conns) = a.join() {
                // Each ends at its client's EOF, or after `T` of silence.
                for c in conns {
                    let _ = c.join();
                }
            }
        }
    }
}

/// `ringport bench echo --json` at `addr`: 2 connections, 64 B, 1 s.
fn short_bench_echo(addr: &str) -> std::process::Output {
    run_bin(&[
        "bench",
        "echo",
        "--target",
        addr,
        "--conns",
        "2",
        "--size",
        "64",
        "--duration",
        "1",
        "--json",
    ])
}

// Not per backend: no ringport server is involved, only the bench client.
#[test]
fn bench_echo_fails_against_a_server_that_corrupts_a_byte() {
    let _gate = gate(false);
    let bad = Corrupter::start();
    let addr = bad.addr.to_string();
    let out = short_bench_echo(&addr);
    drop(bad);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "bench echo exited 0 against a corrupting server; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stderr.contains("mismatch") || stderr.contains("did not match"),
        "bench echo's error does not mention the mismatch; stderr:\n{stderr}"
    );
    assert!(
        !stdout.contains("\"mismatches\":0}"),
        "bench echo failed but reported 0 mismatches; stdout:\n{stdout}"
    );
}

#[test]
fn bench_echo_fails_clearly_when_nothing_listens() {
    let _gate = gate(false);
    let addr = closed_addr().to_string();
    let out = short_bench_echo(&addr);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "bench echo exited 0 with nothing listening on {addr}; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("cannot connect to {addr}")),
        "bench echo's error does not say it cannot connect to {addr}; stderr:\n{stderr}"
    );
}
