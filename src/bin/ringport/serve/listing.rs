//! The HTML page for a directory without `index.html`: every name escaped for
//! HTML and percent-encoded in its link, so no file name can inject markup.

use std::ffi::CStr;
use std::fmt::Write as _;
use std::fs::File;
use std::io;
use std::os::fd::IntoRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::open::Root;
use super::path::encode;

/// One directory entry.
#[derive(Debug)]
struct Item {
    name: Vec<u8>,
    dir: bool,
    len: u64,
}

/// Reads the directory `dir` (opened beneath DIR as `rel`: its entries are
/// read from this descriptor, never by path, so a rename racing the request
/// cannot list a directory outside DIR) and renders its page; `shown` is the
/// decoded request path, ending in `/`. A blocking call: run it off the
/// workers.
///
/// Each entry's kind and size come from the entry itself (`fstatat`, no
/// symlink followed); a symlink is opened beneath DIR as a request would be,
/// and shown with what it leads to only if that is served: a link leading
/// outside DIR (or nowhere) is left out, so the page tells nothing about
/// what lies outside.
pub fn render(root: &Root, dir: File, rel: &Path, shown: &str) -> io::Result<String> {
    let mut items = Vec::new();
    for (name, st) in entries(dir)? {
        let item = if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            let Ok(o) = root.open_beneath(&rel.join(std::ffi::OsStr::from_bytes(&name))) else {
                continue;
            };
            Item {
                name,
                dir: o.meta.is_dir(),
                len: o.meta.len(),
            }
        } else {
            Item {
                name,
                dir: st.st_mode & libc::S_IFMT == libc::S_IFDIR,
                len: st.st_size as u64,
            }
        };
        items.push(item);
    }
    items.sort_by(|a, b| b.dir.cmp(&a.dir).then_with(|| a.name.cmp(&b.name)));
    let title = escape(shown);
    let mut page = String::with_capacity(512 + items.len() * 96);
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Index of {title}</title></head>\n\
         <body><h1>Index of {title}</h1><hr><pre>\n"
    );
    if shown != "/" {
        page.push_str("<a href=\"../\">../</a>\n");
    }
    for it in &items {
        let shown = String::from_utf8_lossy(&it.name);
        let slash = if it.dir { "/" } else { "" };
        let _ = write!(
            page,
            "<a href=\"{}{slash}\">{}{slash}</a>",
            encode(&it.name),
            escape(&shown)
        );
        if !it.dir {
            let _ = write!(page, "  {}", it.len);
        }
        page.push('\n');
    }
    page.push_str("</pre><hr></body></html>\n");
    Ok(page)
}

/// The names in the directory `dir` (but `.` and `..`), each with its own
/// `fstatat` (symlinks not followed; an entry gone since is skipped).
fn entries(dir: File) -> io::Result<Vec<(Vec<u8>, libc::stat)>> {
    /// Closes the stream (and with it the descriptor) however the read ends.
    struct Stream(*mut libc::DIR);
    impl Drop for Stream {
        fn drop(&mut self) {
            // SAFETY: a stream fdopendir opened, closed once, here.
            unsafe { libc::closedir(self.0) };
        }
    }
    let fd = dir.into_raw_fd();
    // SAFETY: `fd` is an open directory descriptor we own; on success the
    // stream owns it (closedir closes it), on failure we close it.
    let d = unsafe { libc::fdopendir(fd) };
    if d.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed: the descriptor is still ours alone.
        unsafe { libc::close(fd) };
        return Err(e);
    }
    let d = Stream(d);
    // SAFETY: the stream is open; dirfd only reads its descriptor.
    let at = unsafe { libc::dirfd(d.0) };
    let mut out = Vec::new();
    loop {
        // readdir says "end" and "error" both with NULL: errno tells them apart.
        // SAFETY: errno is this thread's.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: the stream is open and used by this thread alone.
        let ent = unsafe { libc::readdir(d.0) };
        if ent.is_null() {
            let e = io::Error::last_os_error();
            if e.raw_os_error().unwrap_or(0) != 0 {
                return Err(e);
            }
            return Ok(out);
        }
        // SAFETY: readdir returned an entry, valid until the next readdir on
        // this stream; its name is NUL-terminated.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        if matches!(name.to_bytes(), b"." | b"..") {
            continue;
        }
        // SAFETY: stat is plain integers: all zeroes is a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `at` is the open directory, `name` a NUL-terminated name
        // in it, `st` a writable stat; no symlink is followed.
        let r = unsafe { libc::fstatat(at, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
        if r == 0 {
            out.push((name.to_bytes().to_vec(), st));
        }
    }
}

/// Escapes the five characters that mean something in HTML text and attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(escape("<b>&'\"x"), "&lt;b&gt;&amp;&#39;&quot;x");
    }

    #[test]
    fn a_listing_escapes_names() {
        let dir = std::env::temp_dir().join(format!("ringport-listing-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("<b>&.txt"), b"x").unwrap();
        let root = Root::open(std::fs::canonicalize(&dir).unwrap(), true).unwrap();
        let page = render(&root, File::open(&dir).unwrap(), Path::new(""), "/a&b/").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(page.contains("<title>Index of /a&amp;b/</title>"), "{page}");
        assert!(
            page.contains("<a href=\"%3Cb%3E%26.txt\">&lt;b&gt;&amp;.txt</a>  1"),
            "{page}"
        );
        assert!(page.contains("<a href=\"sub/\">sub/</a>"), "{page}");
        assert!(!page.contains("<b>"), "{page}");
    }
}
