//! The `ringport` program: raw flags → resolved config → one module per command.

mod bench;
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
