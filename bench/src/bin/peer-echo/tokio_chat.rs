//! `peer-echo --server tokio-chat`: the peer of `ringport chat` for `ringport
//! bench chat`, written the way a tokio chat server usually is: a task per
//! connection reading lines, a room table under a mutex, and per member an
//! unbounded channel drained by a writer task (which sends everything queued
//! in one `write_all`, as ringport's outbox does). It speaks the part of the
//! protocol the benchmark uses: `HELLO nick lobby` on connecting, `/join
//! ROOM` (`OK joined ROOM (N members)`), and a text line, which goes to every
//! member of the room as `[room] nick: text`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

type Tx = UnboundedSender<Arc<str>>;

#[derive(Default)]
struct Rooms {
    /// Room → its members (id, sender).
    rooms: HashMap<String, Vec<(u64, Tx)>>,
}

/// Runs the chat peer on tokio's multi-thread runtime with 2 workers.
pub fn run(listen: SocketAddr) -> std::io::Result<()> {
    let rooms = Arc::new(Mutex::new(Rooms::default()));
    let ids = Arc::new(AtomicU64::new(0));
    crate::tokio_srv::run_with(listen, Some(2), move |s| {
        serve(s, rooms.clone(), ids.fetch_add(1, Ordering::Relaxed))
    })
}

fn send_room(rooms: &Mutex<Rooms>, room: &str, line: &str) {
    let line: Arc<str> = Arc::from(line);
    let r = rooms.lock().unwrap();
    for (_, tx) in r.rooms.get(room).into_iter().flatten() {
        let _ = tx.send(line.clone());
    }
}

async fn serve(s: TcpStream, rooms: Arc<Mutex<Rooms>>, id: u64) {
    let _ = s.set_nodelay(true);
    let (rd, mut wr) = s.into_split();
    let (tx, mut rx) = unbounded_channel::<Arc<str>>();
    let writer = tokio::spawn(async move {
        let mut buf = Vec::new();
        while let Some(first) = rx.recv().await {
            buf.clear();
            buf.extend_from_slice(first.as_bytes());
            buf.push(b'\n');
            while let Ok(more) = rx.try_recv() {
                buf.extend_from_slice(more.as_bytes());
                buf.push(b'\n');
            }
            if wr.write_all(&buf).await.is_err() {
                return;
            }
        }
    });
    let nick = format!("guest{}", id + 1);
    let mut room = String::from("lobby");
    let _ = tx.send(Arc::from(format!("HELLO {nick} lobby")));
    rooms
        .lock()
        .unwrap()
        .rooms
        .entry(room.clone())
        .or_default()
        .push((id, tx.clone()));
    let mut lines = BufReader::new(rd).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(to) = line.strip_prefix("/join ") {
            let n = {
                let mut r = rooms.lock().unwrap();
                if let Some(list) = r.rooms.get_mut(&room) {
                    list.retain(|(i, _)| *i != id);
                }
                let list = r.rooms.entry(to.to_string()).or_default();
                list.push((id, tx.clone()));
                list.len()
            };
            room = to.to_string();
            let _ = tx.send(Arc::from(format!("OK joined {room} ({n} members)")));
        } else if !line.is_empty() {
            send_room(&rooms, &room, &format!("[{room}] {nick}: {line}"));
        }
    }
    if let Some(list) = rooms.lock().unwrap().rooms.get_mut(&room) {
        list.retain(|(i, _)| *i != id);
    }
    drop(tx);
    let _ = writer.await;
}
