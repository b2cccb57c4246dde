//! cargo run --example hyper_server [-- ADDR]
//!
//! An HTTP/1.1 server: hyper 1.x on the ringport runtime. Listens on ADDR
//! (default 127.0.0.1:8081) and serves each connection on its own ringport task;
//! hyper's I/O traits are bridged to ringport's `futures-io` streams by the small
//! adapter in `common/hyper_io.rs`.
//!
//! ```text
//! curl http://127.0.0.1:8081/                       # hello from ringport
//! curl --data-binary @Cargo.toml http://127.0.0.1:8081/echo
//! ```

#[path = "common/hello_http.rs"]
mod hello_http;
#[path = "common/hyper_io.rs"]
mod hyper_io;

use ringport::net::TcpListener;
use ringport::Runtime;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8081".to_string());
    let rt = Runtime::new()?;
    rt.block_on(async {
        let listener = TcpListener::bind(addr.as_str())?;
        println!(
            "listening on http://{} (backend: {})",
            listener.local_addr()?,
            ringport::Handle::current()?.backend()
        );
        hello_http::serve(listener).await
    })?;
    Ok(())
}
