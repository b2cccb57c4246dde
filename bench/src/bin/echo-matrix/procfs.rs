//! Readings of a server process from `/proc`.

use std::fs;
use std::io;

/// What `/proc` says about a process at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reading {
    /// utime + stime of the whole process (all threads, live and exited), seconds.
    pub cpu_s: f64,
    /// Voluntary + involuntary context switches, summed over its live threads.
    pub ctx_switches: u64,
}

impl Reading {
    /// `self - before`.
    pub fn since(&self, before: &Reading) -> Reading {
        Reading {
            cpu_s: self.cpu_s - before.cpu_s,
            ctx_switches: self.ctx_switches.saturating_sub(before.ctx_switches),
        }
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime from `/proc/<pid>/stat`, in seconds.
fn cpu_seconds(pid: u32) -> io::Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces and parentheses: the fields
    // after it start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::other("malformed /proc/pid/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let field = |n: usize| -> io::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other("malformed /proc/pid/stat"))
    };
    Ok((field(14)? + field(15)?) as f64 / clock_ticks())
}

/// Context switches summed over `/proc/<pid>/task/*/status`.
fn context_switches(pid: u32) -> io::Result<u64> {
    let mut total = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        // A thread may exit between the listing and the read: skip it.
        let Ok(status) = fs::read_to_string(task?.path().join("status")) else {
            continue;
        };
        for line in status.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    Ok(total)
}

/// Reads CPU time and context switches of process `pid`.
pub fn read(pid: u32) -> io::Result<Reading> {
    Ok(Reading {
        cpu_s: cpu_seconds(pid)?,
        ctx_switches: context_switches(pid)?,
    })
}

/// Number of threads of process `pid`.
pub fn threads(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}
