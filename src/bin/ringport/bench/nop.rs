//! `ringport bench nop`: NOP submit → complete round trips through the port, with
//! 1 and 2 threads, beside a minimal single-threaded raw io_uring loop (the
//! limit), and beside the alternative multi-thread design (a dedicated reactor
//! thread, see `designs.rs`), all in one run, alternating, over several rounds.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use io_uring::{opcode, IoUring};
use ringport::{BackendChoice, CompletionPort, Op, Pool};

use super::{designs, median, usage};

/// The most operations `--depth` may keep in flight (each variant holds
/// that many in its queue or ring at once).
const MAX_DEPTH: usize = 65_536;

/// Flags of `ringport bench nop`.
#[derive(Debug, Args)]
pub struct NopArgs {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 1.0, value_parser = crate::seconds)]
    duration: f64,
    /// Operations kept in flight.
    #[arg(long, default_value_t = 32)]
    depth: usize,
    /// Rounds (each round runs every variant once, back to back).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Run only the variants whose name contains this text (e.g. "pool, 2").
    #[arg(long)]
    only: Option<String>,
    /// Backend for the port variants.
    #[arg(long, default_value = "auto")]
    backend: BackendChoice,
}

/// One variant's result.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub ops: u64,
    pub secs: f64,
    pub cpu_s: f64,
    pub csw: i64,
}

impl Sample {
    fn per_sec(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}

type Variant = (
    &'static str,
    Box<dyn Fn(&NopArgs) -> Result<Sample, Box<dyn std::error::Error>>>,
);

pub fn run(args: &NopArgs) -> Result<(), Box<dyn std::error::Error>> {
    if args.depth == 0 || args.rounds == 0 {
        return Err("--depth and --rounds must be positive".into());
    }
    if args.depth > MAX_DEPTH {
        return Err(format!("--depth must be at most {MAX_DEPTH}").into());
    }
    let mut variants: Vec<Variant> = vec![
        ("raw io_uring loop, 1 thread", Box::new(raw_loop)),
        ("port, 1 thread (get + submit)", Box::new(port_thread)),
        ("port + pool, 1 thread", Box::new(|a| port_pool(a, 1))),
        ("port + pool, 2 threads", Box::new(|a| port_pool(a, 2))),
        (
            "reactor design, 1 worker",
            Box::new(|a| designs::reactor_nop(a.depth, a.duration, 1)),
        ),
        (
            "reactor design, 2 workers",
            Box::new(|a| designs::reactor_nop(a.depth, a.duration, 2)),
        ),
    ];
    if let Some(only) = &args.only {
        variants.retain(|(name, _)| name.contains(only.as_str()));
        if variants.is_empty() {
            return Err(format!("no variant matches {only:?}").into());
        }
    }
    let mut results: Vec<Vec<Sample>> = vec![Vec::new(); variants.len()];
    for round in 0..args.rounds {
        eprintln!("round {}/{}", round + 1, args.rounds);
        for (i, (_, f)) in variants.iter().enumerate() {
            results[i].push(f(args)?);
        }
    }
    let raw: f64 = median(&mut results[0].iter().map(Sample::per_sec).collect::<Vec<_>>());
    println!(
        "nop round trips, depth {}, {} s × {} rounds (medians)",
        args.depth, args.duration, args.rounds
    );
    println!(
        "{:<32} {:>12} {:>9} {:>14} {:>12}",
        "variant", "ops/s", "× raw", "CPU µs/op", "csw/1k ops"
    );
    for (i, (name, _)) in variants.iter().enumerate() {
        let s = &results[i];
        let rate = median(&mut s.iter().map(Sample::per_sec).collect::<Vec<_>>());
        let cpu = median(
            &mut s
                .iter()
                .map(|x| x.cpu_s * 1e6 / x.ops as f64)
                .collect::<Vec<_>>(),
        );
        let csw = median(
            &mut s
                .iter()
                .map(|x| x.csw as f64 * 1000.0 / x.ops as f64)
                .collect::<Vec<_>>(),
        );
        println!(
            "{name:<32} {rate:>12.0} {:>9.2} {cpu:>14.3} {csw:>12.2}",
            rate / raw
        );
    }
    Ok(())
}

/// A measurement: run `body` until the deadline, report ops and resources.
pub fn measure(duration: f64, body: impl FnOnce(Instant) -> u64) -> Sample {
    let u0 = usage();
    let t0 = Instant::now();
    let ops = body(t0 + Duration::from_secs_f64(duration));
    let secs = t0.elapsed().as_secs_f64();
    let u1 = usage();
    Sample {
        ops,
        secs,
        cpu_s: u1.cpu_s - u0.cpu_s,
        csw: u1.csw - u0.csw,
    }
}

/// The limit: one thread, one ring, `depth` NOPs in flight, resubmitting each.
fn raw_loop(args: &NopArgs) -> Result<Sample, Box<dyn std::error::Error>> {
    let mut ring = IoUring::new(256)?;
    let depth = args.depth.min(256);
    Ok(measure(args.duration, |deadline| {
        let mut ops = 0u64;
        for _ in 0..depth {
            // SAFETY: a NOP points at no memory.
            unsafe {
                ring.submission()
                    .push(&opcode::Nop::new().build())
                    .expect("sq has room")
            };
        }
        loop {
            ring.submit_and_wait(1).expect("io_uring_enter");
            let n = ring.completion().count();
            ops += n as u64;
            if ops % 4096 < n as u64 && Instant::now() >= deadline {
                break;
            }
            for _ in 0..n {
                // SAFETY: a NOP points at no memory.
                unsafe {
                    ring.submission()
                        .push(&opcode::Nop::new().build())
                        .expect("sq has room")
                };
            }
        }
        ops
    }))
}

/// One plain thread drives the port: get a completion, submit the next NOP.
fn port_thread(args: &NopArgs) -> Result<Sample, Box<dyn std::error::Error>> {
    let port = CompletionPort::builder()
        .backend(args.backend)
        .concurrency(1)
        .build()?;
    // This thread submits and dequeues until the port is gone.
    ringport::long_lived_thread();
    ringport::batch_submissions(true);
    let s = measure(args.duration, |deadline| {
        let mut ops = 0u64;
        for i in 0..args.depth {
            port.submit(Op::nop(), i as u64).expect("submit");
        }
        let mut out = Vec::with_capacity(64);
        loop {
            out.clear();
            let n = port.get_many(&mut out, 64, None).expect("get");
            ops += n as u64;
            for c in out.drain(..) {
                port.submit(Op::nop(), c.user_data).expect("submit");
            }
            if ops % 4096 < n as u64 && Instant::now() >= deadline {
                break;
            }
        }
        ops
    });
    ringport::batch_submissions(false);
    port.close();
    Ok(s)
}

/// A pool of `threads` workers; each completion's handler submits the next NOP.
fn port_pool(args: &NopArgs, threads: usize) -> Result<Sample, Box<dyn std::error::Error>> {
    let port = CompletionPort::builder()
        .backend(args.backend)
        .concurrency(threads)
        .build()?;
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (c2, s2) = (count.clone(), stop.clone());
    let pool = Pool::builder()
        .threads(threads)
        .spawn(&port, move |port, c| {
            c2.fetch_add(1, Ordering::Relaxed);
            if !s2.load(Ordering::Relaxed) {
                let _ = port.submit(Op::nop(), c.user_data);
            }
        })?;
    let s = measure(args.duration, |deadline| {
        for i in 0..args.depth {
            port.submit(Op::nop(), i as u64).expect("submit");
        }
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
        count.load(Ordering::Relaxed)
    });
    stop.store(true, Ordering::Relaxed);
    pool.shutdown();
    Ok(s)
}
