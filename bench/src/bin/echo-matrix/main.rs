//! `echo-matrix`: ringport's echo server against tokio and a raw-epoll server,
//! in paired rounds (issue 3).
//!
//! ```sh
//! cargo build --release --workspace && target/release/echo-matrix --rounds 5
//! ```
//!
//! The matrix is connections {1, 64, 1000} × message sizes {64, 4096} B against
//! `ringport echo --backend uring`, `ringport echo --backend epoll` (reported as
//! n/a while that backend is not built), tokio multi-thread (2 workers), tokio
//! current-thread and a raw-epoll thread-per-core server (`peer-echo`). Every
//! round runs every server on a cell back to back (the order rotates from round
//! to round), so that each server can be compared with tokio multi-thread within
//! the round: the "× tokio-mt" columns are medians over rounds of those paired
//! ratios, the other columns plain medians over rounds.
//!
//! One run: the server starts pinned to CPU 0 (`taskset -c 0`) on a fresh port;
//! once it prints `listening on`, the client `ringport bench echo --json` runs
//! pinned to CPU 1. Just before and just after the client run, the server's CPU
//! time (utime + stime from `/proc/<pid>/stat`) and its context switches (summed
//! over `/proc/<pid>/task/*/status`) are read; then the server gets SIGTERM and must
//! exit (one that does not within 10 s is reported as hung).
//!
//! Syscalls are counted with `perf stat -e raw_syscalls:sys_enter -p <pid>` over
//! the client run where perf works, else with `strace -c -f -p <pid>` if
//! `--syscalls` is given, else not at all. An attached counter slows the server
//! (measured here: perf 10-30 % more CPU per message and up to half the
//! messages/s; strace slows a syscall-heavy server ~15×), so by default the
//! count comes from one extra run per cell and server after the timed rounds,
//! whose other numbers stay out of the table; `--syscalls-inline` counts during
//! the timed rounds instead.
//!
//! `--skewed` runs the skewed-load workload instead: 64 and 16 connections × 64 B,
//! every 100th message costs 1 ms of server CPU (`--heavy-every 100`, servers with
//! `--spin-us 1000`), nothing pinned, against ringport (io_uring), tokio
//! multi-thread and the raw-epoll thread-per-core server; it reports latency
//! percentiles and the p99 of the light messages.
//!
//! A short run: `target/release/echo-matrix --rounds 2 --duration 1 --cells 64x64`.
//! The exit status is non-zero if any run reported mismatched bytes or failed.

mod procfs;
mod report;
mod run;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use clap::Parser;

use run::{Outcome, ServerKind, Spec, SysMethod, Tools};

/// A cell of the matrix: connections × message size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    /// Connections.
    pub conns: usize,
    /// Message size in bytes.
    pub size: usize,
}

impl FromStr for Cell {
    type Err = String;
    fn from_str(s: &str) -> Result<Cell, String> {
        let (c, b) = s
            .split_once(['x', 'X'])
            .ok_or_else(|| format!("cell `{s}`: expected CONNSxSIZE, e.g. 64x4096"))?;
        let conns = c.trim().parse().map_err(|e| format!("cell `{s}`: {e}"))?;
        let size = b.trim().parse().map_err(|e| format!("cell `{s}`: {e}"))?;
        if conns == 0 || size == 0 {
            return Err(format!("cell `{s}`: connections and size must be positive"));
        }
        Ok(Cell { conns, size })
    }
}

#[derive(Debug, Parser)]
#[command(about = "ringport vs tokio vs raw epoll: the echo matrix in paired rounds (issue 3)")]
struct Cli {
    /// Rounds (at least 2); each round runs every server on every cell once.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds of client load per run.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Cells to run, CONNSxSIZE, comma-separated (default: 1x64,1x4096,64x64,64x4096,1000x64,1000x4096;
    /// with --skewed: 64x64,16x64).
    #[arg(long, value_delimiter = ',')]
    cells: Vec<Cell>,
    /// Servers to run, comma-separated (default: ringport-uring,ringport-epoll,tokio-mt,tokio-ct,epoll-tpc;
    /// with --skewed: ringport-uring,tokio-mt,epoll-tpc). uring-tpc, the raw io_uring
    /// thread-per-core server (the io_uring limit), runs only when named.
    #[arg(long, value_delimiter = ',', value_enum)]
    servers: Vec<ServerKind>,
    /// The skewed-load workload instead of the matrix (unpinned; every K-th message costs N µs).
    #[arg(long)]
    skewed: bool,
    /// With --skewed: every K-th message is a heavy one.
    #[arg(long, default_value_t = 100)]
    heavy_every: u64,
    /// With --skewed: CPU microseconds a heavy message costs the server.
    #[arg(long, default_value_t = 1000)]
    spin_us: u64,
    /// Count syscalls with `strace -c -f` where perf cannot (strace slows the servers down a lot).
    #[arg(long)]
    syscalls: bool,
    /// Do not count syscalls with perf even where it works.
    #[arg(long)]
    no_perf: bool,
    /// Count syscalls during the timed rounds instead of in a separate pass. An
    /// attached `perf stat -e raw_syscalls:sys_enter` cost the servers here 10-30 %
    /// more CPU per message and up to half their messages/s (strace far more), so
    /// by default every cell and server gets one extra run for the syscall count
    /// whose other numbers are left out of the medians.
    #[arg(long)]
    syscalls_inline: bool,
    /// Write every raw sample (and the client's JSON) to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// The ringport binary (default: next to this program, else target/release/ringport).
    #[arg(long)]
    ringport: Option<PathBuf>,
    /// The peer-echo binary (default: next to this program, else target/release/peer-echo).
    #[arg(long)]
    peer_echo: Option<PathBuf>,
    /// Extra arguments for `ringport echo`, whitespace-separated, e.g. "--threads 2 --concurrency 1".
    #[arg(long, allow_hyphen_values = true)]
    ringport_args: Option<String>,
    /// Environment of the `ringport-uring-x`, `ringport-epoll-x`, `ringport-async-x` and `ringport-async-epoll-x` servers (an A/B experiment), whitespace-separated
    /// KEY=VALUE pairs, e.g. "RINGPORT_URING_COOP=off".
    #[arg(long, default_value = "")]
    x_env: String,
    /// The ringport binary of the `-x` servers (default: `--ringport`'s): an
    /// A/B experiment between two builds, e.g. the last commit's and the work tree's.
    #[arg(long)]
    x_bin: Option<PathBuf>,
    /// Client threads (`ringport bench echo --threads`).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// First port of the per-run port counter.
    #[arg(long, default_value_t = 17000)]
    base_port: u16,
}

/// `name` next to this program if it is there, else `target/release/name` of this workspace.
fn sibling(name: &str) -> PathBuf {
    if let Some(p) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(name)))
    {
        if p.is_file() {
            return p;
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target/release")
        .join(name)
}

/// The timed rounds, or the extra pass that counts syscalls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// A timed round: its numbers go into the medians and paired ratios.
    Timing,
    /// The syscall-counting run (one per cell and server): only its syscall count is used.
    Syscalls,
}

/// One finished run.
#[derive(Debug)]
pub struct Sample {
    /// Round, from 0 (the syscall pass has round == rounds).
    pub round: usize,
    /// Which pass the run belongs to.
    pub pass: Pass,
    /// The cell.
    pub cell: Cell,
    /// The server.
    pub server: ServerKind,
    /// What the run measured, or why it did not.
    pub outcome: Outcome,
}

fn main() {
    let cli = Cli::parse();
    std::process::exit(match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("echo-matrix: {e}");
            2
        }
    });
}

fn real_main(cli: Cli) -> Result<i32, String> {
    if cli.rounds < 2 {
        return Err("--rounds must be at least 2 (ratios are paired per round)".into());
    }
    if cli.duration.is_nan() || cli.duration <= 0.0 {
        return Err("--duration must be positive".into());
    }
    let cells = if !cli.cells.is_empty() {
        cli.cells.clone()
    } else if cli.skewed {
        vec![
            Cell {
                conns: 64,
                size: 64,
            },
            Cell {
                conns: 16,
                size: 64,
            },
        ]
    } else {
        [1, 64, 1000]
            .iter()
            .flat_map(|&conns| [64, 4096].map(|size| Cell { conns, size }))
            .collect()
    };
    let servers = if !cli.servers.is_empty() {
        let mut v: Vec<ServerKind> = Vec::new();
        for &k in &cli.servers {
            if !v.contains(&k) {
                v.push(k);
            }
        }
        v
    } else if cli.skewed {
        vec![
            ServerKind::RingportUring,
            ServerKind::TokioMt,
            ServerKind::EpollTpc,
        ]
    } else {
        vec![
            ServerKind::RingportUring,
            ServerKind::RingportEpoll,
            ServerKind::TokioMt,
            ServerKind::TokioCt,
            ServerKind::EpollTpc,
        ]
    };
    let ringport = cli.ringport.clone().unwrap_or_else(|| sibling("ringport"));
    let peer_echo = cli
        .peer_echo
        .clone()
        .unwrap_or_else(|| sibling("peer-echo"));
    for (p, needed) in [
        (&ringport, true),
        (&peer_echo, servers.iter().any(|s| !s.is_ringport())),
    ] {
        if needed && !p.is_file() {
            return Err(format!(
                "{} not found: run `cargo build --release --workspace` first (or pass --ringport/--peer-echo)",
                p.display()
            ));
        }
    }
    let syscalls = if cli.no_perf {
        None
    } else {
        match run::perf_works() {
            Ok(()) => Some(SysMethod::Perf),
            Err(e) => {
                eprintln!("echo-matrix: perf cannot count syscalls here ({e})");
                None
            }
        }
    }
    .unwrap_or(if cli.syscalls {
        SysMethod::Strace
    } else {
        SysMethod::Off
    });
    if syscalls == SysMethod::Strace && cli.syscalls_inline {
        eprintln!("echo-matrix: counting syscalls with strace during the timed runs: this slows the servers down a lot; CPU/msg and msgs/s of this run are not comparable");
    }
    let ringport_args: Vec<String> = cli
        .ringport_args
        .as_deref()
        .unwrap_or("")
        .split_whitespace()
        .map(String::from)
        .collect();
    let mut tools = Tools::new(
        ringport,
        peer_echo,
        ringport_args,
        cli.client_threads,
        syscalls,
        cli.base_port,
    );
    tools.x_env = cli.x_env.split_whitespace().map(String::from).collect();
    tools.x_bin = cli.x_bin.clone();
    // Attaching perf (or strace) costs the servers CPU and throughput, so by
    // default syscalls are counted in a pass of their own after the timed rounds.
    let syscall_pass = syscalls != SysMethod::Off && !cli.syscalls_inline && !cli.skewed;
    let runs = (cli.rounds + usize::from(syscall_pass)) * cells.len() * servers.len();
    eprintln!(
        "echo-matrix: {} × {} cells × {} servers = {runs} runs of {} s; ringport {}, peer-echo {}; syscalls: {}",
        cli.rounds,
        cells.len(),
        servers.len(),
        cli.duration,
        tools.ringport.display(),
        tools.peer_echo.display(),
        syscalls.describe()
    );

    let mut samples: Vec<Sample> = Vec::new();
    let mut unsupported: Vec<ServerKind> = Vec::new();
    let mut n = 0;
    let mut one = |tools: &mut Tools, round: usize, pass: Pass, cell: Cell, server: ServerKind| {
        n += 1;
        let outcome = if unsupported.contains(&server) {
            Outcome::Unsupported("not built (seen earlier in this run)".into())
        } else {
            let spec = Spec {
                server,
                conns: cell.conns,
                size: cell.size,
                duration: cli.duration,
                pinned: !cli.skewed,
                count_syscalls: pass == Pass::Syscalls || cli.syscalls_inline,
                heavy_every: if cli.skewed { cli.heavy_every } else { 0 },
                spin_us: if cli.skewed { cli.spin_us } else { 0 },
            };
            run::run(tools, &spec)
        };
        if matches!(outcome, Outcome::Unsupported(_)) && !unsupported.contains(&server) {
            unsupported.push(server);
        }
        let which = match pass {
            Pass::Timing => format!("round {}", round + 1),
            Pass::Syscalls => "syscalls".to_string(),
        };
        eprintln!(
            "[{n}/{runs}] {which} {}x{} {:<15} {}",
            cell.conns,
            cell.size,
            server.name(),
            report::progress_line(&outcome)
        );
        Sample {
            round,
            pass,
            cell,
            server,
            outcome,
        }
    };
    for round in 0..cli.rounds {
        for (ci, &cell) in cells.iter().enumerate() {
            // Rotate the order from round to round (and cell to cell) so that no
            // server always runs first or right after the same neighbour.
            let k = (round + ci) % servers.len();
            for &server in servers[k..].iter().chain(&servers[..k]) {
                samples.push(one(&mut tools, round, Pass::Timing, cell, server));
            }
        }
    }
    if syscall_pass {
        for &cell in &cells {
            for &server in &servers {
                samples.push(one(&mut tools, cli.rounds, Pass::Syscalls, cell, server));
            }
        }
    }

    let syscalls_how = match syscalls {
        SysMethod::Off => syscalls.describe().to_string(),
        _ if syscall_pass => format!(
            "{}, in a separate pass (one more run per cell and server, left out of the other columns)",
            syscalls.describe()
        ),
        _ if cli.syscalls_inline => format!(
            "{}, attached during the timed runs (this inflates CPU/msg and lowers msgs/s)",
            syscalls.describe()
        ),
        _ => "not counted in --skewed mode (add --syscalls-inline)".to_string(),
    };
    let meta = report::Meta::collect(
        &command_line(),
        cli.rounds,
        cli.duration,
        cli.skewed,
        syscalls_how,
    );
    let table = if cli.skewed {
        report::skewed_table(
            &meta,
            &cells,
            &servers,
            &samples,
            cli.rounds,
            cli.heavy_every,
            cli.spin_us,
        )
    } else {
        report::matrix_table(&meta, &cells, &servers, &samples, cli.rounds)
    };
    println!("{table}");
    let notes = report::notes(&samples);
    for note in &notes {
        println!("{note}");
    }
    if let Some(path) = &cli.json_out {
        let json = report::to_json(&meta, &samples);
        std::fs::write(
            path,
            serde_json::to_string_pretty(&json).unwrap_or_default() + "\n",
        )
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        eprintln!("echo-matrix: raw samples in {}", path.display());
    }
    let mismatched = samples
        .iter()
        .any(|s| matches!(&s.outcome, Outcome::Ok(m) if m.client.mismatches > 0));
    let failed = samples
        .iter()
        .any(|s| matches!(s.outcome, Outcome::Failed(_)));
    Ok(if mismatched {
        eprintln!("echo-matrix: FAILED: a server echoed bytes that do not match");
        1
    } else if failed {
        eprintln!("echo-matrix: FAILED: some runs failed (see the notes)");
        1
    } else {
        0
    })
}

/// The arguments this run was started with.
fn command_line() -> String {
    std::env::args().skip(1).collect::<Vec<_>>().join(" ")
}
