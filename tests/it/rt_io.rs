//! The async face's I/O: TCP, Unix and UDP sockets, files, the `futures-io`
//! bridge, and what dropping things leaves behind: a read or accept future
//! dropped mid-flight, an aborted task, a dropped runtime — no lost bytes, no
//! operation left in flight, no descriptor leaked.
//!
//! The descriptor-counting tests are `exclusive` (they run alone).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use futures::future::Either;
use futures::io::{AsyncReadExt, AsyncWriteExt};
use futures::FutureExt;
use ringport::net::{TcpListener, TcpStream};
use ringport::time::{sleep, timeout, Elapsed};
use ringport::{BackendChoice, JoinError, JoinHandle};

use crate::common::*;
use crate::rt::{block, join, pseudo_random, runtime, wait_fds, wait_idle, wait_ops, Rng};

/// Raises this process's soft descriptor limit to the hard one; returns the new
/// soft limit.
pub(crate) fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a pointer to a live local.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads one `rlimit` from a live local.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    lim.rlim_cur
}

/// Resets the connection: `SO_LINGER` 0, then close (the kernel sends RST).
pub(crate) fn reset(s: std::net::TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
    drop(s);
}

/// Asserts a read on a reset connection failed with `ECONNRESET` or saw EOF.
#[track_caller]
pub(crate) fn assert_reset_or_eof(r: &io::Result<usize>) {
    match r {
        Ok(0) => {}
        Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => {}
        other => panic!("a read after the peer's reset gave {other:?}"),
    }
}

/// Reads until end of stream, failing after `T` per read.
pub(crate) async fn read_to_eof(s: &TcpStream, out: &mut Vec<u8>) -> io::Result<()> {
    loop {
        let (r, buf) = timeout(T, s.read(Vec::with_capacity(16 * 1024))).await?;
        match r? {
            0 => return Ok(()),
            n => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// The 16-byte message client `i` sends.
pub(crate) fn message(i: usize) -> Vec<u8> {
    format!("round-trip{i:06}").into_bytes()
}

/// Echoes one 16-byte message, then closes.
pub(crate) async fn echo_once(conn: TcpStream) -> io::Result<()> {
    let mut got = Vec::with_capacity(16);
    while got.len() < 16 {
        let (r, buf) = conn.read(Vec::with_capacity(16 - got.len())).await;
        match r? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => got.extend_from_slice(&buf[..n]),
        }
    }
    conn.write_all(got).await.0
}

/// Accepts forever, a task per connection; counts echoes and failures.
pub(crate) async fn echo_server(
    l: TcpListener,
    served: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
) -> io::Result<()> {
    loop {
        let (conn, _) = l.accept().await?;
        let (served, failed) = (served.clone(), failed.clone());
        ringport::spawn(async move {
            match echo_once(conn).await {
                Ok(()) => served.fetch_add(1, Ordering::SeqCst),
                Err(_) => failed.fetch_add(1, Ordering::SeqCst),
            };
        });
    }
}

/// One client: connect, send its message, read the echo up to the server's close.
pub(crate) async fn round_trip(addr: SocketAddr, i: usize) -> io::Result<()> {
    let c = TcpStream::connect(addr).await?;
    let msg = message(i);
    c.write_all(msg.clone()).await.0?;
    let mut got = Vec::new();
    read_to_eof(&c, &mut got).await?;
    if got != msg {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("client {i} sent {msg:?}, got back {got:?}"),
        ));
    }
    Ok(())
}

backend_test!(
    ten_thousand_tasks_each_make_a_tcp_round_trip,
    |choice: BackendChoice| {
        const CLIENTS: usize = 10_000;
        let soft = raise_fd_limit();
        // Each connection takes two descriptors, and the other backend's run of this
        // test may be going on at once: batches that fit four per connection.
        let room = soft.saturating_sub(fd_count() as u64 + 1024) / 4;
        let batch = room.clamp(16, 1000) as usize;

        let rt = runtime(choice);
        let h = rt.handle().clone();
        let served = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let (s, f) = (served.clone(), failed.clone());
        let (addr, server) = block(&h, async move {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = l.local_addr().expect("local_addr");
            (addr, ringport::spawn(echo_server(l, s, f)))
        });

        for start in (0..CLIENTS).step_by(batch) {
            let end = (start + batch).min(CLIENTS);
            let results = block(&h, async move {
                let tasks: Vec<_> = (start..end)
                    .map(|i| ringport::spawn(timeout(T, round_trip(addr, i))))
                    .collect();
                let mut out = Vec::with_capacity(tasks.len());
                for t in tasks {
                    out.push(match t.await {
                        Ok(Ok(r)) => r,
                        Ok(Err(Elapsed)) => Err(io::Error::new(io::ErrorKind::TimedOut, Elapsed)),
                        Err(e) => Err(e.into()),
                    });
                }
                out
            });
            for (k, r) in results.into_iter().enumerate() {
                if let Err(e) = r {
                    panic!(
                        "client {} of batch {start}..{end} (size {batch}) failed: {e}",
                        start + k
                    );
                }
            }
        }
        // A server task counts its echo after closing the connection, so after
        // its client may have finished.
        wait_until("every server task has counted its echo", || {
            served.load(Ordering::SeqCst) + failed.load(Ordering::SeqCst) >= CLIENTS
        });
        assert_eq!(failed.load(Ordering::SeqCst), 0, "server tasks failed");
        assert_eq!(served.load(Ordering::SeqCst), CLIENTS);
        assert!(!server.is_finished(), "the accept loop ended: {server:?}");
        server.abort();
        match join(&h, server) {
            Err(JoinError::Cancelled) => {}
            other => panic!("the aborted accept loop gave {other:?}"),
        }
        wait_idle(&h);
    }
);

backend_test!(exclusive abort_mid_read_cancels_the_receive_and_closes_the_socket, |choice: BackendChoice| {
    let rt = runtime(choice);
    let h = rt.handle().clone();
    let before = fd_count();
    let (mut peer, server) = tcp_pair();
    let s = block(&h, async move { TcpStream::from_std(server).expect("from_std") });
    let task = rt.spawn(async move {
        let (r, buf) = s.read(Vec::with_capacity(64)).await;
        (r.map_err(|e| e.to_string()), buf)
    });
    wait_ops(&h, 1);
    assert!(!task.is_finished(), "the read returned with nothing sent");
    task.abort();
    match join(&h, task) {
        Err(JoinError::Cancelled) => {}
        other => panic!("an aborted task gave {other:?}"),
    }
    wait_idle(&h);
    wait_fds(before + 1, "the aborted task's socket is closed; the peer's is open");
    // The peer sees an orderly close, not a hang.
    peer.set_read_timeout(Some(T)).unwrap();
    let mut b = [0u8; 8];
    assert_eq!(peer.read(&mut b).expect("peer read"), 0);
    drop(peer);
    wait_fds(before, "every socket of the test is closed");
});

backend_test!(
    abort_mid_read_on_a_shared_stream_loses_no_data,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle().clone();
        let (mut peer, server) = tcp_pair();
        let s = Arc::new(block(&h, async move {
            TcpStream::from_std(server).expect("from_std")
        }));
        for round in 0..20 {
            let s2 = s.clone();
            let task = rt.spawn(async move {
                s2.read(Vec::with_capacity(64))
                    .await
                    .0
                    .map_err(|e| e.kind())
            });
            wait_ops(&h, 1);
            task.abort();
            match join(&h, task) {
                Err(JoinError::Cancelled) => {}
                other => panic!("round {round}: an aborted task gave {other:?}"),
            }
            // Sent right after the abort, possibly into the orphaned receive.
            let msg = format!("after abort #{round}").into_bytes();
            peer.write_all(&msg).unwrap();
            let s3 = s.clone();
            let want = msg.len();
            let got = block(&h, async move {
                let mut got = Vec::new();
                while got.len() < want {
                    let (r, buf) = timeout(T, s3.read(Vec::with_capacity(64)))
                        .await
                        .expect("a read after the abort hung");
                    let n = r.expect("read after the abort");
                    assert!(n > 0, "EOF on an open stream");
                    got.extend_from_slice(&buf[..n]);
                }
                got
            });
            assert_eq!(got, msg, "round {round}: bytes sent after the abort");
            wait_idle(&h);
        }
    }
);

backend_test!(exclusive dropped_reads_lose_no_bytes_and_leak_nothing, |choice: BackendChoice| {
    const RACES: usize = 10_000;
    let rt = runtime(choice);
    let h = rt.handle().clone();
    let before = fd_count();
    let (peer, server) = tcp_pair();
    let expected = pseudo_random(RACES / 3 * 64 + 100_000, 42);

    // The peer writes what it is told to, on its own thread, then the rest, then
    // closes its side.
    let exp = expected.clone();
    let (tx, rx) = mpsc::channel::<usize>();
    let writer = thread::spawn(move || {
        let mut peer = peer;
        let mut pos = 0;
        while let Ok(n) = rx.recv() {
            let end = (pos + n).min(exp.len());
            peer.write_all(&exp[pos..end]).expect("peer write");
            pos = end;
        }
        peer.write_all(&exp[pos..]).expect("peer write");
        peer.shutdown(Shutdown::Write).expect("peer shutdown");
        peer
    });

    let hh = h.clone();
    let (got, (dropped, stashed, peak_ops), s) = block(&h, async move {
        let s = TcpStream::from_std(server).expect("from_std");
        let mut rng = Rng::new(7);
        let mut got = Vec::new();
        let (mut dropped, mut peak_ops) = (0usize, 0usize);
        let mut stashed = 0usize;
        for i in 0..RACES {
            if i % 3 == 0 {
                tx.send(rng.below(128) + 1).expect("writer alive");
            }
            let read = s.read(Vec::with_capacity(rng.below(512) + 1));
            // Race the read against a zero or tiny timer, or a yield.
            let r = match i % 4 {
                0 => timeout(Duration::ZERO, read).await.ok(),
                1 => timeout(Duration::from_micros(1), read).await.ok(),
                2 => timeout(Duration::from_micros(50), read).await.ok(),
                _ => match futures::future::select(pin!(read), pin!(ringport::yield_now())).await {
                    Either::Left((r, _)) => Some(r),
                    Either::Right(_) => None,
                },
            };
            match r {
                Some((Ok(n), buf)) => {
                    if i % 4 == 0 {
                        // A zero timeout only lets a read through that finds
                        // bytes a dropped read received.
                        stashed += 1;
                    }
                    assert!(n > 0, "race {i}: EOF before the peer closed");
                    assert_eq!(buf.len(), n);
                    got.extend_from_slice(&buf);
                }
                Some((Err(e), _)) => panic!("race {i}: read failed: {e}"),
                None => dropped += 1,
            }
            if i % 250 == 0 {
                peak_ops = peak_ops.max(hh.ops_in_flight());
                assert_eq!(hh.live_tasks(), 0);
            }
        }
        drop(tx);
        read_to_eof(&s, &mut got).await.expect("drain to EOF");
        (got, (dropped, stashed, peak_ops), s)
    });
    let peer = writer.join().expect("writer thread");
    assert_eq!(got.len(), expected.len(), "byte count");
    if let Some(at) = got.iter().zip(&expected).position(|(a, b)| a != b) {
        panic!("the bytes read differ from those written at offset {at}");
    }
    assert!(dropped >= RACES / 10, "only {dropped} of {RACES} reads were dropped");
    assert!(
        stashed > 0,
        "no dropped read had received bytes: the race this test is for never happened"
    );
    assert!(peak_ops <= 64, "{peak_ops} operations in flight at once: dropped reads pile up");
    wait_idle(&h);
    wait_fds(before + 2, "only the stream and its peer are open");
    drop((s, peer));
    wait_fds(before, "every socket of the test is closed");
});

backend_test!(exclusive an_accept_dropped_as_a_connection_arrives_leaks_nothing, |choice: BackendChoice| {
    const ROUNDS: usize = 300;
    let rt = runtime(choice);
    let h = rt.handle().clone();
    let before = fd_count();
    let (accepted, dropped, clients) = block(&h, async move {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("local_addr");
        // Connects on its own thread each time it is told to.
        let (tx, rx) = mpsc::channel::<()>();
        let connector = thread::spawn(move || {
            let mut v = Vec::new();
            while rx.recv().is_ok() {
                v.push(std::net::TcpStream::connect(addr).expect("connect"));
            }
            v
        });
        let (mut accepted, mut dropped) = (0, 0);
        for i in 0..ROUNDS {
            tx.send(()).expect("connector alive");
            let d = Duration::from_micros([0, 1, 20, 100, 500][i % 5]);
            match timeout(d, l.accept()).await {
                Ok(Ok((conn, _))) => {
                    accepted += 1;
                    drop(conn);
                }
                Ok(Err(e)) => panic!("accept #{i} failed: {e}"),
                Err(Elapsed) => dropped += 1,
            }
        }
        drop(tx);
        let clients = connector.join().expect("connector thread");
        // Connections still in the backlog are reset by the close.
        drop(l);
        (accepted, dropped, clients)
    });
    assert_eq!(clients.len(), ROUNDS);
    assert!(dropped > 0, "no accept was dropped ({accepted} accepted)");
    // Whatever became of each connection (accepted and closed, accepted by a
    // dropped accept and closed, or reset in the backlog), its server side is
    // closed: no client waits.
    for mut c in clients {
        c.set_read_timeout(Some(T)).unwrap();
        let mut b = [0u8; 8];
        assert_reset_or_eof(&c.read(&mut b));
    }
    wait_idle(&h);
    wait_fds(before, "every accepted socket is closed");
});

backend_test!(exclusive dropping_the_runtime_cancels_blocked_tasks_and_closes_their_sockets, |choice: BackendChoice| {
    const READERS: usize = 8;
    const SLEEPERS: usize = 8;
    let before = fd_count();
    let rt = runtime(choice);
    let h = rt.handle().clone();
    let mut peers = Vec::new();
    let mut servers = Vec::new();
    for _ in 0..READERS {
        let (p, s) = tcp_pair();
        peers.push(p);
        servers.push(s);
    }
    let tasks: Vec<JoinHandle<&'static str>> = block(&h, async move {
        let mut tasks = Vec::new();
        for s in servers {
            let s = TcpStream::from_std(s).expect("from_std");
            tasks.push(ringport::spawn(async move {
                let _ = s.read(Vec::with_capacity(64)).await;
                "a read returned"
            }));
        }
        for _ in 0..SLEEPERS {
            tasks.push(ringport::spawn(async {
                sleep(Duration::from_secs(3600)).await;
                "an hour passed"
            }));
        }
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        tasks.push(ringport::spawn(async move {
            let _ = l.accept().await;
            "an accept returned"
        }));
        tasks
    });
    let n = READERS + SLEEPERS + 1;
    wait_ops(&h, n);
    assert_eq!(h.live_tasks(), n);
    drop(h);

    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        drop(rt);
        let _ = tx.send(());
    });
    rx.recv_timeout(T)
        .expect("dropping a runtime with blocked tasks did not return");
    for (i, t) in tasks.into_iter().enumerate() {
        match t.now_or_never() {
            Some(Err(JoinError::Cancelled)) => {}
            other => panic!("task {i} after the runtime's drop: {other:?}"),
        }
    }
    // Each reader's socket was closed by the drop: its peer reads EOF.
    for mut p in peers {
        p.set_read_timeout(Some(T)).unwrap();
        let mut b = [0u8; 8];
        assert_eq!(p.read(&mut b).expect("peer read"), 0);
    }
    wait_fds(before, "the runtime and every socket are closed");
});

backend_test!(
    a_read_after_the_peer_resets_fails_or_sees_eof,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle().clone();

        // The reset comes while the read is in flight.
        let (peer, server) = tcp_pair();
        let s = block(
            &h,
            async move { TcpStream::from_std(server).expect("from_std") },
        );
        let task = rt.spawn(async move {
            let first = s.read(Vec::with_capacity(64)).await.0;
            let second = s.read(Vec::with_capacity(64)).await.0;
            (first, second)
        });
        wait_ops(&h, 1);
        reset(peer);
        let (first, second) = join(&h, task).expect("reader task");
        assert_reset_or_eof(&first);
        assert_reset_or_eof(&second);

        // The reset came before the read.
        let (peer, server) = tcp_pair();
        reset(peer);
        let (first, second) = block(&h, async move {
            let s = TcpStream::from_std(server).expect("from_std");
            let first = s.read(Vec::with_capacity(64)).await.0;
            let second = s.read(Vec::with_capacity(64)).await.0;
            (first, second)
        });
        assert_reset_or_eof(&first);
        assert_reset_or_eof(&second);

        // The same through AsyncRead.
        let (peer, server) = tcp_pair();
        reset(peer);
        let r = block(&h, async move {
            let mut s = TcpStream::from_std(server).expect("from_std");
            let mut b = [0u8; 16];
            AsyncReadExt::read(&mut s, &mut b).await
        });
        assert_reset_or_eof(&r);
        wait_idle(&h);
    }
);

static SIGPIPES: AtomicUsize = AtomicUsize::new(0);

extern "C" fn count_sigpipe(_: libc::c_int) {
    SIGPIPES.fetch_add(1, Ordering::SeqCst);
}

/// Counts SIGPIPEs while alive (the test harness ignores them, which would hide
/// one), then restores the previous disposition.
struct SigpipeCounter(libc::sigaction);

impl SigpipeCounter {
    fn install() -> SigpipeCounter {
        SIGPIPES.store(0, Ordering::SeqCst);
        // SAFETY: both sigaction structs are live, zero-initialised (a valid
        // empty mask and flags) locals; the handler only touches an atomic, which
        // is async-signal-safe.
        unsafe {
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = count_sigpipe as extern "C" fn(libc::c_int) as libc::sighandler_t;
            let mut old: libc::sigaction = std::mem::zeroed();
            assert_eq!(libc::sigaction(libc::SIGPIPE, &new, &mut old), 0);
            SigpipeCounter(old)
        }
    }
}

impl Drop for SigpipeCounter {
    fn drop(&mut self) {
        // SAFETY: restores the disposition `install` saved, from a live struct.
        unsafe {
            libc::sigaction(libc::SIGPIPE, &self.0, std::ptr::null_mut());
        }
    }
}

/// Asserts a write to a closed peer failed with `EPIPE` or `ECONNRESET`.
#[track_caller]
pub(crate) fn assert_broken_pipe(e: &io::Error) {
    match e.raw_os_error() {
        Some(libc::EPIPE) | Some(libc::ECONNRESET) => {}
        _ => panic!("a write to a closed peer failed with {e:?}, not EPIPE/ECONNRESET"),
    }
}

// Exclusive: the SIGPIPE count must be this test's alone.
backend_test!(exclusive writing_to_a_closed_peer_fails_without_sigpipe, |choice: BackendChoice| {
    let counter = SigpipeCounter::install();
    let rt = runtime(choice);
    let h = rt.handle().clone();

    // Owned-buffer write_all.
    let (peer, server) = tcp_pair();
    drop(peer);
    let e = block(&h, async move {
        let s = TcpStream::from_std(server).expect("from_std");
        let mut chunk = vec![7u8; 64 * 1024];
        for _ in 0..10_000 {
            let (r, b) = timeout(T, s.write_all(chunk)).await.expect("a write hung");
            if let Err(e) = r {
                return e;
            }
            chunk = if b.is_empty() { vec![7u8; 64 * 1024] } else { b };
        }
        panic!("10,000 writes of 64 KiB to a closed peer all succeeded");
    });
    assert_broken_pipe(&e);

    // The AsyncWrite bridge (write-behind: the error surfaces on a later call).
    let (peer, server) = tcp_pair();
    reset(peer);
    let e = block(&h, async move {
        let mut s = TcpStream::from_std(server).expect("from_std");
        let chunk = vec![9u8; 64 * 1024];
        for _ in 0..10_000 {
            let r = timeout(T, async {
                AsyncWriteExt::write_all(&mut s, &chunk).await?;
                s.flush().await
            })
            .await
            .expect("a write hung");
            if let Err(e) = r {
                return e;
            }
        }
        panic!("10,000 writes of 64 KiB to a reset peer all succeeded");
    });
    assert_broken_pipe(&e);
    wait_idle(&h);
    assert_eq!(SIGPIPES.load(Ordering::SeqCst), 0, "a write raised SIGPIPE");
    drop(counter);
});

backend_test!(
    futures_io_bridge_round_trips_and_closes,
    |choice: BackendChoice| {
        const MIB: usize = 1 << 20;
        let rt = runtime(choice);
        let h = rt.handle().clone();
        block(&h, async move {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = l.local_addr().expect("local_addr");
            let payload = pseudo_random(MIB, 1);
            let message = pseudo_random(10_007, 2);
            let (p, m) = (payload.clone(), message.clone());
            let server = ringport::spawn(async move {
                let (mut c, _) = l.accept().await?;
                let mut buf = vec![0u8; MIB];
                c.read_exact(&mut buf).await?;
                assert!(buf == p, "the server received other bytes than were sent");
                AsyncWriteExt::write_all(&mut c, &buf).await?;
                c.flush().await?;
                // The client's close() is our end of stream.
                let mut rest = Vec::new();
                let n = c.read_to_end(&mut rest).await?;
                assert_eq!(n, 0, "bytes after the payload");
                AsyncWriteExt::write_all(&mut c, &m).await?;
                c.close().await?;
                Ok::<(), io::Error>(())
            });

            let mut c = TcpStream::connect(addr).await.expect("connect");
            AsyncWriteExt::write_all(&mut c, &payload)
                .await
                .expect("write_all");
            c.flush().await.expect("flush");
            let mut back = vec![0u8; MIB];
            timeout(T, c.read_exact(&mut back))
                .await
                .expect("read_exact hung")
                .expect("read_exact");
            assert!(back == payload, "the echo differs from the payload");
            c.close().await.expect("close");

            // Seven bytes at a time reassemble the server's message.
            let mut got = Vec::new();
            let mut small = [0u8; 7];
            loop {
                let n = timeout(T, AsyncReadExt::read(&mut c, &mut small))
                    .await
                    .expect("a small read hung")
                    .expect("small read");
                if n == 0 {
                    break;
                }
                assert!(n <= small.len());
                got.extend_from_slice(&small[..n]);
            }
            assert!(got == message, "reassembled {} bytes, differing", got.len());
            timeout(T, server)
                .await
                .expect("server hung")
                .expect("server task")
                .expect("server");
        });
        wait_idle(&h);
    }
);

backend_test!(
    accept_waits_for_a_late_client_and_takes_every_waiting_one,
    |choice: BackendChoice| {
        // The listener is non-blocking (accept tries `accept4` inline first):
        // an accept with nobody waiting must still wait, through the port,
        // for the client that comes 100 ms later; and connections already
        // waiting are taken, every one, with the right peers.
        let rt = runtime(choice);
        let h = rt.handle().clone();
        let (addr, late) = block(&h, async {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = l.local_addr().expect("local_addr");
            (addr, ringport::spawn(async move { (l.accept().await, l) }))
        });
        thread::sleep(Duration::from_millis(100));
        assert!(
            !late.is_finished(),
            "accept returned with nobody connecting"
        );
        let first = std::net::TcpStream::connect(addr).unwrap();
        let (got, l) = join(&h, late).expect("the accept task");
        let (_s, peer) = got.expect("the late client is accepted");
        assert_eq!(peer, first.local_addr().unwrap());
        // 40 clients queue in the backlog before anyone accepts.
        let clients: Vec<_> = (0..40)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        let peers = block(&h, async move {
            let mut peers = Vec::new();
            for _ in 0..40 {
                let (s, p) = l.accept().await.expect("accept from the backlog");
                drop(s);
                peers.push(p);
            }
            peers
        });
        let mut want: Vec<_> = clients.iter().map(|c| c.local_addr().unwrap()).collect();
        let mut got = peers;
        want.sort();
        got.sort();
        assert_eq!(got, want, "every waiting client accepted once");
    }
);
