//! `ringport bench transfer`: a file → TCP socket transfer over 127.0.0.1,
//! three ways, on each backend, with throughput and the sender's CPU seconds:
//!
//! * `send-file` — `Op::send_file`: no user-space copy (two `splice`s through
//!   a pipe on io_uring, `sendfile(2)` on epoll);
//! * `read-send` — `Op::read_at` into a user buffer, then `Op::send` of it;
//! * `read-send-zc` — `Op::read_at`, then `Op::send_zc` (zero-copy send; over
//!   loopback the kernel copies at delivery anyway, so this mostly measures the
//!   cost of the mechanism).
//!
//! The sink is a child process (`ringport bench transfer-sink`) that reads and
//! counts every byte with plain blocking reads; the transfer must deliver
//! exactly the file's length. The sender is this process: one thread on one
//! port, one operation in flight; its CPU time (user + system, from
//! `getrusage`, so it includes the port's worker threads and io_uring's
//! kernel workers) is what the table calls "sender CPU". The file is read from
//! the page cache (it was just written, or read by the previous run).
//!
//! ```text
//! ringport bench transfer                      # 1 GiB, both backends, all modes
//! ringport bench transfer --size 16M --backend uring --modes send-file
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use ringport::{BackendChoice, CompletionPort, Op};

/// Flags of `ringport bench transfer`.
#[derive(Debug, Args)]
pub struct TransferArgs {
    /// Bytes to transfer: a number with an optional K, M or G suffix (binary).
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    size: u64,
    /// Use this file instead of a temporary one (its first --size bytes; it is
    /// never deleted). Default: ringport-transfer-<size>.dat in the temp dir,
    /// created if missing and deleted afterwards.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Keep the temporary file for the next run.
    #[arg(long)]
    keep: bool,
    /// Backends: uring, epoll, or both.
    #[arg(long, default_value = "both")]
    backend: Backends,
    /// Modes to run, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "send-file,read-send,read-send-zc"
    )]
    modes: Vec<Mode>,
    /// The user buffer of the read + send modes (K/M suffixes allowed).
    #[arg(long, default_value = "256K", value_parser = parse_size)]
    chunk: u64,
    /// Runs of each cell; the table shows the median throughput and its CPU.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
}

/// Which backends to run.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Backends {
    Uring,
    Epoll,
    Both,
}

/// How the bytes go from the file to the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    SendFile,
    ReadSend,
    ReadSendZc,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::SendFile => "send_file",
            Mode::ReadSend => "read + send",
            Mode::ReadSendZc => "read + send_zc",
        }
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&s[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 1G, 256K, 4096)"))?;
    match n.checked_mul(mult) {
        Some(0) | None => Err(format!("size {s:?} must be between 1 byte and 2^64")),
        Some(v) => Ok(v),
    }
}

/// Flags of the hidden `ringport bench transfer-sink`.
#[derive(Debug, Args)]
pub struct SinkArgs {}

/// The sink: binds 127.0.0.1:0, prints its port, takes one connection, reads
/// it to the end, prints the byte count, and exits.
pub fn sink(_: &SinkArgs) -> Result<(), Box<dyn std::error::Error>> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let mut out = std::io::stdout();
    writeln!(out, "{}", l.local_addr()?.port())?;
    out.flush()?;
    let (mut s, _) = l.accept()?;
    let mut buf = vec![0u8; 256 << 10];
    let mut n: u64 = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => n += k as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    writeln!(out, "{n}")?;
    Ok(())
}

/// Deletes the temporary file on drop (also when a run fails).
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The file to send, created (filled with a non-repeating pattern) if missing.
fn prepare(args: &TransferArgs) -> Result<(std::fs::File, TempFile), Box<dyn std::error::Error>> {
    if let Some(p) = &args.file {
        let f = std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let len = f.metadata()?.len();
        if len < args.size {
            return Err(format!(
                "{} has {len} bytes, fewer than --size {}",
                p.display(),
                args.size
            )
            .into());
        }
        return Ok((f, TempFile(None)));
    }
    let p = std::env::temp_dir().join(format!("ringport-transfer-{}.dat", args.size));
    let fresh = std::fs::metadata(&p)
        .map(|m| m.len() != args.size)
        .unwrap_or(true);
    if fresh {
        eprintln!("writing {} bytes to {}", args.size, p.display());
        let f = std::fs::File::create(&p)?;
        let mut chunk = vec![0u8; 1 << 20];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut off = 0u64;
        while off < args.size {
            for b in chunk.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            let n = (args.size - off).min(chunk.len() as u64) as usize;
            f.write_all_at(&chunk[..n], off)?;
            off += n as u64;
        }
        f.sync_all()?;
    }
    let guard = TempFile((!args.keep).then(|| p.clone()));
    Ok((std::fs::File::open(&p)?, guard))
}

/// What one run measured.
struct Run {
    secs: f64,
    sender_cpu: f64,
    sink_cpu: f64,
}

pub fn run(args: &TransferArgs) -> Result<(), Box<dyn std::error::Error>> {
    if args.rounds == 0 || args.modes.is_empty() {
        return Err("--rounds and --modes must not be empty".into());
    }
    if args.chunk > (1 << 30) {
        return Err("--chunk is at most 1G".into());
    }
    let (file, _guard) = prepare(args)?;
    let backends: &[BackendChoice] = match args.backend {
        Backends::Uring => &[BackendChoice::Uring],
        Backends::Epoll => &[BackendChoice::Epoll],
        Backends::Both => &[BackendChoice::Uring, BackendChoice::Epoll],
    };
    println!(
        "file → 127.0.0.1 TCP, {} MiB, {} KiB user buffer, {} round(s) per cell",
        args.size as f64 / (1 << 20) as f64,
        args.chunk >> 10,
        args.rounds
    );
    println!(
        "{:<9} {:<15} {:>10} {:>15} {:>12} {:>11}",
        "backend", "mode", "MiB/s", "sender CPU s", "CPU s / GiB", "sink CPU s"
    );
    for &backend in backends {
        let port = CompletionPort::builder().backend(backend).build()?;
        let paths = port.stats().op_paths;
        drop(port);
        for &mode in &args.modes {
            let mut runs = Vec::new();
            for _ in 0..args.rounds {
                runs.push(one(args, backend, mode, &file)?);
            }
            runs.sort_by(|a, b| a.secs.total_cmp(&b.secs));
            let r = &runs[runs.len() / 2];
            let mib = args.size as f64 / (1 << 20) as f64;
            let gib = args.size as f64 / (1u64 << 30) as f64;
            let kind = match mode {
                Mode::SendFile => ringport::OpKind::SendFile,
                Mode::ReadSend => ringport::OpKind::Send,
                Mode::ReadSendZc => ringport::OpKind::SendZc,
            };
            let path = paths.get(kind).map(|p| p.to_string()).unwrap_or_default();
            println!(
                "{:<9} {:<15} {:>10.0} {:>15.3} {:>12.3} {:>11.3}  ({path})",
                match backend {
                    BackendChoice::Epoll => "epoll",
                    _ => "io_uring",
                },
                mode.name(),
                mib / r.secs,
                r.sender_cpu,
                r.sender_cpu / gib,
                r.sink_cpu,
            );
        }
    }
    Ok(())
}

fn cpu(who: i32) -> f64 {
    // SAFETY: getrusage writes a plain struct we own.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// One transfer: a sink child, a fresh port, the whole file, timed.
fn one(
    args: &TransferArgs,
    backend: BackendChoice,
    mode: Mode,
    file: &std::fs::File,
) -> Result<Run, Box<dyn std::error::Error>> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["bench", "transfer-sink"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("sink stdout")?).lines();
    let port_no: u16 = lines
        .next()
        .ok_or("the sink printed nothing")??
        .trim()
        .parse()?;
    // This thread submits and dequeues for as long as the port lives.
    ringport::long_lived_thread();
    let port = CompletionPort::builder().backend(backend).build()?;
    let sock = TcpStream::connect(("127.0.0.1", port_no))?;
    port.associate(&sock, 1)?;
    port.associate(file, 2)?;
    let (cpu0, sink0, t0) = (
        cpu(libc::RUSAGE_SELF),
        cpu(libc::RUSAGE_CHILDREN),
        Instant::now(),
    );
    let sent = match mode {
        Mode::SendFile => send_file(&port, &sock, file, args.size)?,
        Mode::ReadSend | Mode::ReadSendZc => read_send(
            &port,
            &sock,
            file,
            args.size,
            args.chunk as usize,
            mode == Mode::ReadSendZc,
        )?,
    };
    port.disassociate(&sock)?;
    port.disassociate(file)?;
    drop(sock);
    let got: u64 = lines
        .next()
        .ok_or("the sink printed no count")??
        .trim()
        .parse()?;
    let status = child.wait()?;
    let secs = t0.elapsed().as_secs_f64();
    let (sender_cpu, sink_cpu) = (
        cpu(libc::RUSAGE_SELF) - cpu0,
        cpu(libc::RUSAGE_CHILDREN) - sink0,
    );
    if !status.success() || sent != args.size || got != args.size {
        return Err(format!(
            "{}: sent {sent}, the sink counted {got}, expected {} (sink {status})",
            mode.name(),
            args.size
        )
        .into());
    }
    Ok(Run {
        secs,
        sender_cpu,
        sink_cpu,
    })
}

const WAIT: Option<Duration> = Some(Duration::from_secs(60));

fn send_file(
    port: &CompletionPort,
    sock: &TcpStream,
    file: &std::fs::File,
    size: u64,
) -> Result<u64, Box<dyn std::error::Error>> {
    let mut off = 0u64;
    while off < size {
        let len = (size - off).min(1 << 30) as usize;
        port.submit(Op::send_file(sock, file, off, len), 0)?;
        match port.get(WAIT)?.result? {
            0 => return Err(format!("the file ended at {off}").into()),
            n => off += n as u64,
        }
    }
    Ok(off)
}

fn read_send(
    port: &CompletionPort,
    sock: &TcpStream,
    file: &std::fs::File,
    size: u64,
    chunk: usize,
    zc: bool,
) -> Result<u64, Box<dyn std::error::Error>> {
    let mut off = 0u64;
    let mut buf = Vec::with_capacity(chunk);
    while off < size {
        buf.clear();
        buf.reserve(chunk);
        port.submit(Op::read_at(file, buf, off), 0)?;
        let mut c = port.get(WAIT)?;
        buf = c.buf.take().ok_or("a read hands its buffer back")?;
        let n = c.result?;
        if n == 0 {
            return Err(format!("the file ended at {off}").into());
        }
        buf.truncate((size - off).min(n as u64) as usize);
        let mut pos = 0;
        while pos < buf.len() {
            let op = if zc {
                Op::send_zc_from(sock, buf, pos)
            } else {
                Op::send_from(sock, buf, pos)
            };
            port.submit(op, 0)?;
            let mut c = port.get(WAIT)?;
            buf = c.buf.take().ok_or("a send hands its buffer back")?;
            pos += c.result?;
        }
        off += buf.len() as u64;
    }
    Ok(off)
}
