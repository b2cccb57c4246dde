//! The automatic fallback, for real: a child process whose seccomp filter makes
//! `io_uring_setup` fail with `EPERM` (as Docker's default profile does) must
//! choose epoll by itself, say why, and still serve.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Installs a seccomp filter in the calling (child) process: `io_uring_setup`
/// fails with `EPERM`, every other system call is allowed. Only async-signal-safe
/// calls (prctl) are made, so it may run between fork and exec.
fn deny_io_uring() -> std::io::Result<()> {
    const AUDIT_ARCH: u32 = if cfg!(target_arch = "x86_64") {
        0xc000_003e // AUDIT_ARCH_X86_64
    } else if cfg!(target_arch = "aarch64") {
        0xc000_00b7 // AUDIT_ARCH_AARCH64
    } else {
        0
    };
    let insn = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    let ld = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    let jeq = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    let ret = (libc::BPF_RET | libc::BPF_K) as u16;
    let mut prog = [
        insn(ld, 0, 0, 4),                                // arch
        insn(jeq, 1, 0, AUDIT_ARCH),                      // native arch?
        insn(ret, 0, 0, libc::SECCOMP_RET_ALLOW),         // other arch: leave alone
        insn(ld, 0, 0, 0),                                // syscall number
        insn(jeq, 0, 1, libc::SYS_io_uring_setup as u32), // io_uring_setup?
        insn(ret, 0, 0, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        insn(ret, 0, 0, libc::SECCOMP_RET_ALLOW),
    ];
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: prctl with documented arguments; `fprog` points at a live program.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &fprog as *const libc::sock_fprog,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn ringport_without_io_uring(args: &[&str], env_backend: Option<&str>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringport"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.env_remove("RINGPORT_BACKEND");
    if let Some(b) = env_backend {
        cmd.env("RINGPORT_BACKEND", b);
    }
    // SAFETY: the closure only calls prctl, which is async-signal-safe.
    unsafe { cmd.pre_exec(deny_io_uring) };
    cmd
}

/// Stops the child on drop: SIGTERM, then SIGKILL if it has not exited within
/// the suite's bound, so a stuck server fails the test instead of hanging it.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + crate::common::T;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        if !std::thread::panicking() {
            panic!(
                "ringport did not exit within {:?} of SIGTERM",
                crate::common::T
            );
        }
    }
}

/// Runs a command to completion, killing it if it takes longer than the bound.
fn output_bounded(mut cmd: Command) -> std::process::Output {
    let child = cmd.spawn().expect("spawn ringport");
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(crate::common::T) {
        Ok(out) => out.expect("wait for ringport"),
        Err(_) => {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("ringport did not finish within {:?}", crate::common::T);
        }
    }
}

#[test]
fn blocked_io_uring_falls_back_to_epoll_and_still_echoes() {
    let child =
        ringport_without_io_uring(&["echo", "--listen", "127.0.0.1:0", "--threads", "2"], None)
            .spawn()
            .expect("spawn ringport echo");
    let mut child = Kill(child);
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read banner");
    assert!(line.starts_with("listening on "), "banner: {line:?}");
    assert!(
        line.contains("backend epoll"),
        "io_uring was blocked, so auto must choose epoll: {line:?}"
    );
    let addr = line["listening on ".len()..]
        .split_whitespace()
        .next()
        .expect("address")
        .to_string();
    let mut s = TcpStream::connect(&addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for i in 0..50u32 {
        let msg = format!("message {i} through the fallback backend");
        s.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0; msg.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, msg.as_bytes());
    }
}

#[test]
fn info_names_the_fallback_and_its_reason() {
    let out = ringport_without_io_uring(&["info"], None)
        .output()
        .expect("run ringport info");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ringport info failed: {text}");
    let backend = text
        .lines()
        .find(|l| l.starts_with("backend:"))
        .expect("a backend line");
    assert!(backend.contains("epoll"), "{backend}");
    assert!(
        backend.contains("io_uring unavailable") && backend.contains("EPERM")
            || backend.contains("not permitted"),
        "the reason must name the refusal: {backend}"
    );
}

#[test]
fn forcing_io_uring_where_it_is_blocked_is_a_clear_error() {
    let out = output_bounded(ringport_without_io_uring(
        &["echo", "--listen", "127.0.0.1:0"],
        Some("uring"),
    ));
    assert!(
        !out.status.success(),
        "forcing io_uring must not silently fall back"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("io_uring is unavailable"), "stderr: {err}");
}
