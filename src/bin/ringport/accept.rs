//! The accept loop of the async servers (`echo --async`, `chat`).

use std::time::Duration;

use ringport::net::{TcpListener, TcpStream};

/// How long accepting pauses when the process is out of descriptors.
const BACKOFF: Duration = Duration::from_millis(10);

/// Accepts connections on `listener` for as long as the task runs, handing
/// each to `conn`. Out of descriptors (`EMFILE`, `ENFILE`) it pauses for
/// [`BACKOFF`] (with a warning at most once a second) instead of spinning on
/// the error; any other accept error is logged and skipped.
pub(crate) async fn accept_each(listener: &TcpListener, mut conn: impl FnMut(TcpStream)) {
    loop {
        match listener.accept().await {
            Ok((s, _)) => conn(s),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                crate::warn_backoff(&e, BACKOFF);
                ringport::time::sleep(BACKOFF).await;
            }
            Err(e) => tracing::debug!("accept: {e}"),
        }
    }
}
