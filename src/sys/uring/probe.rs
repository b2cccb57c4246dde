//! What this kernel's io_uring offers: setup features and supported opcodes,
//! found with `IORING_REGISTER_PROBE` on a scratch ring (for `ringport info`).

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
    ]
    .into_iter()
    .map(|(name, code)| (name, kp.is_supported(code)))
    .collect();
    Ok(Probe { features, ops })
}
