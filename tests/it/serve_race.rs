//! `ringport serve` against a DIR that changes under it (session 12's review;
//! see `serve.rs` for the harness): a rename racing requests must never lead
//! a file or a listing outside DIR, listings tell nothing about what links
//! lead outside, and the small-file cache stays bounded however many names
//! lead to one file.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ringport::BackendChoice;

use crate::serve::{get, Client, Serve, Site, SECRET};

/// Both ways of opening a file.
const MODES: [&[&str]; 2] = [&["--cache-mib", "0"], &["--cache-mib", "0", "--no-openat2"]];

/// Swaps two names atomically (`renameat2(RENAME_EXCHANGE)`).
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    let a = std::ffi::CString::new(a.as_os_str().as_bytes()).unwrap();
    let b = std::ffi::CString::new(b.as_os_str().as_bytes()).unwrap();
    // SAFETY: two NUL-terminated paths alive for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

backend_test!(
    a_rename_racing_requests_never_leads_outside_dir,
    |choice: BackendChoice| {
        let site = Site::new();
        // DIR/real/sub is a directory; DIR/real/sublink a symlink to a
        // directory outside DIR. A racer swaps the two names all the time.
        let outside = site.base.join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret.txt"), SECRET).unwrap();
        std::fs::write(outside.join("outside-only.txt"), SECRET).unwrap();
        std::fs::create_dir_all(site.root.join("real/sub")).unwrap();
        site.write("real/sub/secret.txt", b"inside");
        symlink(&outside, site.root.join("real/sublink")).unwrap();
        for mode in MODES {
            let Some(srv) = Serve::start(choice, &site, mode) else {
                return;
            };
            let stop = Arc::new(AtomicBool::new(false));
            let (a, b) = (site.root.join("real/sub"), site.root.join("real/sublink"));
            let s = stop.clone();
            let racer = thread::spawn(move || {
                let mut swaps = 0u64;
                while !s.load(Ordering::Relaxed) {
                    // (An error ends the race: the test failed and its
                    // folder is being removed.)
                    if exchange(&a, &b).is_err() {
                        return swaps;
                    }
                    swaps += 1;
                }
                // Leave the tree as it was (an even count of swaps).
                if swaps % 2 == 1 {
                    exchange(&a, &b).unwrap();
                }
                swaps
            });
            let mut c = Client::connect(srv.addr);
            let (mut files, mut lists) = ([0u32; 3], [0u32; 2]);
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_millis(1500) {
                let r = c.get("/real/sub/secret.txt", "");
                assert!(
                    !r.body.windows(SECRET.len()).any(|w| w == SECRET),
                    "{mode:?}: a file outside DIR was served ({})",
                    r.status
                );
                files[match r.status {
                    200 => 0,
                    403 | 404 => 1,
                    _ => 2,
                }] += 1;
                let r = c.get("/real/sub/", "");
                assert!(
                    !r.text().contains("outside-only"),
                    "{mode:?}: a directory outside DIR was listed"
                );
                lists[usize::from(r.status != 200)] += 1;
            }
            stop.store(true, Ordering::Relaxed);
            let swaps = racer.join().unwrap();
            eprintln!(
                "{mode:?}: {swaps} swaps; file 200/refused/other {files:?}, listing 200/other {lists:?}"
            );
            assert!(swaps > 0, "{mode:?}: renameat2(RENAME_EXCHANGE) failed");
            assert!(files[0] > 0, "{mode:?}: the file inside was never served");
            assert_eq!(files[2], 0, "{mode:?}: statuses other than 200/403/404");
            srv.stop();
        }
    }
);

backend_test!(
    listings_leave_out_links_that_lead_outside,
    |choice: BackendChoice| {
        let site = Site::new();
        // Site's DIR has `in-link` → hello.txt, `out-link` → ../secret.txt,
        // `up-link` → .., `etc-link` → /etc.
        site.write("big.txt", &[b'x'; 4321]);
        for mode in MODES {
            let Some(srv) = Serve::start(choice, &site, mode) else {
                return;
            };
            let r = get(srv.addr, "/");
            assert_eq!(r.status, 200);
            let page = r.text();
            assert!(page.contains(">in-link</a>  13\n"), "{mode:?}: {page}");
            assert!(page.contains(">big.txt</a>  4321\n"), "{mode:?}: {page}");
            assert!(page.contains(">sub/</a>"), "{mode:?}: {page}");
            for gone in ["out-link", "up-link", "etc-link"] {
                assert!(!page.contains(gone), "{mode:?}: {gone} listed: {page}");
            }
            let secret_len = format!("  {}\n", SECRET.len());
            assert!(!page.contains(&secret_len), "{mode:?}: {page}");
            srv.stop();
        }
    }
);

backend_test!(
    endless_names_of_one_small_file_do_not_grow_memory_without_bound,
    |choice: BackendChoice| {
        let site = Site::new();
        site.write("empty.txt", b"");
        // Two long names for `.`: /A/B/A/…/empty.txt names empty.txt in
        // 2^n ways of n links (a path may follow at most 40).
        let (a, b) = ("a".repeat(200), "b".repeat(200));
        symlink(".", site.root.join(&a)).unwrap();
        symlink(".", site.root.join(&b)).unwrap();
        let name = |i: u32| -> String {
            (0..14)
                .map(|bit| if i >> bit & 1 == 1 { &a } else { &b })
                .fold(String::new(), |t, s| t + "/" + s)
                + "/empty.txt"
        };
        // A cache of 1 MiB (the default is 64).
        let Some(srv) = Serve::start(choice, &site, &["--cache-mib", "1"]) else {
            return;
        };
        let rss = |pid: u32| -> u64 {
            let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        };
        let pid = srv.pid();
        let mut c = Client::connect(srv.addr);
        for i in 0..2000 {
            assert_eq!(c.get(&name(i), "").status, 200);
        }
        let before = rss(pid);
        for i in 2000..12_000 {
            assert_eq!(c.get(&name(i), "").status, 200);
        }
        let after = rss(pid);
        // 10,000 more names of 3 KiB each, kept, would be 30+ MiB more.
        assert!(
            after < before + 8 * 1024,
            "resident memory grew from {before} to {after} KiB"
        );
        srv.stop();
    }
);
