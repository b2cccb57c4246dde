//! The HTML page for a directory without `index.html`: every name escaped for
//! HTML and percent-encoded in its link, so no file name can inject markup.

use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::path::encode;

/// One directory entry.
#[derive(Debug)]
struct Item {
    name: Vec<u8>,
    dir: bool,
    len: u64,
}

/// Reads `dir` (a blocking call: run it off the workers) and renders its page;
/// `shown` is the decoded request path, ending in `/`.
pub fn render(dir: &Path, shown: &str) -> std::io::Result<String> {
    let mut items = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        // Follows symlinks for the kind and size; a dangling one shows as a file.
        let meta = std::fs::metadata(e.path()).ok();
        items.push(Item {
            name: e.file_name().as_bytes().to_vec(),
            dir: meta.as_ref().is_some_and(|m| m.is_dir()),
            len: meta.as_ref().map_or(0, |m| m.len()),
        });
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
        let page = render(&dir, "/a&b/").unwrap();
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
