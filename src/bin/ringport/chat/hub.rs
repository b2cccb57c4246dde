//! Who is connected, under which nickname, in which room; and what each
//! command sends to whom. Every change and every delivery happens under one
//! lock, so the members of a room see its lines in one and the same order
//! (each member's outbox is appended to in lock order, and drained in order
//! by one writer).
//!
//! Lines sent (server → client):
//!
//! | line | to | when |
//! |---|---|---|
//! | `HELLO nick room` | the new member | on connecting |
//! | `[room] nick: text` | every member of the room, the speaker too | a text |
//! | `[pm] from: text` | the addressee | `/msg` |
//! | `* nick joined room`, `* nick left room`, `* old is now new` | the room's other members | |
//! | `OK …`, `ROOMS …`, `WHO …`, `HELP …` | the sender | the reply to a command |
//! | `ERR why` | the sender | a refused line; nothing else changed |
//! | `BYE [why]` | the member | `/quit`, or the server stopping |
//!
//! A member whose outbox overflows (it reads slower than its room talks) is
//! disconnected: removed at once, its room told `* nick left room (too
//! slow)`, and its socket shut down (`kick`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;

use rustc_hash::FxHashMap;

use super::outbox::{Outbox, Pushed};
use super::proto::{Command, HELP};

/// The room every connection starts in.
pub(crate) const LOBBY: &str = "lobby";

/// Shuts a member's socket down (both ways).
pub(crate) type Kick = Box<dyn Fn() + Send + Sync>;

struct Member {
    nick: String,
    room: String,
    out: Arc<Outbox>,
    kick: Kick,
}

#[derive(Default)]
struct State {
    /// Every connected member, by id.
    members: FxHashMap<u64, Member>,
    /// Nicknames are unique without regard to ASCII case (`Alice` cannot
    /// pose as `alice`): keyed by [`key`].
    /// Invariant: `nicks[key(m.nick)] == id` for every member `m` with that id,
    /// and nothing else is in it.
    nicks: FxHashMap<String, u64>,
    /// Invariant: a room is here exactly while it has members; its list holds
    /// the ids (and outboxes) of the members whose `room` it is, in joining
    /// order. (The outbox is kept here so a broadcast looks nothing up.)
    rooms: BTreeMap<String, Vec<(u64, Arc<Outbox>)>>,
    next_id: u64,
    next_guest: u64,
    /// Connections let in and not yet ended (`release`): members, and those
    /// that left but whose writer still flushes. `--max-conns` caps this, not
    /// the members: a connection out of the hub still holds its socket and
    /// its outbox until its peer has read it.
    open: usize,
    stopping: bool,
}

/// Why a connection was not let in.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    Full,
    Stopping,
}

/// After a line: go on reading, or the member quit.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    Go,
    Quit,
}

/// The hub.
pub(crate) struct Hub {
    state: Mutex<State>,
    max_members: usize,
    /// Room lines delivered (one per recipient).
    pub(crate) delivered: AtomicU64,
}

/// Deliveries made under the lock: wakers to wake after it, members to kick.
#[derive(Default)]
struct Deliveries {
    wakers: Vec<Waker>,
    overflowed: Vec<u64>,
}

impl Deliveries {
    fn to(&mut self, st: &State, id: u64, line: &str) {
        if let Some(m) = st.members.get(&id) {
            self.push(id, &m.out, line);
        }
    }

    fn push(&mut self, id: u64, out: &Outbox, line: &str) {
        let (pushed, w) = out.push(line);
        if pushed == Pushed::Overflow {
            self.overflowed.push(id);
        }
        self.wakers.extend(w);
    }

    /// To every member of `room` but `except`; returns how many.
    fn room(&mut self, st: &State, room: &str, except: Option<u64>, line: &str) -> u64 {
        let mut n = 0;
        if let Some(list) = st.rooms.get(room) {
            for (id, out) in list.iter().filter(|(id, _)| Some(*id) != except) {
                self.push(*id, out, line);
                n += 1;
            }
        }
        n
    }
}

impl Hub {
    pub(crate) fn new(max_members: usize) -> Hub {
        Hub {
            state: Mutex::new(State::default()),
            max_members,
            delivered: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` under the lock, then removes the members it overflowed (and
    /// those their departures overflowed), and wakes the writers it fed.
    fn with<R>(&self, f: impl FnOnce(&mut State, &mut Deliveries) -> R) -> R {
        let mut d = Deliveries::default();
        let mut kicks = Vec::new();
        let r = {
            let mut st = self.lock();
            let r = f(&mut st, &mut d);
            while let Some(id) = d.overflowed.pop() {
                if let Some(m) = remove(&mut st, &mut d, id, " (too slow)") {
                    tracing::debug!("chat: {} disconnected: its outbox is full", m.nick);
                    kicks.push(m);
                }
            }
            r
        };
        for w in d.wakers {
            w.wake();
        }
        for m in kicks {
            (m.kick)();
            m.out.close_and_wake();
        }
        r
    }

    /// Lets a new connection in, as `guestN` in the lobby.
    pub(crate) fn connect(&self, out: Arc<Outbox>, kick: Kick) -> Result<(u64, String), Refusal> {
        self.with(|st, d| {
            if st.stopping {
                return Err(Refusal::Stopping);
            }
            if st.open >= self.max_members {
                return Err(Refusal::Full);
            }
            let nick = loop {
                st.next_guest += 1;
                let n = format!("guest{}", st.next_guest);
                if !st.nicks.contains_key(&key(&n)) {
                    break n;
                }
            };
            let id = st.next_id;
            st.next_id += 1;
            st.open += 1;
            st.nicks.insert(key(&nick), id);
            st.members.insert(
                id,
                Member {
                    nick: nick.clone(),
                    room: LOBBY.to_string(),
                    out: out.clone(),
                    kick,
                },
            );
            d.to(st, id, &format!("HELLO {nick} {LOBBY}"));
            d.room(st, LOBBY, None, &format!("* {nick} joined {LOBBY}"));
            st.rooms
                .entry(LOBBY.to_string())
                .or_default()
                .push((id, out));
            Ok((id, nick))
        })
    }

    /// Tells the member `ERR why`.
    pub(crate) fn refuse(&self, id: u64, why: &str) {
        self.with(|st, d| d.to(st, id, &format!("ERR {why}")));
    }

    /// The member is gone (its connection closed): its room is told.
    pub(crate) fn disconnect(&self, id: u64) {
        self.with(|st, d| {
            remove(st, d, id, "");
        });
    }

    /// A connection let in by `connect` has ended (after `disconnect` and its
    /// writer's last send): its place under the cap is free.
    pub(crate) fn release(&self) {
        let mut st = self.lock();
        st.open = st.open.saturating_sub(1);
    }

    /// The server is stopping: every member is told `BYE` and let go; no one
    /// new is let in.
    pub(crate) fn stop(&self) {
        self.with(|st, d| {
            st.stopping = true;
            let ids: Vec<u64> = st.members.keys().copied().collect();
            for &id in &ids {
                d.to(st, id, "BYE server stopping");
            }
            // Closed under the lock, with the BYEs: a line delivered after
            // it (say, `* x left` as another member's connection ends) would
            // otherwise follow the BYE.
            for m in st.members.values() {
                d.wakers.extend(m.out.close());
            }
        });
    }

    /// Members connected now.
    pub(crate) fn members(&self) -> usize {
        self.lock().members.len()
    }

    /// Acts on one line of member `id`.
    pub(crate) fn act(&self, id: u64, cmd: Command<'_>) -> Flow {
        self.with(|st, d| {
            let Some(me) = st.members.get(&id) else {
                return Flow::Quit; // kicked meanwhile
            };
            let (nick, room) = (me.nick.clone(), me.room.clone());
            // A listing (ROOMS, WHO) fits half the asker's outbox: a full one
            // could pass it, and the asker be dropped as too slow.
            let me_limit = me.out.limit() / 2;
            match cmd {
                Command::Empty => {}
                Command::Say(text) => {
                    let n = d.room(st, &room, None, &format!("[{room}] {nick}: {text}"));
                    self.delivered.fetch_add(n, Ordering::Relaxed);
                }
                Command::Nick(new) if new == nick => d.to(st, id, &format!("OK nick {new}")),
                Command::Nick(new) => {
                    if st.nicks.get(&key(new)).is_some_and(|&other| other != id) {
                        d.to(st, id, &format!("ERR nick {new} is taken"));
                    } else {
                        st.nicks.remove(&key(&nick));
                        st.nicks.insert(key(new), id);
                        if let Some(m) = st.members.get_mut(&id) {
                            m.nick = new.to_string();
                        }
                        d.to(st, id, &format!("OK nick {new}"));
                        d.room(st, &room, Some(id), &format!("* {nick} is now {new}"));
                    }
                }
                Command::Join(to) if to == room => {
                    let n = st.rooms.get(&room).map_or(0, Vec::len);
                    d.to(st, id, &format!("OK joined {to} ({n} members)"));
                }
                Command::Join(to) => {
                    leave_room(st, id, &room);
                    d.room(st, &room, None, &format!("* {nick} left {room}"));
                    d.room(st, to, None, &format!("* {nick} joined {to}"));
                    let Some(m) = st.members.get_mut(&id) else {
                        return Flow::Quit;
                    };
                    m.room = to.to_string();
                    let out = m.out.clone();
                    let list = st.rooms.entry(to.to_string()).or_default();
                    list.push((id, out));
                    let n = list.len();
                    d.to(st, id, &format!("OK joined {to} ({n} members)"));
                }
                Command::Msg { to, text } => match st.nicks.get(&key(to)).copied() {
                    Some(to_id) => {
                        d.to(st, to_id, &format!("[pm] {nick}: {text}"));
                        d.to(st, id, &format!("OK msg {to}"));
                    }
                    None => d.to(st, id, &format!("ERR no one is called {to}")),
                },
                Command::Rooms => {
                    let rooms = st
                        .rooms
                        .iter()
                        .map(|(name, ids)| format!("{name}({})", ids.len()));
                    let line = listing(String::from("ROOMS"), rooms, me_limit);
                    d.to(st, id, &line);
                }
                Command::Who => {
                    let mut nicks: Vec<&str> = st
                        .rooms
                        .get(&room)
                        .into_iter()
                        .flatten()
                        .filter_map(|(i, _)| st.members.get(i).map(|m| m.nick.as_str()))
                        .collect();
                    nicks.sort_unstable();
                    let head = format!("WHO {room}:");
                    let line = listing(head, nicks.into_iter().map(String::from), me_limit);
                    d.to(st, id, &line);
                }
                Command::Help => d.to(st, id, HELP),
                Command::Quit => {
                    d.to(st, id, "BYE");
                    if let Some(m) = remove(st, d, id, "") {
                        d.wakers.extend(m.out.close());
                    }
                    return Flow::Quit;
                }
            }
            Flow::Go
        })
    }
}

/// `head` and the `items`, each after a space, in at most `max` bytes: the
/// items that would pass it are left out and counted (` +N more`).
fn listing(mut head: String, items: impl ExactSizeIterator<Item = String>, max: usize) -> String {
    // Room for the longest " +N more".
    let max = max.saturating_sub(24);
    let total = items.len();
    for (i, item) in items.enumerate() {
        if head.len() + 1 + item.len() > max {
            head.push_str(&format!(" +{} more", total - i));
            break;
        }
        head.push(' ');
        head.push_str(&item);
    }
    head
}

/// A nickname's key in `State::nicks`: its ASCII lower case.
fn key(nick: &str) -> String {
    nick.to_ascii_lowercase()
}

/// Takes `id` out of `room`'s list, and the room out when it empties.
fn leave_room(st: &mut State, id: u64, room: &str) {
    if let Some(list) = st.rooms.get_mut(room) {
        list.retain(|(i, _)| *i != id);
        if list.is_empty() {
            st.rooms.remove(room);
        }
    }
}

/// Removes a member (if still there) and tells its room, `why` after the notice.
fn remove(st: &mut State, d: &mut Deliveries, id: u64, why: &str) -> Option<Member> {
    let m = st.members.remove(&id)?;
    st.nicks.remove(&key(&m.nick));
    leave_room(st, id, &m.room);
    d.room(
        st,
        &m.room,
        None,
        &format!("* {} left {}{why}", m.nick, m.room),
    );
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(hub: &Hub, limit: usize) -> (u64, Arc<Outbox>, Arc<AtomicU64>) {
        let out = Arc::new(Outbox::new(limit));
        let kicked = Arc::new(AtomicU64::new(0));
        let k = kicked.clone();
        let kick: Kick = Box::new(move || {
            k.fetch_add(1, Ordering::Relaxed);
        });
        let (id, _) = hub.connect(out.clone(), kick).unwrap();
        (id, out, kicked)
    }

    fn drain(out: &Outbox) -> Vec<String> {
        let rt = ringport::Runtime::new().unwrap();
        let mut lines = Vec::new();
        out.close();
        while let Some(b) = rt.block_on(out.take(Vec::new())) {
            lines.extend(String::from_utf8(b).unwrap().lines().map(String::from));
        }
        lines
    }

    #[test]
    fn rooms_nicks_and_messages() {
        let hub = Hub::new(10);
        let (a, oa, _) = member(&hub, 1 << 16);
        let (b, ob, _) = member(&hub, 1 << 16);
        let (c, oc, _) = member(&hub, 1 << 16);
        assert_eq!(hub.act(a, Command::Nick("alice")), Flow::Go);
        assert_eq!(hub.act(b, Command::Nick("alice")), Flow::Go); // taken
        hub.act(c, Command::Join("games"));
        hub.act(a, Command::Say("hi"));
        hub.act(
            b,
            Command::Msg {
                to: "alice",
                text: "psst",
            },
        );
        hub.act(
            b,
            Command::Msg {
                to: "nobody",
                text: "x",
            },
        );
        hub.act(c, Command::Rooms);
        hub.act(a, Command::Who);
        assert_eq!(hub.act(c, Command::Quit), Flow::Quit);
        let (la, lb, lc) = (drain(&oa), drain(&ob), drain(&oc));
        assert_eq!(
            la,
            [
                "HELLO guest1 lobby",
                "* guest2 joined lobby",
                "* guest3 joined lobby",
                "OK nick alice",
                "* guest3 left lobby",
                "[lobby] alice: hi",
                "[pm] guest2: psst",
                "WHO lobby: alice guest2",
            ]
        );
        assert_eq!(
            lb,
            [
                "HELLO guest2 lobby",
                "* guest3 joined lobby",
                "* guest1 is now alice",
                "ERR nick alice is taken",
                "* guest3 left lobby",
                "[lobby] alice: hi",
                "OK msg alice",
                "ERR no one is called nobody",
            ]
        );
        assert_eq!(
            lc,
            [
                "HELLO guest3 lobby",
                "* guest1 is now alice",
                "OK joined games (1 members)",
                "ROOMS games(1) lobby(2)",
                "BYE",
            ]
        );
        assert_eq!(hub.members(), 2);
        // (The outboxes drained above are closed: a new member listens.)
        let (_d, od, _) = member(&hub, 1 << 16);
        hub.disconnect(a);
        hub.disconnect(a); // twice: nothing more
        assert_eq!(drain(&od), ["HELLO guest4 lobby", "* alice left lobby"]);
        assert_eq!(hub.members(), 2);
    }

    #[test]
    fn a_slow_member_is_dropped_and_the_others_get_everything() {
        let hub = Hub::new(10);
        let (a, oa, _) = member(&hub, 1 << 20);
        let (_slow, _os, kicked) = member(&hub, 256);
        for i in 0..100 {
            hub.act(a, Command::Say(&format!("line {i}")));
        }
        assert_eq!(kicked.load(Ordering::Relaxed), 1, "kicked once");
        assert_eq!(hub.members(), 1);
        let la = drain(&oa);
        let said: Vec<&String> = la.iter().filter(|l| l.starts_with("[lobby]")).collect();
        assert_eq!(said.len(), 100);
        assert!(
            la.contains(&"* guest2 left lobby (too slow)".to_string()),
            "{la:?}"
        );
    }

    #[test]
    fn full_and_stopping() {
        let hub = Hub::new(1);
        let (_a, oa, _) = member(&hub, 1024);
        let out = Arc::new(Outbox::new(1024));
        assert_eq!(
            hub.connect(out.clone(), Box::new(|| {})).unwrap_err(),
            Refusal::Full
        );
        hub.stop();
        assert_eq!(
            drain(&oa).last().map(String::as_str),
            Some("BYE server stopping")
        );
        let hub = Hub::new(5);
        hub.stop();
        assert_eq!(
            hub.connect(out, Box::new(|| {})).unwrap_err(),
            Refusal::Stopping
        );
    }

    #[test]
    fn a_connection_counts_until_released_not_until_it_leaves() {
        let hub = Hub::new(1);
        let (a, _oa, _) = member(&hub, 1024);
        hub.disconnect(a);
        assert_eq!(hub.members(), 0);
        let out = Arc::new(Outbox::new(1024));
        // Its writer may still flush: the place is not free yet.
        assert_eq!(
            hub.connect(out.clone(), Box::new(|| {})).unwrap_err(),
            Refusal::Full
        );
        hub.release();
        assert!(hub.connect(out, Box::new(|| {})).is_ok());
    }

    #[test]
    fn concurrent_speakers_are_heard_in_one_order_by_all() {
        // Threads talk at once, straight into the hub (no sockets to slow
        // them): delivering outside the lock shows up here as members that
        // disagree on the order.
        const SPEAKERS: usize = 4;
        const EACH: usize = 2000;
        let hub = Arc::new(Hub::new(16));
        let members: Vec<_> = (0..SPEAKERS + 2).map(|_| member(&hub, 1 << 24)).collect();
        let threads: Vec<_> = members[..SPEAKERS]
            .iter()
            .map(|&(id, _, _)| {
                let hub = hub.clone();
                std::thread::spawn(move || {
                    for k in 0..EACH {
                        hub.act(id, Command::Say(&format!("{k}")));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let heard: Vec<Vec<String>> = members
            .iter()
            .map(|(_, out, _)| {
                drain(out)
                    .into_iter()
                    .filter(|l| l.starts_with("[lobby]"))
                    .collect()
            })
            .collect();
        assert_eq!(heard[0].len(), SPEAKERS * EACH);
        for (i, h) in heard.iter().enumerate() {
            assert!(h == &heard[0], "member {i} heard another order");
        }
    }

    #[test]
    fn a_long_listing_is_cut_short_rather_than_overflow_the_asker() {
        // 150 rooms of 32-character names: a full ROOMS line (~6 KB), or a
        // WHO of 150 members, would not fit a 4096-byte outbox, and the
        // member who asked would be dropped as too slow.
        let hub = Hub::new(400);
        for i in 0..150 {
            let (id, _, _) = member(&hub, 1 << 16);
            let room = format!("r{i:031}");
            hub.act(id, Command::Join(&room));
        }
        for i in 0..150 {
            let (id, _, _) = member(&hub, 1 << 16);
            hub.act(id, Command::Nick(&format!("n{i:031}")));
        }
        // The asker comes last: it hears no notices, only its replies.
        let (a, oa, kicked) = member(&hub, 4096);
        hub.act(a, Command::Rooms);
        hub.act(a, Command::Who);
        assert_eq!(kicked.load(Ordering::Relaxed), 0, "the asker was dropped");
        let lines = drain(&oa);
        let rooms = lines.iter().find(|l| l.starts_with("ROOMS ")).unwrap();
        let who = lines.iter().find(|l| l.starts_with("WHO ")).unwrap();
        assert!(rooms.len() <= 2048 && rooms.ends_with(" more"), "{rooms}");
        assert!(who.len() <= 2048 && who.ends_with(" more"), "{who}");
    }
}
