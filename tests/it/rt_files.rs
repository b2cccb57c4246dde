//! The async face's other handles end to end: `fs::File`, Unix streams,
//! UDP, and `send_file` — on both backends (TCP and cancellation are in
//! `rt_io.rs`).

use std::io::{self, Read};
use std::net::Shutdown;
use std::sync::Arc;
use std::thread;

use ringport::fs::{File, OpenOptions};
use ringport::net::{TcpListener, UdpSocket, UnixListener, UnixStream};
use ringport::time::timeout;
use ringport::BackendChoice;

use crate::common::*;
use crate::rt::{block, pseudo_random, runtime, wait_idle};

backend_test!(fs_file_operations, |choice: BackendChoice| {
    let rt = runtime(choice);
    let h = rt.handle().clone();
    let dir = TempDir::new("fs");
    let (p, big, missing) = (dir.path("a.txt"), dir.path("big"), dir.path("missing"));
    block(&h, async move {
        let f = File::create(&p).await.expect("create");
        f.write_all(b"hello world".to_vec())
            .await
            .0
            .expect("write_all");
        f.sync_all().await.expect("sync_all");
        assert_eq!(f.metadata().await.expect("metadata").len(), 11);
        drop(f);

        let f = File::open(&p).await.expect("open");
        let (n, b) = f.read_at(Vec::with_capacity(5), 6).await;
        assert_eq!(&b[..n.expect("read_at")], b"world");
        let (n, _) = f.read_at(Vec::with_capacity(5), 11).await;
        assert_eq!(n.expect("read_at the end"), 0);
        let (n, all) = f.read_to_end(Vec::new()).await;
        assert_eq!(n.expect("read_to_end"), 11);
        assert_eq!(all, b"hello world");
        drop(f);

        // Append: writes start at the end.
        let f = OpenOptions::new()
            .append(true)
            .open(&p)
            .await
            .expect("open to append");
        f.write_all(b", again".to_vec()).await.0.expect("append");
        f.sync_data().await.expect("sync_data");
        drop(f);
        assert_eq!(std::fs::read(&p).expect("std read"), b"hello world, again");

        // create_new on an existing file; open of a missing one.
        let e = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
            .await
            .expect_err("create_new on an existing file");
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
        let e = File::open(&missing).await.expect_err("open a missing file");
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");

        // create truncates.
        let f = File::create(&p).await.expect("create again");
        assert_eq!(f.metadata().await.expect("metadata").len(), 0);
        drop(f);

        // A larger file through write_all and write_all_at, read back whole and
        // at an offset.
        let data = pseudo_random(3 * (1 << 20) + 17, 3);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&big)
            .await
            .expect("create_new");
        let half = data.len() / 2;
        f.write_all(data[..half].to_vec())
            .await
            .0
            .expect("write_all");
        f.write_all_at(data[half..].to_vec(), half as u64)
            .await
            .0
            .expect("write_all_at");
        f.sync_all().await.expect("sync_all");
        assert_eq!(
            f.metadata().await.expect("metadata").len(),
            data.len() as u64
        );
        f.seek_to(0);
        let (n, all) = f.read_to_end(Vec::new()).await;
        assert_eq!(n.expect("read_to_end"), data.len());
        assert!(all == data, "the file read back differs");
        let (n, b) = f.read_at(Vec::with_capacity(4096), 1_000_003).await;
        assert_eq!(n.expect("read_at"), 4096);
        assert!(b[..] == data[1_000_003..1_000_003 + 4096]);
    });
    wait_idle(&h);
});

backend_test!(unix_listener_and_pair_echo, |choice: BackendChoice| {
    let rt = runtime(choice);
    let h = rt.handle().clone();
    let dir = TempDir::new("unix");
    let path = dir.path("sock");
    block(&h, async move {
        let l = UnixListener::bind(&path).expect("bind");
        assert_eq!(
            l.local_addr().expect("local_addr").as_pathname(),
            Some(path.as_path())
        );
        // Echoes until end of stream.
        let server = ringport::spawn(async move {
            let (c, _) = l.accept().await?;
            loop {
                let (r, buf) = c.read(Vec::with_capacity(8192)).await;
                if r? == 0 {
                    return c.shutdown(Shutdown::Write);
                }
                c.write_all(buf).await.0?;
            }
        });
        let c = Arc::new(UnixStream::connect(&path).await.expect("connect"));
        let payload = pseudo_random(256 * 1024, 4);
        let (w, p) = (c.clone(), payload.clone());
        let writer = ringport::spawn(async move {
            w.write_all(p).await.0?;
            w.shutdown(Shutdown::Write)
        });
        let mut got = Vec::new();
        loop {
            let (r, buf) = timeout(T, c.read(Vec::with_capacity(8192)))
                .await
                .expect("a read hung");
            match r.expect("read") {
                0 => break,
                n => got.extend_from_slice(&buf[..n]),
            }
        }
        assert!(got == payload, "echoed {} bytes, differing", got.len());
        writer.await.expect("writer task").expect("writer");
        server.await.expect("server task").expect("server");

        // A connected pair.
        let (a, b) = UnixStream::pair().expect("pair");
        a.write_all(b"ping".to_vec()).await.0.expect("write");
        let (r, buf) = b.read(Vec::with_capacity(16)).await;
        assert_eq!(&buf[..r.expect("read")], b"ping");
        b.write_all(b"pong".to_vec()).await.0.expect("write");
        let (r, buf) = a.read(Vec::with_capacity(16)).await;
        assert_eq!(&buf[..r.expect("read")], b"pong");
        drop(a);
        let (r, _) = b.read(Vec::with_capacity(16)).await;
        assert_eq!(r.expect("read after the peer's drop"), 0);
    });
    wait_idle(&h);
});

backend_test!(
    udp_send_to_recv_from_and_connected,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle().clone();
        block(&h, async move {
            let a = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("bind"));
            let b = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("bind"));
            let (aa, ba) = (a.local_addr().unwrap(), b.local_addr().unwrap());

            // A receive waiting before the datagram is sent.
            let rb = b.clone();
            let recv = ringport::spawn(async move { rb.recv_from(Vec::with_capacity(64)).await });
            let (r, _) = a.send_to(b"to b".to_vec(), ba).await;
            assert_eq!(r.expect("send_to"), 4);
            let (r, buf) = timeout(T, recv)
                .await
                .expect("recv_from hung")
                .expect("task");
            let (n, from) = r.expect("recv_from");
            assert_eq!((&buf[..n], from), (&b"to b"[..], aa));

            // And back, with the datagram already there.
            let (r, _) = b.send_to(b"back to a".to_vec(), aa).await;
            assert_eq!(r.expect("send_to"), 9);
            let (r, buf) = timeout(T, a.recv_from(Vec::with_capacity(64)))
                .await
                .expect("hung");
            let (n, from) = r.expect("recv_from");
            assert_eq!((&buf[..n], from), (&b"back to a"[..], ba));

            // Connected: send/recv, boundaries kept.
            a.connect(ba).expect("connect");
            b.connect(aa).expect("connect");
            assert_eq!(a.peer_addr().unwrap(), ba);
            for len in [1usize, 100, 1400, 0, 9000] {
                let d = pseudo_random(len, len as u64);
                let (r, _) = a.send(d.clone()).await;
                assert_eq!(r.expect("send"), len);
                let (r, buf) = timeout(T, b.recv(Vec::with_capacity(16 * 1024)))
                    .await
                    .expect("recv hung");
                assert_eq!(r.expect("recv"), len);
                assert!(buf == d, "datagram of {len} bytes differs");
            }
        });
        wait_idle(&h);
    }
);

// `TcpStream::send_file_all`: a 3 MiB file and a range of it reach a plain std
// client byte for byte; a range past the end is `UnexpectedEof`.
backend_test!(send_file_on_the_async_face, |choice: BackendChoice| {
    let rt = runtime(choice);
    let dir = TempDir::new("sendfile");
    let path = dir.path("data");
    let data = pseudo_random(3 << 20, 11);
    std::fs::write(&path, &data).unwrap();
    let h = rt.handle().clone();
    let listener = block(&h, async { TcpListener::bind("127.0.0.1:0") }).unwrap();
    let addr = listener.local_addr().unwrap();
    let reader = thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).map(|_| got)
    });
    let p = path.clone();
    let r = block(&h, async move {
        let (conn, _) = listener.accept().await?;
        let f = File::open(&p).await?;
        conn.send_file_all(&f, 0, 3 << 20).await?;
        conn.send_file_all(&f, 1000, 5000).await?;
        let past = conn.send_file_all(&f, (3 << 20) - 10, 20).await;
        conn.shutdown(Shutdown::Write)?;
        Ok::<_, io::Error>(past)
    })
    .unwrap();
    assert_eq!(r.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    let got = reader.join().unwrap().unwrap();
    let mut want = data.clone();
    want.extend_from_slice(&data[1000..6000]);
    want.extend_from_slice(&data[(3 << 20) - 10..]);
    assert_eq!(got.len(), want.len());
    assert!(got == want, "the bytes differ");
    wait_idle(&h);
});

backend_test!(
    udp_connect_takes_the_first_address_that_fits,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle().clone();
        block(&h, async move {
            let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
            let me = UdpSocket::bind("127.0.0.1:0").unwrap();
            let to = peer.local_addr().unwrap();
            // An IPv6 address first: an IPv4 socket cannot take it; std goes
            // on to the next, and so does this.
            let v6: std::net::SocketAddr = "[::1]:9".parse().unwrap();
            me.connect(&[v6, to][..])
                .expect("connect to the IPv4 address");
            me.send(b"hi".to_vec()).await.0.unwrap();
            let (n, b) = peer.recv(Vec::with_capacity(8)).await;
            assert_eq!(&b[..n.unwrap()], b"hi");
            // Nothing that fits: the last error.
            assert!(me.connect(&[v6][..]).is_err());
        });
    }
);
