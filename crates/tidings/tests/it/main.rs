//! End-to-end tests: a real server on 127.0.0.1:0, real HTTP, a real store: a SQLite file in
//! a temporary directory, or with `TIDINGS_TEST_BACKEND=postgres` a fresh PostgreSQL
//! database per test (`scripts/test` runs both). `harness` holds `TestApp::spawn()`; each
//! module covers one area.

mod harness;
mod process;
mod receiver;

mod audit;
mod bad_input;
mod bench_smoke;
mod cli;
mod durability;
mod events_filters;
mod ingest;
mod multi_process;
mod operations;
mod pagination;
mod rate_limits;
mod retention;
mod stream;
mod tenancy;
mod webhook_restart;
mod webhooks;
