//! `ringport serve`, HTTP at its edges (session 12's review; see `serve.rs`
//! for the harness): `Expect: 100-continue`, request targets in absolute form,
//! a trailing encoded slash, and a 400 that closes the connection.

use ringport::BackendChoice;

use crate::serve::{fetch, Client, Serve, Site};

/// A header time far beyond the client's read limit (`T`): a server that
/// waits for a body the client holds back fails the test instead of
/// answering late.
const SLOW_HEADER: [&str; 2] = ["--header-timeout-ms", "60000"];

/// `GET target` on a fresh connection that closes after the response.
fn get_closing(srv: &Serve, target: &str) -> crate::serve::Resp {
    fetch(
        srv.addr,
        &format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
    )
}

backend_test!(
    expect_100_continue_is_answered_without_waiting_for_the_body,
    |choice: BackendChoice| {
        let site = Site::new();
        let Some(srv) = Serve::start(choice, &site, &SLOW_HEADER) else {
            return;
        };
        // A method this server refuses: its 405 comes at once, and the
        // connection closes (the body is never read).
        let mut c = Client::connect(srv.addr);
        c.send(
            b"POST /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\
              Expect: 100-continue\r\n\r\n",
        );
        let r = c.response(false);
        assert_eq!(r.status, 405);
        assert_eq!(r.must("Allow"), "GET, HEAD");
        assert_eq!(r.must("Connection"), "close");
        assert!(c.closed_by_server());

        // A GET with a body held back: the file at once, then close.
        let mut c = Client::connect(srv.addr);
        c.send(
            b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\
              Expect: 100-continue\r\n\r\n",
        );
        let r = c.response(false);
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello, world\n"[..]));
        assert!(c.closed_by_server());

        // The body sent along anyway is read as usual: the connection goes on.
        let mut c = Client::connect(srv.addr);
        c.send(
            b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\
              Expect: 100-continue\r\n\r\nabc",
        );
        assert_eq!(c.response(false).status, 200);
        assert_eq!(c.get("/hello.txt", "").status, 200, "kept alive");
        srv.stop();
    }
);

backend_test!(
    absolute_form_targets_take_their_path_from_the_path,
    |choice: BackendChoice| {
        let site = Site::new();
        let Some(srv) = Serve::start(choice, &site, &[]) else {
            return;
        };
        let ask = |target: &str| get_closing(&srv, target);
        let r = ask("HTTP://t/hello.txt");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello, world\n"[..]));
        // No path: `/` (the listing), not a path out of the query.
        let r = ask("http://t?q=/hello.txt");
        assert_eq!(r.status, 200);
        assert!(r.text().contains("Index of /"), "{}", r.text());
        let r = ask("http://t#/hello.txt");
        assert!(r.text().contains("Index of /"), "{}", r.text());
        srv.stop();
    }
);

backend_test!(
    a_directory_named_with_an_encoded_slash_is_redirected,
    |choice: BackendChoice| {
        let site = Site::new();
        let Some(srv) = Serve::start(choice, &site, &[]) else {
            return;
        };
        for t in ["/sub", "/sub%2F", "/sub%2f"] {
            let r = get_closing(&srv, t);
            assert_eq!(r.status, 301, "{t}");
            assert_eq!(r.must("Location"), "/sub/", "{t}");
        }
        srv.stop();
    }
);

backend_test!(
    a_400_for_a_bad_target_closes_the_connection,
    |choice: BackendChoice| {
        let site = Site::new();
        let Some(srv) = Serve::start(choice, &site, &[]) else {
            return;
        };
        for t in ["/%zz", "*", "hello.txt"] {
            let mut c = Client::connect(srv.addr);
            let r = c.get(t, "");
            assert_eq!(r.status, 400, "{t}");
            assert_eq!(r.must("Connection"), "close", "{t}");
            assert!(c.closed_by_server(), "{t}: the connection stayed open");
        }
        srv.stop();
    }
);
