//! The io_uring driver with every optional opcode switched off: each operation
//! takes its fallback (worker thread, inline call, buffer transfer, emulated
//! timer) and still gives the same results, on real files and sockets.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use super::*;

const T: Duration = Duration::from_secs(10);

fn driver() -> Driver {
    Driver::with_support(
        Config {
            entries: 16,
            max_in_flight: 64,
        },
        |s| {
            *s = Support {
                splice: false,
                link_timeout: false,
                readv: false,
                writev: false,
                openat: false,
                statx: false,
                fallocate: false,
                send_zc: false,
                fixed: false,
            }
        },
    )
    .expect("io_uring")
}

/// Submits `op` and waits for its completion (failing after `T`).
fn run(d: &Driver, op: Op) -> Completion {
    let (id, now) = d
        .submit(op, 7, 1, true)
        .map_err(|(e, _)| e)
        .expect("submit");
    if let Some(c) = now {
        return c;
    }
    let mut out = Vec::new();
    let deadline = Instant::now() + T;
    while Instant::now() < deadline {
        d.poll(Some(Duration::from_millis(50)), &mut out, PollMode::Poller)
            .unwrap();
        if let Some(i) = out.iter().position(|c| c.op_id() == Some(id)) {
            let c = out.swap_remove(i);
            assert!(out.is_empty(), "stray completions: {out:?}");
            return c;
        }
    }
    panic!("no completion within {T:?}");
}

/// Nothing completes for a moment: no stray completion (a timer's).
fn assert_quiet(d: &Driver) {
    let mut out = Vec::new();
    d.poll(Some(Duration::from_millis(60)), &mut out, PollMode::Poller)
        .unwrap();
    assert!(out.is_empty(), "stray completions: {out:?}");
    assert_eq!(d.in_flight(), 0);
}

fn temp_file(tag: &str) -> (std::path::PathBuf, std::fs::File) {
    let p = std::env::temp_dir().join(format!("ringport-fb-{tag}-{}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    (p, f)
}

fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    (c, l.accept().unwrap().0)
}

#[test]
fn the_paths_say_where_each_op_goes() {
    let d = driver();
    let p = d.op_paths();
    for k in [
        OpKind::ReadV,
        OpKind::WriteV,
        OpKind::OpenAt,
        OpKind::Statx,
        OpKind::Fallocate,
    ] {
        assert_eq!(p.get(k), Some(OpPath::Worker), "{k:?}");
    }
    assert_eq!(p.get(OpKind::SendFile), Some(OpPath::Emulated));
    assert_eq!(p.get(OpKind::Shutdown), Some(OpPath::Uring), "required");
    assert_eq!(p.get(OpKind::Recv), Some(OpPath::Uring));
    assert_eq!(p.get(OpKind::SendZc), Some(OpPath::Emulated));
    assert_eq!(p.get(OpKind::ReadFixed), Some(OpPath::Worker));
    assert_eq!(p.get(OpKind::WriteFixed), Some(OpPath::Worker));
    assert_eq!(p.link_timeout(), OpPath::Emulated);
}

#[test]
fn send_zc_without_the_opcode_is_a_plain_send() {
    let d = driver();
    let (a, mut b) = tcp_pair();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let mut sent = 0;
    let mut buf = data.clone();
    while sent < data.len() {
        let mut c = run(&d, Op::send_zc_from(&a, buf, sent));
        assert_eq!(c.kind(), OpKind::SendZc);
        sent += c.result.expect("send");
        buf = c.buf.take().expect("the buffer comes back");
    }
    assert_eq!(buf, data);
    let mut got = vec![0; data.len()];
    b.read_exact(&mut got).unwrap();
    assert_eq!(got, data);
    assert_quiet(&d);
}

#[test]
fn fixed_buffers_without_registration_run_on_workers() {
    let d = driver();
    let set = crate::fixed::unregistered(d.fixed_owner(), 2, 64);
    let (path, file) = temp_file("fixed");
    let mut buf = set.lease().unwrap();
    buf.extend_from_slice(b"fixed, on a worker");
    let mut c = run(&d, Op::write_fixed(&file, buf, 0));
    assert_eq!(
        (c.kind(), c.result.as_ref().ok()),
        (OpKind::WriteFixed, Some(&18))
    );
    let mut buf = c.take_fixed().unwrap();
    buf.clear();
    let mut c = run(&d, Op::read_fixed(&file, buf, 7));
    assert_eq!(c.result.as_ref().ok(), Some(&11));
    assert_eq!(&c.take_fixed().unwrap()[..], b"on a worker");
    // A lease of another driver's set is refused, and comes back.
    let other = crate::fixed::unregistered(u64::MAX, 1, 64);
    let mut c = run(&d, Op::read_fixed(&file, other.lease().unwrap(), 0));
    assert!(c.take_fixed().is_some());
    assert_eq!(
        c.result.as_ref().unwrap_err().raw_os_error(),
        Some(libc::EINVAL)
    );
    drop(c);
    assert_eq!((set.available(), other.available()), (2, 1));
    std::fs::remove_file(path).unwrap();
    assert_quiet(&d);
}

#[test]
fn file_ops_run_on_workers() {
    let d = driver();
    let (path, file) = temp_file("files");

    let c = run(
        &d,
        Op::writev_at(&file, vec![b"hello ".to_vec(), b"world".to_vec()], 0),
    );
    assert_eq!(
        (c.kind(), c.result.as_ref().ok()),
        (OpKind::WriteV, Some(&11))
    );
    let mut c = run(
        &d,
        Op::readv_at(&file, vec![Vec::with_capacity(5), Vec::with_capacity(9)], 0),
    );
    assert_eq!(c.result.as_ref().ok(), Some(&11));
    assert_eq!(
        c.take_bufs().unwrap(),
        [b"hello".to_vec(), b" world".to_vec()]
    );

    let c = run(&d, Op::fallocate(&file, 0, 0, 4096));
    assert_eq!(c.result.unwrap(), 0);
    let c = run(&d, Op::statx(None, &path, 0, libc::STATX_SIZE));
    assert_eq!(c.statx().map(|s| s.stx_size), Some(4096));

    let mut c = run(&d, Op::openat(None, &path, libc::O_RDONLY, 0));
    let mut s = String::new();
    std::fs::File::from(c.take_fd().expect("opened"))
        .take(11)
        .read_to_string(&mut s)
        .unwrap();
    assert_eq!(s, "hello world");
    let c = run(
        &d,
        Op::openat(None, path.with_extension("missing"), libc::O_RDONLY, 0),
    );
    assert_eq!(c.result.unwrap_err().raw_os_error(), Some(libc::ENOENT));
    std::fs::remove_file(&path).unwrap();
    assert_quiet(&d);
}

#[test]
fn send_file_goes_through_a_buffer() {
    let d = driver();
    let (path, file) = temp_file("sendfile");
    let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    file.write_all_at(&data, 0).unwrap();
    let (client, server) = tcp_pair();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut client = client;
        client.set_read_timeout(Some(T)).unwrap();
        client.read_to_end(&mut got).unwrap();
        got
    });
    let mut sent = 0;
    while sent < data.len() {
        let c = run(
            &d,
            Op::send_file(&server, &file, sent as u64, data.len() - sent),
        );
        let n = c.result.expect("send_file");
        assert!(n > 0);
        sent += n;
    }
    let c = run(&d, Op::send_file(&server, &file, data.len() as u64, 10));
    assert_eq!(c.result.unwrap(), 0, "at EOF");
    server.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(reader.join().unwrap() == data);
    std::fs::remove_file(&path).unwrap();
    assert_quiet(&d);
}

#[test]
fn emulated_linked_timeouts_cancel_or_stand_aside() {
    let d = driver();
    let (mut client, server) = tcp_pair();
    // Fires: an idle receive is cancelled, and nothing else completes.
    let op = Op::recv(&server, Vec::with_capacity(16)).timeout_after(Duration::from_millis(20));
    let c = run(&d, op);
    assert!(c.is_cancelled(), "{:?}", c.result);
    assert_quiet(&d);
    // Does not fire: the result stands and the timer goes away.
    client.write_all(b"data").unwrap();
    let op = Op::recv(&server, Vec::with_capacity(16)).timeout_after(Duration::from_secs(30));
    assert_eq!(run(&d, op).buf.unwrap(), b"data");
    let op = Op::statx(
        Some(server.as_fd()),
        "",
        libc::AT_EMPTY_PATH,
        libc::STATX_TYPE,
    )
    .timeout_after(Duration::from_secs(30));
    assert_eq!(run(&d, op).result.unwrap(), 0);
    assert_quiet(&d);
    assert!(server.as_raw_fd() >= 0);
}
