//! `ringport bench file`: random aligned reads from one file through the port,
//! at a fixed queue depth (the shape of fio's `randread` with one job), on one
//! thread: submit `--qd` reads, then take completions and submit a new read at
//! a fresh random offset for each, at once (or, with `--batch`, a batch at a
//! time). `bench/vs-fio.sh` runs it beside fio.
//!
//! With `--direct` the file is opened `O_DIRECT` (the buffers are page-aligned,
//! see `aligned.rs`); otherwise reads go through the page cache, which the
//! caller warms (`--warm` reads the whole file once first). How the backend
//! carries a buffered read — inline on the submitting thread when the page
//! cache has it, else queued — is in `src/sys/inline_read.rs`.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use ringport::{BackendChoice, CompletionPort, Op};

use super::nop::measure;

/// Flags of `ringport bench file`.
#[derive(Debug, Args)]
pub struct FileBenchArgs {
    /// The file to read (at least one block long).
    #[arg(long)]
    path: PathBuf,
    /// Bytes per read; with `--direct` a multiple of 4096.
    #[arg(long, default_value_t = 4096)]
    bs: usize,
    /// Reads kept in flight.
    #[arg(long, default_value_t = 1)]
    qd: usize,
    /// Open with `O_DIRECT` (no page cache).
    #[arg(long)]
    direct: bool,
    /// Seconds to measure.
    #[arg(long, default_value_t = 5.0, value_parser = crate::seconds)]
    duration: f64,
    /// Read the whole file once before measuring (warms the page cache).
    #[arg(long)]
    warm: bool,
    /// Backend of the port.
    #[arg(long, default_value = "auto")]
    backend: BackendChoice,
    /// Hold the new reads of a batch of completions and hand them to the kernel
    /// together (one `io_uring_enter` per batch). Without it each new read goes
    /// to the kernel as soon as the completion it replaces is handled, so the
    /// queue stays full — as fio does (`iodepth_batch_submit=1`). On this VM's
    /// disk, O_DIRECT at depth 32: 67–70k IOPS at 6 µs CPU per read batched,
    /// 92–95k at 9.4–10 µs unbatched (BENCHMARKS.md, session 4).
    #[arg(long)]
    batch: bool,
}

/// A small, fast generator for offsets (xorshift64*); not for anything else.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

pub fn run(args: &FileBenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    if args.qd == 0 || args.qd > 4096 {
        return Err("--qd must be between 1 and 4096".into());
    }
    if args.bs == 0 || (args.direct && args.bs % 4096 != 0) {
        return Err("--bs must be positive, and a multiple of 4096 with --direct".into());
    }
    let mut open = OpenOptions::new();
    open.read(true);
    if args.direct {
        open.custom_flags(libc::O_DIRECT);
    }
    let file = open
        .open(&args.path)
        .map_err(|e| format!("{}: {e}", args.path.display()))?;
    let size = file.metadata()?.len();
    let blocks = size / args.bs as u64;
    if blocks == 0 {
        return Err(format!(
            "{}: {size} bytes, shorter than one {}-byte block",
            args.path.display(),
            args.bs
        )
        .into());
    }
    if args.warm {
        warm(&args.path)?;
    }
    let port = CompletionPort::builder()
        .backend(args.backend)
        .concurrency(1)
        .max_in_flight(args.qd.max(64))
        .build()?;
    port.associate(&file, 1)?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
    let mut failure: Option<String> = None;
    // With `--batch`, submissions are handed to the kernel together at the next
    // `get_many` (one `io_uring_enter` per batch on io_uring), as a pool
    // thread's are; without it each goes at once. This thread submits and
    // dequeues until the port is gone.
    ringport::long_lived_thread();
    ringport::batch_submissions(args.batch);
    let s = measure(args.duration, |deadline| {
        let mut reads = 0u64;
        let submit = |buf: Vec<u8>, rng: &mut Rng| {
            let off = rng.below(blocks) * args.bs as u64;
            port.submit(Op::read_at(&file, buf, off), 0)
        };
        for _ in 0..args.qd {
            if let Err(e) = submit(Vec::with_capacity(args.bs), &mut rng) {
                failure = Some(format!("submit: {e}"));
                return 0;
            }
        }
        let mut out = Vec::with_capacity(args.qd);
        let mut in_flight = args.qd;
        let mut stopping = false;
        while in_flight > 0 {
            out.clear();
            if let Err(e) = port.get_many(&mut out, args.qd, None) {
                failure = Some(format!("get: {e}"));
                break;
            }
            let batch = out.len();
            for (i, mut c) in out.drain(..).enumerate() {
                in_flight -= 1;
                // The last read of a batch goes out unbatched, which hands the
                // whole batch to the kernel at once: a thread that finds more
                // completions queued takes them before it would flush, and the
                // reads it held would not count towards the queue depth.
                if args.batch && i + 1 == batch {
                    ringport::batch_submissions(false);
                }
                match &c.result {
                    Ok(n) if *n == args.bs => reads += 1,
                    Ok(n) => {
                        failure.get_or_insert(format!("a short read: {n} of {} bytes", args.bs));
                    }
                    Err(e) => {
                        failure.get_or_insert(format!("read failed: {e}"));
                    }
                }
                if failure.is_some() || stopping {
                    continue;
                }
                let mut buf = c.buf.take().unwrap_or_default();
                buf.clear();
                match submit(buf, &mut rng) {
                    Ok(_) => in_flight += 1,
                    Err(e) => {
                        failure = Some(format!("submit: {e}"));
                    }
                }
            }
            ringport::batch_submissions(args.batch);
            if !stopping && Instant::now() >= deadline {
                stopping = true;
            }
        }
        reads
    });
    ringport::batch_submissions(false);
    port.close();
    if let Some(f) = failure {
        return Err(f.into());
    }
    let iops = s.ops as f64 / s.secs;
    let mibps = iops * args.bs as f64 / (1024.0 * 1024.0);
    let mode = if args.direct { "O_DIRECT" } else { "buffered" };
    println!(
        "ringport {} {mode} bs={} qd={}: {:.0} IOPS, {:.1} MiB/s, {:.2} CPU s in {:.2} s ({:.2} µs CPU/read)",
        port.backend(),
        args.bs,
        args.qd,
        iops,
        mibps,
        s.cpu_s,
        s.secs,
        s.cpu_s * 1e6 / s.ops.max(1) as f64
    );
    println!(
        "RESULT iops={iops:.0} mibps={mibps:.1} cpu_s={:.3} secs={:.3}",
        s.cpu_s, s.secs
    );
    Ok(())
}

/// Reads the whole file once, buffered (into the page cache).
fn warm(path: &std::path::Path) -> std::io::Result<()> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    while f.read(&mut buf)? > 0 {}
    Ok(())
}
