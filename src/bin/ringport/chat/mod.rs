//! `ringport chat`: a messenger server — nicknames, rooms, broadcast, private
//! messages — over a line protocol anyone can speak with `nc` (`proto.rs`).
//!
//! Written on the async face ([`ringport::Runtime`]): per connection a reader
//! task, which cuts lines and acts on them through the hub (`hub.rs`), and a
//! writer task, which drains the connection's outbox (`outbox.rs`). A
//! broadcast appends one line to each member's outbox under the hub's lock
//! and wakes the writers; a writer that was busy sends everything queued
//! meanwhile in one `write_all`. Both tasks run on the pool's workers, with
//! IOCP's concurrency limit, whatever connection their completions belong to.
//!
//! Limits (each a flag): connections (`--max-conns`; past it a client gets
//! `ERR server full` and is closed), the line length (`--max-line`; a longer
//! line gets `ERR line too long` and is skipped, the connection goes on),
//! and the bytes queued for a member (`--max-outbox`; a member that reads
//! slower than its room talks is disconnected rather than let grow the
//! server's memory). SIGINT/SIGTERM tell every member `BYE server stopping`,
//! let the writers flush for up to a second, and exit 0.

mod hub;
mod outbox;
mod proto;

use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use ringport::net::{TcpListener, TcpStream};
use ringport::{BackendChoice, Runtime};

use self::hub::{Flow, Hub, Kick, Refusal};
use self::outbox::Outbox;
use self::proto::{Line, Lines};
use crate::signals;

/// Flags of `ringport chat`.
#[derive(Debug, Args)]
pub struct ChatArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7100", value_parser = crate::socket_addr)]
    pub(crate) listen: SocketAddr,
    /// Worker threads (0 = the pool's default, 2 × CPUs).
    #[arg(long, default_value_t = 0)]
    pub(crate) threads: usize,
    /// Handlers running at once (0 = CPUs).
    #[arg(long, default_value_t = 0)]
    pub(crate) concurrency: usize,
    /// Backend: auto, uring or epoll (default: RINGPORT_BACKEND, else auto).
    #[arg(long)]
    pub(crate) backend: Option<BackendChoice>,
    /// Connections served at once; one past it gets `ERR server full`.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) max_conns: u32,
    /// Longest line a client may send, in bytes (without its newline).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(16..=65_536))]
    pub(crate) max_line: u32,
    /// Bytes that may wait to be sent to one member; a member that falls
    /// further behind is disconnected.
    #[arg(long, default_value_t = 1 << 20, value_parser = clap::value_parser!(u32).range(4096..=(1 << 30)))]
    pub(crate) max_outbox: u32,
}

#[derive(Debug, Default)]
struct Counts {
    accepted: AtomicU64,
    refused: AtomicU64,
}

pub fn run(args: &ChatArgs) -> Result<(), Box<dyn std::error::Error>> {
    // A server line is at most a prefix, two names and a client's line.
    let longest = args.max_line as usize + 2 * proto::MAX_NAME + 16;
    if (args.max_outbox as usize) < 2 * longest {
        return Err(format!(
            "--max-outbox {} is too small for --max-line {}: it must hold two lines ({} bytes)",
            args.max_outbox,
            args.max_line,
            2 * longest
        )
        .into());
    }
    signals::block()?;
    let conns = args.max_conns as usize;
    // Each connection keeps a read and a write in flight; the accept loop one more.
    let mut b = Runtime::builder()
        .concurrency(args.concurrency)
        .max_in_flight(2 * conns + 64);
    if args.threads > 0 {
        b = b.threads(args.threads);
    }
    if let Some(backend) = args.backend {
        b = b.backend(backend);
    }
    let rt = b
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let listener = rt
        .block_on(async { TcpListener::bind(args.listen) })
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let local = listener.local_addr()?;
    // Past the cap a connection is still accepted, told, and closed: room for it.
    let hub = Arc::new(Hub::new(conns));
    let counts = Arc::new(Counts::default());
    let limits = Limits {
        max_line: args.max_line as usize,
        max_outbox: args.max_outbox as usize,
    };
    {
        let hub = hub.clone();
        let counts = counts.clone();
        rt.spawn(async move {
            crate::accept::accept_each(&listener, |s| {
                counts.accepted.fetch_add(1, Ordering::Relaxed);
                let hub = hub.clone();
                let counts = counts.clone();
                ringport::spawn(async move {
                    if !serve(&hub, s, limits).await {
                        counts.refused.fetch_add(1, Ordering::Relaxed);
                    }
                });
            })
            .await;
        });
    }
    let signal = signals::waiter()?;
    crate::say(format_args!(
        "chat on {local} (backend {}); try: nc {} {}",
        rt.handle().backend(),
        local.ip(),
        local.port()
    ));
    let sig = signal.recv()?;
    hub.stop();
    // The writers flush their BYE and close; give them a second.
    let deadline = Instant::now() + Duration::from_secs(1);
    while hub.members() > 0 || rt.handle().live_tasks() > 1 {
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let open = hub.members();
    rt.shutdown();
    eprintln!(
        "chat: signal {sig}: stopped; {} connections accepted ({} refused), {} room lines delivered, {} members still open at exit",
        counts.accepted.load(Ordering::Relaxed),
        counts.refused.load(Ordering::Relaxed),
        hub.delivered.load(Ordering::Relaxed),
        open
    );
    Ok(())
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    max_line: usize,
    max_outbox: usize,
}

/// Serves one connection until it closes, quits or is dropped. False: it was
/// refused (the server full or stopping).
async fn serve(hub: &Hub, s: TcpStream, limits: Limits) -> bool {
    let _ = s.set_nodelay(true);
    let stream = Arc::new(s);
    let out = Arc::new(Outbox::new(limits.max_outbox));
    let kick: Kick = {
        let s = stream.clone();
        Box::new(move || {
            let _ = s.shutdown(Shutdown::Both);
        })
    };
    let id = match hub.connect(out.clone(), kick) {
        Ok((id, _)) => id,
        Err(why) => {
            let line = match why {
                Refusal::Full => "ERR server full\n",
                Refusal::Stopping => "BYE server stopping\n",
            };
            let _ = stream.write_all(line.as_bytes().to_vec()).await;
            let _ = stream.shutdown(Shutdown::Both);
            return false;
        }
    };
    let writer = ringport::spawn(write_loop(stream.clone(), out.clone()));
    read_loop(hub, id, &stream, limits.max_line).await;
    hub.disconnect(id);
    out.close_and_wake();
    // The writer sends what is queued (a BYE), then shuts the socket.
    let _ = writer.await;
    // Only now is the connection's memory (its outbox) and socket let go.
    hub.release();
    true
}

/// Reads lines and acts on them until the peer closes, the member quits or
/// the socket is shut down (kicked, or the server stopping).
async fn read_loop(hub: &Hub, id: u64, stream: &TcpStream, max_line: usize) {
    let mut lines = Lines::new(max_line);
    let mut buf = Vec::with_capacity(4096);
    loop {
        let (r, b) = stream.read(buf).await;
        buf = b;
        match r {
            Ok(n) if n > 0 => {}
            Ok(_) => return,
            Err(e) => {
                tracing::debug!("chat: read: {e}");
                return;
            }
        }
        let mut quit = false;
        lines.feed(&buf, |line| {
            let flow = match line {
                Line::TooLong => {
                    hub.refuse(id, &format!("line too long (over {max_line} bytes)"));
                    Flow::Go
                }
                Line::Full(l) => match proto::parse(l) {
                    Ok(cmd) => hub.act(id, cmd),
                    Err(why) => {
                        hub.refuse(id, &why.to_string());
                        Flow::Go
                    }
                },
            };
            quit = flow == Flow::Quit;
            !quit
        });
        if quit {
            return;
        }
        buf.clear();
    }
}

/// Sends what the outbox gathers until it is closed and empty (or a send
/// fails), then shuts the socket down both ways, which also ends the reader.
async fn write_loop(stream: Arc<TcpStream>, out: Arc<Outbox>) {
    let mut spare = Vec::new();
    while let Some(bytes) = out.take(spare).await {
        let (r, b) = stream.write_all(bytes).await;
        if let Err(e) = r {
            tracing::debug!("chat: write: {e}");
            out.close_and_wake();
            break;
        }
        spare = b;
    }
    let _ = stream.shutdown(Shutdown::Both);
}
