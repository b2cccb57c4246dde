//! Registering sockets with the epoll set (`associate`, `disassociate`) and
//! finding a registered socket's queues without a lock (see `FdQueue`).

use std::sync::atomic::AtomicU32;

use super::*;

/// Registration numbers of queues at or above `fdtab::DIRECT` (`Queues::gen`).
static BIG_GEN: AtomicU32 = AtomicU32::new(0);

impl Driver {
    /// Registers a socket (sets it non-blocking; edge-triggered in and out).
    /// Other descriptors (files) are not registered: their operations go to the
    /// file workers.
    pub(crate) fn associate(&self, fd: RawFd) -> crate::Result<()> {
        // SAFETY: fstat writes into a stat struct we own.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above; a bad fd gives EBADF.
        if unsafe { libc::fstat(fd, &mut st) } < 0 {
            return Err(Error::Io(io::Error::last_os_error()));
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            return Ok(());
        }
        crate::sys::set_nonblocking_fd(fd, true).map_err(Error::Io)?;
        // The drained rule (`sock.rs`, `drained_after`) holds for TCP only: a
        // Unix stream's receive stops short after a message that carried
        // descriptors, with more behind it.
        let stream = crate::sys::socket_type(fd) == Some(libc::SOCK_STREAM)
            && matches!(
                crate::sys::socket_domain(fd),
                Some(libc::AF_INET | libc::AF_INET6)
            );
        let mut big = lock(&self.shared.big);
        let (q, gen) = match FdTable::<FdQueue>::index(fd) {
            Some(i) => {
                let q = self.shared.fds.get_or_make(i);
                if q.registered.load(Ordering::Relaxed) {
                    return Err(Error::AlreadyAssociated(fd));
                }
                // Still dead (as `disassociate` left it, or as made here):
                // a stale submitter that reaches it now cancels its
                // operation rather than queueing it where nobody looks.
                let gen = {
                    let mut g = lock(&q.q);
                    debug_assert!(g.read.is_empty() && g.write.is_empty());
                    let gen = g.gen.wrapping_add(1);
                    *g = Queues {
                        dead: true,
                        gen,
                        ..Queues::default()
                    };
                    q.stream.store(stream, Ordering::Relaxed);
                    gen
                };
                // Registered before the `EPOLL_CTL_ADD`, whose first edge the
                // poller may see at once: it must find the queues.
                q.registered.store(true, Ordering::Release);
                (QueueRef::Direct(q), gen)
            }
            None => {
                if big.contains_key(&fd) {
                    return Err(Error::AlreadyAssociated(fd));
                }
                let q = Arc::new(FdQueue::default());
                // A fresh queue each time: its number comes from a counter, so
                // that an edge of the number's earlier registration is told apart.
                let gen = BIG_GEN.fetch_add(1, Ordering::Relaxed);
                {
                    let mut g = lock(&q.q);
                    g.dead = true;
                    g.gen = gen;
                }
                q.stream.store(stream, Ordering::Relaxed);
                big.insert(fd, q.clone());
                (QueueRef::Big(q), gen)
            }
        };
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN
                | libc::EPOLLPRI
                | libc::EPOLLOUT
                | libc::EPOLLRDHUP
                | libc::EPOLLET) as u32,
            u64: ready::token(fd, gen),
        };
        // SAFETY: both descriptors are open; `ev` is a valid event.
        if unsafe {
            libc::epoll_ctl(
                self.shared.epfd.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd,
                &mut ev,
            )
        } < 0
        {
            let e = io::Error::last_os_error();
            big.remove(&fd);
            q.registered.store(false, Ordering::Release);
            return Err(Error::Io(e));
        }
        lock(&q.q).dead = false;
        Ok(())
    }

    /// Unregisters a socket; operations still queued on it complete with `ECANCELED`.
    pub(crate) fn disassociate(&self, fd: RawFd) {
        let mut big = lock(&self.shared.big);
        let q = match FdTable::<FdQueue>::index(fd) {
            Some(i) => match self.shared.fds.get(i) {
                Some(q) if q.registered.swap(false, Ordering::AcqRel) => QueueRef::Direct(q),
                _ => return,
            },
            None => match big.remove(&fd) {
                Some(q) => QueueRef::Big(q),
                None => return,
            },
        };
        // SAFETY: removing a descriptor from our epoll set; errors (already closed) are harmless.
        unsafe {
            libc::epoll_ctl(
                self.shared.epfd.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        };
        let pending: Vec<Pending> = {
            let mut g = lock(&q.q);
            let g = &mut *g;
            g.dead = true;
            g.read.drain(..).chain(g.write.drain(..)).collect()
        };
        // (Still under `big`: a new registration of the number waits until
        // the old queues are empty and dead.)
        drop(big);
        if pending.is_empty() {
            return;
        }
        let mut inner = lock(&self.shared.inner);
        for p in pending {
            if let Some(c) = self.end(&mut inner, p, -libc::ECANCELED) {
                inner.done.push(c);
            }
        }
        drop(inner);
        self.notify();
    }
}

impl Shared {
    /// A registered socket's queues; `None` for a descriptor that is not one.
    pub(super) fn queue(&self, fd: RawFd) -> Option<QueueRef<'_>> {
        match FdTable::<FdQueue>::index(fd) {
            Some(i) => self
                .fds
                .get(i)
                .filter(|q| q.registered.load(Ordering::Acquire))
                .map(QueueRef::Direct),
            None => lock(&self.big).get(&fd).cloned().map(QueueRef::Big),
        }
    }
}
