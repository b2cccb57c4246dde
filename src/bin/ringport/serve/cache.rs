//! Small files kept in memory, keyed by request path.
//!
//! An entry holds a file's bytes and the identity it had when it was read and
//! checked to lie inside DIR: device, inode, length and modification time. A hit
//! is only served after a `stat` of the same path shows that identity again —
//! so an edited file is re-read, and a path that now leads somewhere else (a
//! swapped symlink) misses and is resolved and checked afresh. The total size is
//! bounded; when a new entry does not fit, older ones are dropped.
//!
//! Files too large to keep get their response metadata kept instead (type,
//! validators, the head lines of a 200: [`FileMeta`], a name lookup and a few
//! formatted dates less per response), keyed by request path and checked
//! against the identity of the file each request opened — so it is never
//! stale. Open descriptors are not kept: a hit would still need a `stat` of
//! the path to see that it leads to the same file (an `openat2` and a `close`
//! saved, two of about eight system calls), and every descriptor kept would be
//! taken from the connections' share of the descriptor limit.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use super::http::{self, Validators};

/// A file's identity: what must be unchanged for a cached copy to be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl FileId {
    pub fn of(m: &std::fs::Metadata) -> FileId {
        FileId {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        }
    }
}

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
    /// DIR joined with the request's names (symlinks not yet followed): what a
    /// hit `stat`s, following today's symlinks, to revalidate. Only the same
    /// device and inode (the file that was checked to lie inside DIR) pass.
    pub file: PathBuf,
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
    /// Largest file kept.
    pub max_file: u64,
    max_total: usize,
}

/// Request path → the identity of the file and the metadata made for it.
type Metas = HashMap<Vec<u8>, (FileId, Arc<FileMeta>)>;

/// Most entries of the metadata cache; when full, it starts over.
const MAX_METAS: usize = 4096;

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

    /// The entry for `key` if its file still has the identity it was read with.
    pub fn get(&self, key: &[u8]) -> Option<Arc<Entry>> {
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
        let now = std::fs::metadata(&e.file).ok()?;
        if FileId::of(&now) == e.id {
            Some(e)
        } else {
            self.remove(key);
            None
        }
    }

    fn remove(&self, key: &[u8]) {
        let mut m = self.map.write().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = m.entries.remove(key) {
            m.total -= old.body.len();
        }
    }

    /// Keeps `entry` under `key`, dropping others if it does not fit.
    pub fn insert(&self, key: Vec<u8>, entry: Arc<Entry>) {
        let size = entry.body.len();
        if self.max_total == 0 || size as u64 > self.max_file {
            return;
        }
        let mut m = self.map.write().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = m.entries.remove(&key) {
            m.total -= old.body.len();
        }
        while m.total + size > self.max_total {
            let Some(k) = m.entries.keys().next().cloned() else {
                break;
            };
            if let Some(old) = m.entries.remove(&k) {
                m.total -= old.body.len();
            }
        }
        m.total += size;
        m.entries.insert(key, entry);
    }
}
