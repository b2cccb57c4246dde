//! `ringport info`: the backend in use and why, the kernel, io_uring's features,
//! and how each kind of operation runs on the chosen backend.

use clap::Args;
use ringport::op::OpPath;
use ringport::{BackendChoice, CompletionPort};

/// Flags of `ringport info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Backend to try: auto, uring or epoll (default: RINGPORT_BACKEND, else auto).
    #[arg(long)]
    backend: Option<BackendChoice>,
}

pub fn run(args: &InfoArgs) -> Result<(), Box<dyn std::error::Error>> {
    let cpus = ringport::num_cpus();
    println!("kernel:       {}", kernel_version());
    println!("cpus:         {cpus}");
    println!("pool default: {} threads, concurrency {cpus}", 2 * cpus);
    match std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        Ok(v) => println!("io_uring_disabled sysctl: {}", v.trim()),
        Err(_) => println!("io_uring_disabled sysctl: absent (kernel older than 6.6)"),
    }
    let mut builder = CompletionPort::builder();
    if let Some(b) = args.backend {
        builder = builder.backend(b);
    }
    let mut failed = None;
    match builder.build() {
        Ok(port) => {
            println!(
                "backend:      {} ({})",
                port.backend(),
                port.backend_reason()
            );
            println!("max in flight: {}", port.max_in_flight());
            let stats = port.stats();
            println!(
                "task run:     {} ({})",
                stats.task_run, stats.task_run_reason
            );
            let paths = stats.op_paths;
            println!("operations ({}):", port.backend());
            let mut list: Vec<(String, OpPath)> =
                paths.iter().map(|(k, p)| (format!("{k:?}"), p)).collect();
            list.push(("timeout_after".into(), paths.link_timeout()));
            for chunk in list.chunks(3) {
                let line: Vec<String> = chunk
                    .iter()
                    .map(|(k, p)| format!("{:<28}", format!("{k}: {p}")))
                    .collect();
                println!("  {}", line.join(" ").trim_end());
            }
            if let Ok(off) = std::env::var("RINGPORT_URING_OPS_OFF") {
                println!("  (RINGPORT_URING_OPS_OFF={off} forces io_uring fallbacks)");
            }
        }
        Err(e) => {
            println!("backend:      none: {e}");
            failed = Some(e);
        }
    }
    match ringport::info::uring_probe() {
        Ok((features, ops)) => {
            println!("io_uring features:");
            print_flags(&features);
            println!("io_uring ops:");
            print_flags(&ops);
        }
        Err(e) => println!("io_uring probe failed: {e}"),
    }
    // Everything is printed; then a backend that cannot run is the exit
    // status too (a script asking `ringport info` whether it would run).
    match failed {
        Some(e) => Err(format!("no backend: {e}").into()),
        None => Ok(()),
    }
}

fn print_flags(list: &[(&str, bool)]) {
    for chunk in list.chunks(4) {
        let line: Vec<String> = chunk
            .iter()
            .map(|(n, ok)| format!("{:<18}", format!("{n}:{}", if *ok { "yes" } else { "no" })))
            .collect();
        println!("  {}", line.join(" "));
    }
}

fn kernel_version() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// One line of a port's scheduler counters, each also per `unit` (`n` of them
/// done), for `--stats`: hand-offs to a sleeping worker, poll-role take-overs,
/// stalls, late releases of completions held for a running thread (lazy
/// release), kicks of running threads (io_uring `COOP_TASKRUN`), the most
/// handlers that ran at once.
pub(crate) fn stats_line(stats: &ringport::PortStats, n: u64, unit: &str) -> String {
    let per = |x: u64| {
        if n == 0 {
            "-".to_string()
        } else {
            format!("{:.3}", x as f64 / n as f64)
        }
    };
    let s = &stats.sched;
    format!(
        "{n} {unit}s; hand-offs {} ({} per {unit}), poll take-overs {} ({}), stalls {}, \
         late releases {}, task-work kicks {} ({}), most running at once {}, task run {}",
        s.handoffs,
        per(s.handoffs),
        s.poll_steals,
        per(s.poll_steals),
        s.stalls,
        s.releases,
        stats.task_work_kicks,
        per(stats.task_work_kicks),
        s.peak_running,
        stats.task_run,
    )
}
