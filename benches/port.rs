//! Micro-benchmarks of the port's own paths, on both backends: what one
//! packet, one operation and one task cost with no network in the way.
//! `cargo bench --bench port` (the echo matrix, `echo-matrix`, measures the
//! whole server; these isolate the pieces). A backend this machine cannot
//! run is skipped with a message.

// criterion's macros generate public functions without docs.
#![allow(missing_docs)]

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use ringport::{BackendChoice, Completion, CompletionPort, Op, Runtime};

const BACKENDS: [(BackendChoice, &str); 2] = [
    (BackendChoice::Uring, "uring"),
    (BackendChoice::Epoll, "epoll"),
];

fn port(choice: BackendChoice, name: &str) -> Option<CompletionPort> {
    match CompletionPort::builder().backend(choice).build() {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("skipping {name}: {e}");
            None
        }
    }
}

/// Benchmarks `op` as `group/backend` on a port of each backend.
fn per_port<R>(c: &mut Criterion, group: &str, op: impl Fn(&CompletionPort) -> R) {
    for (choice, name) in BACKENDS {
        let Some(p) = port(choice, name) else {
            continue;
        };
        c.bench_function(&format!("{group}/{name}"), |b| b.iter(|| op(&p)));
    }
}

/// `post` then `get` on one thread: the queue alone.
fn post_get(c: &mut Criterion) {
    per_port(c, "post_get", |p| {
        p.post(1, 2, 3).unwrap();
        p.get(Some(Duration::from_secs(5))).unwrap()
    });
}

/// `submit(nop)` then `get`: an operation through the backend and back.
fn nop(p: &CompletionPort) -> Completion {
    p.submit(Op::nop(), 7).unwrap();
    p.get(Some(Duration::from_secs(5))).unwrap()
}

/// [`nop`] from this (criterion's) thread, which the port does not own.
fn nop_round_trip(c: &mut Criterion) {
    per_port(c, "nop_round_trip", nop);
}

/// The same from a thread that promised to outlive its operations
/// (`ringport::long_lived_thread`): on io_uring it enters the kernel itself
/// instead of handing its requests to the submitter thread (one thread hop
/// each way, the cost above).
fn nop_round_trip_owned(c: &mut Criterion) {
    ringport::long_lived_thread();
    per_port(c, "nop_round_trip_owned", nop);
}

/// A task spawned and joined from `block_on`: the async face's task cost.
fn spawn_join(c: &mut Criterion) {
    for (choice, name) in BACKENDS {
        let rt = match Runtime::builder().backend(choice).build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("skipping {name}: {e}");
                continue;
            }
        };
        c.bench_function(&format!("spawn_join/{name}"), |b| {
            b.iter(|| rt.block_on(async { ringport::spawn(async { 1u64 }).await.unwrap() }))
        });
    }
}

criterion_group!(
    benches,
    post_get,
    nop_round_trip,
    nop_round_trip_owned,
    spawn_join
);
criterion_main!(benches);
