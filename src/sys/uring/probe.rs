//! What this kernel's io_uring offers: setup features and supported opcodes,
//! found with `IORING_REGISTER_PROBE` — on a scratch ring for `ringport info`
//! ([`probe`]), and on each driver's own ring at start ([`check_ops`]), which
//! decides how each kind of operation runs.
//!
//! # Forcing the fallbacks
//!
//! `RINGPORT_URING_OPS_OFF` lists optional opcodes to treat as missing, by
//! name (`SPLICE,READV`), or `all`: the driver then takes the path it would take
//! on a kernel without them, so the fallbacks can be tried (and tested) on a
//! kernel that has everything. Read once per port, when it is built.

use std::io;

use io_uring::{opcode, IoUring, Probe as KernelProbe};

/// The outcome of probing io_uring.
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    /// Setup features reported by the kernel, by name.
    pub(crate) features: Vec<(&'static str, bool)>,
    /// Opcodes ringport uses or plans to, by name, and whether the kernel has them.
    pub(crate) ops: Vec<(&'static str, bool)>,
}

/// Probes io_uring on a small scratch ring.
pub(crate) fn probe() -> io::Result<Probe> {
    let ring = IoUring::new(8)?;
    let p = ring.params();
    let features = vec![
        ("NODROP", p.is_feature_nodrop()),
        ("SUBMIT_STABLE", p.is_feature_submit_stable()),
        ("FAST_POLL", p.is_feature_fast_poll()),
        ("EXT_ARG", p.is_feature_ext_arg()),
        ("NATIVE_WORKERS", p.is_feature_native_workers()),
        ("CQE_SKIP", p.is_feature_skip_cqe_on_success()),
        ("LINKED_FILE", p.is_feature_linked_file()),
        ("RECVSEND_BUNDLE", p.is_feature_recvsend_bundle()),
        ("MIN_TIMEOUT", p.is_feature_min_timeout()),
    ];
    let mut kp = KernelProbe::new();
    ring.submitter().register_probe(&mut kp)?;
    let ops = [
        ("NOP", opcode::Nop::CODE),
        ("READ", opcode::Read::CODE),
        ("WRITE", opcode::Write::CODE),
        ("READV", opcode::Readv::CODE),
        ("WRITEV", opcode::Writev::CODE),
        ("FSYNC", opcode::Fsync::CODE),
        ("RECV", opcode::Recv::CODE),
        ("SEND", opcode::Send::CODE),
        ("RECVMSG", opcode::RecvMsg::CODE),
        ("SENDMSG", opcode::SendMsg::CODE),
        ("ACCEPT", opcode::Accept::CODE),
        ("CONNECT", opcode::Connect::CODE),
        ("CLOSE", opcode::Close::CODE),
        ("TIMEOUT", opcode::Timeout::CODE),
        ("LINK_TIMEOUT", opcode::LinkTimeout::CODE),
        ("ASYNC_CANCEL", opcode::AsyncCancel::CODE),
        ("OPENAT", opcode::OpenAt::CODE),
        ("STATX", opcode::Statx::CODE),
        ("FALLOCATE", opcode::Fallocate::CODE),
        ("SPLICE", opcode::Splice::CODE),
        ("SHUTDOWN", opcode::Shutdown::CODE),
        ("MSG_RING", opcode::MsgRingData::CODE),
        ("SEND_ZC", opcode::SendZc::CODE),
        ("PROVIDE_BUFFERS", opcode::ProvideBuffers::CODE),
        ("READ_FIXED", opcode::ReadFixed::CODE),
        ("WRITE_FIXED", opcode::WriteFixed::CODE),
    ]
    .into_iter()
    .map(|(name, code)| (name, kp.is_supported(code)))
    .collect::<Vec<_>>();
    // Not opcodes: multishot flavours and the buffer ring, by kernel version.
    let m = super::multi::multishot_support("");
    let mut ops = ops;
    ops.push(("PBUF_RING", m.pbuf_ring));
    ops.push(("ACCEPT_MULTISHOT", m.accept));
    ops.push(("RECV_MULTISHOT", m.recv));
    Ok(Probe { features, ops })
}

/// The optional opcodes, by name, that a driver can do without.
const OPTIONAL: [(&str, u8); 10] = [
    ("SPLICE", opcode::Splice::CODE),
    ("LINK_TIMEOUT", opcode::LinkTimeout::CODE),
    ("READV", opcode::Readv::CODE),
    ("WRITEV", opcode::Writev::CODE),
    ("OPENAT", opcode::OpenAt::CODE),
    ("STATX", opcode::Statx::CODE),
    ("FALLOCATE", opcode::Fallocate::CODE),
    ("SEND_ZC", opcode::SendZc::CODE),
    ("READ_FIXED", opcode::ReadFixed::CODE),
    ("WRITE_FIXED", opcode::WriteFixed::CODE),
];

/// Which optional opcodes a driver may use (found once, at start).
#[derive(Debug, Clone, Copy)]
pub(super) struct Support {
    /// `send_file` through a pipe; else read + send through a buffer.
    pub(super) splice: bool,
    /// `LINK_TIMEOUT`; else a `TIMEOUT` that cancels the op.
    pub(super) link_timeout: bool,
    /// The rest: else a worker thread.
    pub(super) readv: bool,
    pub(super) writev: bool,
    pub(super) openat: bool,
    pub(super) statx: bool,
    pub(super) fallocate: bool,
    /// `send_zc` as `SEND_ZC`; else a plain `SEND`.
    pub(super) send_zc: bool,
    /// Registered buffers (`READ_FIXED`, `WRITE_FIXED` and a sparse buffer
    /// table, Linux 5.19); else fixed-buffer file operations on a worker.
    pub(super) fixed: bool,
}

/// Fails if the kernel lacks an opcode ringport needs (then `auto` falls back);
/// otherwise says which optional ones it may use, minus those
/// `RINGPORT_URING_OPS_OFF` turns off.
///
/// The required ones (Linux 5.1–5.11) are required rather than probed per
/// operation: every kernel with `IORING_FEAT_EXT_ARG` (5.11), which the driver
/// already requires, has them, so the check can only fail on a kernel built or
/// filtered to lack them — and then epoll serves everything. (`SHUTDOWN`
/// had a fallback, `shutdown(2)` on the submitting thread; it overtook the
/// sends queued before it on the socket, and no kernel the driver accepts
/// could take it, so it went.)
pub(super) fn check_ops(ring: &IoUring) -> io::Result<Support> {
    let mut probe = KernelProbe::new();
    ring.submitter().register_probe(&mut probe)?;
    let required = [
        ("NOP", opcode::Nop::CODE),
        ("READ", opcode::Read::CODE),
        ("WRITE", opcode::Write::CODE),
        ("FSYNC", opcode::Fsync::CODE),
        ("RECV", opcode::Recv::CODE),
        ("SEND", opcode::Send::CODE),
        ("RECVMSG", opcode::RecvMsg::CODE),
        ("SENDMSG", opcode::SendMsg::CODE),
        ("ACCEPT", opcode::Accept::CODE),
        ("CONNECT", opcode::Connect::CODE),
        ("CLOSE", opcode::Close::CODE),
        ("TIMEOUT", opcode::Timeout::CODE),
        ("TIMEOUT_REMOVE", opcode::TimeoutRemove::CODE),
        ("ASYNC_CANCEL", opcode::AsyncCancel::CODE),
        // Ordered behind a socket's sends by its lane (5.11).
        ("SHUTDOWN", opcode::Shutdown::CODE),
        // The worker threads' wake-up, and a transfer's wait for room.
        ("POLL_ADD", opcode::PollAdd::CODE),
    ];
    for (name, code) in required {
        if !probe.is_supported(code) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("the kernel's io_uring lacks IORING_OP_{name}"),
            ));
        }
    }
    let off = std::env::var("RINGPORT_URING_OPS_OFF").unwrap_or_default();
    let has = |name: &str| -> bool {
        let code = OPTIONAL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| *c)
            .expect("an optional opcode");
        let forced_off = off.split(',').any(|o| {
            let o = o.trim();
            o.eq_ignore_ascii_case("all") || o.eq_ignore_ascii_case(name)
        });
        probe.is_supported(code) && !forced_off
    };
    Ok(Support {
        splice: has("SPLICE"),
        link_timeout: has("LINK_TIMEOUT"),
        readv: has("READV"),
        writev: has("WRITEV"),
        openat: has("OPENAT"),
        statx: has("STATX"),
        fallocate: has("FALLOCATE"),
        send_zc: has("SEND_ZC"),
        fixed: has("READ_FIXED") && has("WRITE_FIXED"),
    })
}
