//! One connection: read a head, answer it, repeat (keep-alive; pipelined
//! requests already in the buffer are answered in order without another read).
//!
//! Memory per connection is bounded: the input buffer never holds more than one
//! unfinished head (at most `MAX_HEAD`) plus one read; request bodies are
//! discarded as they arrive (at most `MAX_BODY`), larger ones refused.
//! Time is bounded too: the first request and every head must arrive within the
//! header timeout (counted from its first byte, or from the connection's
//! start), a kept-alive connection may idle for the idle timeout, each send may
//! wait the send timeout.

use std::fs::Metadata;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringport::fs::File;
use ringport::net::TcpStream;

use super::cache::{Entry, FileId, FileMeta, OpenFile};
use super::cond::{self, RangeAsk, Verdict};
use super::http::{self, Method, Parsed, Request};
use super::open::Opened;
use super::path::{self, NotServed, Refused, UrlPath};
use super::{body, listing, Permit, Server, Waited, Watch};

/// Bytes asked of each receive.
const READ_CHUNK: usize = 16 * 1024;
/// Largest request body read and thrown away; larger → 413 (or 405) and close.
const MAX_BODY: u64 = 64 * 1024;
/// How long and how much a closing connection drains from its client, so the
/// last response is not destroyed by a reset (unread input at close).
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// Serves one connection until it closes.
pub async fn run(srv: Arc<Server>, stream: TcpStream, peer: SocketAddr, permit: Permit) {
    let _ = stream.set_nodelay(true);
    if let Err(e) = body::nonblocking(&stream) {
        // Inline sends must never block the task's thread.
        tracing::warn!(%peer, "cannot make the socket non-blocking: {e}");
        return;
    }
    let watch = srv.watch();
    let mut c = Conn {
        srv,
        stream,
        peer,
        watch,
        input: Vec::with_capacity(READ_CHUNK),
        spare: Vec::new(),
        out: Vec::with_capacity(1024),
        chunk: Vec::new(),
    };
    c.serve().await;
    drop(c);
    drop(permit);
}

struct Conn {
    srv: Arc<Server>,
    stream: TcpStream,
    peer: SocketAddr,
    watch: Watch,
    /// Received, not yet consumed.
    input: Vec<u8>,
    /// A receive buffer for when `input` holds an unfinished head.
    spare: Vec<u8>,
    /// The response head (and a small body) being written.
    out: Vec<u8>,
    /// The file-body buffer.
    chunk: Vec<u8>,
}

/// Why reading stopped.
enum Ended {
    /// The connection is done (closed, timed out, refused, stopping).
    Close,
}

/// How a response went.
struct Sent {
    status: u16,
    body: u64,
}

impl Conn {
    async fn serve(&mut self) {
        let mut first = true;
        loop {
            let Ok(req) = self.next_request(first).await else {
                return;
            };
            first = false;
            match self.answer(&req).await {
                Ok((sent, keep)) => {
                    self.srv.requests.fetch_add(1, Ordering::Relaxed);
                    if self.srv.cfg.log {
                        self.log(&req, &sent);
                    }
                    if !keep {
                        self.linger().await;
                        return;
                    }
                }
                Err(e) => {
                    tracing::debug!(peer = %self.peer, "connection ends: {e}");
                    // A response cut off (the client went away, a send timed
                    // out, the file shrank) is logged too, without a status.
                    if self.srv.cfg.log {
                        let line = format!("{} HTTP/1.{}", req.target, req.minor);
                        self.log_line(req.method.as_str(), &line, "-", &format!("- ({e})"));
                    }
                    return;
                }
            }
        }
    }

    /// The next request head: from the buffer if a whole one is there, else
    /// after reading more within the time limits.
    async fn next_request(&mut self, first: bool) -> Result<Request, Ended> {
        let header = self.srv.cfg.header_timeout;
        let mut deadline = first.then(|| Instant::now() + header);
        // Empty lines before a request line are ignored (RFC 9112 §2.2; some
        // clients send a CRLF after a body): a few of them leave the
        // connection idle, with the idle timeout, rather than starting the
        // head's. Only a few, so they cannot keep a connection for ever.
        let mut blank_left = MAX_BLANK;
        loop {
            if deadline.is_none() && blank_left > 0 {
                let n = self
                    .input
                    .iter()
                    .take_while(|&&b| b == b'\r' || b == b'\n')
                    .count()
                    .min(blank_left);
                self.consume(n);
                blank_left -= n;
            }
            if !self.input.is_empty() {
                deadline.get_or_insert_with(|| Instant::now() + header);
                match http::parse(&self.input) {
                    Ok(Parsed::Complete(r)) => return Ok(r),
                    Ok(Parsed::Partial) => {}
                    Err(rej) => {
                        let status = rej.status();
                        if let Ok(sent) = self.error(status, false, false, &[]).await {
                            self.log_raw("-", "-", status, sent.body);
                            self.linger().await;
                        }
                        return Err(Ended::Close);
                    }
                }
            }
            let limit = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => {
                    // Idle between requests: the copying path's body buffer
                    // (256 KiB) is not held by a connection that waits.
                    self.chunk = Vec::new();
                    self.srv.cfg.idle_timeout
                }
            };
            if limit.is_zero() || !self.read_more(limit, true).await {
                return Err(Ended::Close);
            }
        }
    }

    /// Receives more input within `limit`; false: closed, failed, timed out or
    /// (if `stoppable`) the server is stopping.
    async fn read_more(&mut self, limit: Duration, stoppable: bool) -> bool {
        let direct = self.input.is_empty();
        let mut buf = if direct {
            std::mem::take(&mut self.input)
        } else {
            std::mem::take(&mut self.spare)
        };
        buf.clear();
        buf.reserve(READ_CHUNK);
        match self
            .watch
            .wait(self.stream.read(buf), limit, stoppable)
            .await
        {
            Waited::Done((Ok(n), b)) if n > 0 => {
                if direct {
                    self.input = b;
                } else {
                    self.input.extend_from_slice(&b[..n]);
                    self.spare = b;
                }
                true
            }
            _ => false,
        }
    }

    /// Drops `n` consumed bytes from the front of the input.
    fn consume(&mut self, n: usize) {
        if n >= self.input.len() {
            self.input.clear();
        } else {
            self.input.drain(..n);
        }
    }

    /// Reads and drops a request body of `len` bytes (within the header time).
    async fn discard(&mut self, mut len: u64) -> bool {
        let deadline = Instant::now() + self.srv.cfg.header_timeout;
        loop {
            let here = (self.input.len() as u64).min(len);
            self.consume(here as usize);
            len -= here;
            if len == 0 {
                return true;
            }
            let limit = deadline.saturating_duration_since(Instant::now());
            // Not cut short by a stop: the head is in, so this request is
            // in flight and is answered (within the header timeout).
            if limit.is_zero() || !self.read_more(limit, false).await {
                return false;
            }
        }
    }

    /// Answers one request; returns how, and whether the connection goes on.
    async fn answer(&mut self, req: &Request) -> io::Result<(Sent, bool)> {
        let get = matches!(req.method, Method::Get | Method::Head);
        if req.chunked || req.content_length > MAX_BODY {
            // A body this server will not read: answer and close.
            let status = match (get, req.chunked) {
                (false, _) => 405,
                (true, true) => 400,
                (true, false) => 413,
            };
            let allow = if status == 405 { ALLOW } else { &[] };
            let sent = self.error(status, false, false, allow).await?;
            return Ok((sent, false));
        }
        let body_here = (self.input.len() - req.head_len.min(self.input.len())) as u64;
        if req.expect_continue && body_here < req.content_length {
            // The client waits for a word before it sends its body (RFC 9110
            // §10.1.1), and no answer here needs the body: the final answer
            // goes now, instead of a 100, and the connection closes after it
            // (the body, if the client sends it anyway, is never read).
            self.consume(req.head_len);
            let sent = if get {
                self.get(req, false).await?
            } else {
                self.error(405, false, false, ALLOW).await?
            };
            return Ok((sent, false));
        }
        self.consume(req.head_len);
        if req.content_length > 0 && !self.discard(req.content_length).await {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let keep = req.keep_alive && !self.srv.stopping();
        let sent = if get {
            self.get(req, keep).await?
        } else {
            self.error(405, keep, false, ALLOW).await?
        };
        // A 400 (a target that is no path) and a 503 (out of descriptors)
        // said `Connection: close`.
        let keep = keep && !matches!(sent.status, 400 | 503);
        Ok((sent, keep))
    }

    /// GET or HEAD.
    async fn get(&mut self, req: &Request, keep: bool) -> io::Result<Sent> {
        let head_only = req.method == Method::Head;
        let url = match path::decode(&req.target) {
            Ok(u) => u,
            // A 400 closes the connection, as for a malformed head.
            Err(Refused::BadRequest) => return self.error(400, false, head_only, &[]).await,
            Err(Refused::Forbidden) => return self.error(403, keep, head_only, &[]).await,
        };
        let key = url.cache_key();
        if let Some(e) = self.srv.cache.get(&key, &self.srv.dir) {
            return self.send_entry(req, keep, &e).await;
        }
        let rel = url.relative();
        if let Some(o) = self.srv.cache.open_file(&key, &self.srv.dir) {
            // `o.rel`, not `rel`: for a directory's URL it names its index.
            let (file, meta) = (o.file.clone(), o.meta.clone());
            return self.send_file(req, keep, file, meta, &o.rel, key).await;
        }
        let found = match self.srv.dir.open_beneath(&rel) {
            Ok(f) => f,
            Err(e) => return self.refuse(e, keep, head_only).await,
        };
        if found.meta.is_dir() {
            drop(found);
            if !url.slash {
                return self.redirect(req, &url, keep, head_only).await;
            }
            let index = rel.join("index.html");
            return match self.srv.dir.open_beneath(&index) {
                Ok(f) if f.meta.is_file() => {
                    let (file, meta) = self.keep_open(f, &index, &key);
                    self.send_file(req, keep, file, meta, &index, key).await
                }
                Ok(_) | Err(NotServed::NotFound) => {
                    // The listing reads the directory opened beneath DIR,
                    // not a path (a rename racing it must not lead outside).
                    match self.srv.dir.open_beneath(&rel) {
                        Ok(d) if d.meta.is_dir() => {
                            self.listing(d.file, rel, &url, keep, head_only).await
                        }
                        Ok(_) => self.error(404, keep, head_only, &[]).await,
                        Err(e) => self.refuse(e, keep, head_only).await,
                    }
                }
                Err(e) => self.refuse(e, keep, head_only).await,
            };
        }
        if !found.meta.is_file() {
            return self.error(403, keep, head_only, &[]).await;
        }
        if url.slash {
            return self.error(404, keep, head_only, &[]).await;
        }
        let (file, meta) = self.keep_open(found, &rel, &key);
        self.send_file(req, keep, file, meta, &rel, key).await
    }

    /// A regular file just opened under DIR (`rel`): kept open for the next
    /// request of the same path if it is too large to keep in memory.
    fn keep_open(&self, found: Opened, rel: &Path, key: &[u8]) -> (Arc<std::fs::File>, Metadata) {
        let file = Arc::new(found.file);
        if found.meta.len() > self.srv.cache.max_file {
            self.srv.cache.keep_open(
                key.to_vec(),
                Arc::new(OpenFile::new(
                    rel.to_path_buf(),
                    file.clone(),
                    found.meta.clone(),
                )),
            );
        }
        (file, found.meta)
    }

    async fn refuse(&mut self, e: NotServed, keep: bool, head_only: bool) -> io::Result<Sent> {
        match e {
            NotServed::NotFound => self.error(404, keep, head_only, &[]).await,
            NotServed::Forbidden => self.error(403, keep, head_only, &[]).await,
            // Out of descriptors: this connection is closed after the
            // answer, which gives one back.
            NotServed::Busy => self.error(503, false, head_only, RETRY).await,
            NotServed::Failed => self.error(500, keep, head_only, &[]).await,
        }
    }

    /// 301 to the directory's URL with a slash (built from the decoded names,
    /// so never a `//host` redirect; an ASCII query is kept).
    async fn redirect(
        &mut self,
        req: &Request,
        url: &UrlPath,
        keep: bool,
        head_only: bool,
    ) -> io::Result<Sent> {
        let mut to = url.encoded(true);
        if let Some(q) = req.target.find('?').map(|i| &req.target[i..]) {
            if q.is_ascii() {
                to.push_str(q);
            }
        }
        self.error(301, keep, head_only, &[("Location", &to)]).await
    }

    /// Answers from an opened file (`rel`: its path under DIR, as asked):
    /// small ones through the cache.
    async fn send_file(
        &mut self,
        req: &Request,
        keep: bool,
        std_file: Arc<std::fs::File>,
        m: Metadata,
        rel: &Path,
        key: Vec<u8>,
    ) -> io::Result<Sent> {
        let head_only = req.method == Method::Head;
        // The type comes from the name asked for (as nginx does), not from
        // where a symlink leads.
        let id = FileId::of(&m);
        // Only a file read into memory joins the port (the read is a port
        // operation); a body is sent from the plain descriptor.
        // (A file small enough to read is never kept open: its descriptor is
        // this response's alone.)
        let (joined, plain) = match Arc::try_unwrap(std_file) {
            Ok(f) if m.len() <= self.srv.cache.max_file && !head_only => {
                (Some(File::from_std(f)?), None)
            }
            Ok(f) => (None, Some(Arc::new(f))),
            Err(shared) => (None, Some(shared)),
        };
        if let Some(file) = &joined {
            let (r, body) = file.read_at(Vec::with_capacity(m.len() as usize), 0).await;
            let n = r?;
            if n as u64 == m.len() {
                let entry = Arc::new(Entry {
                    rel: rel.to_path_buf(),
                    id,
                    meta: FileMeta::of(rel, &m),
                    body: body.into_boxed_slice(),
                });
                self.srv.cache.insert(key, entry.clone());
                return self.send_entry(req, keep, &entry).await;
            }
            // Changed under us (or a short read): stream it instead.
        }
        let meta = self.srv.cache.meta(&key, id, || FileMeta::of(rel, &m));
        let plan = self.head_for(req, keep, &meta);
        let (status, start, len) = match plan {
            Plan::Body { status, start, len } => (status, start, len),
            Plan::NoBody(status) => (status, 0, 0),
        };
        let out = std::mem::take(&mut self.out);
        // The body follows at once: the head may wait for it in the kernel.
        let more = !head_only && len > 0 && !self.srv.cfg.copy_bodies;
        self.out = self.write_more(out, more).await?;
        if head_only || len == 0 {
            return Ok(Sent { status, body: 0 });
        }
        let limit = self.srv.cfg.send_timeout;
        let fd = match (&joined, &plain) {
            (Some(f), _) => f.as_fd(),
            (_, Some(f)) => f.as_fd(),
            (None, None) => unreachable!("one of the two holds the file"),
        };
        body::send_body(
            &self.stream,
            fd,
            (start, len),
            &self.watch,
            limit,
            self.srv.cfg.copy_bodies,
            &mut self.chunk,
        )
        .await?;
        Ok(Sent { status, body: len })
    }

    /// Answers from a cached file: head and body in one send.
    async fn send_entry(&mut self, req: &Request, keep: bool, e: &Entry) -> io::Result<Sent> {
        let plan = self.head_for(req, keep, &e.meta);
        let sent = match plan {
            Plan::Body { status, start, len } => {
                if req.method == Method::Get {
                    let (s, l) = (start as usize, len as usize);
                    self.out.extend_from_slice(&e.body[s..s + l]);
                    Sent { status, body: len }
                } else {
                    Sent { status, body: 0 }
                }
            }
            Plan::NoBody(status) => Sent { status, body: 0 },
        };
        let out = std::mem::take(&mut self.out);
        self.out = self.write(out).await?;
        Ok(sent)
    }

    /// Writes into `out` the head for a file: 412, 304, 416, 206 or 200.
    fn head_for(&mut self, req: &Request, keep: bool, m: &FileMeta) -> Plan {
        let v = &m.validators;
        let out = &mut self.out;
        out.clear();
        match cond::preconditions(req, v) {
            Verdict::Proceed => {}
            Verdict::NotModified => {
                http::begin(out, 304);
                http::header(out, "ETag", &v.etag);
                http::header(out, "Last-Modified", &v.last_modified);
                http::end(out, keep);
                return Plan::NoBody(304);
            }
            Verdict::Failed => {
                http::begin(out, 412);
                http::header(out, "Content-Length", 0);
                http::end(out, keep);
                return Plan::NoBody(412);
            }
        }
        let ask = match &req.range {
            Some(r) if req.method == Method::Get && cond::if_range_holds(req, v) => {
                cond::range(r, m.len)
            }
            _ => RangeAsk::Full,
        };
        let (status, start, len) = match ask {
            RangeAsk::Unsatisfiable => {
                http::begin(out, 416);
                http::header(out, "Content-Range", format_args!("bytes */{}", m.len));
                http::header(out, "Content-Length", 0);
                http::end(out, keep);
                return Plan::NoBody(416);
            }
            RangeAsk::Full => (200, 0, m.len),
            RangeAsk::Part { start, end } => (206, start, end - start + 1),
        };
        http::begin(out, status);
        if status == 200 {
            out.extend_from_slice(&m.full_headers);
            http::end(out, keep);
            return Plan::Body { status, start, len };
        }
        http::header(out, "Content-Type", &m.content_type);
        http::header(out, "Content-Length", len);
        http::header(out, "Last-Modified", &v.last_modified);
        http::header(out, "ETag", &v.etag);
        http::header(out, "Accept-Ranges", "bytes");
        http::header(
            out,
            "Content-Range",
            format_args!("bytes {start}-{}/{}", start + len - 1, m.len),
        );
        http::end(out, keep);
        Plan::Body { status, start, len }
    }

    /// A directory page (rendered on a blocking thread: a large directory is
    /// many calls).
    async fn listing(
        &mut self,
        dir: std::fs::File,
        rel: PathBuf,
        url: &UrlPath,
        keep: bool,
        head_only: bool,
    ) -> io::Result<Sent> {
        let shown = url.display(true);
        let srv = self.srv.clone();
        let render = move || listing::render(&srv.dir, dir, &rel, &shown);
        let page = match ringport::spawn_blocking(render).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return self.refuse(NotServed::from_io(e), keep, head_only).await,
            // The blocking pool refused the job (shutting down) or it panicked.
            Err(_) => return self.error(500, keep, head_only, &[]).await,
        };
        let out = &mut self.out;
        out.clear();
        http::begin(out, 200);
        http::header(out, "Content-Type", "text/html; charset=utf-8");
        http::header(out, "Content-Length", page.len());
        http::end(out, keep);
        let body = if head_only { 0 } else { page.len() as u64 };
        if !head_only {
            out.extend_from_slice(page.as_bytes());
        }
        let out = std::mem::take(&mut self.out);
        self.out = self.write(out).await?;
        Ok(Sent { status: 200, body })
    }

    /// A status with a short HTML body (none for HEAD, 301 keeps one too).
    async fn error(
        &mut self,
        status: u16,
        keep: bool,
        head_only: bool,
        extra: &[(&str, &str)],
    ) -> io::Result<Sent> {
        let page = format!(
            "<!DOCTYPE html>\n<html><head><title>{status} {r}</title></head><body><h1>{status} {r}</h1></body></html>\n",
            r = http::reason(status)
        );
        let out = &mut self.out;
        out.clear();
        http::begin(out, status);
        for (n, v) in extra {
            http::header(out, n, v);
        }
        http::header(out, "Content-Type", "text/html; charset=utf-8");
        http::header(out, "Content-Length", page.len());
        http::end(out, keep);
        if !head_only {
            out.extend_from_slice(page.as_bytes());
        }
        let out = std::mem::take(&mut self.out);
        self.out = self.write(out).await?;
        Ok(Sent {
            status,
            body: if head_only { 0 } else { page.len() as u64 },
        })
    }

    /// Sends all of `out` within the send timeout; returns the buffer cleared.
    async fn write(&mut self, out: Vec<u8>) -> io::Result<Vec<u8>> {
        self.write_more(out, false).await
    }

    /// [`write`](Self::write), tried inline first (see `body.rs`); `more`: a
    /// body follows at once.
    async fn write_more(&mut self, mut out: Vec<u8>, more: bool) -> io::Result<Vec<u8>> {
        let sent = body::send_now(self.stream.as_raw_fd(), &out, more)?;
        if sent == out.len() {
            out.clear();
            return Ok(out);
        }
        out.drain(..sent);
        let limit = self.srv.cfg.send_timeout;
        match self
            .watch
            .wait(self.stream.write_all(out), limit, false)
            .await
        {
            Waited::Done((Ok(()), mut b)) => {
                b.clear();
                Ok(b)
            }
            Waited::Done((Err(e), _)) => Err(e),
            Waited::Elapsed | Waited::Stopped => Err(io::ErrorKind::TimedOut.into()),
        }
    }

    /// Closes politely: no more output, then read (and drop) what the client
    /// still sends until it closes, for a bounded time and amount, so our last
    /// response is not lost to a reset.
    async fn linger(&mut self) {
        if self.stream.shutdown(Shutdown::Write).is_err() {
            return;
        }
        let deadline = Instant::now() + LINGER_TIME;
        let mut drained = 0;
        while drained < LINGER_BYTES {
            self.input.clear();
            let limit = deadline.saturating_duration_since(Instant::now());
            if limit.is_zero() || !self.read_more(limit, true).await {
                return;
            }
            drained += self.input.len();
        }
    }

    fn log(&self, req: &Request, sent: &Sent) {
        let line = format!("{} HTTP/1.{}", req.target, req.minor);
        self.log_raw(req.method.as_str(), &line, sent.status, sent.body);
    }

    fn log_raw(&self, method: &str, what: &str, status: u16, bytes: u64) {
        self.log_line(method, what, &status.to_string(), &bytes.to_string());
    }

    /// One access-log line: `PEER [DATE] "METHOD WHAT" STATUS BYTES`.
    /// Handed to the logger thread (`log.rs`): a worker never waits on
    /// stdout.
    fn log_line(&self, method: &str, what: &str, status: &str, bytes: &str) {
        let Some(log) = &self.srv.access_log else {
            return;
        };
        let now = httpdate::fmt_http_date(std::time::SystemTime::now());
        log.line(format!(
            "{} [{now}] \"{method} {}\" {status} {bytes}\n",
            self.peer,
            what.escape_debug()
        ));
    }
}

/// CR and LF bytes ignored before a request line while the connection
/// counts as idle (see `next_request`).
const MAX_BLANK: usize = 8;

/// Allowed methods, for 405.
const ALLOW: &[(&str, &str)] = &[("Allow", "GET, HEAD")];
/// A 503's advice: try again in a second.
const RETRY: &[(&str, &str)] = &[("Retry-After", "1")];

/// What follows a file response's head.
enum Plan {
    Body { status: u16, start: u64, len: u64 },
    NoBody(u16),
}
