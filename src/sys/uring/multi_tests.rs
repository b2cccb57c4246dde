//! The io_uring driver without multishot requests (and without a buffer ring):
//! the emulation (a one-shot request resubmitted after each completion) gives
//! the same completions as the kernel's multishot, on real sockets.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::multi::MultiSupport;
use super::*;
use crate::provided::BufferPool;

const T: Duration = Duration::from_secs(10);

fn driver(pbuf_ring: bool) -> Driver {
    Driver::with_support_multi(
        Config {
            entries: 16,
            max_in_flight: 64,
        },
        |_| {},
        Some(MultiSupport {
            pbuf_ring,
            accept: false,
            recv: false,
        }),
    )
    .expect("io_uring")
}

thread_local! {
    /// Completions reaped but not yet looked at (one test per thread).
    static PENDING: std::cell::RefCell<Vec<Completion>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The next completion, in order; it must be of `id`.
fn next(d: &Driver, id: OpId) -> Completion {
    let deadline = Instant::now() + T;
    while Instant::now() < deadline {
        let c = PENDING.with(|p| {
            let mut p = p.borrow_mut();
            if p.is_empty() {
                d.poll(Some(Duration::from_millis(50)), &mut p, PollMode::Poller)
                    .unwrap();
            }
            (!p.is_empty()).then(|| p.remove(0))
        });
        if let Some(c) = c {
            assert_eq!(c.op_id(), Some(id), "stray completion {c:?}");
            return c;
        }
    }
    panic!("no completion within {T:?}");
}

fn submit(d: &Driver, op: Op) -> OpId {
    let (id, now) = d
        .submit(op, 7, 1, true)
        .map_err(|(e, _)| e)
        .expect("submit");
    assert!(now.is_none());
    id
}

fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    (c, l.accept().unwrap().0)
}

#[test]
fn the_paths_say_emulated() {
    let d = driver(true);
    let p = d.op_paths();
    assert_eq!(p.get(OpKind::AcceptMulti), Some(OpPath::Emulated));
    assert_eq!(p.get(OpKind::RecvMulti), Some(OpPath::Emulated));
}

#[test]
fn an_emulated_accept_accepts_each_connection() {
    let d = driver(true);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let id = submit(&d, Op::accept_multishot(&l));
    let clients: Vec<_> = (0..5)
        .map(|_| TcpStream::connect(l.local_addr().unwrap()).unwrap())
        .collect();
    for i in 0..clients.len() {
        let mut c = next(&d, id);
        assert!(c.more() && c.take_fd().is_some(), "{c:?}");
        assert_eq!(c.seq(), i as u32);
    }
    d.cancel(id).unwrap();
    let end = next(&d, id);
    assert!(end.is_cancelled() && !end.more(), "{end:?}");
    assert_eq!(d.in_flight(), 0);
}

/// Messages byte-exact, then EOF, with buffers from `pool`.
fn receives_then_eof(d: &Driver, pool: &BufferPool) {
    let (mut a, b) = tcp_pair();
    let id = submit(d, Op::recv_multishot(&b, pool));
    for msg in [&b"one"[..], b"two!", b"three"] {
        a.write_all(msg).unwrap();
        let mut c = next(d, id);
        assert!(c.more(), "{c:?}");
        assert_eq!(c.take_pooled().as_deref(), Some(msg));
    }
    drop(a);
    let end = next(d, id);
    assert_eq!(end.result.as_ref().ok(), Some(&0), "{end:?}");
    assert!(!end.more());
    assert_eq!(pool.available(), pool.count());
}

#[test]
fn an_emulated_receive_with_a_buffer_ring() {
    let d = driver(true);
    let pool = BufferPool {
        shared: d.buffer_pool(4, 64).unwrap(),
    };
    assert!(pool.is_kernel_ring());
    receives_then_eof(&d, &pool);
}

#[test]
fn an_emulated_receive_with_a_free_list() {
    let d = driver(false);
    let pool = BufferPool {
        shared: d.buffer_pool(2, 64).unwrap(),
    };
    assert!(!pool.is_kernel_ring());
    receives_then_eof(&d, &pool);
    // An empty pool ends it with ENOBUFS; the data waits in the socket.
    let (mut a, b) = tcp_pair();
    let id = submit(&d, Op::recv_multishot(&b, &pool));
    a.write_all(b"x").unwrap();
    let first = next(&d, id).take_pooled().unwrap();
    a.write_all(b"y").unwrap();
    let second = next(&d, id).take_pooled().unwrap();
    let end = next(&d, id);
    assert_eq!(
        end.result.as_ref().unwrap_err().raw_os_error(),
        Some(libc::ENOBUFS)
    );
    assert_eq!((&first[..], &second[..]), (&b"x"[..], &b"y"[..]));
    drop((first, second));
    a.write_all(b"z").unwrap();
    let id = submit(&d, Op::recv_multishot(&b, &pool));
    assert_eq!(next(&d, id).take_pooled().as_deref(), Some(&b"z"[..]));
    // A cancel ends it, and the buffer its one-shot held goes back.
    d.cancel(id).unwrap();
    assert!(next(&d, id).is_cancelled());
    assert_eq!(pool.available(), 2);
}

#[test]
fn an_unused_ring_pool_is_unregistered_and_its_group_reused() {
    let d = Driver::new(Config {
        entries: 16,
        max_in_flight: 64,
    })
    .expect("io_uring");
    if !d.multi.pbuf_ring {
        eprintln!("skipped: this kernel has no provided-buffer rings");
        return;
    }
    let a = d.buffer_pool(4, 64).unwrap();
    let b = d.buffer_pool(4, 64).unwrap();
    let group = |p: &std::sync::Arc<crate::provided::Shared>| p.ring_addr().unwrap().2;
    assert_eq!((group(&a), group(&b)), (0, 1));
    drop(a);
    // The next pool made finds group 0 unused (only the table held it).
    let c = d.buffer_pool(4, 64).unwrap();
    assert_eq!(group(&c), 0);
    // A pool still in use keeps its group.
    assert_eq!(group(&d.buffer_pool(4, 64).unwrap()), 2);
    drop(b);
}

/// An emulated multishot receive whose socket's association ends while a
/// one-shot's completion waits in the ring, unreaped: its data is delivered,
/// then it ends cancelled, and it sends no further one-shot on the number —
/// which another socket has taken by then (it used to read that socket's
/// bytes, and stay armed there: a review, session 17).
#[test]
fn an_emulated_receive_ends_with_its_association() {
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    for ring in [true, false] {
        let d = driver(ring);
        let pool = BufferPool {
            shared: d.buffer_pool(4, 64).unwrap(),
        };
        let (mut a, b) = tcp_pair();
        d.associate(b.as_raw_fd());
        let id = submit(&d, Op::recv_multishot(&b, &pool));
        a.write_all(b"data").unwrap();
        // (Setup: the one-shot's completion is posted, and nobody reaps.)
        std::thread::sleep(Duration::from_millis(100));
        let n = b.as_raw_fd();
        d.disassociate(n, true);
        drop(b);
        // Another socket gets the number, and has bytes waiting.
        let (mut x, mut peer) = std::os::unix::net::UnixStream::pair().unwrap();
        if peer.as_raw_fd() == n {
            std::mem::swap(&mut x, &mut peer);
        }
        let mut other = if x.as_raw_fd() == n {
            x
        } else {
            // SAFETY: dup2 onto `n`, which nothing in this test holds any more.
            assert_eq!(unsafe { libc::dup2(x.as_raw_fd(), n) }, n);
            // SAFETY: `n` is now a descriptor this test owns (the duplicate).
            std::os::unix::net::UnixStream::from(unsafe { OwnedFd::from_raw_fd(n) })
        };
        peer.write_all(b"SECRET").unwrap();
        let mut got = Vec::new();
        loop {
            let mut c = next(&d, id);
            got.extend(c.take_pooled().map(|b| b.to_vec()));
            if !c.more() {
                assert!(c.is_cancelled(), "ring {ring}: {c:?}");
                break;
            }
        }
        assert!(
            got.iter().all(|g| g.as_slice() == b"data"),
            "ring {ring}: the ended receive read {got:?}"
        );
        other.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(
            other.read(&mut buf).ok(),
            Some(6),
            "ring {ring}: its bytes stay"
        );
        assert_eq!(pool.available(), 4, "ring {ring}");
    }
}
