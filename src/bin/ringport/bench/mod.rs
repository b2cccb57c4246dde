//! `ringport bench …`: measurements.

mod aligned;
mod chat;
mod designs;
mod echo;
mod file;
mod idle;
mod nop;
mod transfer;

use clap::Subcommand;

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// NOP round trips through the port (1 and 2 threads) beside a raw io_uring loop.
    Nop(nop::NopArgs),
    /// Closed-loop ping-pong load against an echo server. Exits 1 if an
    /// echo did not match what was sent, no connection could be made, or a
    /// connection failed before the run ended (after printing what it saw).
    Echo(echo::EchoBenchArgs),
    /// Closed-loop load against a chat server (`ringport chat`): members in
    /// rooms each say a line, wait for it to come back, and say the next,
    /// checking that every line reaches every member of its room in order.
    /// Exits 1 if a line was lost or reordered, or a member failed.
    Chat(chat::ChatBenchArgs),
    /// Opens N connections to a server and holds them idle (see bench/idle-memory.sh).
    Idle(idle::IdleArgs),
    /// File → 127.0.0.1 socket throughput and sender CPU: send_file vs read + send vs read + send_zc.
    Transfer(transfer::TransferArgs),
    /// The transfer benchmark's sink (a child process of `bench transfer`).
    #[command(hide = true)]
    TransferSink(transfer::SinkArgs),
    /// Random aligned reads from one file at a fixed queue depth (see bench/vs-fio.sh).
    File(file::FileBenchArgs),
}

pub fn run(cmd: BenchCommand) -> Result<(), Box<dyn std::error::Error>> {
    match cmd {
        BenchCommand::Nop(args) => nop::run(&args),
        BenchCommand::Echo(args) => echo::run(&args),
        BenchCommand::Chat(args) => chat::run(&args),
        BenchCommand::Idle(args) => idle::run(&args),
        BenchCommand::Transfer(args) => transfer::run(&args),
        BenchCommand::TransferSink(args) => transfer::sink(&args),
        BenchCommand::File(args) => file::run(&args),
    }
}

/// CPU time and context switches of this process, from getrusage.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub cpu_s: f64,
    pub csw: i64,
}

pub fn usage() -> Usage {
    // SAFETY: getrusage writes a plain struct we own; RUSAGE_SELF covers all threads.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Usage {
        cpu_s: tv(ru.ru_utime) + tv(ru.ru_stime),
        csw: ru.ru_nvcsw + ru.ru_nivcsw,
    }
}

/// Syscalls made by this process so far, from /proc/self/task/*/... is not exposed by
/// Linux; we count io_uring_enter calls ourselves where we can, and use `strace -c`
/// externally otherwise (see BENCHMARKS.md).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The progress bar of a timed load run (`duration` seconds, in tenths); hidden
/// with `--json`, whose output is one object.
pub fn progress(json: bool, duration: f64) -> indicatif::ProgressBar {
    if json {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new((duration * 10.0) as u64);
    b.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed:>3} [{bar:30}] {msg}")
            .expect("template"),
    );
    b
}
