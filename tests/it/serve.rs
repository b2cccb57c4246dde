//! `ringport serve` end to end (issue 7): the real binary serving a temp DIR
//! over real sockets on 127.0.0.1, every test on both backends. Requests are
//! written by hand where the bytes matter (pipelining, traversal tricks, bad
//! heads), with `ureq` for whole downloads and with `curl` where installed.
//!
//! Every socket read and write has a timeout (`T`), every child process wait is
//! bounded; the server is stopped with SIGTERM and must exit 0. No assertion
//! depends on timing: the short timeouts given to the server only make a test
//! finish sooner.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ringport::BackendChoice;
use sha2::{Digest, Sha256};

use crate::child::Spawned;
use crate::common::{backend_flag, T};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_ringport");

/// What lives outside DIR: no response may ever contain it.
pub(crate) const SECRET: &[u8] = b"TOP-SECRET-OUTSIDE-THE-ROOT";

// ---------------------------------------------------------------------------
// The folder served
// ---------------------------------------------------------------------------

/// A temp folder `base/` holding DIR (`base/root`) and a secret beside it.
pub(crate) struct Site {
    pub(crate) base: PathBuf,
    pub(crate) root: PathBuf,
}

impl Site {
    pub(crate) fn new() -> Site {
        static N: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir().join(format!(
            "ringport-serve-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(root.join("list/inner")).unwrap();
        std::fs::write(base.join("secret.txt"), SECRET).unwrap();
        let site = Site { base, root };
        site.write("hello.txt", b"hello, world\n");
        site.write("data.bin", &pattern(1000));
        site.write("sub/index.html", b"<h1>sub index</h1>\n");
        site.write("list/<b>&.txt", b"escaped");
        site.write("list/plain.txt", b"plain");
        let link = |target: &str, name: &str| {
            std::os::unix::fs::symlink(target, site.root.join(name)).unwrap()
        };
        link("hello.txt", "in-link");
        link("../secret.txt", "out-link");
        link("..", "up-link");
        link("/etc", "etc-link");
        site
    }

    pub(crate) fn write(&self, rel: &str, bytes: &[u8]) {
        std::fs::write(self.root.join(rel), bytes).unwrap();
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// `n` bytes of a fixed pattern.
pub(crate) fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

// ---------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------

/// A running `ringport serve`. Dropping it without `stop` (a failed test) sends
/// SIGTERM, then SIGKILL if it lingers, and reaps it.
pub(crate) struct Serve {
    pub(crate) proc: Spawned,
    pub(crate) addr: SocketAddr,
}

impl Serve {
    /// Starts `ringport serve site.root` on 127.0.0.1:0 and `choice`, or prints
    /// why the backend is skipped.
    pub(crate) fn start(choice: BackendChoice, site: &Site, extra: &[&str]) -> Option<Serve> {
        Serve::launch(choice, site, extra, false)
    }

    /// As `start`, but nothing reads its stdout after the ready line until
    /// `release_stdout` (a reader of the access log that stopped reading).
    pub(crate) fn start_unread(
        choice: BackendChoice,
        site: &Site,
        extra: &[&str],
    ) -> Option<Serve> {
        Serve::launch(choice, site, extra, true)
    }

    pub(crate) fn release_stdout(&mut self) {
        self.proc.release_stdout();
    }

    fn launch(choice: BackendChoice, site: &Site, extra: &[&str], held: bool) -> Option<Serve> {
        let backend = backend_flag(choice);
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg(&site.root)
            .args(["--listen", "127.0.0.1:0", "--backend", backend])
            .args(extra);
        let mut proc = match held {
            true => Spawned::spawn_held(&mut cmd),
            false => Spawned::spawn(&mut cmd),
        };
        match proc.first_line() {
            Ok(line) => {
                // "serving DIR at http://ADDR/ (backend NAME, ...)"
                let addr = line
                    .split("http://")
                    .nth(1)
                    .and_then(|r| r.split('/').next())
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                    .unwrap_or_else(|| panic!("`ringport serve` printed {line:?}, not its URL"));
                assert_ne!(addr.port(), 0, "printed the requested port 0: {line:?}");
                let want = match choice {
                    BackendChoice::Epoll => "backend epoll",
                    _ => "backend io_uring",
                };
                assert!(line.contains(want), "runs another backend: {line:?}");
                Some(Serve { proc, addr })
            }
            Err(_) => {
                let status = proc.wait();
                let err = proc.stderr();
                if status.is_some_and(|s| !s.success())
                    && err.to_ascii_lowercase().contains("unsupported")
                {
                    eprintln!("skipped: {backend} unavailable: {}", err.trim());
                    return None;
                }
                panic!("`ringport serve --backend {backend}` was not ready ({status:?}); stderr:\n{err}");
            }
        }
    }

    /// stdout lines after the ready line (the access log).
    pub(crate) fn stdout(&self) -> Arc<Mutex<Vec<String>>> {
        self.proc.stdout.clone()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    pub(crate) fn signal(&self, sig: libc::c_int) {
        self.proc.signal(sig)
    }

    /// Waits (at most `T`) for the exit a SIGTERM asked for; requires status 0.
    pub(crate) fn wait_exit(mut self) -> String {
        let status = self.proc.wait();
        let err = self.proc.stderr();
        match status {
            None => panic!("`ringport serve` did not exit within {T:?} of SIGTERM; stderr:\n{err}"),
            Some(s) => assert!(
                s.success(),
                "`ringport serve` exited with {s}; stderr:\n{err}"
            ),
        }
        err
    }

    /// SIGTERM, exit 0 within `T`.
    pub(crate) fn stop(self) -> String {
        self.signal(libc::SIGTERM);
        self.wait_exit()
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

// ---------------------------------------------------------------------------
// A hand-written client: exact bytes out, responses parsed strictly
// ---------------------------------------------------------------------------

#[derive(Debug)]
pub(crate) struct Resp {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Resp {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[track_caller]
    pub(crate) fn must(&self, name: &str) -> &str {
        self.header(name)
            .unwrap_or_else(|| panic!("no {name} header in {self:?}"))
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub(crate) struct Client {
    pub(crate) s: TcpStream,
    pub(crate) buf: Vec<u8>,
}

impl Client {
    pub(crate) fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect_timeout(&addr, T)
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        s.set_read_timeout(Some(T)).unwrap();
        s.set_write_timeout(Some(T)).unwrap();
        s.set_nodelay(true).unwrap();
        Client { s, buf: Vec::new() }
    }

    pub(crate) fn send(&mut self, raw: &[u8]) {
        self.s.write_all(raw).expect("send a request");
    }

    /// `GET target` (HTTP/1.1, keep-alive) with extra header lines.
    pub(crate) fn get(&mut self, target: &str, extra: &str) -> Resp {
        self.send(format!("GET {target} HTTP/1.1\r\nHost: t\r\n{extra}\r\n").as_bytes());
        self.response(false)
    }

    /// One read into the buffer (retried when a signal interrupts it: other
    /// tests in this process use signals).
    pub(crate) fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match self.s.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    #[track_caller]
    pub(crate) fn response(&mut self, head_only: bool) -> Resp {
        self.try_response(head_only)
            .unwrap_or_else(|e| panic!("reading a response: {e}"))
    }

    /// One response; the body by `Content-Length` (none for HEAD and 304).
    pub(crate) fn try_response(&mut self, head_only: bool) -> io::Result<Resp> {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("closed after {:?}", String::from_utf8_lossy(&self.buf)),
                ));
            }
        };
        let head = String::from_utf8(self.buf[..end].to_vec()).expect("an ASCII head");
        self.buf.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        assert!(status_line.starts_with("HTTP/1.1 "), "{status_line:?}");
        let status: u16 = status_line[9..12].parse().expect("a status code");
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap_or_else(|| panic!("header {l:?}"));
                (n.to_string(), v.trim().to_string())
            })
            .collect();
        let mut r = Resp {
            status,
            headers,
            body: Vec::new(),
        };
        if head_only || status == 304 {
            return Ok(r);
        }
        let len: usize = r.must("Content-Length").parse().expect("a length");
        while self.buf.len() < len {
            if self.fill()? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        r.body = self.buf.drain(..len).collect();
        Ok(r)
    }

    /// True once the server has closed the connection (EOF or reset), reading
    /// and dropping whatever came before; false if it is still open after `T`.
    pub(crate) fn closed_by_server(&mut self) -> bool {
        let deadline = Instant::now() + T;
        while Instant::now() < deadline {
            match self.fill() {
                Ok(0) => return true,
                Ok(_) => self.buf.clear(),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return false
                }
                Err(_) => return true,
            }
        }
        false
    }
}

/// One request on a fresh connection.
pub(crate) fn fetch(addr: SocketAddr, raw: &str) -> Resp {
    let mut c = Client::connect(addr);
    c.send(raw.as_bytes());
    c.response(raw.starts_with("HEAD "))
}

pub(crate) fn get(addr: SocketAddr, target: &str) -> Resp {
    Client::connect(addr).get(target, "")
}

pub(crate) fn sha256_hex(data: impl AsRef<[u8]>) -> String {
    hex(&Sha256::digest(data.as_ref()))
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

backend_test!(serves_a_file_with_its_headers, |choice: BackendChoice| {
    let site = Site::new();
    let Some(srv) = Serve::start(choice, &site, &[]) else {
        return;
    };
    let r = get(srv.addr, "/hello.txt");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, b"hello, world\n");
    assert_eq!(r.must("Content-Length"), "13");
    assert!(r.must("Content-Type").starts_with("text/plain"), "{r:?}");
    assert!(r.must("ETag").starts_with('"'), "{r:?}");
    assert!(r.must("Last-Modified").ends_with(" GMT"), "{r:?}");
    assert_eq!(r.must("Accept-Ranges"), "bytes");
    let r = get(srv.addr, "/sub/index.html");
    assert!(r.must("Content-Type").starts_with("text/html"), "{r:?}");
    let r = get(srv.addr, "/data.bin");
    assert_eq!(r.must("Content-Type"), "application/octet-stream");
    assert_eq!(r.body, pattern(1000));
    assert_eq!(
        get(srv.addr, "/in-link").body,
        b"hello, world\n",
        "a symlink inside DIR"
    );
    assert_eq!(get(srv.addr, "/nothing-here").status, 404);
    assert_eq!(
        get(srv.addr, "/hello.txt/").status,
        404,
        "a file is not a directory"
    );

    // An HTTP client crate agrees.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(T))
        .build()
        .into();
    let mut res = agent.get(&srv.url("/hello.txt")).call().expect("ureq GET");
    assert_eq!(res.status(), 200);
    let body = res.body_mut().read_to_vec().unwrap();
    assert_eq!(body, b"hello, world\n");

    // And curl, where installed.
    if let Ok(out) = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-i", &srv.url("/hello.txt")])
        .output()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "curl failed: {out:?}");
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nhello, world\n"), "{text}");
    }
    srv.stop();
});

backend_test!(
    head_has_the_same_headers_and_no_body,
    |choice: BackendChoice| {
        let site = Site::new();
        let Some(srv) = Serve::start(choice, &site, &[]) else {
            return;
        };
        for target in ["/hello.txt", "/data.bin", "/list/", "/nothing-here"] {
            let mut c = Client::connect(srv.addr);
            c.send(format!("HEAD {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
            let head = c.response(true);
            // The next response on the connection starts right after the head: no body came.
            let full = c.get(target, "");
            assert_eq!(head.status, full.status, "{target}");
            let strip = |r: &Resp| -> Vec<(String, String)> {
                r.headers
                    .iter()
                    .filter(|(n, _)| n != "Date")
                    .cloned()
                    .collect()
            };
            assert_eq!(strip(&head), strip(&full), "{target}");
            assert_eq!(
                head.must("Content-Length"),
                full.body.len().to_string(),
                "{target}"
            );
        }
        srv.stop();
    }
);

backend_test!(byte_ranges, |choice: BackendChoice| {
    let site = Site::new();
    // Copy-free from the file, then through the copying fallback.
    for how in [
        &["--cache-mib", "0"][..],
        &["--cache-mib", "0", "--copy-bodies"],
    ] {
        ranges_from_a_file(choice, &site, how);
    }
    // The same through the in-memory cache (cache on, the default).
    let Some(srv) = Serve::start(choice, &site, &[]) else {
        return;
    };
    let data = pattern(1000);
    let mut c = Client::connect(srv.addr);
    for _ in 0..2 {
        let r = c.get("/data.bin", "Range: bytes=-10\r\n");
        assert_eq!(r.status, 206);
        assert_eq!(r.body, &data[990..]);
    }
    srv.stop();
});

fn ranges_from_a_file(choice: BackendChoice, site: &Site, flags: &[&str]) {
    let Some(srv) = Serve::start(choice, site, flags) else {
        return;
    };
    let data = pattern(1000);
    let mut c = Client::connect(srv.addr);
    for (range, start, end) in [
        ("bytes=0-9", 0, 9),
        ("bytes=990-", 990, 999),
        ("bytes=-10", 990, 999),
        ("bytes=500-500", 500, 500),
        ("bytes=900-5000", 900, 999),
        ("bytes=-5000", 0, 999),
    ] {
        let r = c.get("/data.bin", &format!("Range: {range}\r\n"));
        assert_eq!(r.status, 206, "{range}: {r:?}");
        assert_eq!(r.body, &data[start..=end], "{range}");
        assert_eq!(
            r.must("Content-Range"),
            format!("bytes {start}-{end}/1000"),
            "{range}"
        );
    }
    for range in ["bytes=1000-", "bytes=5000-6000", "bytes=-0"] {
        let r = c.get("/data.bin", &format!("Range: {range}\r\n"));
        assert_eq!(r.status, 416, "{range}: {r:?}");
        assert_eq!(r.must("Content-Range"), "bytes */1000");
    }
    for range in ["bytes=0-1,5-6", "bytes=9-1", "lines=1-2", "bytes=abc"] {
        let r = c.get("/data.bin", &format!("Range: {range}\r\n"));
        assert_eq!(r.status, 200, "{range}: the whole file");
        assert_eq!(r.body, data);
    }
    // If-Range: honoured for the current ETag, the whole file otherwise.
    let etag = c.get("/data.bin", "").must("ETag").to_string();
    let r = c.get(
        "/data.bin",
        &format!("Range: bytes=0-1\r\nIf-Range: {etag}\r\n"),
    );
    assert_eq!(r.status, 206);
    let r = c.get("/data.bin", "Range: bytes=0-1\r\nIf-Range: \"stale\"\r\n");
    assert_eq!(r.status, 200);
    srv.stop();
}

backend_test!(conditional_requests_answer_304, |choice: BackendChoice| {
    let site = Site::new();
    let Some(srv) = Serve::start(choice, &site, &[]) else {
        return;
    };
    let mut c = Client::connect(srv.addr);
    let first = c.get("/hello.txt", "");
    let etag = first.must("ETag").to_string();
    let lm = first.must("Last-Modified").to_string();
    let r = c.get("/hello.txt", &format!("If-None-Match: {etag}\r\n"));
    assert_eq!(r.status, 304, "{r:?}");
    assert_eq!(r.must("ETag"), etag);
    assert_eq!(r.header("Content-Length"), None);
    let r = c.get("/hello.txt", &format!("If-None-Match: \"x\", W/{etag}\r\n"));
    assert_eq!(r.status, 304, "weak comparison");
    let r = c.get("/hello.txt", "If-None-Match: *\r\n");
    assert_eq!(r.status, 304);
    let r = c.get("/hello.txt", &format!("If-Modified-Since: {lm}\r\n"));
    assert_eq!(r.status, 304);
    let r = c.get(
        "/hello.txt",
        "If-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello, world\n");
    let r = c.get("/hello.txt", "If-None-Match: \"other\"\r\n");
    assert_eq!(r.status, 200);
    let r = c.get(
        "/hello.txt",
        &format!("If-None-Match: \"other\"\r\nIf-Modified-Since: {lm}\r\n"),
    );
    assert_eq!(r.status, 200, "If-None-Match decides when present");
    // HEAD too.
    c.send(
        format!("HEAD /hello.txt HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\n\r\n").as_bytes(),
    );
    assert_eq!(c.response(true).status, 304);
    srv.stop();
});

backend_test!(an_edited_file_is_served_fresh, |choice: BackendChoice| {
    let site = Site::new();
    let Some(srv) = Serve::start(choice, &site, &[]) else {
        return;
    };
    site.write("edit.txt", b"first");
    let a = get(srv.addr, "/edit.txt");
    assert_eq!(a.body, b"first");
    assert_eq!(get(srv.addr, "/edit.txt").body, b"first", "a cache hit");
    site.write("edit.txt", b"the second version");
    let b = get(srv.addr, "/edit.txt");
    assert_eq!(b.body, b"the second version");
    assert_ne!(a.must("ETag"), b.must("ETag"));
    std::fs::remove_file(site.root.join("edit.txt")).unwrap();
    assert_eq!(get(srv.addr, "/edit.txt").status, 404);
    srv.stop();
});

backend_test!(keep_alive_reuses_one_connection, |choice: BackendChoice| {
    let site = Site::new();
    let Some(srv) = Serve::start(choice, &site, &[]) else {
        return;
    };
    let mut c = Client::connect(srv.addr);
    for _ in 0..3 {
        let r = c.get("/hello.txt", "");
        assert_eq!(r.status, 200);
        assert_eq!(r.must("Connection"), "keep-alive");
    }
    // `Connection: close` is honoured.
    let r = c.get("/hello.txt", "Connection: close\r\n");
    assert_eq!(r.must("Connection"), "close");
    assert!(c.closed_by_server(), "open after Connection: close");
    // HTTP/1.0: closes unless asked to keep alive.
    let mut c = Client::connect(srv.addr);
    c.send(b"GET /hello.txt HTTP/1.0\r\n\r\n");
    let r = c.response(false);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"hello, world\n"[..]));
    assert!(c.closed_by_server(), "an HTTP/1.0 connection stayed open");
    let mut c = Client::connect(srv.addr);
    for _ in 0..2 {
        c.send(b"GET /hello.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let r = c.response(false);
        assert_eq!(r.must("Connection"), "keep-alive");
    }
    srv.stop();
});

backend_test!(
    pipelined_requests_are_answered_in_order,
    |choice: BackendChoice| {
        let site = Site::new();
        let Some(srv) = Serve::start(choice, &site, &[]) else {
            return;
        };
        let mut c = Client::connect(srv.addr);
        c.send(
            b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n\
          HEAD /data.bin HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /data.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=0-3\r\n\r\n\
          GET /nothing HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /sub/ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        );
        let a = c.response(false);
        assert_eq!((a.status, a.body.as_slice()), (200, &b"hello, world\n"[..]));
        let b = c.response(true);
        assert_eq!((b.status, b.must("Content-Length")), (200, "1000"));
        let r = c.response(false);
        assert_eq!((r.status, r.body.as_slice()), (206, &[0u8, 1, 2, 3][..]));
        assert_eq!(c.response(false).status, 404);
        let last = c.response(false);
        assert_eq!(last.text(), "<h1>sub index</h1>\n");
        assert!(c.closed_by_server());
        // Many at once, in one write.
        let mut c = Client::connect(srv.addr);
        let many = "GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n".repeat(200);
        c.send(many.as_bytes());
        for i in 0..200 {
            let r = c.response(false);
            assert_eq!(r.body, b"hello, world\n", "response {i}");
        }
        srv.stop();
    }
);

backend_test!(
    directories_index_redirect_and_escaped_listing,
    |choice: BackendChoice| {
        let site = Site::new();
        let Some(srv) = Serve::start(choice, &site, &[]) else {
            return;
        };
        let r = get(srv.addr, "/sub");
        assert_eq!(r.status, 301);
        assert_eq!(r.must("Location"), "/sub/");
        let r = get(srv.addr, "/sub?x=1");
        assert_eq!(r.must("Location"), "/sub/?x=1");
        let r = get(srv.addr, "//sub");
        assert_eq!(r.must("Location"), "/sub/", "never a //host redirect");
        assert_eq!(get(srv.addr, "/sub/").text(), "<h1>sub index</h1>\n");
        let r = get(srv.addr, "/list/");
        assert_eq!(r.status, 200);
        assert!(r.must("Content-Type").starts_with("text/html"));
        let page = r.text();
        assert!(page.contains("&lt;b&gt;&amp;.txt"), "{page}");
        assert!(page.contains("href=\"%3Cb%3E%26.txt\""), "{page}");
        assert!(!page.contains("<b>&"), "a raw name in the page:\n{page}");
        assert!(page.contains("href=\"inner/\""), "{page}");
        assert!(page.contains("plain.txt"), "{page}");
        // The escaped link leads to the file.
        assert_eq!(get(srv.addr, "/list/%3Cb%3E%26.txt").body, b"escaped");
        let root = get(srv.addr, "/").text();
        assert!(
            root.contains("hello.txt") && root.contains("sub/"),
            "{root}"
        );
        srv.stop();
    }
);

/// Writes `size` pseudo-random bytes to `path`; returns their SHA-256.
pub(crate) fn write_random(path: &Path, size: usize) -> String {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut h = Sha256::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for c in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
        }
        let n = left.min(block.len());
        f.write_all(&block[..n]).unwrap();
        h.update(&block[..n]);
        left -= n;
    }
    f.flush().unwrap();
    hex(&h.finalize())
}
