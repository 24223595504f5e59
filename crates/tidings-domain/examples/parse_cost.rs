//! Time to parse and validate one ingest batch of 1,000 seed-like events (about 600 bytes
//! each, four small objects in the payload): `cargo run --release -p tidings-domain
//! --example parse_cost`. Figures are in DESIGN.md (ingest) and BENCHMARKS.md.

use tidings_domain::catalog::Catalog;
use tidings_domain::ingest::{IngestFormat, parse_ingest_body};
fn main() {
    let mut events = Vec::new();
    for i in 0..1000 {
        events.push(format!(r#"{{"type":"service_line.activated","organization_id":"ORG-26-{:06}","workspace_id":"WS-26-{:06}","actor":{{"type":"user","id":"USR-26-{:06}"}},"subject":{{"type":"service_line","id":"LIN-26-{:06}"}},"idempotency_key":"k-{i}","payload":{{"previous_status":"draft","new_status":"active","execution_model":"agent","plan":{{"tier":"growth","seats":{i},"monthly_amount":1250.5,"currency":"usd"}},"site":{{"address":"12 Harbour Road","city":"Leith","postcode":"EH6 6LX","country":"GB"}},"tags":["priority","fibre","install-{i}"],"notes":"activated after site survey {i}","contract":{{"term_months":24,"starts":"2026-04-01"}}}}}}"#, 90500 + i % 100, 21 + i % 50, i % 400, 84000 + i));
    }
    let body = format!(r#"{{"events":[{}]}}"#, events.join(","));
    let catalog = Catalog::builtin();
    let n = 300;
    let t = std::time::Instant::now();
    for _ in 0..n {
        let e = parse_ingest_body(body.as_bytes(), IngestFormat::Json, &catalog).unwrap();
        std::hint::black_box(e);
    }
    println!(
        "{} bytes/batch, {:.3} ms per 1,000 events",
        body.len(),
        t.elapsed().as_secs_f64() * 1000.0 / n as f64
    );
}
