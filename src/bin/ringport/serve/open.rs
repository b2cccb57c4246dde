//! Opening a request's file under DIR: one `openat2(2)` relative to DIR's
//! descriptor, then one `statx` of the opened descriptor.
//!
//! `RESOLVE_BENEATH` makes the kernel itself refuse (with `EXDEV`) any step of
//! the resolution that would leave DIR: a `..` above it, an absolute symlink, a
//! symlink leading outside — while symlinks that stay inside (also through a
//! symlinked directory, or one going `..` and back) are followed.
//! `RESOLVE_NO_MAGICLINKS` refuses `/proc`-style links. It is the traversal
//! wall of [`path::resolve`](super::path::resolve) (canonicalize, then check
//! the prefix) in one system call instead of one `readlink` per component plus
//! an `open` and a `stat`, and without its window between the check and the
//! open.
//!
//! `EXDEV` is not the last word: an absolute symlink whose target lies inside
//! DIR was always served, so a refused resolution is decided again by the
//! canonical path (the slow path, which refuses what really leaves DIR). So is
//! every open where the kernel lacks `openat2` (before Linux 5.6, or a seccomp
//! filter that forbids it): probed once at start, said once on stderr. The
//! slow path opens the canonical path it checked one name at a time from
//! DIR's descriptor, following no symlink, so a rename racing the request
//! cannot lead it outside DIR (`Root::open_walk`).

use std::ffi::CString;
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::path::{self, NotServed};

/// The flags every served file is opened with: read-only, and no FIFO or
/// device can block the open or become the controlling terminal.
const OPEN_FLAGS: i32 = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY;

/// DIR, open: what request paths are resolved against.
#[derive(Debug)]
pub struct Root {
    /// DIR's canonical path.
    pub path: PathBuf,
    /// DIR itself (`O_PATH`): the start of every `openat2`.
    fd: OwnedFd,
    /// The kernel has `openat2` (and it is not turned off).
    openat2: bool,
}

/// A file or directory under DIR, open, with its metadata.
#[derive(Debug)]
pub struct Opened {
    pub file: File,
    pub meta: Metadata,
}

impl Root {
    /// Opens DIR (a canonical path to a directory). `use_openat2: false` takes
    /// the slow path for every request (`--no-openat2`, for tests and
    /// comparisons).
    pub fn open(path: PathBuf, use_openat2: bool) -> io::Result<Root> {
        let fd = OwnedFd::from(
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
                .open(&path)?,
        );
        let mut root = Root {
            path,
            fd,
            openat2: use_openat2,
        };
        if use_openat2 {
            if let Err(e) = root.openat2(Path::new("."), libc::O_PATH | libc::O_CLOEXEC) {
                eprintln!(
                    "ringport serve: openat2 is not available ({e}); paths are resolved \
                     with canonicalize + open instead (more system calls per request)"
                );
                root.openat2 = false;
            }
        }
        Ok(root)
    }

    /// DIR's descriptor (`O_PATH`), open as long as `self`.
    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Whether requests use `openat2` (false: the slow path).
    #[cfg(test)]
    pub fn fast(&self) -> bool {
        self.openat2
    }

    /// Opens `rel` (plain names from [`path::decode`]) under DIR, following
    /// symlinks that stay inside it.
    pub fn open_beneath(&self, rel: &Path) -> Result<Opened, NotServed> {
        self.open_beneath_with(rel, OPEN_FLAGS)
    }

    /// The metadata of what `rel` leads to now, resolved beneath DIR as
    /// `open_beneath` resolves it (`None`: it does not lead to anything
    /// inside DIR now). What a cached copy of a file is checked against
    /// before it is served: a plain `stat` of DIR joined with `rel` follows
    /// symlinks out of DIR, so a directory moved out of DIR and linked back
    /// kept its files served (a review, session 17). An `O_PATH` open, which
    /// reads nothing, and a `statx` of it.
    pub fn stat_beneath(&self, rel: &Path) -> Option<Metadata> {
        self.open_beneath_with(rel, libc::O_PATH | libc::O_CLOEXEC)
            .ok()
            .map(|o| o.meta)
    }

    /// `open_beneath` with `flags`.
    fn open_beneath_with(&self, rel: &Path, flags: i32) -> Result<Opened, NotServed> {
        if self.openat2 {
            match self.openat2(rel, flags) {
                Ok(fd) => return opened(File::from(fd)),
                // Something on the way leaves DIR (or an absolute symlink that
                // may not), or a rename raced: the canonical path decides.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EXDEV | libc::EAGAIN)) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {}
                Err(e) => return Err(NotServed::from_io(e)),
            }
        }
        self.open_slow(rel, flags)
    }

    /// The slow path: canonicalize, check the prefix, then open what the
    /// canonical path names one name at a time from DIR's descriptor,
    /// following no symlink (`open_walk`).
    fn open_slow(&self, rel: &Path, flags: i32) -> Result<Opened, NotServed> {
        let found = path::resolve(&self.path, rel)?;
        let inner = found
            .strip_prefix(&self.path)
            .map_err(|_| NotServed::Forbidden)?;
        opened(self.open_walk(inner, flags).map_err(NotServed::from_io)?)
    }

    /// Opens `inner` — a canonical path's names below DIR, so no `..` and no
    /// symlink — from DIR's descriptor, each directory with `O_NOFOLLOW` and
    /// relative to the one before. A directory swapped for a symlink since
    /// the path was checked is refused (`ENOTDIR`, `ELOOP`), never followed:
    /// opening the checked path by name followed it (only its last name was
    /// `O_NOFOLLOW`), and a request racing a rename in DIR was served a file
    /// from outside it.
    fn open_walk(&self, inner: &Path, last_flags: i32) -> io::Result<File> {
        use std::path::Component;
        let names: Vec<&std::ffi::OsStr> = inner
            .components()
            .map(|c| match c {
                Component::Normal(n) => Ok(n),
                _ => Err(io::Error::from_raw_os_error(libc::EXDEV)),
            })
            .collect::<io::Result<_>>()?;
        let mut dir: Option<OwnedFd> = None;
        let last = names.len().saturating_sub(1);
        for i in 0..names.len().max(1) {
            let name = names.get(i).map_or(&b"."[..], |n| n.as_bytes());
            let flags = if i == last {
                last_flags | libc::O_NOFOLLOW
            } else {
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC
            };
            let at = dir.as_ref().unwrap_or(&self.fd).as_raw_fd();
            let fd = openat(at, name, flags)?;
            if i == last {
                return Ok(File::from(fd));
            }
            dir = Some(fd);
        }
        unreachable!("the loop returns at its last name")
    }

    fn openat2(&self, rel: &Path, flags: i32) -> io::Result<OwnedFd> {
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let name = CString::new(rel.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: open_how is plain integers: all zeroes is valid (mode 0).
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = flags as u64;
        how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
        loop {
            // SAFETY: openat2 reads the NUL-terminated name and `size_of` bytes
            // of `how`, both alive for the call, and returns a new descriptor
            // (or -1): nothing else is touched.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_openat2,
                    self.fd.as_raw_fd(),
                    name.as_ptr(),
                    &how as *const libc::open_how,
                    std::mem::size_of::<libc::open_how>(),
                )
            };
            if fd >= 0 {
                // SAFETY: a new descriptor that nothing else owns.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) });
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// One `openat(2)` of `name` (a single name) relative to `at`.
fn openat(at: i32, name: &[u8], flags: i32) -> io::Result<OwnedFd> {
    let name = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    loop {
        // SAFETY: openat reads the NUL-terminated name, alive for the call,
        // and returns a new descriptor (or -1); `at` is a descriptor the
        // caller keeps open for the call.
        let fd = unsafe { libc::openat(at, name.as_ptr(), flags) };
        if fd >= 0 {
            // SAFETY: a new descriptor that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn opened(file: File) -> Result<Opened, NotServed> {
    let meta = file.metadata().map_err(NotServed::from_io)?;
    Ok(Opened { file, meta })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A root with files, a symlinked directory, links in and out, a loop.
    struct Tree {
        base: PathBuf,
        root: PathBuf,
    }

    impl Tree {
        fn new() -> Tree {
            use std::os::unix::fs::symlink;
            use std::sync::atomic::{AtomicU64, Ordering};
            static N: AtomicU64 = AtomicU64::new(0);
            let base = std::env::temp_dir().join(format!(
                "ringport-open-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let root = base.join("root");
            std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
            std::fs::write(base.join("secret"), b"outside").unwrap();
            std::fs::write(root.join("in.txt"), b"inside").unwrap();
            std::fs::write(root.join("sub/deeper/deep.txt"), b"deep").unwrap();
            symlink("in.txt", root.join("link-in")).unwrap();
            symlink("sub", root.join("dir-link")).unwrap();
            symlink("../secret", root.join("link-out")).unwrap();
            symlink("/", root.join("link-root")).unwrap();
            symlink("..", root.join("sub/up")).unwrap();
            symlink("loop-b", root.join("loop-a")).unwrap();
            symlink("loop-a", root.join("loop-b")).unwrap();
            let root = std::fs::canonicalize(&root).unwrap();
            // An absolute link whose target is inside DIR.
            symlink(root.join("in.txt"), root.join("abs-in")).unwrap();
            Tree { base, root }
        }

        fn read(&self, fast: bool, rel: &str) -> Result<Vec<u8>, NotServed> {
            let r = Root::open(self.root.clone(), fast).unwrap();
            assert_eq!(r.fast(), fast, "this kernel has openat2");
            let mut o = r.open_beneath(Path::new(rel))?;
            let mut v = Vec::new();
            if o.meta.is_file() {
                o.file.read_to_end(&mut v).unwrap();
            }
            Ok(v)
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }

    #[test]
    fn the_walk_after_the_check_follows_no_symlink() {
        // What the slow path opens is a canonical path, checked a moment
        // before: here a name on it became a symlink since (a rename race).
        let t = Tree::new();
        let r = Root::open(t.root.clone(), false).unwrap();
        let refused = |rel: &str| r.open_walk(Path::new(rel), OPEN_FLAGS).is_err();
        assert!(refused("sub/up/in.txt"), "a directory turned symlink");
        assert!(
            refused("dir-link/deeper/deep.txt"),
            "a directory turned symlink"
        );
        assert!(refused("link-out"), "the last name turned symlink");
        assert!(refused("link-in"), "even one leading inside");
        assert!(r
            .open_walk(Path::new("sub/deeper/deep.txt"), OPEN_FLAGS)
            .is_ok());
        assert!(r.open_walk(Path::new(""), OPEN_FLAGS).is_ok(), "DIR itself");
    }

    #[test]
    fn both_paths_agree_on_what_is_served() {
        let t = Tree::new();
        for fast in [true, false] {
            assert_eq!(t.read(fast, "in.txt").unwrap(), b"inside");
            assert_eq!(t.read(fast, "link-in").unwrap(), b"inside");
            assert_eq!(t.read(fast, "abs-in").unwrap(), b"inside", "fast {fast}");
            assert_eq!(t.read(fast, "dir-link/deeper/deep.txt").unwrap(), b"deep");
            assert_eq!(t.read(fast, "sub/up/in.txt").unwrap(), b"inside");
            assert!(t.read(fast, "").is_ok(), "DIR itself");
            assert!(t.read(fast, "dir-link").is_ok());
            assert_eq!(t.read(fast, "link-out"), Err(NotServed::Forbidden));
            assert_eq!(t.read(fast, "link-root"), Err(NotServed::Forbidden));
            assert_eq!(
                t.read(fast, "link-root/etc/passwd"),
                Err(NotServed::Forbidden)
            );
            assert_eq!(t.read(fast, "loop-a"), Err(NotServed::NotFound));
            assert_eq!(t.read(fast, "nope"), Err(NotServed::NotFound));
            assert_eq!(t.read(fast, "in.txt/x"), Err(NotServed::NotFound));
        }
    }
}
