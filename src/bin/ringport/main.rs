//! The `ringport` program: raw flags → resolved config → one module per command.

mod accept;
mod bench;
mod chat;
mod echo;
mod echo_async;
mod echo_multi;
mod info;
mod serve;
mod signals;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// ringport: the I/O Completion Port model for Linux.
#[derive(Debug, Parser)]
#[command(name = "ringport", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the backend this machine gets and why, the kernel, and io_uring's features.
    Info(info::InfoArgs),
    /// A static HTTP/1.1 file server for DIR (default: the current folder).
    Serve(serve::ServeArgs),
    /// A TCP echo server on the port and its pool.
    Echo(echo::EchoArgs),
    /// A chat server: nicknames, rooms, broadcast, private messages (a line protocol; try `nc`).
    Chat(chat::ChatArgs),
    /// Load generators and micro-benchmarks.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RINGPORT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a terminal: a log file gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if matches!(cli.command, Command::Info(_) | Command::Bench(_)) {
        // Reports go to stdout, often into a pipe (`| head`): a reader that goes
        // away ends the program quietly, as with any Unix tool, instead of
        // `println!` panicking on EPIPE. (Rust starts with SIGPIPE ignored; the
        // servers keep it so, and every socket send passes MSG_NOSIGNAL anyway.)
        // SAFETY: setting a signal's disposition to the default takes no
        // pointers; no other thread exists yet to race with.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match cli.command {
        Command::Info(args) => info::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Echo(args) => echo::run(&args),
        Command::Chat(args) => chat::run(&args),
        Command::Bench(cmd) => bench::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringport: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a server's line on stdout (its ready line). A stdout that is
/// closed or full (`ringport echo | true`) must not panic the server, as
/// `println!` would: the line is lost, the server serves.
pub(crate) fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(line).and_then(|()| out.write_all(b"\n"));
    let _ = out.flush();
}

/// Logs "accept: {e}; backing off …" at most once a second (with how many
/// were left out): a server out of descriptors retries every few
/// milliseconds, and one warning per retry flooded the log.
pub(crate) fn warn_backoff(e: &std::io::Error, backoff: std::time::Duration) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    static LAST: AtomicU64 = AtomicU64::new(0);
    static QUIET: AtomicU64 = AtomicU64::new(0);
    let now = START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
        + 1000;
    let last = LAST.load(Ordering::Relaxed);
    if now.saturating_sub(last) < 1000
        || LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        QUIET.fetch_add(1, Ordering::Relaxed);
        return;
    }
    match QUIET.swap(0, Ordering::Relaxed) {
        0 => tracing::warn!("accept: {e}; backing off {backoff:?}"),
        n => {
            tracing::warn!("accept: {e}; backing off {backoff:?} ({n} more since the last warning)")
        }
    }
}

/// The longest time a `--duration` or `--hold` flag may ask for (a day).
pub(crate) const MAX_SECONDS: f64 = 86_400.0;

/// A `--duration`-style flag: a positive number of seconds, at most a day
/// (`nan`, `inf` and `1e300` are refused here, where `Duration` would panic).
pub(crate) fn seconds(s: &str) -> Result<f64, String> {
    match seconds_or_zero(s)? {
        0.0 => Err(format!("{s:?} must be more than 0 seconds")),
        v => Ok(v),
    }
}

/// A `--hold`-style flag: 0 or more seconds, at most a day.
pub(crate) fn seconds_or_zero(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds (e.g. 5 or 0.5)"))?;
    if !(0.0..=MAX_SECONDS).contains(&v) {
        return Err(format!("{s:?} must be between 0 and {MAX_SECONDS} seconds"));
    }
    Ok(v)
}

/// A socket address from the command line: `IP:PORT`, or `HOST:PORT`
/// resolved (the first address it names, e.g. `localhost:7000`).
pub(crate) fn socket_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    match s.to_socket_addrs() {
        Ok(mut addrs) => addrs.next().ok_or_else(|| format!("{s} names no address")),
        Err(e) => Err(format!("{s}: {e} (expected IP:PORT or HOST:PORT)")),
    }
}
