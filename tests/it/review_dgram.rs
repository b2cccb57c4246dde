//! Session 18 review of datagram and address handling, on both backends and
//! through both faces: raw `recv_from`/`send_to`/`recv`/`send` on UDP and on
//! Unix datagram sockets, multishot receive on UDP, and the async face's
//! `UdpSocket`, `UnixListener` and `UnixStream` addresses.

use std::io;
use std::net::{SocketAddr, UdpSocket as StdUdp};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

use ringport::net::{UdpSocket, UnixListener, UnixStream};
use ringport::time::timeout;
use ringport::{BackendChoice, Op};
use socket2::SockAddr;

use crate::common::*;
use crate::rt::{block, runtime, wait_idle};

/// Fills `path`'s receive queue with datagrams from plain non-blocking
/// senders until a *fresh* sender's first datagram is refused (`EAGAIN`): the
/// receiver's queue is full (`net.unix.max_dgram_qlen`), not a sender's own
/// buffer. Returns how many datagrams went in and the senders (kept alive).
fn fill_unix_receiver(path: &std::path::Path) -> (usize, Vec<UnixDatagram>) {
    let mut senders = Vec::new();
    let mut sent = 0;
    for _ in 0..256 {
        let s = UnixDatagram::unbound().unwrap();
        s.set_nonblocking(true).unwrap();
        let mut first = true;
        loop {
            match s.send_to(b"f", path) {
                Ok(_) => sent += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if first {
                        senders.push(s);
                        return (sent, senders);
                    }
                    break;
                }
                Err(e) => panic!("filling the receiver: {e}"),
            }
            first = false;
        }
        senders.push(s);
    }
    panic!("the receiver's queue never filled");
}

/// A send on a Unix datagram socket (`connected`: by `Op::send` on a socket
/// connected to the receiver, else by `Op::send_to`; `nonblocking`: the
/// sender is `O_NONBLOCK`) while the receiver's queue is full.
///
/// epoll waits for room and sends the datagram once the receiver has read.
/// io_uring sent an *empty* datagram and completed with `Ok(0)` (the kernel
/// copies the datagram out of the buffer before it finds the queue full, and
/// io_uring's retry after its poll used the spent copy): now the driver sends
/// with `MSG_DONTWAIT` there, and the send fails with `EAGAIN`, nothing sent,
/// as it already did from a non-blocking socket. Either way: never a result
/// other than the datagram's length or `WouldBlock`, and nothing on the wire
/// but the datagram itself.
/// How the datagram is sent in [`send_to_a_full_unix_receiver`].
#[derive(Clone, Copy, PartialEq)]
enum How {
    SendTo,
    Send,
    SendZc,
    WriteFixed,
}

fn send_to_a_full_unix_receiver(choice: BackendChoice, how: How, nonblocking: bool) {
    let connected = how != How::SendTo;
    let port = port(choice);
    let dir = TempDir::new("rev-dgram-full");
    let path = dir.path("rx");
    let rx = UnixDatagram::bind(&path).unwrap();
    rx.set_nonblocking(true).unwrap();
    let tx = UnixDatagram::unbound().unwrap();
    tx.set_nonblocking(nonblocking).unwrap();
    if connected {
        tx.connect(&path).unwrap();
    }
    let (filled, _fillers) = fill_unix_receiver(&path);
    assert!(filled > 0);
    port.associate(&tx, 5).unwrap();
    let bufs = port.register_buffers(1, 64).unwrap();
    let op = match how {
        How::SendTo => Op::send_to(&tx, b"late".to_vec(), SockAddr::unix(&path).unwrap()),
        How::Send => Op::send(&tx, b"late".to_vec()),
        How::SendZc => Op::send_zc(&tx, b"late".to_vec()),
        How::WriteFixed => {
            let mut b = bufs.lease().unwrap();
            b.extend_from_slice(b"late");
            Op::write_fixed(&tx, b, 0)
        }
    };
    port.submit(op, 1).unwrap();
    let early = match port.get(Some(std::time::Duration::from_millis(50))) {
        Err(ringport::Error::Timeout) => None,
        Ok(c) => Some(c),
        Err(e) => panic!("{e:?}"),
    };
    // Drain the receiver: now there is room.
    let mut buf = [0u8; 16];
    let mut drained = 0;
    while let Ok(n) = rx.recv(&mut buf) {
        assert_eq!(&buf[..n], b"f", "only the fillers' datagrams so far");
        drained += 1;
    }
    assert!(drained >= filled.min(1));
    match early {
        // It waited: it must send the datagram now.
        None => {
            let c = get(&port);
            let mut last = None;
            wait_until("a datagram after the fillers'", || {
                match rx.recv(&mut buf) {
                    Ok(n) => {
                        last = Some(buf[..n].to_vec());
                        true
                    }
                    Err(_) => false,
                }
            });
            assert_eq!(
                (c.result.as_ref().ok(), last.as_deref()),
                (Some(&4), Some(&b"late"[..])),
                "what the send reported, and what arrived"
            );
        }
        // It did not wait: WouldBlock, nothing sent, the buffer back.
        Some(mut c) => {
            assert_eq!(
                c.result.as_ref().map_err(|e| e.kind()),
                Err(io::ErrorKind::WouldBlock),
                "{:?}",
                c.result
            );
            match c.take_fixed() {
                Some(b) => assert_eq!(&b[..], b"late"),
                None => assert_eq!(c.buf.take().unwrap(), b"late"),
            }
            assert!(rx.recv(&mut buf).is_err(), "something was sent");
        }
    }
}

backend_test!(
    unix_send_to_a_full_unconnected_receiver_completes_once_it_drains,
    |choice: BackendChoice| {
        send_to_a_full_unix_receiver(choice, How::SendTo, false);
    }
);

backend_test!(
    unix_send_to_a_full_receiver_from_a_non_blocking_socket,
    |choice: BackendChoice| {
        send_to_a_full_unix_receiver(choice, How::SendTo, true);
    }
);

backend_test!(
    unix_send_to_a_full_connected_receiver_completes_once_it_drains,
    |choice: BackendChoice| {
        send_to_a_full_unix_receiver(choice, How::Send, false);
    }
);

backend_test!(
    unix_send_zc_to_a_full_connected_receiver,
    |choice: BackendChoice| {
        send_to_a_full_unix_receiver(choice, How::SendZc, false);
    }
);

backend_test!(
    unix_write_fixed_to_a_full_connected_receiver,
    |choice: BackendChoice| {
        send_to_a_full_unix_receiver(choice, How::WriteFixed, false);
    }
);

// A multishot receive on a UDP socket: an empty datagram is a datagram, not
// the end of a stream, yet both backends end the receive there with `Ok(0)`
// (io_uring's multishot receive stops at a zero-length result; epoll does the
// same). The provided-buffer docs called that final `Ok(0)` EOF only; they now
// say what it is on a datagram socket. (The review's first version of this
// test asserted that the receive stays armed, and failed on both backends.)
// Pinned here: the end is `Ok(0)` with `more` false, and the datagram behind
// it waits for the next receive — nothing is lost.
backend_test!(
    udp_multishot_an_empty_datagram_ends_it_and_nothing_is_lost,
    |choice: BackendChoice| {
        let port = port(choice);
        let pool = port.buffer_pool(8, 256).unwrap();
        let (a, b) = (
            StdUdp::bind("127.0.0.1:0").unwrap(),
            StdUdp::bind("127.0.0.1:0").unwrap(),
        );
        port.associate(&b, 2).unwrap();
        let to = b.local_addr().unwrap();
        port.submit(Op::recv_multishot(&b, &pool), 9).unwrap();
        a.send_to(b"one", to).unwrap();
        a.send_to(b"", to).unwrap();
        a.send_to(b"three", to).unwrap();
        let mut c = get(&port);
        assert!(c.more());
        assert_eq!(c.take_pooled().unwrap().to_vec(), b"one");
        let c = get(&port);
        assert_eq!(
            (c.result.as_ref().ok(), c.more()),
            (Some(&0), false),
            "the empty datagram ends the receive"
        );
        drop(c);
        port.submit(Op::recv_multishot(&b, &pool), 10).unwrap();
        let mut c = get(&port);
        assert!(c.more());
        assert_eq!(c.take_pooled().unwrap().to_vec(), b"three");
        port.cancel(c.op_id().unwrap()).unwrap();
        assert!(!get(&port).more());
    }
);

// Probe: a datagram longer than the pool's buffers is cut to the buffer's
// size (never a longer length), and the next one arrives whole.
backend_test!(
    udp_multishot_truncates_a_long_datagram_to_the_buffer,
    |choice: BackendChoice| {
        let port = port(choice);
        let pool = port.buffer_pool(8, 64).unwrap();
        let (a, b) = (
            StdUdp::bind("127.0.0.1:0").unwrap(),
            StdUdp::bind("127.0.0.1:0").unwrap(),
        );
        port.associate(&b, 2).unwrap();
        let to = b.local_addr().unwrap();
        port.submit(Op::recv_multishot(&b, &pool), 9).unwrap();
        let long: Vec<u8> = (0..200u8).collect();
        a.send_to(&long, to).unwrap();
        a.send_to(b"short", to).unwrap();
        let mut c = get(&port);
        assert!(c.more());
        assert_eq!(c.result.as_ref().ok(), Some(&64));
        assert_eq!(c.take_pooled().unwrap().to_vec(), &long[..64]);
        let mut c = get(&port);
        assert_eq!(c.result.as_ref().ok(), Some(&5));
        assert_eq!(c.take_pooled().unwrap().to_vec(), b"short");
        port.cancel(c.op_id().unwrap()).unwrap();
        let end = get(&port);
        assert!(!end.more());
    }
);

// Probe: raw Unix datagram addresses as the kernel writes them: a sender
// bound to an abstract name, to a path of the longest length socket2 takes
// (107 bytes), to a non-UTF-8 path, autobound, and unnamed.
backend_test!(
    unix_dgram_sender_addresses_round_trip,
    |choice: BackendChoice| {
        let port = port(choice);
        let dir = TempDir::new("rev-dgram-addr");
        let rx_path = dir.path("rx");
        let rx = UnixDatagram::bind(&rx_path).unwrap();
        port.associate(&rx, 1).unwrap();
        let recv_from = |what: &str| -> Option<SockAddr> {
            port.submit(Op::recv_from(&rx, Vec::with_capacity(32)), 1)
                .unwrap();
            let mut c = get(&port);
            assert_eq!(c.result.as_ref().ok(), Some(&2), "{what}: {:?}", c.result);
            c.take_addr()
        };
        // Abstract.
        let name = format!("ringport-rev-dgram-{}-{choice:?}", std::process::id());
        let abs = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let s = UnixDatagram::bind_addr(&abs).unwrap();
        s.send_to(b"hi", &rx_path).unwrap();
        let a = recv_from("abstract").expect("an abstract sender has an address");
        assert_eq!(a.as_abstract_namespace(), Some(name.as_bytes()));
        assert_eq!(a.as_pathname(), None);
        // A path of 107 bytes (the longest with its NUL in sun_path).
        let base = dir.dir().as_os_str().as_bytes().len() + 1;
        assert!(base < 100, "temp dir too long for this probe");
        let long: PathBuf = dir.path(&"l".repeat(107 - base));
        assert_eq!(long.as_os_str().as_bytes().len(), 107);
        let s = UnixDatagram::bind(&long).unwrap();
        s.send_to(b"hi", &rx_path).unwrap();
        let a = recv_from("long path").unwrap();
        assert_eq!(a.as_pathname(), Some(long.as_path()));
        // Non-UTF-8.
        let odd = dir.dir().join(std::ffi::OsStr::from_bytes(b"\xff\xfe-odd"));
        let s = UnixDatagram::bind(&odd).unwrap();
        s.send_to(b"hi", &rx_path).unwrap();
        let a = recv_from("non-UTF-8 path").unwrap();
        assert_eq!(a.as_pathname(), Some(odd.as_path()));
        // Autobind (bind to an empty address): a 5-character abstract name.
        let s = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::DGRAM, None).unwrap();
        // SAFETY-free: an address of the family alone asks the kernel to autobind.
        let auto = {
            let mut st = socket2::SockAddrStorage::zeroed();
            // SAFETY: a sockaddr_un view of zeroed storage.
            unsafe { st.view_as::<libc::sockaddr_un>() }.sun_family = libc::AF_UNIX as _;
            // SAFETY: family set, length = the family field alone.
            unsafe { SockAddr::new(st, std::mem::size_of::<libc::sa_family_t>() as _) }
        };
        s.bind(&auto).unwrap();
        s.send_to(b"hi", &SockAddr::unix(&rx_path).unwrap())
            .unwrap();
        let a = recv_from("autobound").unwrap();
        assert_eq!(a.as_abstract_namespace().map(|n| n.len()), Some(5));
        // Unnamed: a socketpair's peer.
        let (p, q) = UnixDatagram::pair().unwrap();
        port.associate(&q, 3).unwrap();
        p.send(b"hi").unwrap();
        port.submit(Op::recv_from(&q, Vec::with_capacity(32)), 1)
            .unwrap();
        let mut c = get(&port);
        assert_eq!(c.result.as_ref().ok(), Some(&2));
        assert!(c.take_addr().is_none(), "an unnamed peer has no address");
        // Zero-length Unix datagram through Op::recv: Ok(0), the socket lives on.
        p.send(b"").unwrap();
        p.send(b"x").unwrap();
        port.submit(Op::recv(&q, Vec::with_capacity(8)), 1).unwrap();
        assert_eq!(get(&port).result.as_ref().ok(), Some(&0));
        port.submit(Op::recv(&q, Vec::with_capacity(8)), 1).unwrap();
        assert_eq!(get(&port).buf.unwrap(), b"x");
        // Send to an abstract name through Op::send_to.
        let tx = UnixDatagram::unbound().unwrap();
        port.associate(&tx, 4).unwrap();
        let name2 = format!("ringport-rev-dgram-rx-{}-{choice:?}", std::process::id());
        let rx2 = UnixDatagram::bind_addr(
            &std::os::unix::net::SocketAddr::from_abstract_name(name2.as_bytes()).unwrap(),
        )
        .unwrap();
        let mut to = Vec::from(&b"\0"[..]);
        to.extend_from_slice(name2.as_bytes());
        let to = SockAddr::unix(std::ffi::OsStr::from_bytes(&to)).unwrap();
        port.submit(Op::send_to(&tx, b"abs".to_vec(), to), 1)
            .unwrap();
        assert_eq!(get(&port).result.as_ref().ok(), Some(&3));
        let mut buf = [0u8; 8];
        assert_eq!(rx2.recv(&mut buf).unwrap(), 3);
    }
);

// Probe: the async UdpSocket on IPv6: a dual-stack socket sees an IPv4 sender
// as an IPv4-mapped address (as std does) and can answer it at that address
// or at the plain IPv4 one; a wrong family is an error, not a panic; the
// local address keeps its scope id and flow info fields.
backend_test!(
    async_udp_ipv6_mapped_and_wrong_family,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle().clone();
        block(&h, async move {
            let v6 = UdpSocket::bind("[::]:0").expect("bind [::]");
            let port6 = v6.local_addr().unwrap().port();
            let v4 = StdUdp::bind("127.0.0.1:0").unwrap();
            v4.send_to(b"four", ("127.0.0.1", port6)).unwrap();
            let (r, buf) = timeout(T, v6.recv_from(Vec::with_capacity(16)))
                .await
                .expect("hung");
            let (n, from) = r.unwrap();
            assert_eq!(&buf[..n], b"four");
            let std_from: SocketAddr =
                format!("[::ffff:127.0.0.1]:{}", v4.local_addr().unwrap().port())
                    .parse()
                    .unwrap();
            assert_eq!(from, std_from);
            // Answer at the mapped address, then at the plain IPv4 one.
            assert_eq!(v6.send_to(b"m".to_vec(), from).await.0.unwrap(), 1);
            assert_eq!(
                v6.send_to(b"p".to_vec(), v4.local_addr().unwrap())
                    .await
                    .0
                    .unwrap(),
                1
            );
            let mut b = [0u8; 4];
            v4.set_read_timeout(Some(T)).unwrap();
            assert_eq!(v4.recv_from(&mut b).unwrap().0, 1);
            assert_eq!(v4.recv_from(&mut b).unwrap().0, 1);
            // An IPv4 socket sending to an IPv6 address: an error.
            let only4 = UdpSocket::bind("127.0.0.1:0").unwrap();
            let (r, buf) = only4
                .send_to(b"x".to_vec(), "[::1]:9".parse().unwrap())
                .await;
            assert!(r.is_err(), "{r:?}");
            assert_eq!(buf, b"x", "the buffer comes back");
            // IPv6 loopback with a flow label and a scope id on the wire.
            let a = UdpSocket::bind("[::1]:0").unwrap();
            let b6 = UdpSocket::bind("[::1]:0").unwrap();
            let mut to = match b6.local_addr().unwrap() {
                SocketAddr::V6(s) => s,
                _ => unreachable!(),
            };
            to.set_scope_id(0);
            let (r, _) = a.send_to(vec![7; 3], SocketAddr::V6(to)).await;
            assert_eq!(r.unwrap(), 3);
            let (r, buf) = timeout(T, b6.recv_from(Vec::with_capacity(8)))
                .await
                .expect("hung");
            let (n, from) = r.unwrap();
            assert_eq!((n, &buf[..]), (3, &[7u8, 7, 7][..]));
            assert_eq!(from, a.local_addr().unwrap());
            // Not connected: peer_addr is an error.
            assert!(a.peer_addr().is_err());
        });
        wait_idle(&h);
    }
);

// Probe: a connected async UdpSocket hears of an ICMP port unreachable on a
// later receive (ECONNREFUSED), on both backends, and still works after; an
// empty datagram is Ok(0) through `recv`, not an end.
backend_test!(
    async_udp_connected_refused_and_empty,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle().clone();
        block(&h, async move {
            let closed = {
                let s = StdUdp::bind("127.0.0.1:0").unwrap();
                s.local_addr().unwrap()
            };
            let me = UdpSocket::bind("127.0.0.1:0").unwrap();
            me.connect(closed).unwrap();
            me.send(b"anyone?".to_vec()).await.0.unwrap();
            let (r, _) = timeout(T, me.recv(Vec::with_capacity(16)))
                .await
                .expect("a receive after an ICMP refusal hung");
            assert_eq!(
                r.as_ref().map_err(|e| e.raw_os_error()),
                Err(Some(libc::ECONNREFUSED)),
                "{r:?}"
            );
            // Re-point at a live peer: it works.
            let peer = StdUdp::bind("127.0.0.1:0").unwrap();
            me.connect(peer.local_addr().unwrap()).unwrap();
            peer.connect(me.local_addr().unwrap()).unwrap();
            peer.send(b"").unwrap();
            peer.send(b"after").unwrap();
            let (r, _) = timeout(T, me.recv(Vec::with_capacity(16)))
                .await
                .expect("hung");
            assert_eq!(r.unwrap(), 0, "an empty datagram");
            let (r, buf) = timeout(T, me.recv(Vec::with_capacity(16)))
                .await
                .expect("hung");
            assert_eq!(&buf[..r.unwrap()], b"after");
            // A zero-capacity buffer takes a datagram and returns 0.
            peer.send(b"dropped").unwrap();
            let (r, buf) = timeout(T, me.recv(Vec::new())).await.expect("hung");
            assert_eq!((r.unwrap(), buf.len()), (0, 0));
            // A long datagram is cut to the capacity (never more).
            peer.send(&[1u8; 100]).unwrap();
            let (r, buf) = timeout(T, me.recv_from(Vec::with_capacity(10)))
                .await
                .expect("hung");
            assert_eq!(r.unwrap().0, 10);
            assert_eq!(buf, [1u8; 10]);
        });
        wait_idle(&h);
    }
);

// Probe: async Unix streams' addresses: abstract listener, a 107-byte path,
// a 108-byte path refused (not a panic), a pair's unnamed peers.
backend_test!(async_unix_stream_addresses, |choice: BackendChoice| {
    let rt = runtime(choice);
    let h = rt.handle().clone();
    let dir = TempDir::new("rev-dgram-ustream");
    let base = dir.dir().as_os_str().as_bytes().len() + 1;
    assert!(base < 100, "temp dir too long for this probe");
    let long = dir.path(&"s".repeat(107 - base));
    let too_long = dir.path(&"t".repeat(108 - base));
    block(&h, async move {
        // Abstract.
        let name = format!("ringport-rev-ustream-{}-{choice:?}", std::process::id());
        let mut p = Vec::from(&b"\0"[..]);
        p.extend_from_slice(name.as_bytes());
        let p = PathBuf::from(std::ffi::OsStr::from_bytes(&p));
        let l = UnixListener::bind(&p).expect("bind an abstract name");
        assert_eq!(
            l.local_addr().unwrap().as_abstract_name(),
            Some(name.as_bytes())
        );
        let c = UnixStream::connect(&p).await.expect("connect");
        let (s, peer) = timeout(T, l.accept()).await.expect("hung").unwrap();
        assert!(peer.is_unnamed(), "{peer:?}");
        assert_eq!(
            c.peer_addr().unwrap().as_abstract_name(),
            Some(name.as_bytes())
        );
        drop((s, c));
        // The longest path.
        let l = UnixListener::bind(&long).expect("bind a 107-byte path");
        assert_eq!(l.local_addr().unwrap().as_pathname(), Some(long.as_path()));
        let c = UnixStream::connect(&long).await.expect("connect");
        let (_s, _) = timeout(T, l.accept()).await.expect("hung").unwrap();
        assert_eq!(c.peer_addr().unwrap().as_pathname(), Some(long.as_path()));
        // One byte too long: an error.
        assert!(UnixListener::bind(&too_long).is_err());
        assert!(UnixStream::connect(&too_long).await.is_err());
        // A pair: unnamed both ways.
        let (a, b) = UnixStream::pair().unwrap();
        assert!(a.peer_addr().unwrap().is_unnamed());
        assert!(b.peer_addr().unwrap().is_unnamed());
    });
    wait_idle(&h);
});

// Probe: a pending async recv_from dropped (timeout) hands its buffer back to
// the kernel's care and the socket still receives the next datagram.
backend_test!(
    async_udp_recv_from_dropped_then_next_arrives,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle().clone();
        block(&h, async move {
            let me = UdpSocket::bind("127.0.0.1:0").unwrap();
            let to = me.local_addr().unwrap();
            for _ in 0..3 {
                let r = timeout(
                    std::time::Duration::from_millis(5),
                    me.recv_from(Vec::with_capacity(64)),
                )
                .await;
                assert!(r.is_err(), "nothing was sent");
            }
            let peer = StdUdp::bind("127.0.0.1:0").unwrap();
            peer.send_to(b"next", to).unwrap();
            let (r, buf) = timeout(T, me.recv_from(Vec::with_capacity(64)))
                .await
                .expect("hung");
            let (n, from) = r.unwrap();
            assert_eq!(
                (&buf[..n], from),
                (&b"next"[..], peer.local_addr().unwrap())
            );
        });
        wait_idle(&h);
    }
);

// Probe: the raw ops' refusals are the kernel's errno, the same on both
// backends, with the buffer handed back: a datagram too long for UDP, a
// `send` on an unconnected UDP socket, an IPv6 destination for an IPv4
// socket; and a linked timeout on a waiting `recv_from` gives ECANCELED,
// the buffer and no address.
backend_test!(
    raw_udp_refusals_and_timed_out_recv_from,
    |choice: BackendChoice| {
        let port = port(choice);
        let a = StdUdp::bind("127.0.0.1:0").unwrap();
        let b = StdUdp::bind("127.0.0.1:0").unwrap();
        port.associate(&a, 1).unwrap();
        port.associate(&b, 2).unwrap();
        let to = b.local_addr().unwrap();
        port.submit(Op::send_to(&a, vec![0; 70_000], to), 1)
            .unwrap();
        let mut c = get(&port);
        assert_errno(&c.result, libc::EMSGSIZE);
        assert_eq!(c.buf.take().map(|b| b.len()), Some(70_000));
        port.submit(Op::send(&a, b"x".to_vec()), 2).unwrap();
        assert_errno(&get(&port).result, libc::EDESTADDRREQ);
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        port.submit(Op::send_to(&a, b"x".to_vec(), v6), 3).unwrap();
        assert_errno(&get(&port).result, libc::EAFNOSUPPORT);
        let buf = Vec::with_capacity(32);
        let ptr = buf.as_ptr();
        port.submit(
            Op::recv_from(&b, buf).timeout_after(std::time::Duration::from_millis(10)),
            4,
        )
        .unwrap();
        let mut c = get(&port);
        assert!(c.is_cancelled(), "{:?}", c.result);
        assert!(c.take_addr().is_none());
        let back = c.buf.take().unwrap();
        assert_eq!(back.as_ptr(), ptr);
        // The socket still receives.
        a.send_to(b"ok", to).unwrap();
        port.submit(Op::recv_from(&b, Vec::with_capacity(32)), 5)
            .unwrap();
        let mut c = get(&port);
        assert_eq!(c.result.as_ref().ok(), Some(&2));
        assert_eq!(
            c.take_addr().and_then(|s| s.as_socket()),
            Some(a.local_addr().unwrap())
        );
    }
);

/// A link-local IPv6 address of this machine and its interface index, from
/// `/proc/net/if_inet6`, if it has one.
fn link_local() -> Option<std::net::SocketAddrV6> {
    let s = std::fs::read_to_string("/proc/net/if_inet6").ok()?;
    s.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 6 || !f[0].starts_with("fe80") || f[3] != "20" {
            return None;
        }
        let flags = u32::from_str_radix(f[4], 16).ok()?;
        if flags & 0x40 != 0 {
            return None; // tentative
        }
        let bytes: Vec<u8> = (0..16)
            .map(|i| u8::from_str_radix(&f[0][2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let ip = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?);
        let index = u32::from_str_radix(f[1], 16).ok()?;
        Some(std::net::SocketAddrV6::new(ip, 0, 0, index))
    })
}

// Probe: link-local IPv6 with its scope id, raw and async: the sender's
// address comes back with the interface's scope id on both backends, and a
// reply to it arrives.
backend_test!(
    udp_link_local_scope_id_round_trip,
    |choice: BackendChoice| {
        let Some(ll) = link_local() else {
            eprintln!("skipped: no link-local IPv6 address here");
            return;
        };
        let port = port(choice);
        let (a, b) = match (
            StdUdp::bind(SocketAddr::V6(ll)),
            StdUdp::bind(SocketAddr::V6(ll)),
        ) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("skipped: cannot bind {ll}: {e}");
                return;
            }
        };
        port.associate(&a, 1).unwrap();
        port.associate(&b, 2).unwrap();
        port.submit(Op::recv_from(&b, Vec::with_capacity(16)), 1)
            .unwrap();
        port.submit(Op::send_to(&a, b"ll".to_vec(), b.local_addr().unwrap()), 2)
            .unwrap();
        let mut got = [get(&port), get(&port)];
        got.sort_by_key(|c| c.user_data);
        let [mut r, s] = got;
        assert_eq!(s.result.as_ref().ok(), Some(&2), "{:?}", s.result);
        assert_eq!(r.result.as_ref().ok(), Some(&2), "{:?}", r.result);
        let from = r.take_addr().and_then(|a| a.as_socket()).unwrap();
        assert_eq!(from, a.local_addr().unwrap());
        match from {
            SocketAddr::V6(v) => assert_eq!(v.scope_id(), ll.scope_id()),
            _ => panic!("{from}"),
        }
        drop((a, b, port));
        let rt = runtime(choice);
        let h = rt.handle().clone();
        block(&h, async move {
            let a = UdpSocket::bind(SocketAddr::V6(ll)).unwrap();
            let b = UdpSocket::bind(SocketAddr::V6(ll)).unwrap();
            let (r, _) = a.send_to(b"x".to_vec(), b.local_addr().unwrap()).await;
            r.unwrap();
            let (r, _) = timeout(T, b.recv_from(Vec::with_capacity(4)))
                .await
                .expect("hung");
            let (_, from) = r.unwrap();
            assert_eq!(from, a.local_addr().unwrap());
            let (r, _) = b.send_to(b"y".to_vec(), from).await;
            r.unwrap();
            let (r, buf) = timeout(T, a.recv_from(Vec::with_capacity(4)))
                .await
                .expect("hung");
            assert_eq!(
                (r.unwrap().1, &buf[..]),
                (b.local_addr().unwrap(), &b"y"[..])
            );
        });
    }
);
