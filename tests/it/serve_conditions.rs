//! `ringport serve`: conditional requests, ranges and request heads at their
//! edges (session 16's review; see `serve.rs` for the harness): a file
//! modified in the future, `If-Match` and `If-Unmodified-Since`, precondition
//! and range fields sent on several lines, a suffix range of an empty file,
//! the request line's limit exactly, `Host` values, and a request whose body
//! is still arriving when the server is told to stop.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ringport::BackendChoice;

use crate::serve::{fetch, Client, Resp, Serve, Site};

fn date(r: &Resp, name: &str) -> SystemTime {
    httpdate::parse_http_date(r.must(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn set_mtime(site: &Site, rel: &str, t: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(site.root.join(rel))
        .and_then(|f| f.set_modified(t))
        .expect("set a file's modification time");
}

backend_test!(
    a_file_modified_in_the_future_is_not_answered_304_after_an_edit,
    |choice: BackendChoice| {
        let site = Site::new();
        site.write("skew.txt", b"version one\n");
        let future = SystemTime::now() + Duration::from_secs(300 * 86_400);
        set_mtime(&site, "skew.txt", future);
        let Some(srv) = Serve::start(choice, &site, &[]) else {
            return;
        };
        let mut c = Client::connect(srv.addr);
        let r = c.get("/skew.txt", "");
        assert_eq!(r.body, b"version one\n");
        // RFC 9110 §8.8.2.1: never later than the response's Date.
        assert!(
            date(&r, "Last-Modified") <= date(&r, "Date"),
            "{:?}",
            r.headers
        );
        let seen = r.must("Last-Modified").to_string();
        let tag = r.must("ETag").to_string();
        assert_eq!(
            c.get("/skew.txt", &format!("If-Modified-Since: {seen}\r\n"))
                .status,
            304,
            "unchanged"
        );
        // The file is edited (its time is now, before the future one). A
        // client that was given the future date would be told 304 for ever.
        site.write("skew.txt", b"version two!\n");
        let r = c.get(
            "/skew.txt",
            &format!("If-Modified-Since: {}\r\n", httpdate::fmt_http_date(future)),
        );
        assert_eq!((r.status, r.body.as_slice()), (200, &b"version two!\n"[..]));
        // (Against the date it was given, an edit within the same second
        // is not seen: dates have whole seconds. Its tag is.)
        let r = c.get("/skew.txt", &format!("If-None-Match: {tag}\r\n"));
        assert_eq!((r.status, r.body.as_slice()), (200, &b"version two!\n"[..]));
        assert!(date(&r, "Last-Modified") <= date(&r, "Date"));
        srv.stop();
    }
);

backend_test!(
    if_match_and_if_unmodified_since_that_fail_answer_412,
    |choice: BackendChoice| {
        let site = Site::new();
        let Some(srv) = Serve::start(choice, &site, &[]) else {
            return;
        };
        let mut c = Client::connect(srv.addr);
        let r = c.get("/hello.txt", "");
        let etag = r.must("ETag").to_string();
        let modified = r.must("Last-Modified").to_string();
        let epoch = httpdate::fmt_http_date(UNIX_EPOCH);
        for (extra, want) in [
            ("If-Match: \"zz\"\r\n".to_string(), 412),
            (format!("If-Match: W/{etag}\r\n"), 412),
            (format!("If-Match: \"zz\", {etag}\r\n"), 200),
            ("If-Match: *\r\n".to_string(), 200),
            (format!("If-Unmodified-Since: {epoch}\r\n"), 412),
            (format!("If-Unmodified-Since: {modified}\r\n"), 200),
            ("If-Unmodified-Since: not a date\r\n".to_string(), 200),
            // 412 before 304 (RFC 9110 §13.2.2), and before a range.
            (
                format!("If-Match: \"zz\"\r\nIf-None-Match: {etag}\r\n"),
                412,
            ),
            (
                format!("If-Unmodified-Since: {epoch}\r\nRange: bytes=0-1\r\n"),
                412,
            ),
            (format!("If-Match: {etag}\r\nRange: bytes=0-1\r\n"), 206),
        ] {
            let r = c.get("/hello.txt", &extra);
            assert_eq!(r.status, want, "{extra:?}");
            if want == 412 {
                assert!(r.body.is_empty());
                assert_eq!(r.must("Connection"), "keep-alive", "{extra:?}");
            }
        }
        // HEAD is held to the same preconditions.
        c.send(b"HEAD /hello.txt HTTP/1.1\r\nHost: t\r\nIf-Match: \"zz\"\r\n\r\n");
        assert_eq!(c.response(true).status, 412);
        assert_eq!(
            c.get("/hello.txt", "").status,
            200,
            "the connection goes on"
        );
        srv.stop();
    }
);

backend_test!(
    a_field_sent_on_several_lines_counts_whole,
    |choice: BackendChoice| {
        let site = Site::new();
        let Some(srv) = Serve::start(choice, &site, &[]) else {
            return;
        };
        let mut c = Client::connect(srv.addr);
        let etag = c.get("/hello.txt", "").must("ETag").to_string();
        // A list field: any line's tag counts, in either order.
        for extra in [
            format!("If-None-Match: {etag}\r\nIf-None-Match: \"zz\"\r\n"),
            format!("If-None-Match: \"zz\"\r\nif-none-match: {etag}\r\n"),
        ] {
            assert_eq!(c.get("/hello.txt", &extra).status, 304, "{extra:?}");
        }
        // Two ranges on two lines are several ranges: the whole file.
        let r = c.get("/hello.txt", "Range: bytes=0-1\r\nRange: bytes=3-4\r\n");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello, world\n"[..]));
        // Two If-Range lines name no one version: the whole file.
        let r = c.get(
            "/hello.txt",
            &format!("Range: bytes=0-1\r\nIf-Range: {etag}\r\nIf-Range: {etag}\r\n"),
        );
        assert_eq!(r.status, 200);
        srv.stop();
    }
);

backend_test!(
    a_suffix_range_of_an_empty_file_is_the_empty_file,
    |choice: BackendChoice| {
        let site = Site::new();
        site.write("empty.txt", b"");
        let Some(srv) = Serve::start(choice, &site, &[]) else {
            return;
        };
        let mut c = Client::connect(srv.addr);
        let r = c.get("/empty.txt", "Range: bytes=-5\r\n");
        assert_eq!((r.status, r.body.len()), (200, 0), "{:?}", r.headers);
        // Nothing to start from: 416 for these, as before.
        for range in ["bytes=0-", "bytes=-0", "bytes=0-0"] {
            let r = c.get("/empty.txt", &format!("Range: {range}\r\n"));
            assert_eq!(r.status, 416, "{range}");
            assert_eq!(r.must("Content-Range"), "bytes */0");
        }
        srv.stop();
    }
);

/// A request line of `n` bytes (without its end): `GET /aaa… HTTP/1.1`.
fn line(n: usize) -> String {
    format!("GET /{} HTTP/1.1", "a".repeat(n - "GET / HTTP/1.1".len()))
}

backend_test!(
    a_request_line_of_exactly_the_limit_is_accepted,
    |choice: BackendChoice| {
        let site = Site::new();
        let Some(srv) = Serve::start(choice, &site, &[]) else {
            return;
        };
        // 8 KiB, the documented limit, whatever ends the line.
        for eol in ["\r\n", "\n"] {
            let r = fetch(srv.addr, &format!("{}{eol}Host: t{eol}{eol}", line(8192)));
            assert_eq!(r.status, 404, "8192 bytes ending {eol:?}");
            let r = fetch(srv.addr, &format!("{}{eol}Host: t{eol}{eol}", line(8193)));
            assert_eq!(r.status, 414, "8193 bytes ending {eol:?}");
        }
        srv.stop();
    }
);

backend_test!(a_host_that_is_no_host_is_a_400, |choice: BackendChoice| {
    let site = Site::new();
    let Some(srv) = Serve::start(choice, &site, &[]) else {
        return;
    };
    let ask = |host: &str| {
        let mut c = Client::connect(srv.addr);
        c.send(format!("GET /hello.txt HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
        (c.response(false).status, c)
    };
    for good in [
        "t",
        "example.com:8080",
        "127.0.0.1",
        "[::1]:80",
        "[v1.fe80::a+en1]",
        "a%20b",
        "",
    ] {
        assert_eq!(ask(good).0, 200, "{good:?}");
    }
    for bad in [
        "a b", "/../x", "a/b", "h:8x", "[::1", "[]", "a%2", "h@x", "[::1]x",
    ] {
        let (status, mut c) = ask(bad);
        assert_eq!(status, 400, "{bad:?}");
        assert!(c.closed_by_server(), "{bad:?}: a 400 closes");
    }
    srv.stop();
});

backend_test!(
    a_request_whose_body_is_arriving_at_a_stop_is_answered,
    |choice: BackendChoice| {
        let site = Site::new();
        let Some(srv) = Serve::start(choice, &site, &[]) else {
            return;
        };
        let mut c = Client::connect(srv.addr);
        // The second head comes with the first, so the server holds it before
        // the stop, whenever the stop comes: it is in flight.
        c.send(
            b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n\
              GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789",
        );
        assert_eq!(c.response(false).status, 200);
        srv.signal(libc::SIGTERM);
        std::thread::sleep(Duration::from_millis(100));
        c.send(&[b'a'; 90]);
        let r = c.response(false);
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello, world\n"[..]));
        assert_eq!(r.must("Connection"), "close");
        assert!(c.closed_by_server());
        srv.wait_exit();
    }
);
