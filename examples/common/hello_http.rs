//! The HTTP/1.1 server of `examples/hyper_server.rs`: hyper 1.x on ringport, one
//! ringport task per connection. Also run by `tests/it/hyper_bridge.rs` (it is
//! included with `#[path]`, beside `hyper_io.rs`).
//!
//! `GET /` answers [`HELLO`], `POST /echo` sends the request body back (up to
//! [`MAX_ECHO`] bytes, else 413), anything else is 404.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use ringport::net::{TcpListener, TcpStream};

use super::hyper_io::HyperIo;

/// The body of `GET /`.
pub const HELLO: &str = "hello from ringport\n";

/// Largest body `POST /echo` sends back.
pub const MAX_ECHO: usize = 16 << 20;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Accepts connections forever, serving each on its own ringport task. Returns
/// only on an accept error that retrying cannot fix (e.g. the runtime shut down).
pub async fn serve(listener: TcpListener) -> io::Result<()> {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                ringport::spawn(serve_connection(stream, peer));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
                ) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                ) =>
            {
                // Out of descriptors or memory: back off instead of spinning.
                eprintln!("accept: {e}; retrying in 100 ms");
                ringport::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Serves HTTP/1.1 on one connection until the peer closes it.
pub async fn serve_connection(stream: TcpStream, peer: SocketAddr) {
    // hyper writes each response then flushes: nothing gains from Nagle's delay.
    let _ = stream.set_nodelay(true);
    let conn = http1::Builder::new().serve_connection(HyperIo::new(stream), service_fn(handle));
    if let Err(e) = conn.await {
        // A client that hangs up between requests is normal, not worth a line.
        if !e.is_incomplete_message() {
            eprintln!("connection from {peer}: {e}");
        }
    }
}

/// The service: one request, one response.
pub async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, BoxError> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => Ok(Response::new(Full::new(Bytes::from_static(
            HELLO.as_bytes(),
        )))),
        (&Method::POST, "/echo") => match Limited::new(req.into_body(), MAX_ECHO).collect().await {
            Ok(body) => Ok(Response::new(Full::new(body.to_bytes()))),
            Err(e) if e.is::<LengthLimitError>() => Ok(status(StatusCode::PAYLOAD_TOO_LARGE)),
            Err(e) => Err(e),
        },
        _ => Ok(status(StatusCode::NOT_FOUND)),
    }
}

/// An empty response with `code`.
fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = code;
    r
}
