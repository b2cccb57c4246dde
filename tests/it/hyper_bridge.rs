//! hyper 1.x on ringport, end to end: the server of `examples/hyper_server.rs`
//! (its very code, included below) on a ringport `Runtime`, driven by hyper
//! clients that also run on ringport, and by a plain blocking `std` client. Both
//! ends talk through the example's `HyperIo` adapter (hyper's I/O traits over
//! ringport's `futures-io` streams), so these tests prove the bridge both ways.
//!
//! Every wait is bounded: client awaits by `ringport::time::timeout(T, ..)`, the
//! std client's socket by read and write timeouts.

#[path = "../../examples/common/hello_http.rs"]
mod hello_http;
#[path = "../../examples/common/hyper_io.rs"]
mod hyper_io;

use std::future::Future;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use ringport::net::{TcpListener, TcpStream};
use ringport::{BackendChoice, JoinHandle, Runtime};

use crate::common::T;
use hello_http::HELLO;
use hyper_io::HyperIo;

/// A runtime on `choice` serving the example's service on 127.0.0.1:0, the
/// address it listens on, and the accept loop's task (it must still be running
/// when a test ends: `serve` only returns on an error it cannot retry).
fn server(choice: BackendChoice) -> (Runtime, SocketAddr, JoinHandle<std::io::Result<()>>) {
    let rt = Runtime::builder().backend(choice).build().expect("runtime");
    let listener = rt
        .block_on(async { TcpListener::bind("127.0.0.1:0") })
        .expect("bind");
    let addr = listener.local_addr().expect("local_addr");
    let accept_loop = rt.spawn(hello_http::serve(listener));
    (rt, addr, accept_loop)
}

/// Asserts the accept loop survived the test's traffic.
#[track_caller]
fn assert_serving(accept_loop: &JoinHandle<std::io::Result<()>>) {
    assert!(
        !accept_loop.is_finished(),
        "the accept loop ended during the test"
    );
}

/// `fut`, or an error naming `what` if it takes longer than `T`.
async fn bounded<F: Future>(what: &str, fut: F) -> Result<F::Output, String> {
    ringport::time::timeout(T, fut)
        .await
        .map_err(|_| format!("{what}: nothing within {T:?}"))
}

/// A hyper HTTP/1.1 client connection on a ringport `TcpStream`; the connection
/// future runs on its own ringport task, until the sender is dropped.
async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = bounded("connect", TcpStream::connect(addr))
        .await?
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("nodelay: {e}"))?;
    let (sender, conn) = bounded(
        "handshake",
        hyper::client::conn::http1::handshake(HyperIo::new(stream)),
    )
    .await?
    .map_err(|e| format!("handshake: {e}"))?;
    ringport::spawn(async move {
        // A failure also fails the request in flight, which reports it.
        if let Err(e) = conn.await {
            eprintln!("client connection: {e}");
        }
    });
    Ok(sender)
}

/// What one request expects back.
struct Exchange {
    method: Method,
    path: &'static str,
    body: Bytes,
    status: StatusCode,
    reply: Bytes,
}

impl Exchange {
    fn hello() -> Self {
        Exchange {
            method: Method::GET,
            path: "/",
            body: Bytes::new(),
            status: StatusCode::OK,
            reply: Bytes::from_static(HELLO.as_bytes()),
        }
    }

    fn echo(body: Bytes) -> Self {
        Exchange {
            method: Method::POST,
            path: "/echo",
            reply: body.clone(),
            body,
            status: StatusCode::OK,
        }
    }

    fn missing() -> Self {
        Exchange {
            method: Method::GET,
            path: "/missing",
            body: Bytes::new(),
            status: StatusCode::NOT_FOUND,
            reply: Bytes::new(),
        }
    }

    /// Sends it on `sender` and checks the status and every byte of the reply.
    async fn run(&self, sender: &mut SendRequest<Full<Bytes>>, what: &str) -> Result<(), String> {
        let what = format!(
            "{what}: {} {} ({} bytes)",
            self.method,
            self.path,
            self.body.len()
        );
        bounded(&what, sender.ready())
            .await?
            .map_err(|e| format!("{what}: connection not ready: {e}"))?;
        let req = Request::builder()
            .method(self.method.clone())
            .uri(self.path)
            .header(hyper::header::HOST, "127.0.0.1")
            .body(Full::new(self.body.clone()))
            .map_err(|e| format!("{what}: building the request: {e}"))?;
        let res = bounded(&what, sender.send_request(req))
            .await?
            .map_err(|e| format!("{what}: {e}"))?;
        let status = res.status();
        let got = bounded(&what, res.into_body().collect())
            .await?
            .map_err(|e| format!("{what}: reading the body: {e}"))?
            .to_bytes();
        if status != self.status {
            return Err(format!("{what}: status {status}, expected {}", self.status));
        }
        check_bytes(&what, &got, &self.reply)
    }
}

/// Byte-exact comparison, naming the first difference.
fn check_bytes(what: &str, got: &[u8], want: &[u8]) -> Result<(), String> {
    if got == want {
        return Ok(());
    }
    let at = got.iter().zip(want).take_while(|(a, b)| a == b).count();
    Err(format!(
        "{what}: body differs: got {} bytes, expected {}; first difference at byte {at}",
        got.len(),
        want.len()
    ))
}

/// `len` bytes of a pattern that differs with `seed` and never repeats within a
/// megabyte, so a dropped, duplicated or reordered chunk cannot go unnoticed.
fn pattern(seed: u32, len: usize) -> Bytes {
    (0..len as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// Body sizes around the boundaries that matter: empty, tiny, a page, hyper's
/// initial read buffer (8 KiB), ringport's receive and write-behind chunk
/// (64 KiB), up to 1 MiB.
const SIZES: [usize; 14] = [
    0,
    1,
    17,
    4095,
    4096,
    8193,
    65_535,
    65_536,
    65_537,
    100_000,
    262_144,
    400_001,
    1 << 20,
    777,
];

backend_test!(keep_alive_hundred_requests, |choice: BackendChoice| {
    let (rt, addr, accept_loop) = server(choice);
    let r = rt.block_on(async move {
        let mut sender = connect(addr).await?;
        for i in 0..100u32 {
            let ex = match i % 10 {
                0 | 5 => Exchange::hello(),
                9 => Exchange::missing(),
                _ => Exchange::echo(pattern(i, SIZES[i as usize % SIZES.len()])),
            };
            ex.run(&mut sender, &format!("request {i}")).await?;
        }
        Ok::<(), String>(())
    });
    if let Err(e) = r {
        panic!("{e}");
    }
    assert_serving(&accept_loop);
});

/// One HTTP/1.1 response as the std client read it.
struct RawResponse<'a> {
    status_line: String,
    /// Names in lower case.
    headers: Vec<(String, String)>,
    body: &'a [u8],
}

/// Splits one HTTP/1.1 response off the front of `buf`, returning it and what
/// follows. The body is framed by content-length.
fn split_response(buf: &[u8]) -> (RawResponse<'_>, &[u8]) {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {:?}", String::from_utf8_lossy(buf)));
    let head = std::str::from_utf8(&buf[..end]).expect("head is UTF-8");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').expect("header line has a colon");
            (k.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .unwrap_or_else(|| panic!("no content-length in {head:?}"))
        .1
        .parse()
        .expect("content-length is a number");
    let rest = &buf[end + 4..];
    assert!(
        rest.len() >= len,
        "response body cut short: {} of {len} bytes",
        rest.len()
    );
    let res = RawResponse {
        status_line,
        headers,
        body: &rest[..len],
    };
    (res, &rest[len..])
}

backend_test!(raw_pipelined_pair, |choice: BackendChoice| {
    let (rt, addr, accept_loop) = server(choice);
    let body = pattern(7, 100_000);
    let client = std::thread::spawn({
        let body = body.clone();
        move || -> Result<Vec<u8>, String> {
            let mut s = std::net::TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(T)).unwrap();
            s.set_write_timeout(Some(T)).unwrap();
            // Both requests in one write: the second is on the wire before the
            // first is answered. The second asks the server to close after it.
            let mut req = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_vec();
            req.extend_from_slice(
                format!(
                    "POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
            req.extend_from_slice(&body);
            s.write_all(&req)
                .map_err(|e| format!("writing the pipelined requests: {e}"))?;
            let deadline = Instant::now() + T;
            let mut got = Vec::new();
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                if Instant::now() >= deadline {
                    return Err(format!("no end of stream within {T:?}"));
                }
                match s.read(&mut chunk) {
                    Ok(0) => return Ok(got),
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                    Err(e) => return Err(format!("read after {} bytes: {e}", got.len())),
                }
            }
        }
    });
    let got = match client.join().expect("the std client thread panicked") {
        Ok(got) => got,
        Err(e) => panic!("std client: {e}"),
    };

    let (first, rest) = split_response(&got);
    assert_eq!(first.status_line, "HTTP/1.1 200 OK", "first response");
    assert_eq!(first.body, HELLO.as_bytes(), "first response body");
    let (second, rest) = split_response(rest);
    assert_eq!(second.status_line, "HTTP/1.1 200 OK", "second response");
    check_bytes("second response", second.body, &body).unwrap();
    assert!(
        second
            .headers
            .iter()
            .any(|(k, v)| k == "connection" && v == "close"),
        "the second response should announce the close: {:?}",
        second.headers
    );
    assert!(
        rest.is_empty(),
        "{} bytes after the second response",
        rest.len()
    );
    assert_serving(&accept_loop);
    drop(rt);
});

backend_test!(
    fifty_connections_ten_requests_each,
    |choice: BackendChoice| {
        let (rt, addr, accept_loop) = server(choice);
        let r = rt.block_on(async move {
            let clients: Vec<_> = (0..50u32)
                .map(|c| {
                    ringport::spawn(async move {
                        let mut sender = connect(addr).await?;
                        for i in 0..10u32 {
                            let ex = match (c + i) % 4 {
                                0 => Exchange::hello(),
                                _ => Exchange::echo(pattern(
                                    c * 10 + i,
                                    // Up to 256 KiB: 50 connections at once, each
                                    // still crossing the 64 KiB chunk boundaries.
                                    SIZES[(c + i) as usize % SIZES.len()].min(1 << 18),
                                )),
                            };
                            ex.run(&mut sender, &format!("connection {c}, request {i}"))
                                .await?;
                        }
                        Ok::<(), String>(())
                    })
                })
                .collect();
            let mut failures = Vec::new();
            for (c, h) in clients.into_iter().enumerate() {
                // Each client bounds its own waits; this one only guards the join.
                match ringport::time::timeout(T * 3, h).await {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(e))) => failures.push(e),
                    Ok(Err(e)) => failures.push(format!("connection {c}: task failed: {e}")),
                    Err(_) => failures.push(format!("connection {c}: not done within {:?}", T * 3)),
                }
            }
            failures
        });
        assert!(r.is_empty(), "{} of 50 connections failed: {r:#?}", r.len());
        assert_serving(&accept_loop);
    }
);
