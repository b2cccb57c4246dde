//! cargo run --example hello_port
//!
//! A pool of workers drains a completion port: a timer, a posted packet and a
//! file read complete on whichever worker is free.

use std::io::Write;
use std::sync::mpsc;
use std::time::Duration;

use ringport::{CompletionPort, Op, Pool};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = CompletionPort::builder().concurrency(2).build()?;
    println!("backend: {} ({})", port.backend(), port.backend_reason());

    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let pool = Pool::builder().spawn(&port, move |_port, c| {
        let thread = std::thread::current().name().unwrap_or("?").to_string();
        let line = format!(
            "{thread}: {:?} key={} user_data={} result={:?}",
            c.kind(),
            c.key,
            c.user_data,
            c.result
        );
        let _ = tx.lock().unwrap().send(line);
    })?;

    let path = std::env::temp_dir().join(format!("ringport-hello-{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    file.write_all(b"hello from a file")?;
    std::fs::remove_file(&path)?;
    port.associate(&file, 7)?;

    port.submit(Op::timeout(Duration::from_millis(10)), 1)?;
    port.post(0, 2, 0)?;
    port.submit(Op::read_at(&file, Vec::with_capacity(64), 0), 3)?;

    for _ in 0..3 {
        println!("{}", rx.recv_timeout(Duration::from_secs(5))?);
    }
    pool.shutdown();
    Ok(())
}
