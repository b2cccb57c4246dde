//! Small files kept in memory, keyed by request path.
//!
//! An entry holds a file's bytes and the identity it had when it was read and
//! checked to lie inside DIR: device, inode, length and modification time. A hit
//! is only served after the same path, resolved beneath DIR as a request's
//! is (`Root::stat_beneath`), shows that identity again — so an edited file is
//! re-read, and a path that now leads somewhere else (a swapped symlink) or
//! out of DIR (a directory moved out and linked back) misses and is resolved
//! and checked afresh. The total size is
//! bounded; when a new entry does not fit, older ones are dropped.
//!
//! Files too large to keep get their response metadata kept instead (type,
//! validators, the head lines of a 200: [`FileMeta`], a name lookup and a few
//! formatted dates less per response), keyed by request path and checked
//! against the identity of the file each request opened — so it is never
//! stale — and their descriptor kept open ([`OpenFile`], at most
//! [`MAX_OPEN_FILES`], reserved from the descriptor limit at start), checked
//! the same way as a kept body: the path, resolved beneath DIR, must show the
//! identity the file had when it was opened and checked to lie inside DIR. A hit saves
//! the `openat2` and the `close` of every response from disk: measured (perf,
//! 64 KiB files, 32 connections) 13 % of the server's CPU.
//!
//! The identity includes the change time, so a file whose permissions were
//! taken away since it was opened is opened again (and refused), not served
//! from what was kept.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime};

use super::cond::Validators;
use super::http;
use super::open::Root;

/// A file's identity: what must be unchanged for a cached copy to be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileId {
    pub fn of(m: &std::fs::Metadata) -> FileId {
        FileId {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        }
    }
}

impl FileId {
    fn of_stat(st: &libc::stat) -> FileId {
        FileId {
            dev: st.st_dev,
            ino: st.st_ino,
            len: st.st_size as u64,
            mtime_ns: i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec),
            ctime_ns: i128::from(st.st_ctime) * 1_000_000_000 + i128::from(st.st_ctime_nsec),
        }
    }

    /// The identity of what `rel` leads to now, resolved beneath DIR
    /// (`None`: nothing inside DIR). A name right in DIR that is no symlink
    /// needs one `fstatat` relative to DIR's descriptor, not following it —
    /// exact, as there is nothing on the way to follow; anything else is
    /// resolved as a request's path is (`Root::stat_beneath`).
    fn now(root: &Root, rel: &std::path::Path) -> Option<FileId> {
        use std::os::unix::ffi::OsStrExt;
        use std::path::Component;
        let mut parts = rel.components();
        if let (Some(Component::Normal(name)), None) = (parts.next(), parts.next()) {
            if let Ok(name) = std::ffi::CString::new(name.as_bytes()) {
                // SAFETY: all-zero is a valid `stat` (plain integers).
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                // SAFETY: fstatat reads the NUL-terminated name and writes one
                // `stat` into `st`, both alive for the call; DIR's descriptor
                // stays open as long as `root`.
                let rc = unsafe {
                    libc::fstatat(
                        root.raw_fd(),
                        name.as_ptr(),
                        &mut st,
                        libc::AT_SYMLINK_NOFOLLOW,
                    )
                };
                if rc != 0 {
                    return None;
                }
                if st.st_mode & libc::S_IFMT != libc::S_IFLNK {
                    return Some(FileId::of_stat(&st));
                }
            }
        }
        root.stat_beneath(rel).map(|m| FileId::of(&m))
    }
}

/// A file too large to keep in memory, kept open.
#[derive(Debug)]
pub struct OpenFile {
    /// Its path under DIR (for a directory's URL, its `index.html`): what its
    /// type is named by, and what a hit resolves again.
    pub rel: PathBuf,
    pub id: FileId,
    pub file: Arc<std::fs::File>,
    pub meta: std::fs::Metadata,
    /// When it was last served, in seconds of the cache's clock.
    last_used: AtomicU64,
}

impl OpenFile {
    pub fn new(rel: PathBuf, file: Arc<std::fs::File>, meta: std::fs::Metadata) -> OpenFile {
        OpenFile {
            rel,
            id: FileId::of(&meta),
            file,
            meta,
            last_used: AtomicU64::new(0),
        }
    }
}

/// Most descriptors kept open (`serve/mod.rs` leaves room for them when it
/// caps connections).
pub const MAX_OPEN_FILES: usize = 64;

/// A kept descriptor not served for this long is let go at the next
/// keep (nginx's `open_file_cache inactive` is 60 s too): a file removed or
/// renamed over, and never asked for again, does not hold its disk space for
/// longer than that while files are being served.
const OPEN_IDLE_SECS: u64 = 60;

/// What a response needs to know about a file besides its bytes.
#[derive(Debug, Clone)]
pub struct FileMeta {
    pub len: u64,
    pub content_type: String,
    pub validators: Validators,
    /// The header lines of a whole-file 200 (type, length, validators), made
    /// once per version of the file rather than per response.
    pub full_headers: Vec<u8>,
}

impl FileMeta {
    pub fn of(path: &std::path::Path, m: &std::fs::Metadata) -> FileMeta {
        let content_type = content_type(path);
        let validators = Validators::new(
            m.ino(),
            m.len(),
            m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        );
        let mut full_headers = Vec::with_capacity(160);
        http::header(&mut full_headers, "Content-Type", &content_type);
        http::header(&mut full_headers, "Content-Length", m.len());
        http::header(
            &mut full_headers,
            "Last-Modified",
            &validators.last_modified,
        );
        http::header(&mut full_headers, "ETag", &validators.etag);
        http::header(&mut full_headers, "Accept-Ranges", "bytes");
        FileMeta {
            len: m.len(),
            content_type,
            validators,
            full_headers,
        }
    }
}

/// `Content-Type` from the file name's extension.
pub fn content_type(path: &std::path::Path) -> String {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    match (mime.type_(), mime.get_param(mime_guess::mime::CHARSET)) {
        (mime_guess::mime::TEXT, None) => format!("{mime}; charset=utf-8"),
        _ => mime.to_string(),
    }
}

/// A cached file.
#[derive(Debug)]
pub struct Entry {
    /// The request's names under DIR (symlinks not yet followed): what a hit
    /// resolves beneath DIR again, following today's symlinks, to revalidate.
    /// Only the same device and inode (the file that was checked to lie
    /// inside DIR), unchanged, pass.
    pub rel: PathBuf,
    pub id: FileId,
    pub meta: FileMeta,
    pub body: Box<[u8]>,
}

/// The cache.
#[derive(Debug)]
pub struct Cache {
    map: RwLock<Map>,
    /// Metadata of files served from disk, with the identity it was made for.
    metas: RwLock<Metas>,
    /// Files served from disk, kept open, by request path.
    open: RwLock<HashMap<Vec<u8>, Arc<OpenFile>>>,
    /// The start of `OpenFile::last_used`'s clock.
    epoch: Instant,
    /// Largest file kept.
    pub max_file: u64,
    max_total: usize,
}

/// Request path → the identity of the file and the metadata made for it.
type Metas = HashMap<Vec<u8>, (FileId, Arc<FileMeta>)>;

/// Most entries of the metadata cache; when full, it starts over.
const MAX_METAS: usize = 4096;

/// What a kept file is charged against the cache's size besides the bytes
/// `cost` counts: the map's slot, the `Arc`, the `Entry`, allocator slack.
const ENTRY_OVERHEAD: usize = 256;

/// What an entry costs the cache: its bytes, its key, its path, its head
/// lines and the rest (`ENTRY_OVERHEAD`). Counting only the bytes let empty or tiny files
/// reached by endlessly many names (a symlink to `.` inside DIR makes
/// `/a/a/a/…` name one file) grow memory without bound.
fn cost(key: &[u8], e: &Entry) -> usize {
    e.body.len()
        + key.len()
        + e.rel.as_os_str().len()
        + e.meta.full_headers.len()
        + e.meta.content_type.len()
        + ENTRY_OVERHEAD
}

#[derive(Debug, Default)]
struct Map {
    entries: HashMap<Vec<u8>, Arc<Entry>>,
    total: usize,
}

impl Cache {
    /// A cache of at most `max_total` bytes of files of at most `max_file` each
    /// (0 turns it off).
    pub fn new(max_total: usize, max_file: u64) -> Cache {
        Cache {
            map: RwLock::new(Map::default()),
            metas: RwLock::new(HashMap::new()),
            open: RwLock::new(HashMap::new()),
            epoch: Instant::now(),
            max_file: if max_total == 0 {
                0
            } else {
                max_file.min(max_total as u64)
            },
            max_total,
        }
    }

    /// The metadata of the file `key` names, which has identity `id` (from
    /// the descriptor just opened): kept from an earlier response, or made by
    /// `make` and kept.
    pub fn meta(&self, key: &[u8], id: FileId, make: impl FnOnce() -> FileMeta) -> Arc<FileMeta> {
        if let Some((was, m)) = self
            .metas
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
        {
            if *was == id {
                return m.clone();
            }
        }
        let m = Arc::new(make());
        let mut metas = self.metas.write().unwrap_or_else(|p| p.into_inner());
        if metas.len() >= MAX_METAS {
            metas.clear();
        }
        metas.insert(key.to_vec(), (id, m.clone()));
        m
    }

    /// The open file kept for `key`, if its path still leads to the same,
    /// unchanged file (else it is dropped).
    pub fn open_file(&self, key: &[u8], root: &Root) -> Option<Arc<OpenFile>> {
        let o = self
            .open
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()?;
        match FileId::now(root, &o.rel) {
            Some(now) if now == o.id => {
                o.last_used
                    .store(self.epoch.elapsed().as_secs(), Ordering::Relaxed);
                Some(o)
            }
            _ => {
                let mut open = self.open.write().unwrap_or_else(|p| p.into_inner());
                if open.get(key).is_some_and(|k| Arc::ptr_eq(k, &o)) {
                    open.remove(key);
                }
                None
            }
        }
    }

    /// Lets go of kept files not served for `OPEN_IDLE_SECS`, and of those
    /// whose path no longer leads to the same, unchanged file (deleted or
    /// replaced: without this, a deleted large file stayed open, its disk
    /// space held, until the next large file was kept). The reaper calls it
    /// about once a second; the `stat`s run outside the map's lock.
    pub fn sweep_open(&self, root: &Root) {
        let now = self.epoch.elapsed().as_secs();
        let kept: Vec<(Vec<u8>, Arc<OpenFile>)> = self
            .open
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, o)| (k.clone(), o.clone()))
            .collect();
        let stale: Vec<_> = kept
            .into_iter()
            .filter(|(_, o)| {
                now.saturating_sub(o.last_used.load(Ordering::Relaxed)) >= OPEN_IDLE_SECS
                    || FileId::now(root, &o.rel) != Some(o.id)
            })
            .collect();
        if stale.is_empty() {
            return;
        }
        let mut open = self.open.write().unwrap_or_else(|p| p.into_inner());
        for (k, o) in stale {
            if open.get(&k).is_some_and(|now| Arc::ptr_eq(now, &o)) {
                open.remove(&k);
            }
        }
    }

    /// Keeps `file` open under `key` (nothing is kept with the cache off).
    /// Files not served for `OPEN_IDLE_SECS` are let go first; when still
    /// full, the least recently served one (closed once no response uses it).
    pub fn keep_open(&self, key: Vec<u8>, file: Arc<OpenFile>) {
        if self.max_total == 0 {
            return;
        }
        let now = self.epoch.elapsed().as_secs();
        file.last_used.store(now, Ordering::Relaxed);
        let mut open = self.open.write().unwrap_or_else(|p| p.into_inner());
        open.retain(|_, o| {
            now.saturating_sub(o.last_used.load(Ordering::Relaxed)) < OPEN_IDLE_SECS
        });
        if open.len() >= MAX_OPEN_FILES && !open.contains_key(&key) {
            let oldest = open
                .iter()
                .min_by_key(|(_, o)| o.last_used.load(Ordering::Relaxed))
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                open.remove(&k);
            }
        }
        open.insert(key, file);
    }

    /// Descriptors kept open now.
    #[cfg(test)]
    pub fn open_files(&self) -> usize {
        self.open.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The entry for `key` if its file still has the identity it was read with.
    pub fn get(&self, key: &[u8], root: &Root) -> Option<Arc<Entry>> {
        if self.max_total == 0 {
            return None;
        }
        let e = self
            .map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .get(key)
            .cloned()?;
        if FileId::now(root, &e.rel)? == e.id {
            Some(e)
        } else {
            self.remove(key);
            None
        }
    }

    fn remove(&self, key: &[u8]) {
        let mut m = self.map.write().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = m.entries.remove(key) {
            m.total -= cost(key, &old);
        }
    }

    /// Keeps `entry` under `key`, dropping others if it does not fit.
    pub fn insert(&self, key: Vec<u8>, entry: Arc<Entry>) {
        if self.max_total == 0 || entry.body.len() as u64 > self.max_file {
            return;
        }
        let size = cost(&key, &entry);
        let mut m = self.map.write().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = m.entries.remove(&key) {
            m.total -= cost(&key, &old);
        }
        while m.total + size > self.max_total {
            let Some(k) = m.entries.keys().next().cloned() else {
                break;
            };
            if let Some(old) = m.entries.remove(&k) {
                m.total -= cost(&k, &old);
            }
        }
        m.total += size;
        m.entries.insert(key, entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(dir: &std::path::Path, i: usize) -> Arc<OpenFile> {
        let path = dir.join(format!("f{i}"));
        std::fs::write(&path, [i as u8; 8]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let meta = file.metadata().unwrap();
        Arc::new(OpenFile::new(
            PathBuf::from(format!("f{i}")),
            Arc::new(file),
            meta,
        ))
    }

    #[test]
    fn endless_names_of_an_empty_file_stay_within_the_bound() {
        let dir = std::env::temp_dir().join(format!("ringport-cache-e-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("empty");
        std::fs::write(&path, b"").unwrap();
        let m = std::fs::metadata(&path).unwrap();
        let max = 64 << 10;
        let c = Cache::new(max, 1024);
        for i in 0..20_000 {
            // What `/l/l/l/…/empty` through a link to `.` would make.
            let key = format!("/{}empty", "l/".repeat(i % 200)).into_bytes();
            let key = [key, i.to_string().into_bytes()].concat();
            c.insert(
                key,
                Arc::new(Entry {
                    rel: PathBuf::from("empty"),
                    id: FileId::of(&m),
                    meta: FileMeta::of(&path, &m),
                    body: Box::new([]),
                }),
            );
        }
        let map = c.map.read().unwrap();
        assert!(map.total <= max, "charged {} of {max}", map.total);
        let keys: usize = map.entries.keys().map(Vec::len).sum();
        assert!(
            keys <= max,
            "{keys} bytes of keys kept under a {max}-byte bound"
        );
        assert!(!map.entries.is_empty(), "the cache still keeps what fits");
        drop(map);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn open_files_are_bounded_checked_and_off_with_the_cache() {
        let dir = std::env::temp_dir().join(format!("ringport-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let c = Cache::new(1 << 20, 1024);
        let root = Root::open(dir.canonicalize().unwrap(), true).unwrap();
        for i in 0..MAX_OPEN_FILES + 10 {
            c.keep_open(format!("/f{i}").into_bytes(), kept(&dir, i));
        }
        assert_eq!(
            c.open_files(),
            MAX_OPEN_FILES,
            "at most MAX_OPEN_FILES kept"
        );
        let last = format!("/f{}", MAX_OPEN_FILES + 9).into_bytes();
        assert!(
            c.open_file(&last, &root).is_some(),
            "the newest is kept and unchanged"
        );
        std::fs::write(dir.join(format!("f{}", MAX_OPEN_FILES + 9)), b"changed!!").unwrap();
        assert!(
            c.open_file(&last, &root).is_none(),
            "a changed file is let go"
        );
        assert_eq!(c.open_files(), MAX_OPEN_FILES - 1);
        // A deleted one is let go by the sweep, asked for or not.
        let victim = c.open.read().unwrap().keys().next().cloned().unwrap();
        std::fs::remove_file(dir.join(std::str::from_utf8(&victim[1..]).unwrap())).unwrap();
        c.sweep_open(&root);
        assert_eq!(c.open_files(), MAX_OPEN_FILES - 2);
        assert!(!c.open.read().unwrap().contains_key(&victim));
        let off = Cache::new(0, 0);
        off.keep_open(b"/f0".to_vec(), kept(&dir, 0));
        assert_eq!(off.open_files(), 0, "nothing kept with the cache off");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
