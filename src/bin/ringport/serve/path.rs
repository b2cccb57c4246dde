//! From a request target to a file under DIR, refusing everything that could
//! lead elsewhere.
//!
//! Two steps, each a wall of its own:
//!
//! 1. [`decode`]: the target's path is percent-decoded *first*, then split at
//!    `/` (so an encoded `%2F` is a separator like any other). A `..` segment, a
//!    NUL byte or a malformed escape refuses the request; empty and `.` segments
//!    are dropped. What is left are plain names, none of which can climb or start
//!    over from `/` when pushed onto a path.
//! 2. [`resolve`]: DIR joined with those names is canonicalized (every symlink
//!    followed) and must still lie under DIR's own canonical path; a symlink that
//!    leads outside is refused.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A decoded request path: plain names under DIR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlPath {
    /// Decoded segments; none is empty, `.`, `..`, or holds `/` or NUL.
    pub segments: Vec<Vec<u8>>,
    /// The path ended with `/` (or was `/`).
    pub slash: bool,
}

/// Why a target is refused before any file is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// 400: not a path (`*`, no leading `/`, a bad `%` escape).
    BadRequest,
    /// 403: a `..` segment or a NUL byte.
    Forbidden,
}

/// Decodes a request target (origin form `/p?q`, or absolute form
/// `http://host/p?q`) into a [`UrlPath`]. Never panics.
pub fn decode(target: &str) -> Result<UrlPath, Refused> {
    let path = match strip_scheme(target) {
        // The authority ends at the first `/`, `?` or `#` (RFC 3986 §3.2):
        // `http://h?q=/x` names `/`, not `/x`.
        Some(rest) => match rest.find(['/', '?', '#']) {
            Some(i) if rest.as_bytes()[i] == b'/' => &rest[i..],
            _ => "/",
        },
        None => target,
    };
    if !path.starts_with('/') {
        return Err(Refused::BadRequest);
    }
    let path = path.split(['?', '#']).next().unwrap_or("");
    // Whether the path names a directory (ends in `/`, or in a `.` segment)
    // is decided before decoding: `/sub%2F` names `sub/` as a file name
    // would, and is redirected to `/sub/` like `/sub`.
    let tail = path.rsplit('/').next().unwrap_or("");
    let slash = tail.is_empty() || tail == "." || tail.eq_ignore_ascii_case("%2e");
    let raw = path.as_bytes();
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'%' => {
                let hex = |j: usize| raw.get(j).and_then(|&c| (c as char).to_digit(16));
                let (Some(h), Some(l)) = (hex(i + 1), hex(i + 2)) else {
                    return Err(Refused::BadRequest);
                };
                decoded.push((h * 16 + l) as u8);
                i += 3;
            }
            c => {
                decoded.push(c);
                i += 1;
            }
        }
    }
    if decoded.contains(&0) {
        return Err(Refused::Forbidden);
    }
    let mut segments = Vec::new();
    for seg in decoded.split(|&b| b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => return Err(Refused::Forbidden),
            s => segments.push(s.to_vec()),
        }
    }
    Ok(UrlPath { segments, slash })
}

/// The rest of an absolute-form target after its `http://` or `https://`
/// (the scheme in any case, RFC 3986 §3.1); `None` for any other form.
fn strip_scheme(target: &str) -> Option<&str> {
    ["http://", "https://"].into_iter().find_map(|scheme| {
        let head = target.get(..scheme.len())?;
        head.eq_ignore_ascii_case(scheme)
            .then(|| &target[scheme.len()..])
    })
}

impl UrlPath {
    /// The path relative to DIR.
    pub fn relative(&self) -> PathBuf {
        let mut p = PathBuf::new();
        for s in &self.segments {
            p.push(OsStr::from_bytes(s));
        }
        p
    }

    /// The normalized path, percent-encoded, with a trailing `/` if `slash`: a
    /// safe `Location` (never `//host`, whatever the request held).
    pub fn encoded(&self, slash: bool) -> String {
        let mut s = String::from("/");
        for (i, seg) in self.segments.iter().enumerate() {
            if i > 0 {
                s.push('/');
            }
            s.push_str(&encode(seg));
        }
        if slash && !self.segments.is_empty() {
            s.push('/');
        }
        s
    }

    /// The decoded path for display (lossy UTF-8), with a trailing `/` if `slash`.
    pub fn display(&self, slash: bool) -> String {
        let mut s = String::from("/");
        for (i, seg) in self.segments.iter().enumerate() {
            if i > 0 {
                s.push('/');
            }
            s.push_str(&String::from_utf8_lossy(seg));
        }
        if slash && !self.segments.is_empty() {
            s.push('/');
        }
        s
    }

    /// A key naming this request path in the file cache.
    pub fn cache_key(&self) -> Vec<u8> {
        let mut k = Vec::new();
        for s in &self.segments {
            k.push(b'/');
            k.extend_from_slice(s);
        }
        if self.slash {
            k.push(b'/');
        }
        k
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// Why a path under DIR is not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotServed {
    /// 404: nothing there (or not reachable as a file or directory).
    NotFound,
    /// 403: it leads outside DIR, or may not be read.
    Forbidden,
    /// 503: the server is out of descriptors or memory for now (`EMFILE`,
    /// `ENFILE`, `ENOMEM`, `ENOBUFS`); the file may well be there.
    Busy,
    /// 500: the file system failed (`EIO` and its kin).
    Failed,
}

impl NotServed {
    /// What an error opening (or reading the metadata of) a path under DIR
    /// answers. Anything not listed is a 404, as a name that is not there:
    /// the traversal checks rely on `EXDEV`, `ELOOP`, `ENOTDIR` and
    /// `ENOENT` ending there.
    pub fn from_io(e: io::Error) -> NotServed {
        match e.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS) => NotServed::Busy,
            Some(
                libc::EIO
                | libc::ESTALE
                | libc::EUCLEAN
                | libc::EBADMSG
                | libc::ENOLINK
                | libc::EREMOTEIO,
            ) => NotServed::Failed,
            _ if e.kind() == io::ErrorKind::PermissionDenied => NotServed::Forbidden,
            _ => NotServed::NotFound,
        }
    }
}

/// Resolves `rel` (plain names from [`decode`]) under the canonical `root`:
/// symlinks followed, the result required to lie inside `root`. Returns the
/// canonical path, which the caller must open without following symlinks
/// again (`open::Root::open_walk`): a rename may change what it leads to.
pub fn resolve(root: &Path, rel: &Path) -> Result<PathBuf, NotServed> {
    let joined = root.join(rel);
    let path = std::fs::canonicalize(&joined).map_err(NotServed::from_io)?;
    if !path.starts_with(root) {
        return Err(NotServed::Forbidden);
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn segs(p: &UrlPath) -> Vec<&str> {
        p.segments
            .iter()
            .map(|s| std::str::from_utf8(s).unwrap())
            .collect()
    }

    #[test]
    fn open_errors_answer_by_cause() {
        let of = |errno| NotServed::from_io(io::Error::from_raw_os_error(errno));
        for e in [libc::EMFILE, libc::ENFILE, libc::ENOMEM, libc::ENOBUFS] {
            assert_eq!(of(e), NotServed::Busy, "errno {e}");
        }
        for e in [libc::EIO, libc::ESTALE, libc::EUCLEAN] {
            assert_eq!(of(e), NotServed::Failed, "errno {e}");
        }
        for e in [libc::EACCES, libc::EPERM] {
            assert_eq!(of(e), NotServed::Forbidden, "errno {e}");
        }
        // What the traversal checks end in stays a 404.
        for e in [
            libc::ENOENT,
            libc::ENOTDIR,
            libc::ELOOP,
            libc::EXDEV,
            libc::ENAMETOOLONG,
        ] {
            assert_eq!(of(e), NotServed::NotFound, "errno {e}");
        }
    }

    #[test]
    fn decodes() {
        let p = decode("/a%20b/c.txt?x=/../").unwrap();
        assert_eq!(segs(&p), ["a b", "c.txt"]);
        assert!(!p.slash);
        let p = decode("//a///b/./").unwrap();
        assert_eq!(segs(&p), ["a", "b"]);
        assert!(p.slash);
        assert!(decode("/").unwrap().slash);
        assert_eq!(segs(&decode("http://h:80/x").unwrap()), ["x"]);
        assert_eq!(segs(&decode("HTTP://h/x").unwrap()), ["x"]);
        assert_eq!(segs(&decode("hTtPs://h/x/").unwrap()), ["x"]);
        assert_eq!(decode("http://h").unwrap().segments.len(), 0);
        // The authority ends at `?` or `#` too: no path taken from a query.
        assert_eq!(decode("http://h?q=/ten.txt").unwrap().segments.len(), 0);
        assert_eq!(decode("http://h#/ten.txt").unwrap().segments.len(), 0);
        // A trailing encoded slash is part of a name, not a directory's `/`.
        let p = decode("/sub%2F").unwrap();
        assert_eq!((segs(&p), p.slash), (vec!["sub"], false));
        assert!(decode("/sub/.").unwrap().slash);
        assert!(decode("/sub/%2e").unwrap().slash);
        assert_eq!(segs(&decode("/%3Cb%3E%26.txt").unwrap()), ["<b>&.txt"]);
    }

    #[test]
    fn refuses() {
        for t in [
            "/../etc/passwd",
            "/a/../../x",
            "/%2e%2e/x",
            "/%2E%2E%2Fetc",
            "/a%2f%2e%2e%2fb",
            "/..",
            "/x%00.txt",
            "/%00",
        ] {
            assert_eq!(decode(t), Err(Refused::Forbidden), "{t}");
        }
        for t in ["*", "etc/passwd", "", "/%", "/%4", "/%zz", "/a%g0"] {
            assert_eq!(decode(t), Err(Refused::BadRequest), "{t}");
        }
    }

    #[test]
    fn absolute_looking_paths_stay_under_root() {
        let p = decode("//etc/passwd").unwrap();
        assert_eq!(p.relative(), PathBuf::from("etc/passwd"));
        assert_eq!(p.encoded(true), "/etc/passwd/");
        let p = decode("//evil.example").unwrap();
        assert_eq!(
            p.encoded(true),
            "/evil.example/",
            "no protocol-relative redirect"
        );
    }

    #[test]
    fn encodes() {
        assert_eq!(encode(b"a b<>&\"'/\xff"), "a%20b%3C%3E%26%22%27%2F%FF");
        assert_eq!(
            decode(&format!("/{}", encode(b"\xff x"))).unwrap().segments,
            [b"\xff x".to_vec()]
        );
    }

    /// A root with a file, a subdirectory, a symlink inside and symlinks out.
    struct Tree {
        base: PathBuf,
        root: PathBuf,
    }

    impl Tree {
        fn new() -> Tree {
            use std::sync::atomic::{AtomicU64, Ordering};
            static N: AtomicU64 = AtomicU64::new(0);
            let base = std::env::temp_dir().join(format!(
                "ringport-path-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let root = base.join("root");
            std::fs::create_dir_all(root.join("sub")).unwrap();
            std::fs::write(base.join("secret"), b"outside").unwrap();
            std::fs::write(root.join("in.txt"), b"inside").unwrap();
            std::fs::write(root.join("sub/deep.txt"), b"deep").unwrap();
            std::os::unix::fs::symlink("in.txt", root.join("link-in")).unwrap();
            std::os::unix::fs::symlink("../secret", root.join("link-out")).unwrap();
            std::os::unix::fs::symlink("/", root.join("link-root")).unwrap();
            std::os::unix::fs::symlink("..", root.join("sub/up")).unwrap();
            let root = std::fs::canonicalize(&root).unwrap();
            Tree { base, root }
        }

        fn get(&self, target: &str) -> Result<PathBuf, String> {
            let p = decode(target).map_err(|e| format!("{e:?}"))?;
            resolve(&self.root, &p.relative()).map_err(|e| format!("{e:?}"))
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }

    #[test]
    fn symlinks() {
        let t = Tree::new();
        assert!(t.get("/in.txt").unwrap().is_file());
        assert!(t.get("/link-in").unwrap().ends_with("in.txt"));
        assert!(
            t.get("/sub/up/in.txt").is_ok(),
            "a link back inside is fine"
        );
        assert_eq!(t.get("/link-out").unwrap_err(), "Forbidden");
        assert_eq!(t.get("/link-root/etc/passwd").unwrap_err(), "Forbidden");
        assert_eq!(t.get("/link-root").unwrap_err(), "Forbidden");
        assert_eq!(t.get("/nope").unwrap_err(), "NotFound");
        assert_eq!(t.get("/in.txt/x").unwrap_err(), "NotFound");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any string: no panic; decoded segments are plain names.
        #[test]
        fn decode_yields_plain_names(target in "\\PC{0,64}") {
            if let Ok(p) = decode(&target) {
                for s in &p.segments {
                    prop_assert!(!s.is_empty() && s != b"." && s != b"..");
                    prop_assert!(!s.contains(&b'/') && !s.contains(&0));
                }
                prop_assert!(!p.relative().is_absolute());
            }
        }

        /// Targets built from the pieces of traversal tricks: whatever
        /// resolves lies inside the root, and nothing outside is ever reached.
        #[test]
        fn resolved_paths_stay_inside(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just("..".to_string()), Just("%2e%2e".to_string()), Just("%2E%2e".to_string()),
                    Just(".".to_string()), Just("".to_string()), Just("%2f".to_string()),
                    Just("%00".to_string()), Just("sub".to_string()), Just("up".to_string()),
                    Just("link-out".to_string()), Just("link-root".to_string()),
                    Just("link-in".to_string()), Just("in.txt".to_string()),
                    Just("secret".to_string()), Just("etc".to_string()), Just("passwd".to_string()),
                    "[a-z.%/]{1,6}",
                ],
                0..8,
            ),
        ) {
            thread_local!(static TREE: Tree = Tree::new());
            let target = format!("/{}", parts.join("/"));
            TREE.with(|t| {
                if let Ok(f) = t.get(&target) {
                    assert!(f.starts_with(&t.root), "{target} → {f:?}");
                    if f.is_file() {
                        let body = std::fs::read(&f).unwrap();
                        assert_ne!(body, b"outside", "{target}");
                    }
                }
            });
        }
    }
}
