//! `peer-echo`: the echo servers ringport is measured against.
//!
//! ```sh
//! peer-echo --server tokio-mt  --listen 127.0.0.1:7001   # tokio, multi-thread runtime, 2 workers
//! peer-echo --server tokio-ct  --listen 127.0.0.1:7001   # tokio, current-thread runtime
//! peer-echo --server epoll-tpc --listen 127.0.0.1:7001   # raw epoll, one thread per CPU, SO_REUSEPORT
//! peer-echo --server uring-tpc --listen 127.0.0.1:7001   # raw io_uring, one ring and thread per CPU
//! ```
//!
//! Every server reads into a 4096-byte buffer and writes back what it read, sets
//! `TCP_NODELAY` on accepted sockets, prints `listening on ADDR` once it accepts
//! connections, and exits with status 0 on SIGINT or SIGTERM. With `--spin-us N`
//! it burns N µs of CPU before echoing any received chunk whose first byte is `!`
//! (the same rule as `ringport echo --spin-us`).

mod epoll_tpc;
mod sig;
mod tokio_chat;
mod tokio_srv;
mod uring_tpc;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};

/// Which server to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Server {
    /// tokio multi-thread runtime with exactly 2 worker threads, a task per connection.
    TokioMt,
    /// tokio current-thread runtime, a task per connection.
    TokioCt,
    /// Raw epoll, one thread per CPU, each with its own SO_REUSEPORT listener.
    EpollTpc,
    /// Raw io_uring, one thread per CPU, each with its own SO_REUSEPORT listener and
    /// ring (DEFER_TASKRUN, multishot accept, multishot recv with a provided-buffer ring).
    UringTpc,
    /// A chat server on tokio's multi-thread runtime (2 workers): the peer of
    /// `ringport chat` for `ringport bench chat`.
    TokioChat,
}

#[derive(Debug, Parser)]
#[command(about = "Peer echo servers for ringport's benchmarks")]
struct Cli {
    /// The server to run.
    #[arg(long, value_enum)]
    server: Server,
    /// Address to listen on (port 0 picks a free port; the line printed says which).
    #[arg(long, default_value = "127.0.0.1:7001")]
    listen: SocketAddr,
    /// Burn this many microseconds of CPU before echoing a chunk whose first byte is '!'.
    #[arg(long, default_value_t = 0)]
    spin_us: u64,
    /// uring-tpc only: the io_uring task-run flags to ask for, for A/B runs (default: defer).
    #[arg(long, value_enum)]
    taskrun: Option<uring_tpc::TaskRun>,
}

/// Receive buffer size of every server.
const BUF: usize = 4096;

/// Busy-waits for `d` (a stand-in for CPU-heavy request handling).
fn spin(d: Duration) {
    let start = Instant::now();
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
}

fn main() {
    let cli = Cli::parse();
    // Before any thread exists, so that every thread inherits the mask and only
    // the waiting thread ever sees SIGINT/SIGTERM.
    if let Err(e) = sig::block() {
        eprintln!("peer-echo: cannot block signals: {e}");
        std::process::exit(1);
    }
    if cli.taskrun.is_some() && cli.server != Server::UringTpc {
        eprintln!("peer-echo: --taskrun applies to --server uring-tpc only");
        std::process::exit(2);
    }
    let spin_for = Duration::from_micros(cli.spin_us);
    let r = match cli.server {
        Server::TokioMt => tokio_srv::run(cli.listen, Some(2), spin_for),
        Server::TokioCt => tokio_srv::run(cli.listen, None, spin_for),
        Server::EpollTpc => epoll_tpc::run(cli.listen, spin_for),
        Server::TokioChat => tokio_chat::run(cli.listen),
        Server::UringTpc => uring_tpc::run(
            cli.listen,
            spin_for,
            cli.taskrun.unwrap_or(uring_tpc::TaskRun::Defer),
        ),
    };
    if let Err(e) = r {
        eprintln!("peer-echo: {e}");
        std::process::exit(1);
    }
}
