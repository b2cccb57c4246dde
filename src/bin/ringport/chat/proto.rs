//! `ringport chat`'s line protocol: what a client's line means, and which names
//! are valid. Pure functions, no I/O: the hub (`hub.rs`) acts on a [`Command`],
//! the connection (`mod.rs`) cuts the byte stream into lines ([`Lines`]).
//!
//! A client sends lines of UTF-8 ending in `\n` (a `\r` before it is dropped):
//!
//! | line | meaning |
//! |---|---|
//! | `text` | say `text` to the current room |
//! | `//text` | say `/text` (a text that starts with `/`) |
//! | `/nick NAME` | take a nickname |
//! | `/join ROOM` | leave the current room for `ROOM` (made when first joined) |
//! | `/msg NICK TEXT` | a private message |
//! | `/rooms`, `/who`, `/help` | list rooms, list the room's members, list commands |
//! | `/quit` | say goodbye; the server closes the connection |
//!
//! Names (nicknames and rooms) are 1 to [`MAX_NAME`] ASCII letters, digits,
//! `_` and `-`. A line with a control character (other than a tab) is
//! refused (and so is an invisible formatting character: a bidirectional
//! override or a zero-width one): relayed, it could drive other users'
//! terminals or disguise what they read.

/// Longest nickname or room name, in bytes.
pub(crate) const MAX_NAME: usize = 32;

/// What one line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command<'a> {
    /// Say this to the current room.
    Say(&'a str),
    Nick(&'a str),
    Join(&'a str),
    Msg {
        to: &'a str,
        text: &'a str,
    },
    Rooms,
    Who,
    Help,
    Quit,
    /// Nothing (an empty line).
    Empty,
}

/// Why a line was refused; the client gets `ERR ` and this text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refused {
    NotUtf8,
    ControlChar,
    UnknownCommand(String),
    /// A command's argument is missing or malformed: the usage to show.
    Usage(&'static str),
    BadName(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::NotUtf8 => write!(f, "line is not UTF-8"),
            Refused::ControlChar => {
                write!(f, "line has a control or invisible formatting character")
            }
            Refused::UnknownCommand(c) => write!(f, "unknown command /{c} (try /help)"),
            Refused::Usage(u) => write!(f, "usage: {u}"),
            Refused::BadName(n) => write!(
                f,
                "{n:?} is not a valid name (1 to {MAX_NAME} of A-Z a-z 0-9 _ -)"
            ),
        }
    }
}

/// The reply to `/help`.
pub(crate) const HELP: &str =
    "HELP text | //text | /nick NAME | /join ROOM | /msg NICK TEXT | /rooms | /who | /help | /quit";

/// Invisible formatting characters a relayed line could use to disguise
/// itself (bidirectional overrides and isolates, zero-width characters, the
/// byte-order mark), refused like control characters.
fn invisible(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// Whether `s` is a valid nickname or room name.
pub(crate) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn name<'a>(arg: &'a str, usage: &'static str) -> Result<&'a str, Refused> {
    let arg = arg.trim();
    if arg.is_empty() {
        return Err(Refused::Usage(usage));
    }
    if !valid_name(arg) {
        return Err(Refused::BadName(truncated(arg)));
    }
    Ok(arg)
}

/// `s` cut to a few dozen characters (for an error message that quotes it).
fn truncated(s: &str) -> String {
    s.chars().take(MAX_NAME + 8).collect()
}

/// Parses one line (its `\n` and any `\r` before it already cut off).
pub(crate) fn parse(line: &[u8]) -> Result<Command<'_>, Refused> {
    let line = std::str::from_utf8(line).map_err(|_| Refused::NotUtf8)?;
    if line
        .chars()
        .any(|c| (c.is_control() && c != '\t') || invisible(c))
    {
        return Err(Refused::ControlChar);
    }
    if line.trim().is_empty() {
        return Ok(Command::Empty);
    }
    let Some(rest) = line.strip_prefix('/') else {
        return Ok(Command::Say(line));
    };
    if rest.starts_with('/') {
        return Ok(Command::Say(rest));
    }
    let (cmd, arg) = match rest.split_once([' ', '\t']) {
        Some((c, a)) => (c, a),
        None => (rest, ""),
    };
    let bare = |c: Command<'static>| {
        if arg.trim().is_empty() {
            Ok(c)
        } else {
            Err(Refused::Usage(match c {
                Command::Rooms => "/rooms",
                Command::Who => "/who",
                Command::Help => "/help",
                _ => "/quit",
            }))
        }
    };
    match cmd {
        "nick" => Ok(Command::Nick(name(arg, "/nick NAME")?)),
        "join" => Ok(Command::Join(name(arg, "/join ROOM")?)),
        "msg" => {
            let arg = arg.trim_start();
            let (to, text) = arg.split_once([' ', '\t']).unwrap_or((arg, ""));
            if to.is_empty() || text.trim().is_empty() {
                return Err(Refused::Usage("/msg NICK TEXT"));
            }
            Ok(Command::Msg {
                to: name(to, "/msg NICK TEXT")?,
                // The separator may be several spaces: none reaches the addressee.
                text: text.trim_start(),
            })
        }
        "rooms" => bare(Command::Rooms),
        "who" => bare(Command::Who),
        "help" => bare(Command::Help),
        "quit" => bare(Command::Quit),
        other => Err(Refused::UnknownCommand(truncated(other))),
    }
}

/// Cuts a byte stream into lines of at most `max` bytes. A longer line is
/// reported once, as [`Line::TooLong`], and its bytes are skipped up to its
/// end: the connection goes on with the next line.
#[derive(Debug)]
pub(crate) struct Lines {
    /// The unfinished line so far (at most `max` bytes, and a `\r`).
    part: Vec<u8>,
    max: usize,
    /// Skipping the rest of a line that was too long.
    skipping: bool,
}

/// One item out of [`Lines::feed`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line<'a> {
    Full(&'a [u8]),
    TooLong,
}

impl Lines {
    pub(crate) fn new(max: usize) -> Lines {
        Lines {
            part: Vec::new(),
            max,
            skipping: false,
        }
    }

    /// Feeds received bytes; calls `each` for every line they finish, in order.
    /// `each` returns false to stop (the rest of `data` is dropped).
    pub(crate) fn feed(&mut self, mut data: &[u8], mut each: impl FnMut(Line<'_>) -> bool) {
        while !data.is_empty() {
            let nl = data.iter().position(|&b| b == b'\n');
            let (chunk, ends) = match nl {
                Some(i) => (&data[..i], true),
                None => (data, false),
            };
            data = &data[chunk.len() + usize::from(ends)..];
            if self.skipping {
                self.skipping = !ends;
                continue;
            }
            // A '\r' last may be (or become) the one before '\n', which does
            // not count against the limit.
            let last = chunk.last().or(self.part.last()).copied();
            if self.part.len() + chunk.len() > self.max + usize::from(last == Some(b'\r')) {
                self.part.clear();
                self.skipping = !ends;
                if !each(Line::TooLong) {
                    return;
                }
                continue;
            }
            if !ends {
                self.part.extend_from_slice(chunk);
                continue;
            }
            let go = if self.part.is_empty() {
                each(Line::Full(strip_cr(chunk)))
            } else {
                self.part.extend_from_slice(chunk);
                let line = std::mem::take(&mut self.part);
                let go = each(Line::Full(strip_cr(&line)));
                self.part = line;
                self.part.clear();
                go
            };
            if !go {
                return;
            }
        }
    }

    /// Bytes of an unfinished line held (for tests).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.part.len()
    }
}

fn strip_cr(l: &[u8]) -> &[u8] {
    l.strip_suffix(b"\r").unwrap_or(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert_eq!(parse(b"hello there"), Ok(Command::Say("hello there")));
        assert_eq!(parse(b"//slash"), Ok(Command::Say("/slash")));
        assert_eq!(parse(b"/nick alice"), Ok(Command::Nick("alice")));
        assert_eq!(parse(b"/nick  bob_2 "), Ok(Command::Nick("bob_2")));
        assert_eq!(parse(b"/join games"), Ok(Command::Join("games")));
        assert_eq!(
            parse(b"/msg bob hi  you"),
            Ok(Command::Msg {
                to: "bob",
                text: "hi  you"
            })
        );
        assert_eq!(parse(b"/rooms"), Ok(Command::Rooms));
        assert_eq!(parse(b"/who"), Ok(Command::Who));
        assert_eq!(parse(b"/help"), Ok(Command::Help));
        assert_eq!(parse(b"/quit"), Ok(Command::Quit));
        assert_eq!(parse(b""), Ok(Command::Empty));
        assert_eq!(parse(b"  \t "), Ok(Command::Empty));
    }

    #[test]
    fn refusals() {
        assert_eq!(parse(b"\xff\xfe"), Err(Refused::NotUtf8));
        assert_eq!(parse(b"a\x1b[2Jb"), Err(Refused::ControlChar));
        assert_eq!(parse(b"a\rb"), Err(Refused::ControlChar));
        assert_eq!(
            parse("abc\u{202E}fdp.exe".as_bytes()),
            Err(Refused::ControlChar)
        );
        assert_eq!(
            parse("zero\u{200B}width".as_bytes()),
            Err(Refused::ControlChar)
        );
        assert_eq!(
            parse("caf\u{e9} \u{1F600}".as_bytes()),
            Ok(Command::Say("caf\u{e9} \u{1F600}"))
        );
        assert_eq!(
            parse(b"/msg bob    hi  there"),
            Ok(Command::Msg {
                to: "bob",
                text: "hi  there"
            })
        );
        assert!(matches!(parse(b"/frob x"), Err(Refused::UnknownCommand(c)) if c == "frob"));
        assert_eq!(parse(b"/nick"), Err(Refused::Usage("/nick NAME")));
        assert!(matches!(parse(b"/nick a b"), Err(Refused::BadName(_))));
        assert!(matches!(
            parse(b"/nick caf\xc3\xa9"),
            Err(Refused::BadName(_))
        ));
        assert!(matches!(
            parse(format!("/join {}", "r".repeat(MAX_NAME + 1)).as_bytes()),
            Err(Refused::BadName(_))
        ));
        assert_eq!(parse(b"/msg bob"), Err(Refused::Usage("/msg NICK TEXT")));
        assert_eq!(parse(b"/msg bob   "), Err(Refused::Usage("/msg NICK TEXT")));
        assert_eq!(parse(b"/who me"), Err(Refused::Usage("/who")));
        assert_eq!(parse(b"/quit now"), Err(Refused::Usage("/quit")));
        // Messages quote a long unknown command cut short.
        let long = format!("/{}", "x".repeat(5000));
        let Err(e) = parse(long.as_bytes()) else {
            panic!()
        };
        assert!(e.to_string().len() < 100, "{e}");
    }

    fn lines(max: usize, chunks: &[&[u8]]) -> (Vec<Result<String, ()>>, usize) {
        let mut l = Lines::new(max);
        let mut out = Vec::new();
        for c in chunks {
            l.feed(c, |line| {
                out.push(match line {
                    Line::Full(b) => Ok(String::from_utf8_lossy(b).into_owned()),
                    Line::TooLong => Err(()),
                });
                true
            });
        }
        (out, l.held())
    }

    #[test]
    fn lines_across_reads() {
        let (out, held) = lines(10, &[b"ab", b"c\nde\r\n", b"f", b"g\nh"]);
        assert_eq!(
            out,
            vec![Ok("abc".into()), Ok("de".into()), Ok("fg".into())]
        );
        assert_eq!(held, 1);
    }

    #[test]
    fn a_long_line_is_reported_once_and_skipped() {
        // 10 bytes fit; 11 do not; the rest of the long line, over three reads, is skipped.
        let (out, held) = lines(10, &[b"0123456789\n", b"0123456789X", b"yyyy", b"zz\nok\n"]);
        assert_eq!(out, vec![Ok("0123456789".into()), Err(()), Ok("ok".into())]);
        assert_eq!(held, 0);
        // "\r\n" after exactly max bytes is fine.
        let (out, _) = lines(3, &[b"abc\r\n"]);
        assert_eq!(out, vec![Ok("abc".into())]);
        // ... also when the "\r" and the "\n" come in two reads.
        let (out, _) = lines(3, &[b"abc\r", b"\n"]);
        assert_eq!(out, vec![Ok("abc".into())]);
        let (out, _) = lines(3, &[b"abc\r", b"x\n"]);
        assert_eq!(out, vec![Err(())]);
        // One read holding a long line and a good one.
        let (out, _) = lines(3, &[b"abcdef\nxy\n"]);
        assert_eq!(out, vec![Err(()), Ok("xy".into())]);
    }

    #[test]
    fn feed_stops_when_asked() {
        let mut l = Lines::new(10);
        let mut n = 0;
        l.feed(b"a\nb\nc\n", |_| {
            n += 1;
            n < 2
        });
        assert_eq!(n, 2);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(line in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = parse(&line);
        }

        #[test]
        fn lines_match_a_plain_split(data in proptest::collection::vec(
            proptest::sample::select(vec![b'a', b'b', b'\n', b'\r']), 0..300),
            cuts in proptest::collection::vec(0usize..300, 0..6)) {
            let max = 8;
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut at = 0;
            for c in cuts.into_iter().chain([data.len()]) {
                chunks.push(&data[at..c]);
                at = c;
            }
            let (got, _) = lines(max, &chunks);
            // The model: split on '\n', drop one '\r' at the end, a line
            // longer than max is an error; an unfinished tail is an error
            // once it is too long (with room for a '\r'), else nothing yet.
            let mut want = Vec::new();
            let mut parts: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
            let tail = parts.pop().unwrap_or_default();
            let tail_too_long = tail.len() > max + usize::from(tail.last() == Some(&b'\r'));
            for p in parts {
                let p = p.strip_suffix(b"\r").unwrap_or(p);
                want.push(if p.len() > max { Err(()) } else { Ok(String::from_utf8_lossy(p).into_owned()) });
            }
            if tail_too_long {
                want.push(Err(()));
            }
            proptest::prop_assert_eq!(got, want);
        }
    }
}
