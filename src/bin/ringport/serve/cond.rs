//! Conditional requests and byte ranges (RFC 9110 §13, §14): a file's
//! validators, the preconditions a request states on them, and what a `Range`
//! asks of it. Pure functions of strings and times, unit-tested here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::http::{digits, Request};

/// What a `Range` header asks of a representation of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAsk {
    /// Send everything (no range, a range this server ignores, or several).
    Full,
    /// Send bytes `start..=end` with 206.
    Part { start: u64, end: u64 },
    /// 416.
    Unsatisfiable,
}

/// Interprets a `Range` value against `len` bytes (RFC 9110 §14): one
/// `bytes=a-b`, `a-` or `-n` range; several ranges get the whole file; a value
/// that is not a byte range is ignored.
pub fn range(value: &str, len: u64) -> RangeAsk {
    let v = value.trim();
    let Some(spec) = v
        .get(..6)
        .filter(|u| u.eq_ignore_ascii_case("bytes="))
        .map(|_| v[6..].trim())
    else {
        return RangeAsk::Full;
    };
    if spec.contains(',') {
        return RangeAsk::Full;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeAsk::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit())).then(|| digits(s.as_bytes()))
    };
    match (a.is_empty(), num(a), num(b)) {
        // -n: the last n bytes. `-0` asks for nothing (416). Any other suffix
        // is satisfiable even of an empty file (§14.1.1), where no 206 can
        // carry it: the whole (empty) file then goes with 200.
        (true, _, Some(0)) => RangeAsk::Unsatisfiable,
        (true, _, Some(_)) if len == 0 => RangeAsk::Full,
        (true, _, Some(n)) => RangeAsk::Part {
            start: len.saturating_sub(n),
            end: len - 1,
        },
        // a-
        (false, Some(start), None) if b.is_empty() => {
            if start >= len {
                RangeAsk::Unsatisfiable
            } else {
                RangeAsk::Part {
                    start,
                    end: len - 1,
                }
            }
        }
        // a-b
        (false, Some(start), Some(end)) if start <= end => {
            if start >= len {
                RangeAsk::Unsatisfiable
            } else {
                RangeAsk::Part {
                    start,
                    end: end.min(len - 1),
                }
            }
        }
        _ => RangeAsk::Full,
    }
}

/// The validators of one version of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validators {
    /// A strong entity tag, quoted.
    pub etag: String,
    /// The modification time given out, in whole seconds since the epoch:
    /// the file's, or the time these validators were made if the file's lies
    /// in the future.
    pub mtime: u64,
    /// `Last-Modified` (the HTTP date of `mtime`).
    pub last_modified: String,
}

impl Validators {
    pub fn new(ino: u64, len: u64, mtime: SystemTime) -> Validators {
        Validators::at(ino, len, mtime, SystemTime::now())
    }

    /// The validators as made at time `now`. A modification time later than
    /// `now` (a skewed clock, an unpacked archive, `touch -d`) is given out as
    /// `now`: a `Last-Modified` may not be later than the response's `Date`
    /// (RFC 9110 §8.8.2.1), and a client that kept a future date would be
    /// answered 304 to every `If-Modified-Since` until that date, however
    /// the file changed. (The entity tag keeps the file's own time: it
    /// names the version, and the cache keys a version by it too.)
    pub fn at(ino: u64, len: u64, mtime: SystemTime, now: SystemTime) -> Validators {
        let since = mtime.duration_since(UNIX_EPOCH).unwrap_or_default();
        let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let secs = since.as_secs().min(now_secs);
        // Nanoseconds from the epoch, signed: times before it name versions too.
        let nanos = match mtime.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i128,
            Err(e) => -(e.duration().as_nanos() as i128),
        };
        Validators {
            etag: format!("\"{ino:x}-{nanos:x}-{len:x}\""),
            mtime: secs,
            last_modified: httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs)),
        }
    }
}

/// What a request's preconditions say of a GET or HEAD of a file that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Answer as asked.
    Proceed,
    /// 304.
    NotModified,
    /// 412: `If-Match` or `If-Unmodified-Since` does not hold.
    Failed,
}

/// Evaluates the preconditions in RFC 9110 §13.2.2's order: `If-Match`
/// (strong comparison), else `If-Unmodified-Since`, either of which failing
/// answers 412; then `If-None-Match` (weak comparison), else
/// `If-Modified-Since`, either of which holding answers 304. A date that does
/// not parse (several lines of it among them) is ignored, as §13.1.3–4 say;
/// so is an `If-Modified-Since` later than now (as RFC 2616 §14.25 said:
/// no version of the file was given out with it, and a 304 against it could
/// hide every edit until then).
pub fn preconditions(req: &Request, v: &Validators) -> Verdict {
    preconditions_at(req, v, SystemTime::now())
}

/// [`preconditions`] as evaluated at time `now`.
pub fn preconditions_at(req: &Request, v: &Validators, now: SystemTime) -> Verdict {
    if let Some(im) = &req.if_match {
        if !etag_list_matches(im, &v.etag, true) {
            return Verdict::Failed;
        }
    } else if let Some(since) = req.if_unmodified_since.as_deref().and_then(date_secs) {
        if v.mtime > since {
            return Verdict::Failed;
        }
    }
    if let Some(inm) = &req.if_none_match {
        if etag_list_matches(inm, &v.etag, false) {
            return Verdict::NotModified;
        }
    } else if let Some(since) = req.if_modified_since.as_deref().and_then(date_secs) {
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if v.mtime <= since && since <= now {
            return Verdict::NotModified;
        }
    }
    Verdict::Proceed
}

/// An HTTP date as whole seconds since the epoch (a date before it counts as 0).
fn date_secs(value: &str) -> Option<u64> {
    httpdate::parse_http_date(value)
        .ok()
        .map(|t| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

/// True if a `Range` may be honoured: no `If-Range`, or one that names the
/// current version (a strong tag, or exactly the `Last-Modified` date).
pub fn if_range_holds(req: &Request, v: &Validators) -> bool {
    match &req.if_range {
        None => true,
        Some(ir) if ir.starts_with('"') => ir == &v.etag,
        Some(ir) if ir.starts_with("W/") => false,
        Some(ir) => date_secs(ir) == Some(v.mtime),
    }
}

/// `*` or a comma-separated list of entity tags containing `etag` (weak
/// comparison unless `strong`: then a `W/` tag never matches).
fn etag_list_matches(list: &str, etag: &str, strong: bool) -> bool {
    list.split(',').map(str::trim).any(|t| {
        if t == "*" {
            return true;
        }
        match t.strip_prefix("W/") {
            Some(weak) => !strong && weak == etag,
            None => t == etag,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::http::complete;
    use proptest::prelude::*;

    #[test]
    fn ranges() {
        use RangeAsk::*;
        assert_eq!(range("bytes=0-9", 100), Part { start: 0, end: 9 });
        assert_eq!(range("bytes=90-", 100), Part { start: 90, end: 99 });
        assert_eq!(range("bytes=-10", 100), Part { start: 90, end: 99 });
        assert_eq!(range("bytes=-1000", 100), Part { start: 0, end: 99 });
        assert_eq!(range("bytes=50-1000", 100), Part { start: 50, end: 99 });
        assert_eq!(range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(range("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(range("bytes=0-0", 0), Unsatisfiable);
        assert_eq!(range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(range("bytes=-0", 0), Unsatisfiable);
        assert_eq!(
            range("bytes=-5", 0),
            Full,
            "a suffix of an empty file: all of it"
        );
        assert_eq!(range("bytes=99999999999999999999999-", 100), Unsatisfiable);
        assert_eq!(range("bytes=5-1", 100), Full);
        assert_eq!(range("bytes=0-1,5-6", 100), Full);
        assert_eq!(range("bytes=0-1, bytes=3-4", 100), Full, "two Range lines");
        assert_eq!(range("items=0-1", 100), Full);
        assert_eq!(range("bytes=x-1", 100), Full);
        assert_eq!(range("bytes=", 100), Full);
    }

    #[test]
    fn conditionals() {
        let v = Validators::new(1, 2, UNIX_EPOCH + Duration::from_secs(1_000_000));
        let mut r = complete(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(preconditions(&r, &v), Verdict::Proceed);
        r.if_none_match = Some(format!("\"x\", W/{}", v.etag));
        assert_eq!(preconditions(&r, &v), Verdict::NotModified);
        r.if_none_match = Some("*".into());
        assert_eq!(preconditions(&r, &v), Verdict::NotModified);
        r.if_none_match = Some("\"other\"".into());
        r.if_modified_since = Some(v.last_modified.clone());
        assert_eq!(
            preconditions(&r, &v),
            Verdict::Proceed,
            "If-None-Match wins"
        );
        r.if_none_match = None;
        assert_eq!(preconditions(&r, &v), Verdict::NotModified);
        r.if_modified_since = Some("Thu, 01 Jan 1970 00:00:00 GMT".into());
        assert_eq!(preconditions(&r, &v), Verdict::Proceed);
        r.if_modified_since = Some(format!("{0}, {0}", v.last_modified));
        assert_eq!(
            preconditions(&r, &v),
            Verdict::Proceed,
            "two dates: ignored"
        );
        r.if_modified_since = None;
        r.if_range = Some(v.etag.clone());
        assert!(if_range_holds(&r, &v));
        r.if_range = Some(format!("W/{}", v.etag));
        assert!(!if_range_holds(&r, &v));
        r.if_range = Some(v.last_modified.clone());
        assert!(if_range_holds(&r, &v));
        r.if_range = Some(format!("{0}, {0}", v.etag));
        assert!(
            !if_range_holds(&r, &v),
            "two If-Range lines: the range is not honoured"
        );
    }

    /// RFC 9110 §13.2.2 steps 1–2: `If-Match` (strong) and, without it,
    /// `If-Unmodified-Since` answer 412 when they fail, before any 304.
    #[test]
    fn failed_preconditions() {
        let v = Validators::new(1, 2, UNIX_EPOCH + Duration::from_secs(1_000_000));
        let get = complete(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
        let with = |f: &dyn Fn(&mut Request)| {
            let mut r = get.clone();
            f(&mut r);
            preconditions(&r, &v)
        };
        assert_eq!(
            with(&|r| r.if_match = Some("\"zz\"".into())),
            Verdict::Failed
        );
        assert_eq!(
            with(&|r| r.if_match = Some(v.etag.clone())),
            Verdict::Proceed
        );
        assert_eq!(with(&|r| r.if_match = Some("*".into())), Verdict::Proceed);
        assert_eq!(
            with(&|r| r.if_match = Some(format!("W/{}", v.etag))),
            Verdict::Failed,
            "a weak tag never matches strongly"
        );
        assert_eq!(
            with(&|r| r.if_match = Some(format!("\"zz\", {}", v.etag))),
            Verdict::Proceed
        );
        let old = "Thu, 01 Jan 1970 00:00:00 GMT".to_string();
        assert_eq!(
            with(&|r| r.if_unmodified_since = Some(old.clone())),
            Verdict::Failed
        );
        assert_eq!(
            with(&|r| r.if_unmodified_since = Some(v.last_modified.clone())),
            Verdict::Proceed
        );
        assert_eq!(
            with(&|r| r.if_unmodified_since = Some("garbage".into())),
            Verdict::Proceed,
            "a bad date is ignored"
        );
        assert_eq!(
            with(&|r| {
                r.if_match = Some(v.etag.clone());
                r.if_unmodified_since = Some(old.clone());
            }),
            Verdict::Proceed,
            "If-Match holds: If-Unmodified-Since is not looked at"
        );
        assert_eq!(
            with(&|r| {
                r.if_match = Some("\"zz\"".into());
                r.if_none_match = Some(v.etag.clone());
            }),
            Verdict::Failed,
            "412 before 304"
        );
    }

    /// A file modified "in the future" is given out as modified now, and the
    /// 304 it would have earned is not given against a later real date.
    #[test]
    fn a_future_modification_time_is_given_out_as_now() {
        let now = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let future = now + Duration::from_secs(300 * 86_400);
        let v = Validators::at(1, 2, future, now);
        assert_eq!(v.mtime, 2_000_000_000);
        assert_eq!(v.last_modified, httpdate::fmt_http_date(now));
        let tag_of_own_time = Validators::at(1, 2, future, future).etag;
        assert_eq!(v.etag, tag_of_own_time, "the tag names the version");
        let past = now - Duration::from_secs(10);
        assert_eq!(
            Validators::at(1, 2, past, now).last_modified,
            httpdate::fmt_http_date(past)
        );
        let mut r = complete(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
        r.if_modified_since = Some(v.last_modified.clone());
        assert_eq!(
            preconditions_at(&r, &v, now),
            Verdict::NotModified,
            "nothing changed"
        );
        let later = now + Duration::from_secs(5);
        let edited = Validators::at(1, 3, later, later);
        assert_eq!(
            preconditions_at(&r, &edited, later),
            Verdict::Proceed,
            "an edit is seen"
        );
        // A future date (from elsewhere: this server never gives one out) is
        // ignored, edited or not.
        r.if_modified_since = Some(httpdate::fmt_http_date(future));
        assert_eq!(preconditions_at(&r, &v, now), Verdict::Proceed);
        assert_eq!(preconditions_at(&r, &edited, later), Verdict::Proceed);
    }

    /// Times before the epoch make distinct tags (they all made one).
    #[test]
    fn times_before_the_epoch_name_their_versions() {
        let now = SystemTime::now();
        let a = Validators::at(1, 2, UNIX_EPOCH - Duration::from_secs(10), now);
        let b = Validators::at(1, 2, UNIX_EPOCH - Duration::from_secs(20), now);
        let c = Validators::at(1, 2, UNIX_EPOCH, now);
        assert_ne!(a.etag, b.etag);
        assert_ne!(a.etag, c.etag);
        assert_eq!(a.mtime, 0);
    }

    /// Several field lines of one precondition are joined (RFC 9110 §5.3).
    #[test]
    fn repeated_fields_are_joined() {
        let r = complete(
            b"GET / HTTP/1.1\r\nHost: h\r\nIf-None-Match: \"a\"\r\nIf-None-Match: \"b\"\r\n\
              Range: bytes=0-1\r\nrange: bytes=3-4\r\nIf-Match: *\r\n\r\n",
        );
        assert_eq!(r.if_none_match.as_deref(), Some("\"a\", \"b\""));
        assert_eq!(r.range.as_deref(), Some("bytes=0-1, bytes=3-4"));
        assert_eq!(r.if_match.as_deref(), Some("*"));
        let v = Validators {
            etag: "\"a\"".into(),
            mtime: 0,
            last_modified: String::new(),
        };
        assert_eq!(
            preconditions(&r, &v),
            Verdict::NotModified,
            "the first tag counts"
        );
        assert_eq!(range(r.range.as_deref().unwrap(), 100), RangeAsk::Full);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Ranges: never panics; a part always lies inside the file.
        #[test]
        fn range_inside(value in "(bytes|BYTES|x)=[0-9 ]{0,12}-?[0-9 ]{0,12}(,[0-9-]{0,6})?", len in 0u64..1_000_000) {
            if let RangeAsk::Part { start, end } = range(&value, len) {
                prop_assert!(start <= end && end < len);
            }
        }
    }
}
