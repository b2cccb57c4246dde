//! `TcpStream::writable` (`Op::writable`): the wait for room that a program
//! sending with its own non-blocking calls makes after `EAGAIN` (as
//! `ringport serve` does around its inline `sendfile`).

use std::io::Read;
use std::os::fd::AsRawFd;
use std::pin::pin;
use std::time::Duration;

use futures::FutureExt;
use ringport::net::{TcpListener, TcpStream};
use ringport::BackendChoice;

use crate::common::fill_send_buffer;
use crate::rt::{block, runtime, wait_idle};

/// A connected pair: ours (non-blocking, on the runtime) and the peer's
/// (blocking, std).
async fn pair() -> (TcpStream, std::net::TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let peer = std::thread::spawn(move || std::net::TcpStream::connect(addr).expect("connect"));
    let (ours, _) = l.accept().await.expect("accept");
    let peer = peer.join().expect("connect thread");
    let mut on: libc::c_int = 1;
    // SAFETY: FIONBIO reads one int from a live local.
    let rc = unsafe { libc::ioctl(ours.as_raw_fd(), libc::FIONBIO, &mut on) };
    assert_eq!(rc, 0);
    (ours, peer)
}

backend_test!(
    writable_is_ready_at_once_with_room,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle();
        block(h, async {
            let (ours, _peer) = pair().await;
            ours.writable().await.expect("room in a fresh socket");
        });
        wait_idle(h);
    }
);

backend_test!(
    writable_waits_for_the_peer_to_read,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle();
        block(h, async {
            let (ours, mut peer) = pair().await;
            let sent = fill_send_buffer(&ours, 7);
            assert!(sent > 0);
            let mut wait = pin!(ours.writable());
            // Full: the wait does not end by itself (one poll submits it).
            assert!(wait.as_mut().now_or_never().is_none());
            let reader = std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                let mut got = 0;
                while got < sent {
                    let n = peer.read(&mut buf).expect("read");
                    assert!(n > 0, "the sender closed early");
                    got += n;
                }
                peer
            });
            wait.await.expect("room after the peer read");
            // Room again: an inline send goes through.
            assert!(fill_send_buffer(&ours, 7) > 0);
            drop(reader.join().expect("reader"));
        });
        wait_idle(h);
    }
);

backend_test!(
    a_dropped_writable_wait_is_cancelled,
    |choice: BackendChoice| {
        let rt = runtime(choice);
        let h = rt.handle();
        block(h, async {
            let (ours, peer) = pair().await;
            fill_send_buffer(&ours, 7);
            {
                let mut wait = pin!(ours.writable());
                assert!(wait.as_mut().now_or_never().is_none());
                ringport::time::sleep(Duration::from_millis(10)).await;
            } // dropped in flight: cancelled
            drop(peer);
        });
        // Nothing left in flight, nothing waits.
        wait_idle(h);
    }
);
