//! One run: start a server, count what it does while the client drives it, stop it.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use serde_json::Value;

use crate::procfs;

/// The servers of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServerKind {
    /// `ringport echo --backend uring`.
    RingportUring,
    /// `ringport echo --backend uring` in the environment `--x-env` gives (an A/B experiment).
    RingportUringX,
    /// `ringport echo --backend epoll`.
    RingportEpoll,
    /// `ringport echo --backend epoll` in the environment `--x-env` gives (an A/B experiment).
    RingportEpollX,
    /// `ringport echo --async --backend uring` (the async face).
    RingportAsync,
    /// `ringport echo --async --backend uring` in the environment `--x-env` gives (an A/B experiment).
    RingportAsyncX,
    /// `ringport echo --async --backend epoll`.
    RingportAsyncEpoll,
    /// `ringport echo --async --backend epoll` in the environment `--x-env` gives (an A/B experiment).
    RingportAsyncEpollX,
    /// `peer-echo --server tokio-mt`.
    TokioMt,
    /// `peer-echo --server tokio-ct`.
    TokioCt,
    /// `peer-echo --server epoll-tpc`.
    EpollTpc,
    /// `peer-echo --server uring-tpc` (raw io_uring, thread per core; not in the default list).
    UringTpc,
}

impl ServerKind {
    pub fn name(self) -> &'static str {
        match self {
            ServerKind::RingportUring => "ringport-uring",
            ServerKind::RingportUringX => "ringport-uring-x",
            ServerKind::RingportEpoll => "ringport-epoll",
            ServerKind::RingportEpollX => "ringport-epoll-x",
            ServerKind::RingportAsync => "ringport-async",
            ServerKind::RingportAsyncX => "ringport-async-x",
            ServerKind::RingportAsyncEpoll => "ringport-async-epoll",
            ServerKind::RingportAsyncEpollX => "ringport-async-epoll-x",
            ServerKind::TokioMt => "tokio-mt",
            ServerKind::TokioCt => "tokio-ct",
            ServerKind::EpollTpc => "epoll-tpc",
            ServerKind::UringTpc => "uring-tpc",
        }
    }

    pub fn is_ringport(self) -> bool {
        matches!(
            self,
            ServerKind::RingportUring
                | ServerKind::RingportUringX
                | ServerKind::RingportEpoll
                | ServerKind::RingportEpollX
                | ServerKind::RingportAsync
                | ServerKind::RingportAsyncX
                | ServerKind::RingportAsyncEpoll
                | ServerKind::RingportAsyncEpollX
        )
    }
}

/// How syscalls of the server are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SysMethod {
    /// `perf stat -e raw_syscalls:sys_enter -p PID`.
    Perf,
    /// `strace -c -f -p PID` (slows the server down).
    Strace,
    /// Not counted.
    Off,
}

impl SysMethod {
    pub fn describe(self) -> &'static str {
        match self {
            SysMethod::Perf => "perf stat -e raw_syscalls:sys_enter",
            SysMethod::Strace => "strace -c -f (slows the server down a lot while attached)",
            SysMethod::Off => "not counted",
        }
    }
}

/// Programs and fixed options shared by all runs.
#[derive(Debug)]
pub struct Tools {
    pub ringport: PathBuf,
    pub peer_echo: PathBuf,
    /// Extra arguments for `ringport echo`.
    pub ringport_args: Vec<String>,
    /// Environment of `ringport-uring-x`, `ringport-epoll-x` and `ringport-async-x` (KEY=VALUE).
    pub x_env: Vec<String>,
    /// The ringport binary of the `-x` servers, if not `ringport`.
    pub x_bin: Option<PathBuf>,
    pub client_threads: usize,
    pub syscalls: SysMethod,
    next_port: u16,
}

impl Tools {
    pub fn new(
        ringport: PathBuf,
        peer_echo: PathBuf,
        ringport_args: Vec<String>,
        client_threads: usize,
        syscalls: SysMethod,
        base_port: u16,
    ) -> Tools {
        Tools {
            ringport,
            peer_echo,
            ringport_args,
            x_env: Vec::new(),
            x_bin: None,
            client_threads,
            syscalls,
            next_port: base_port,
        }
    }

    /// The next port from the counter that nothing listens on right now.
    fn port(&mut self) -> u16 {
        loop {
            let p = self.next_port;
            self.next_port = if p >= 60000 { 17000 } else { p + 1 };
            if TcpListener::bind(("127.0.0.1", p)).is_ok() {
                return p;
            }
        }
    }
}

/// What one run is.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub server: ServerKind,
    pub conns: usize,
    pub size: usize,
    pub duration: f64,
    /// Server on CPU 0, client (and perf) on CPU 1.
    pub pinned: bool,
    /// Attach the syscall counter (`Tools::syscalls`) during this run.
    pub count_syscalls: bool,
    pub heavy_every: u64,
    pub spin_us: u64,
}

/// What the client printed (`ringport bench echo --json`).
#[derive(Debug, Clone)]
pub struct ClientOut {
    pub raw: Value,
    pub messages: u64,
    pub msgs_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub light_p99_us: f64,
    pub errors: u64,
    pub mismatches: u64,
}

impl ClientOut {
    fn parse(line: &str) -> Result<ClientOut, String> {
        let raw: Value =
            serde_json::from_str(line).map_err(|e| format!("client JSON: {e}: {line}"))?;
        let f = |k: &str| {
            raw.get(k)
                .and_then(Value::as_f64)
                .ok_or_else(|| format!("client JSON lacks {k}: {line}"))
        };
        Ok(ClientOut {
            messages: f("messages")? as u64,
            msgs_per_s: f("msgs_per_s")?,
            p50_us: f("p50_us")?,
            p99_us: f("p99_us")?,
            p999_us: f("p999_us")?,
            light_p99_us: f("light_p99_us")?,
            errors: f("errors")? as u64,
            mismatches: f("mismatches")? as u64,
            raw,
        })
    }
}

/// What one successful run measured.
#[derive(Debug, Clone)]
pub struct Measured {
    pub port: u16,
    pub client: ClientOut,
    /// Server CPU seconds during the client run.
    pub cpu_s: f64,
    pub ctx_switches: u64,
    pub syscalls: Option<u64>,
    /// Why syscalls are missing although they were to be counted.
    pub syscalls_note: Option<String>,
    pub server_threads: usize,
    /// How the server ended after SIGTERM, e.g. "exit 0".
    pub server_exit: String,
    pub server_stderr: String,
}

impl Measured {
    pub fn cpu_us_per_msg(&self) -> f64 {
        self.cpu_s * 1e6 / self.client.messages.max(1) as f64
    }
    pub fn ctx_per_1k(&self) -> f64 {
        self.ctx_switches as f64 * 1000.0 / self.client.messages.max(1) as f64
    }
    pub fn syscalls_per_1k(&self) -> Option<f64> {
        self.syscalls
            .map(|s| s as f64 * 1000.0 / self.client.messages.max(1) as f64)
    }
}

/// The outcome of one run.
#[derive(Debug, Clone)]
pub enum Outcome {
    Ok(Box<Measured>),
    /// The server does not exist in this build (ringport's epoll backend today).
    Unsupported(String),
    Failed(String),
}

/// A started server.
struct Server {
    child: Child,
    pid: u32,
    stderr: Option<JoinHandle<String>>,
}

enum StartError {
    /// Exited before listening: exit status and what it printed on stderr.
    Exited(String, String),
    Other(String),
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => format!("{status}"),
    }
}

/// Keeps the first 64 KiB of a pipe, draining the rest.
fn drain(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            if kept.len() < 64 << 10 {
                kept.extend_from_slice(&buf[..n]);
            }
        }
        String::from_utf8_lossy(&kept).into_owned()
    })
}

impl Server {
    fn start(argv: &[String]) -> Result<Server, StartError> {
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| StartError::Other(format!("cannot start {}: {e}", argv[0])))?;
        let pid = child.id();
        let stderr = drain(child.stderr.take().expect("piped stderr"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.starts_with("listening on") => {
                    return Ok(Server {
                        child,
                        pid,
                        stderr: Some(stderr),
                    });
                }
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child
                        .wait()
                        .map(describe)
                        .unwrap_or_else(|e| format!("wait: {e}"));
                    let err = stderr.join().unwrap_or_default();
                    return Err(StartError::Exited(status, err));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let mut s = Server {
                        child,
                        pid,
                        stderr: Some(stderr),
                    };
                    let (status, err) = s.stop();
                    return Err(StartError::Other(format!(
                        "no `listening on` line within 15 s ({status}); stderr: {}",
                        tail(&err)
                    )));
                }
            }
        }
    }

    /// SIGTERM, then up to 10 s for it to exit, then SIGKILL. Returns how it
    /// ended and its stderr.
    fn stop(&mut self) -> (String, String) {
        signal(self.pid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(st)) => break describe(st),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Ok(None) => {
                    let _ = self.child.kill();
                    let st = self.child.wait().map(describe).unwrap_or_default();
                    break format!("HUNG: did not exit within 10 s of SIGTERM, SIGKILLed ({st})");
                }
                Err(e) => break format!("wait: {e}"),
            }
        };
        let err = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        (status, err)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on the id of a child we have not reaped yet, so the id
    // cannot have been reused by another process.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// The last few lines of `s`, on one line.
pub fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

/// A syscall counter attached to the server.
struct Counter {
    child: Child,
    method: SysMethod,
    out: PathBuf,
}

fn temp_file(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("echo-matrix-{}-{tag}-{n}.txt", std::process::id()))
}

impl Counter {
    fn start(method: SysMethod, pid: u32, pinned: bool) -> Result<Counter, String> {
        let out = temp_file("syscalls");
        let pid_s = pid.to_string();
        let out_s = out.display().to_string();
        let mut argv: Vec<&str> = if pinned {
            vec!["taskset", "-c", "1"]
        } else {
            vec![]
        };
        match method {
            SysMethod::Perf => argv.extend([
                "perf",
                "stat",
                "-x",
                ",",
                "-e",
                "raw_syscalls:sys_enter",
                "-o",
                &out_s,
                "-p",
                &pid_s,
            ]),
            SysMethod::Strace => argv.extend(["strace", "-c", "-f", "-o", &out_s, "-p", &pid_s]),
            SysMethod::Off => return Err("not counted".into()),
        }
        let mut child = Command::new(argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", argv[0]))?;
        // Attaching takes a moment; the server is idle meanwhile.
        thread::sleep(Duration::from_millis(if method == SysMethod::Strace {
            500
        } else {
            250
        }));
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!("{} exited at once ({})", argv[0], describe(st)));
        }
        Ok(Counter { child, method, out })
    }

    /// Stops the counter and returns the number of syscalls it saw.
    fn finish(mut self) -> Result<u64, String> {
        signal(self.child.id(), libc::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
            }
        }
        let text = fs::read_to_string(&self.out).map_err(|e| format!("counter output: {e}"));
        let _ = fs::remove_file(&self.out);
        let text = text?;
        let parsed = match self.method {
            SysMethod::Perf => parse_perf(&text),
            _ => parse_strace(&text),
        };
        parsed.ok_or_else(|| format!("cannot read the count from: {}", tail(&text)))
    }
}

/// `perf stat -x,` output: `COUNT,,raw_syscalls:sys_enter,...`.
pub fn parse_perf(text: &str) -> Option<u64> {
    text.lines()
        .filter(|l| l.contains("raw_syscalls:sys_enter"))
        .find_map(|l| l.split(',').next()?.trim().parse().ok())
}

/// `strace -c` summary: the `total` line's calls column.
fn parse_strace(text: &str) -> Option<u64> {
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_end().ends_with("total"))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    // % time, seconds, usecs/call, calls, [errors], total
    f.get(3)?.parse().ok()
}

fn server_argv(tools: &Tools, spec: &Spec, port: u16) -> Vec<String> {
    let mut argv: Vec<String> = Vec::new();
    if spec.pinned {
        argv.extend(["taskset", "-c", "0"].map(String::from));
    }
    let listen = format!("127.0.0.1:{port}");
    match spec.server {
        ServerKind::RingportUring
        | ServerKind::RingportUringX
        | ServerKind::RingportEpoll
        | ServerKind::RingportEpollX
        | ServerKind::RingportAsync
        | ServerKind::RingportAsyncX
        | ServerKind::RingportAsyncEpoll
        | ServerKind::RingportAsyncEpollX => {
            let x = matches!(
                spec.server,
                ServerKind::RingportUringX
                    | ServerKind::RingportEpollX
                    | ServerKind::RingportAsyncX
                    | ServerKind::RingportAsyncEpollX
            );
            if x {
                argv.push("env".into());
                argv.extend(tools.x_env.iter().cloned());
            }
            let backend = match spec.server {
                ServerKind::RingportUring
                | ServerKind::RingportUringX
                | ServerKind::RingportAsync
                | ServerKind::RingportAsyncX => "uring",
                _ => "epoll",
            };
            let bin = match (&tools.x_bin, x) {
                (Some(b), true) => b,
                _ => &tools.ringport,
            };
            argv.push(bin.display().to_string());
            argv.extend(["echo", "--listen", &listen, "--backend", backend].map(String::from));
            if matches!(
                spec.server,
                ServerKind::RingportAsync
                    | ServerKind::RingportAsyncX
                    | ServerKind::RingportAsyncEpoll
                    | ServerKind::RingportAsyncEpollX
            ) {
                argv.push("--async".into());
            }
            argv.extend(tools.ringport_args.iter().cloned());
        }
        other => {
            argv.push(tools.peer_echo.display().to_string());
            argv.extend(["--server", other.name(), "--listen", &listen].map(String::from));
        }
    }
    if spec.spin_us > 0 {
        argv.extend(["--spin-us".to_string(), spec.spin_us.to_string()]);
    }
    argv
}

fn run_client(tools: &Tools, spec: &Spec, port: u16) -> Result<ClientOut, String> {
    let mut argv: Vec<String> = Vec::new();
    if spec.pinned {
        argv.extend(["taskset", "-c", "1"].map(String::from));
    }
    argv.push(tools.ringport.display().to_string());
    argv.extend(["bench", "echo", "--json", "--target"].map(String::from));
    argv.push(format!("127.0.0.1:{port}"));
    argv.extend([
        "--conns".into(),
        spec.conns.to_string(),
        "--size".into(),
        spec.size.to_string(),
    ]);
    argv.extend(["--duration".into(), spec.duration.to_string()]);
    argv.extend(["--threads".into(), tools.client_threads.to_string()]);
    if spec.heavy_every > 0 {
        argv.extend(["--heavy-every".into(), spec.heavy_every.to_string()]);
    }
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the client {}: {e}", argv[0]))?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let limit = Duration::from_secs_f64(spec.duration + 30.0 + spec.conns as f64 / 50.0);
    let out = match rx.recv_timeout(limit) {
        Ok(out) => out.map_err(|e| format!("client: {e}"))?,
        Err(_) => {
            signal(pid, libc::SIGKILL);
            let _ = rx.recv();
            return Err(format!(
                "HUNG: the client did not finish within {:.0} s (server stuck?)",
                limit.as_secs_f64()
            ));
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let parsed = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .map(ClientOut::parse);
    match parsed {
        // A run with mismatches or lost connections still reports: the
        // caller flags it.
        Some(Ok(c)) if out.status.success() || c.mismatches > 0 || c.errors > 0 => Ok(c),
        Some(Ok(_)) | None => Err(format!(
            "client {}: {}",
            describe(out.status),
            tail(&format!(
                "{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            ))
        )),
        Some(Err(e)) => Err(e),
    }
}

/// Performs one run.
pub fn run(tools: &mut Tools, spec: &Spec) -> Outcome {
    // Start the server, on another port if this one turns out to be taken.
    let mut attempt = 0;
    let (mut server, port) = loop {
        let port = tools.port();
        match Server::start(&server_argv(tools, spec, port)) {
            Ok(s) => break (s, port),
            Err(StartError::Exited(status, err)) => {
                if spec.server.is_ringport() && err.to_lowercase().contains("unsupported") {
                    return Outcome::Unsupported(tail(&err));
                }
                attempt += 1;
                if attempt < 3 && err.to_lowercase().contains("in use") {
                    continue;
                }
                return Outcome::Failed(format!(
                    "server exited before listening ({status}): {}",
                    tail(&err)
                ));
            }
            Err(StartError::Other(e)) => return Outcome::Failed(e),
        }
    };
    let counter = match tools.syscalls {
        SysMethod::Off => None,
        _ if !spec.count_syscalls => None,
        m => Some(Counter::start(m, server.pid, spec.pinned)),
    };
    let before = procfs::read(server.pid);
    let threads = procfs::threads(server.pid);
    let client = run_client(tools, spec, port);
    let after = procfs::read(server.pid);
    let syscalls = counter.map(|c| c.and_then(Counter::finish));
    let (server_exit, server_stderr) = server.stop();
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            return Outcome::Failed(format!(
                "{e}; server: {server_exit}, stderr: {}",
                tail(&server_stderr)
            ));
        }
    };
    let delta = match (before, after) {
        (Ok(b), Ok(a)) => a.since(&b),
        (Err(e), _) | (_, Err(e)) => {
            return Outcome::Failed(format!(
                "cannot read /proc of the server: {e}; server: {server_exit}"
            ));
        }
    };
    let (syscalls, syscalls_note) = match syscalls {
        Some(Ok(n)) => (Some(n), None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, None),
    };
    Outcome::Ok(Box::new(Measured {
        port,
        client,
        cpu_s: delta.cpu_s,
        ctx_switches: delta.ctx_switches,
        syscalls,
        syscalls_note,
        server_threads: threads,
        server_exit,
        server_stderr,
    }))
}

/// Whether `perf stat -e raw_syscalls:sys_enter` counts on this machine.
pub fn perf_works() -> Result<(), String> {
    let out = temp_file("probe");
    let r = Command::new("perf")
        .args(["stat", "-x", ",", "-e", "raw_syscalls:sys_enter", "-o"])
        .arg(&out)
        .args(["--", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    let text = fs::read_to_string(&out).unwrap_or_default();
    let _ = fs::remove_file(&out);
    match r {
        Err(e) => Err(format!("cannot run perf: {e}")),
        Ok(o) if !o.status.success() => Err(format!(
            "perf: {}",
            tail(&String::from_utf8_lossy(&o.stderr))
        )),
        Ok(_) => match parse_perf(&text) {
            Some(n) if n > 0 => Ok(()),
            _ => Err(format!("perf counted nothing: {}", tail(&text))),
        },
    }
}
