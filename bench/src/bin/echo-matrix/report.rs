//! Tables (markdown, to paste into BENCHMARKS.md), notes and the raw JSON.

use std::fmt::Write as _;
use std::process::Command;

use serde_json::{json, Value};

use crate::run::{tail, Measured, Outcome, ServerKind};
use crate::{Cell, Pass, Sample};

/// Where and how the numbers were taken.
#[derive(Debug)]
pub struct Meta {
    pub date: String,
    pub kernel: String,
    pub cpu: String,
    pub cpus: usize,
    pub args: String,
    pub rounds: usize,
    pub duration: f64,
    pub skewed: bool,
    /// How syscalls were counted.
    pub syscalls: String,
}

impl Meta {
    pub fn collect(
        args: &str,
        rounds: usize,
        duration: f64,
        skewed: bool,
        syscalls: String,
    ) -> Meta {
        let date = Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_default();
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        Meta {
            date,
            kernel,
            cpu,
            cpus,
            args: args.to_string(),
            rounds,
            duration,
            skewed,
            syscalls,
        }
    }

    fn header(&self, title: &str, how: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "## {title} — {}\n", self.date);
        let _ = writeln!(
            s,
            "Machine: {} × {}, Linux {}. Command: `echo-matrix {}`: {} rounds × {} s per run; {how}",
            self.cpus, self.cpu, self.kernel, self.args, self.rounds, self.duration
        );
        s
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// 1234567.8 → "1,234,568".
fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn opt(x: Option<f64>, f: impl Fn(f64) -> String) -> String {
    x.map(f).unwrap_or_else(|| "n/a".into())
}

fn measured(samples: &[Sample], cell: Cell, server: ServerKind, round: usize) -> Option<&Measured> {
    samples.iter().find_map(|s| match &s.outcome {
        Outcome::Ok(m)
            if s.pass == Pass::Timing
                && s.cell == cell
                && s.server == server
                && s.round == round =>
        {
            Some(&**m)
        }
        _ => None,
    })
}

/// Per-round values of one server in one cell.
fn values(
    samples: &[Sample],
    cell: Cell,
    server: ServerKind,
    rounds: usize,
    f: impl Fn(&Measured) -> Option<f64>,
) -> Vec<f64> {
    (0..rounds)
        .filter_map(|r| measured(samples, cell, server, r).and_then(&f))
        .collect()
}

/// Median over rounds of `server`'s value ÷ `base`'s value in the same round.
fn paired(
    samples: &[Sample],
    cell: Cell,
    server: ServerKind,
    base: ServerKind,
    rounds: usize,
    f: impl Fn(&Measured) -> Option<f64>,
) -> Option<f64> {
    let ratios = (0..rounds)
        .filter_map(|r| {
            let a = f(measured(samples, cell, server, r)?)?;
            let b = f(measured(samples, cell, base, r)?)?;
            (b > 0.0).then(|| a / b)
        })
        .collect();
    median(ratios)
}

/// Median syscalls per 1000 messages over every run that counted them (the
/// syscall pass, or the timed rounds with --syscalls-inline).
fn syscalls_per_1k(samples: &[Sample], cell: Cell, server: ServerKind) -> Option<f64> {
    median(
        samples
            .iter()
            .filter(|s| s.cell == cell && s.server == server)
            .filter_map(|s| match &s.outcome {
                Outcome::Ok(m) => m.syscalls_per_1k(),
                _ => None,
            })
            .collect(),
    )
}

/// Why a server has no numbers in a cell, if it has none.
fn missing(samples: &[Sample], cell: Cell, server: ServerKind) -> Option<String> {
    let mine: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.cell == cell && s.server == server)
        .collect();
    if mine.iter().any(|s| matches!(s.outcome, Outcome::Ok(_))) {
        return None;
    }
    if mine
        .iter()
        .any(|s| matches!(s.outcome, Outcome::Unsupported(_)))
    {
        return Some(if server == ServerKind::RingportEpoll {
            "n/a (epoll backend not built)".into()
        } else {
            "n/a (not supported)".into()
        });
    }
    Some("failed (see notes)".into())
}

fn server_label(samples: &[Sample], cell: Cell, server: ServerKind, rounds: usize) -> String {
    let ok = (0..rounds)
        .filter(|&r| measured(samples, cell, server, r).is_some())
        .count();
    if ok > 0 && ok < rounds {
        format!("{} ({ok}/{rounds} rounds)", server.name())
    } else {
        server.name().to_string()
    }
}

fn ratio_cell(r: Option<f64>, is_base: bool) -> String {
    if is_base {
        "base".into()
    } else {
        opt(r, |x| format!("**{x:.2}**"))
    }
}

/// The matrix table.
pub fn matrix_table(
    meta: &Meta,
    cells: &[Cell],
    servers: &[ServerKind],
    samples: &[Sample],
    rounds: usize,
) -> String {
    let mut s = meta.header(
        "Echo matrix (issue 3)",
        &format!(
            "server pinned to CPU 0, client (`ringport bench echo`, 1 thread) to CPU 1; syscalls: {}.\n\
             Medians over rounds; **× tokio-mt** = median over rounds of the ratio to tokio multi-thread \
             in the same round (paired). CPU = server utime + stime during the client run ÷ messages.\n",
            meta.syscalls
        ),
    );
    let base = ServerKind::TokioMt;
    let has_base = servers.contains(&base);
    s.push_str("| conns × size | server | msgs/s | × tokio-mt | server CPU µs/msg | × tokio-mt | p50 µs | p99 µs | ctx sw / 1k msgs | syscalls / 1k msgs |\n");
    s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for &cell in cells {
        for &server in servers {
            let label = format!(
                "| {} × {} B | {} ",
                cell.conns,
                cell.size,
                server_label(samples, cell, server, rounds)
            );
            if let Some(why) = missing(samples, cell, server) {
                let _ = writeln!(s, "{label}| {why} | | | | | | | |");
                continue;
            }
            let med = |f: &dyn Fn(&Measured) -> Option<f64>| {
                median(values(samples, cell, server, rounds, f))
            };
            let pair = |f: &dyn Fn(&Measured) -> Option<f64>| {
                if has_base {
                    paired(samples, cell, server, base, rounds, f)
                } else {
                    None
                }
            };
            let rate = |m: &Measured| Some(m.client.msgs_per_s);
            let cpu = |m: &Measured| Some(m.cpu_us_per_msg());
            let is_base = server == base;
            let _ = writeln!(
                s,
                "{label}| {} | {} | {} | {} | {} | {} | {} | {} |",
                opt(med(&rate), thousands),
                ratio_cell(pair(&rate), is_base),
                opt(med(&cpu), |x| format!("{x:.2}")),
                ratio_cell(pair(&cpu), is_base),
                opt(med(&|m| Some(m.client.p50_us)), |x| format!("{x:.0}")),
                opt(med(&|m| Some(m.client.p99_us)), |x| format!("{x:.0}")),
                opt(med(&|m| Some(m.ctx_per_1k())), |x| format!("{x:.0}")),
                opt(syscalls_per_1k(samples, cell, server), |x| format!(
                    "{x:.0}"
                )),
            );
        }
    }
    s
}

/// The skewed-load table.
pub fn skewed_table(
    meta: &Meta,
    cells: &[Cell],
    servers: &[ServerKind],
    samples: &[Sample],
    rounds: usize,
    heavy_every: u64,
    spin_us: u64,
) -> String {
    let mut s = meta.header(
        "Skewed load (issue 3)",
        &format!(
            "nothing pinned; every {heavy_every}th message costs {spin_us} µs of server CPU \
             (`--heavy-every {heavy_every}`, servers with `--spin-us {spin_us}`).\n\
             Medians over rounds; latencies in µs; light p99 = p99 of the messages that are not heavy; \
             **p99 × tokio-mt** and **p50 × epoll-tpc** are medians of per-round (paired) ratios.\n"
        ),
    );
    let has = |k| servers.contains(&k);
    s.push_str("| conns × size | server | msgs/s | p50 | p99 | p99.9 | light p99 | p99 × tokio-mt | p50 × epoll-tpc | server CPU µs/msg |\n");
    s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for &cell in cells {
        for &server in servers {
            let label = format!(
                "| {} × {} B | {} ",
                cell.conns,
                cell.size,
                server_label(samples, cell, server, rounds)
            );
            if let Some(why) = missing(samples, cell, server) {
                let _ = writeln!(s, "{label}| {why} | | | | | | | |");
                continue;
            }
            let med = |f: &dyn Fn(&Measured) -> f64| {
                median(values(samples, cell, server, rounds, |m| Some(f(m))))
            };
            let p99 = |m: &Measured| Some(m.client.p99_us);
            let p50 = |m: &Measured| Some(m.client.p50_us);
            let r99 = has(ServerKind::TokioMt)
                .then(|| paired(samples, cell, server, ServerKind::TokioMt, rounds, p99))
                .flatten();
            let r50 = has(ServerKind::EpollTpc)
                .then(|| paired(samples, cell, server, ServerKind::EpollTpc, rounds, p50))
                .flatten();
            let _ = writeln!(
                s,
                "{label}| {} | {} | {} | {} | {} | {} | {} | {} |",
                opt(med(&|m| m.client.msgs_per_s), thousands),
                opt(med(&|m| m.client.p50_us), |x| format!("{x:.0}")),
                opt(med(&|m| m.client.p99_us), |x| format!("{x:.0}")),
                opt(med(&|m| m.client.p999_us), |x| format!("{x:.0}")),
                opt(med(&|m| m.client.light_p99_us), |x| format!("{x:.0}")),
                ratio_cell(r99, server == ServerKind::TokioMt),
                ratio_cell(r50, server == ServerKind::EpollTpc),
                opt(med(&|m| m.cpu_us_per_msg()), |x| format!("{x:.2}")),
            );
        }
    }
    s
}

/// The progress line of one run.
pub fn progress_line(o: &Outcome) -> String {
    match o {
        Outcome::Ok(m) => {
            let mut s = format!(
                "{:>9} msg/s  {:.2} µs CPU/msg  p50 {:.0} p99 {:.0} p99.9 {:.0} µs  ctx/1k {:.0}  sys/1k {}  ({} threads)",
                thousands(m.client.msgs_per_s),
                m.cpu_us_per_msg(),
                m.client.p50_us,
                m.client.p99_us,
                m.client.p999_us,
                m.ctx_per_1k(),
                opt(m.syscalls_per_1k(), |x| format!("{x:.0}")),
                m.server_threads,
            );
            if m.client.mismatches > 0 || m.client.errors > 0 {
                let _ = write!(
                    s,
                    "  ERRORS {} MISMATCHES {}",
                    m.client.errors, m.client.mismatches
                );
            }
            if m.server_exit != "exit 0" {
                let _ = write!(s, "  server: {}", m.server_exit);
            }
            s
        }
        Outcome::Unsupported(why) => format!("n/a: {why}"),
        Outcome::Failed(why) => format!("FAILED: {why}"),
    }
}

/// The `N connections accepted` count a server prints when it stops.
fn accepted(stderr: &str) -> Option<u64> {
    let i = stderr.find(" connections accepted")?;
    stderr[..i]
        .rsplit(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Notes on anything unusual: failures, errors, mismatches, servers that did not
/// stop cleanly or complained on stderr.
pub fn notes(samples: &[Sample]) -> Vec<String> {
    let mut notes = Vec::new();
    let mut complaints: Vec<(String, usize)> = Vec::new();
    let mut no_syscalls: Vec<String> = Vec::new();
    for s in samples {
        let which = match s.pass {
            Pass::Timing => format!("round {}", s.round + 1),
            Pass::Syscalls => "syscall pass".to_string(),
        };
        let at = format!(
            "{which}, {} × {} B, {}",
            s.cell.conns,
            s.cell.size,
            s.server.name()
        );
        match &s.outcome {
            Outcome::Failed(why) => notes.push(format!("- {at}: FAILED: {why}")),
            Outcome::Unsupported(_) => {}
            Outcome::Ok(m) => {
                if m.client.errors > 0 || m.client.mismatches > 0 {
                    notes.push(format!(
                        "- {at}: client saw {} errors, {} mismatches",
                        m.client.errors, m.client.mismatches
                    ));
                }
                if m.server_exit != "exit 0" {
                    notes.push(format!(
                        "- {at}: server after SIGTERM: {}; stderr: {}",
                        m.server_exit,
                        tail(&m.server_stderr)
                    ));
                }
                if let Some(n) = accepted(&m.server_stderr) {
                    if n != s.cell.conns as u64 {
                        notes.push(format!(
                            "- {at}: server accepted {n} connections, the client opened {}",
                            s.cell.conns
                        ));
                    }
                }
                for line in m.server_stderr.lines() {
                    let l = line.to_lowercase();
                    if ["panic", "error", "warn", "fail"]
                        .iter()
                        .any(|w| l.contains(w))
                    {
                        let key = format!("{}: {}", s.server.name(), line.trim());
                        match complaints.iter_mut().find(|(k, _)| *k == key) {
                            Some((_, n)) => *n += 1,
                            None => complaints.push((key, 1)),
                        }
                    }
                }
                if let Some(why) = &m.syscalls_note {
                    if !no_syscalls.contains(why) {
                        no_syscalls.push(why.clone());
                    }
                }
            }
        }
    }
    for (k, n) in complaints.iter().take(20) {
        notes.push(format!("- server stderr ({n}×) {k}"));
    }
    for why in no_syscalls.iter().take(5) {
        notes.push(format!("- syscalls not counted: {why}"));
    }
    if !notes.is_empty() {
        notes.insert(0, "\nNotes:".into());
    }
    notes
}

/// Every sample, raw.
pub fn to_json(meta: &Meta, samples: &[Sample]) -> Value {
    let samples: Vec<Value> = samples
        .iter()
        .map(|s| {
            let mut v = json!({
                "round": s.round + 1,
                "conns": s.cell.conns,
                "size": s.cell.size,
                "server": s.server.name(),
                "pass": match s.pass { Pass::Timing => "timing", Pass::Syscalls => "syscalls" },
            });
            let extra = match &s.outcome {
                Outcome::Ok(m) => json!({
                    "status": "ok",
                    "port": m.port,
                    "client": m.client.raw,
                    "server_cpu_s": m.cpu_s,
                    "server_cpu_us_per_msg": m.cpu_us_per_msg(),
                    "ctx_switches": m.ctx_switches,
                    "ctx_switches_per_1k_msgs": m.ctx_per_1k(),
                    "syscalls": m.syscalls,
                    "syscalls_per_1k_msgs": m.syscalls_per_1k(),
                    "syscalls_note": m.syscalls_note,
                    "server_threads": m.server_threads,
                    "server_exit": m.server_exit,
                    "server_stderr": m.server_stderr,
                }),
                Outcome::Unsupported(why) => json!({ "status": "n/a", "reason": why }),
                Outcome::Failed(why) => json!({ "status": "failed", "reason": why }),
            };
            if let (Value::Object(a), Value::Object(b)) = (&mut v, extra) {
                a.extend(b);
            }
            v
        })
        .collect();
    json!({
        "meta": {
            "date": meta.date,
            "kernel": meta.kernel,
            "cpu": meta.cpu,
            "cpus": meta.cpus,
            "args": meta.args,
            "rounds": meta.rounds,
            "duration_s": meta.duration,
            "skewed": meta.skewed,
            "syscalls": meta.syscalls,
        },
        "samples": samples,
    })
}
