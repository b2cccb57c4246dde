//! Integration tests for ringport: one binary, every test run on every backend
//! (`<test>::uring` and `<test>::epoll`). A backend this machine cannot build is
//! reported on stderr as `skipped: ...` and the test returns.
//!
//! Real sockets on 127.0.0.1 and real (unlinked) temp files; no timing assertions,
//! and every wait is bounded (`common::T`) so a bug fails instead of hanging.

#[macro_use]
mod common;

mod bench_echo;
mod burst;
mod cancel;
mod chains;
mod chat;
mod child;
mod cli_edges;
mod close;
mod dgram;
mod echo;
mod echo_edges;
mod epoll_edges;
mod fallback;
mod file_workers;
mod hyper_bridge;
mod inline_read;
mod inline_submit;
mod lanes;
mod lanes_multi;
mod multishot;
mod net_edges;
mod op_priority;
mod ops;
mod ops2;
mod order;
mod outcomes;
mod parity;
mod pool;
mod pool_batch;
mod pool_edges;
mod ports;
mod priority;
mod queue;
mod review_dgram;
mod review_docs;
mod review_unsafe;
mod review_uring;
mod rt;
mod rt_edges;
mod rt_fair;
mod rt_files;
mod rt_files_edges;
mod rt_inline;
mod rt_io;
mod rt_next;
mod rt_refusals;
mod rt_time;
mod rt_waiters;
mod send_now;
mod send_now_review;
mod serve;
mod serve_conditions;
mod serve_http_edges;
mod serve_limits;
mod serve_open;
mod serve_race;
mod serve_robust;
mod taskrun;
mod timeout_after;
mod writable;
mod zerocopy;
