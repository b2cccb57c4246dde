//! Same-direction socket operations in submission order.
//!
//! IOCP fills several overlapped receives posted on one socket in the order
//! they were posted, and sends several in order; the epoll backend does the
//! same (one queue per socket and direction). io_uring does not: a receive
//! that finds no data arms a poll on the socket's wait queue, at its head, so
//! when data comes the newest waiter runs first and takes it. Several waiting
//! receives would split a stream among themselves out of order (several sends
//! would put their bytes on the wire out of order).
//!
//! So the driver keeps a *lane* per socket and direction: at most one of its
//! operations is in the kernel (the lane's *busy* one); later ones are
//! *parked* here, with their SQEs built, and the next one is pushed when the
//! busy one's completion is built (`Inner::complete`). The common case — one
//! receive and one send in flight per socket, as ringport's own handles keep —
//! costs an array store when the operation is pushed and one when it ends.
//!
//! Which operations take a lane: on a stream (or sequenced-packet) socket,
//! receives (`recv`, `recv_from`, a fixed-buffer read, and a multishot
//! receive, which holds the lane until its final completion, so a receive
//! submitted after it waits behind it and one submitted before it is served
//! first, as on epoll) and sends (`send`, `send_to`, `send_zc`, `send_file`,
//! a fixed-buffer write, and a `shutdown` of the sending side, which must
//! follow the sends before it). Nothing on a datagram socket: datagrams keep
//! no order to protect, and a UDP socket shared by many tasks must not have
//! its operations served one reap apart. Not accepts (any waiting accept
//! may take any connection), not connects. The socket's type is looked up
//! once per association (`SO_TYPE`).
//!
//! A parked operation reaches the kernel when a thread next reaps
//! completions (a thread in `get`: the pool's workers always are); with no
//! thread waiting on the port it waits, as an operation that must wait for
//! readiness does on epoll.
//!
//! A parked operation is not in the kernel, so the driver ends it itself:
//! a cancel completes it at once (`ECANCELED`); closing or disassociating its
//! socket pushes every parked one on it, in order, ahead of the close's
//! cancel (so a send the socket has room for still goes out, as on epoll,
//! and one that must wait ends `ECANCELED` with the rest); a linked timeout
//! runs while it is parked, as a plain `TIMEOUT` whose expiry cancels it
//! (the driver's emulated linked timeout, which keeps running once the
//! operation is pushed); at shutdown it is cancelled like the rest.
//!
//! # Invariants (all under the driver's `inner` mutex)
//!
//! * `busy[fd][dir]` is 0 or the id of the operation of that lane in the
//!   kernel (or on its way there). Op ids are never 0 (generations start at 1).
//! * An id is in `parked[(fd, dir)]` exactly while its record holds its
//!   unpushed SQEs (`Record::parked`); a lane with parked ids has a busy one.
//! * A lane is released only by its busy operation's id (`leave`): after a
//!   close forgot the lane, the old operation's late completion cannot
//!   release a new socket's lane on the same descriptor number.

use std::collections::{HashMap, VecDeque};
use std::os::fd::RawFd;

use crate::completion::OpId;
use crate::op::OpBody;

/// Receive side (0) or send side (1) of a socket.
pub(super) type Lane = (RawFd, u8);

/// Descriptors below this have their busy ids in an array; others in a map.
const DIRECT: usize = 1 << 20;

#[derive(Debug, Default)]
pub(super) struct Lanes {
    /// `busy[fd]`: the busy op of the receive and send lanes, or 0.
    busy: Vec<[u64; 2]>,
    /// The same for descriptors at or above [`DIRECT`].
    far: HashMap<Lane, u64>,
    /// Operations waiting behind each lane's busy one, oldest first.
    parked: HashMap<Lane, VecDeque<OpId>>,
    /// `kinds[fd]`: whether its operations take lanes (`ordered`).
    kinds: Vec<u8>,
}

/// `Lanes::kinds`: not looked up yet.
const UNKNOWN: u8 = 0;
/// A stream (or sequenced-packet) socket: its operations take lanes.
const ORDERED: u8 = 1;
/// Anything else (a datagram socket, a file): no lanes.
const UNORDERED: u8 = 2;
/// A Unix datagram socket: no lanes, and its sends never wait in the
/// kernel ([`Lanes::unix_datagram`]).
const UNIX_DGRAM: u8 = 3;

impl Lanes {
    /// The lane of an operation, if it takes one: a receive or send on a
    /// stream or sequenced-packet socket. Datagrams keep no order to
    /// protect, and a datagram socket shared by many tasks (one receive or
    /// send each, as UDP servers run) must not have them served one reap
    /// apart: nothing on one takes a lane.
    pub(super) fn lane_of(&mut self, body: &OpBody) -> Option<Lane> {
        let (fd, dir) = match body {
            OpBody::Recv { fd, .. }
            | OpBody::RecvFrom { fd, .. }
            | OpBody::RecvMulti { fd, .. }
            | OpBody::ReadFixed { fd, .. } => (*fd, 0),
            OpBody::Send { fd, .. }
            | OpBody::SendTo { fd, .. }
            | OpBody::SendZc { fd, .. }
            | OpBody::WriteFixed { fd, .. } => (*fd, 1),
            OpBody::SendFile { sock, .. } => (*sock, 1),
            // A shutdown of the sending side goes out after the sends before it.
            OpBody::Shutdown { fd, how } if *how != libc::SHUT_RD => (*fd, 1),
            _ => return None,
        };
        self.ordered(fd).then_some((fd, dir))
    }

    /// Whether `fd` is a stream or sequenced-packet socket (cached per
    /// descriptor below [`DIRECT`] until `reset`).
    fn ordered(&mut self, fd: RawFd) -> bool {
        self.kind(fd) == ORDERED
    }

    /// Whether `fd` is a Unix datagram socket, whose sends the driver makes
    /// with `MSG_DONTWAIT` (cached as [`ordered`](Self::ordered) is).
    ///
    /// A Unix datagram send copies the datagram out of the caller's
    /// buffer before it finds the receiver's queue full and says `EAGAIN`;
    /// io_uring then waits and tries again with the copy's iterator used
    /// up: it sent an *empty* datagram and completed with `Ok(0)`, the
    /// data lost. With `MSG_DONTWAIT` the kernel does not try again: the
    /// send completes with `EAGAIN` and nothing is sent, as it already did
    /// for a non-blocking socket (whose poll says writable while the
    /// receiver is full, so there is nothing to wait for).
    pub(super) fn unix_datagram(&mut self, fd: RawFd) -> bool {
        self.kind(fd) == UNIX_DGRAM
    }

    fn kind(&mut self, fd: RawFd) -> u8 {
        let i = match usize::try_from(fd) {
            Ok(i) if i < DIRECT => i,
            _ => return socket_kind(fd),
        };
        if i >= self.kinds.len() {
            self.kinds
                .resize((i + 1).next_power_of_two().max(64), UNKNOWN);
        }
        if self.kinds[i] == UNKNOWN {
            self.kinds[i] = socket_kind(fd);
        }
        self.kinds[i]
    }

    /// Whether a send on `fd` may be made at once, outside the ring: `fd`
    /// is a stream (or sequenced-packet) socket and nothing is in its send
    /// lane (no send, `send_file` or shutdown in the kernel or parked), so
    /// the send overtakes nothing submitted before it (`Driver::send_now`).
    pub(super) fn send_idle(&mut self, fd: RawFd) -> bool {
        self.ordered(fd) && self.slot((fd, 1), false).is_none_or(|busy| *busy == 0)
    }

    /// Forgets what `fd` was (it is being associated: maybe a new socket).
    pub(super) fn reset(&mut self, fd: RawFd) {
        if let Some(k) = usize::try_from(fd).ok().and_then(|i| self.kinds.get_mut(i)) {
            *k = UNKNOWN;
        }
    }
}

/// `SO_TYPE` says stream or sequenced-packet: [`ORDERED`]; a Unix datagram
/// socket (`SO_DOMAIN` too): [`UNIX_DGRAM`]; anything else, and a
/// descriptor that is not a socket: [`UNORDERED`].
fn socket_kind(fd: RawFd) -> u8 {
    match crate::sys::socket_type(fd) {
        Some(libc::SOCK_STREAM | libc::SOCK_SEQPACKET) => ORDERED,
        Some(libc::SOCK_DGRAM)
            if crate::sys::socket_int(fd, libc::SO_DOMAIN) == Some(libc::AF_UNIX) =>
        {
            UNIX_DGRAM
        }
        _ => UNORDERED,
    }
}

impl Lanes {
    /// The busy id of `lane`; `create`: make room for it (else `None` when
    /// the lane was never used).
    fn slot(&mut self, (fd, dir): Lane, create: bool) -> Option<&mut u64> {
        match usize::try_from(fd) {
            Ok(i) if i < DIRECT => {
                if i >= self.busy.len() {
                    if !create {
                        return None;
                    }
                    let n = (i + 1).next_power_of_two().max(64);
                    self.busy.resize(n, [0; 2]);
                }
                Some(&mut self.busy[i][usize::from(dir)])
            }
            _ if create => Some(self.far.entry((fd, dir)).or_insert(0)),
            _ => self.far.get_mut(&(fd, dir)),
        }
    }

    /// Sets the busy id of a lane that has a slot (0: free).
    fn set(&mut self, lane: Lane, id: u64) {
        if let Some(slot) = self.slot(lane, false) {
            *slot = id;
        }
        if id == 0 && !self.far.is_empty() {
            // (A far lane's entry goes with its last operation.)
            self.far.remove(&lane);
        }
    }

    /// `id` wants its lane: true if it may go to the kernel now (the lane
    /// was free, and is now `id`'s); false if it was parked behind the busy
    /// one.
    pub(super) fn enter(&mut self, lane: Lane, id: OpId) -> bool {
        let slot = self.slot(lane, true).expect("made");
        if *slot == 0 {
            *slot = id.0;
            return true;
        }
        self.parked.entry(lane).or_default().push_back(id);
        false
    }

    /// `id` ended. If it was its lane's busy operation, the lane passes to
    /// the oldest parked one, which is returned (the caller pushes it).
    pub(super) fn leave(&mut self, lane: Lane, id: OpId) -> Option<OpId> {
        if self.slot(lane, false).map(|s| *s) != Some(id.0) {
            return None;
        }
        // (Most of the time nothing is parked anywhere: no lookup.)
        let queue = match self.parked.is_empty() {
            true => None,
            false => self.parked.get_mut(&lane),
        };
        let next = match queue {
            Some(q) => {
                let next = q.pop_front();
                if q.is_empty() {
                    self.parked.remove(&lane);
                }
                next
            }
            None => None,
        };
        self.set(lane, next.map_or(0, |n| n.0));
        next
    }

    /// Takes a parked `id` out of its lane (it is being cancelled). False if
    /// it was not parked there.
    pub(super) fn unpark(&mut self, lane: Lane, id: OpId) -> bool {
        let Some(q) = self.parked.get_mut(&lane) else {
            return false;
        };
        let Some(at) = q.iter().position(|&p| p == id) else {
            return false;
        };
        q.remove(at);
        if q.is_empty() {
            self.parked.remove(&lane);
        }
        true
    }

    /// The descriptor is being closed (or disassociated): both its lanes are
    /// forgotten, and the ids parked on them returned (the caller ends them).
    /// The busy ones end through the kernel's cancel; their late `leave`
    /// finds the lane no longer theirs.
    pub(super) fn forget(&mut self, fd: RawFd) -> Vec<OpId> {
        self.reset(fd);
        let mut out = Vec::new();
        for dir in 0..2u8 {
            let lane = (fd, dir);
            self.set(lane, 0);
            if let Some(q) = self.parked.remove(&lane) {
                out.extend(q);
            }
        }
        out
    }

    /// True when no operation is parked anywhere.
    #[cfg(test)]
    pub(super) fn none_parked(&self) -> bool {
        self.parked.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_serves_its_operations_in_order_and_only_its_busy_one_releases_it() {
        let mut l = Lanes::default();
        let (a, b, c) = (OpId(1 << 32), OpId(2 << 32), OpId(3 << 32));
        assert!(l.enter((5, 0), a));
        assert!(!l.enter((5, 0), b));
        assert!(!l.enter((5, 0), c));
        // The other direction and another socket are free.
        assert!(l.enter((5, 1), OpId(9 << 32)));
        assert!(l.enter((6, 0), OpId(10 << 32)));
        // A parked one ending (a cancel) does not release the lane.
        assert_eq!(l.leave((5, 0), b), None);
        assert_eq!(l.leave((5, 0), a), Some(b));
        assert!(l.unpark((5, 0), c));
        assert!(!l.unpark((5, 0), c));
        assert_eq!(l.leave((5, 0), b), None);
        assert!(l.none_parked());
        assert!(l.enter((5, 0), c));
    }

    #[test]
    fn only_stream_sockets_take_lanes() {
        use std::os::fd::AsRawFd;
        let mut l = Lanes::default();
        let l_tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = std::net::TcpStream::connect(l_tcp.local_addr().unwrap()).unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (t, u) = (tcp.as_raw_fd(), udp.as_raw_fd());
        let recv = |fd| OpBody::Recv {
            fd,
            buf: Vec::new(),
            flags: 0,
        };
        let send = |fd| OpBody::Send {
            fd,
            buf: Vec::new(),
            pos: 0,
            flags: 0,
        };
        assert_eq!(l.lane_of(&recv(t)), Some((t, 0)));
        assert_eq!(l.lane_of(&send(t)), Some((t, 1)));
        let shut = |how| OpBody::Shutdown { fd: t, how };
        assert_eq!(l.lane_of(&shut(libc::SHUT_WR)), Some((t, 1)));
        assert_eq!(l.lane_of(&shut(libc::SHUT_RD)), None);
        assert_eq!(l.lane_of(&recv(u)), None, "a UDP socket keeps no order");
        assert_eq!(l.lane_of(&send(u)), None);
        let to = OpBody::SendTo {
            fd: t,
            buf: Vec::new(),
            addr: Box::new(socket2::SockAddr::from(l_tcp.local_addr().unwrap())),
            flags: 0,
        };
        assert_eq!(
            l.lane_of(&to),
            Some((t, 1)),
            "send_to on a stream keeps order"
        );
        let to_u = OpBody::SendTo {
            fd: u,
            buf: Vec::new(),
            addr: Box::new(socket2::SockAddr::from(l_tcp.local_addr().unwrap())),
            flags: 0,
        };
        assert_eq!(l.lane_of(&to_u), None, "datagram operations take none");
        // The type is remembered per association: a reset looks again.
        drop(tcp);
        let udp2 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let u2 = udp2.as_raw_fd();
        if u2 == t {
            assert_eq!(l.lane_of(&recv(u2)), Some((u2, 0)), "cached until reset");
            l.reset(u2);
            assert_eq!(l.lane_of(&recv(u2)), None);
        }
    }

    #[test]
    fn forgetting_a_descriptor_hands_back_its_parked_operations() {
        let mut l = Lanes::default();
        let fd = (DIRECT + 7) as RawFd;
        let ids: Vec<OpId> = (1..=4).map(|i| OpId(i << 32)).collect();
        assert!(l.enter((fd, 1), ids[0]));
        assert!(!l.enter((fd, 1), ids[1]));
        assert!(l.enter((3, 0), ids[2]));
        assert!(!l.enter((3, 0), ids[3]));
        assert_eq!(l.forget(fd), vec![ids[1]]);
        assert_eq!(l.forget(3), vec![ids[3]]);
        // The old busy ones' late ends release nothing; the lanes are free.
        assert_eq!(l.leave((fd, 1), ids[0]), None);
        assert!(l.enter((3, 0), OpId(8 << 32)));
        assert_eq!(l.leave((3, 0), ids[2]), None);
        assert!(l.none_parked());
        assert!(l.far.is_empty());
    }
}
