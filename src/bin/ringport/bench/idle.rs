//! `ringport bench idle`: opens N connections to a server and holds them,
//! idle (nothing sent), so that the server's memory per idle connection can
//! be read from outside (`bench/idle-memory.sh` reads the server's `VmRSS`
//! before and while they are held).
//!
//! Prints `connected N` once every connection is open, then holds them for
//! `--hold` seconds; with `--verify`, each connection then echoes one byte
//! (after the hold, so the check does not disturb the measurement).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use clap::Args;

/// Flags of `ringport bench idle`.
#[derive(Debug, Args)]
pub struct IdleArgs {
    /// The server.
    #[arg(long, default_value = "127.0.0.1:7000", value_parser = crate::socket_addr)]
    target: SocketAddr,
    /// Connections to open and hold.
    #[arg(long, default_value_t = 10_000)]
    conns: usize,
    /// Seconds to hold them once all are open.
    #[arg(long, default_value_t = 10.0, value_parser = crate::seconds_or_zero)]
    hold: f64,
    /// After the hold, check that every connection echoes one byte.
    #[arg(long)]
    verify: bool,
}

pub fn run(args: &IdleArgs) -> Result<(), Box<dyn std::error::Error>> {
    raise_nofile(args.conns as u64 + 64)?;
    let t0 = Instant::now();
    let mut conns = Vec::with_capacity(args.conns);
    for i in 0..args.conns {
        let s = TcpStream::connect(args.target).map_err(|e| {
            format!(
                "connection {} of {} to {}: {e}",
                i + 1,
                args.conns,
                args.target
            )
        })?;
        conns.push(s);
    }
    println!(
        "connected {} in {:.2} s",
        conns.len(),
        t0.elapsed().as_secs_f64()
    );
    io::stdout().flush()?;
    std::thread::sleep(Duration::from_secs_f64(args.hold));
    if args.verify {
        for (i, s) in conns.iter_mut().enumerate() {
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"x")?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b)
                .map_err(|e| format!("connection {i} did not echo: {e}"))?;
            if b != *b"x" {
                return Err(format!("connection {i} echoed {b:?}").into());
            }
        }
        println!("verified {} echoes", conns.len());
    }
    println!("done");
    Ok(())
}

/// Raises this process's descriptor limit to at least `need` (up to the hard
/// limit, which root may raise too).
fn raise_nofile(need: u64) -> io::Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur >= need {
        return Ok(());
    }
    let want = libc::rlimit {
        rlim_cur: need,
        rlim_max: lim.rlim_max.max(need),
    };
    // SAFETY: setrlimit reads a struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!(
                "need {need} descriptors, the limit is {} (hard {}): {e}",
                lim.rlim_cur, lim.rlim_max
            ),
        ));
    }
    Ok(())
}
