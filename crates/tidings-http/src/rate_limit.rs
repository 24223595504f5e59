//! Per-key rate limits (SPEC §9): a token bucket per API key (governor's GCRA), default
//! 100 requests/s with bursts of 200, or the key's own limit. Every authenticated response
//! carries `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`; a refused one is
//! a 429 with `Retry-After`.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tidings_domain::{ApiKey, KeyId};

type Bucket = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// The outcome for one request, rendered as headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
    /// Set when the request is refused: seconds until one more request is allowed.
    pub retry_after_secs: Option<u64>,
}

/// Buckets of every key seen, created on first use.
pub struct RateLimits {
    default_rate: NonZeroU32,
    default_burst: NonZeroU32,
    clock: DefaultClock,
    buckets: Mutex<HashMap<KeyId, (u32, Arc<Bucket>)>>,
}

impl RateLimits {
    pub fn new(rate_per_second: u32, burst: u32) -> Self {
        Self {
            default_rate: NonZeroU32::new(rate_per_second).unwrap_or(NonZeroU32::MIN),
            default_burst: NonZeroU32::new(burst.max(rate_per_second)).unwrap_or(NonZeroU32::MIN),
            clock: DefaultClock::default(),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// A key's own limit gets a burst of twice that, like the default.
    fn quota_for(&self, key: &ApiKey) -> (NonZeroU32, NonZeroU32) {
        match key.rate_limit.and_then(NonZeroU32::new) {
            Some(rate) => (
                rate,
                NonZeroU32::new(rate.get().saturating_mul(2)).unwrap_or(rate),
            ),
            None => (self.default_rate, self.default_burst),
        }
    }

    pub fn check(&self, key: &ApiKey) -> Decision {
        let (rate, burst) = self.quota_for(key);
        let bucket = {
            let mut buckets = match self.buckets.lock() {
                Ok(b) => b,
                Err(poisoned) => poisoned.into_inner(),
            };
            let entry = buckets
                .entry(key.id)
                .or_insert_with(|| (rate.get(), Arc::new(new_bucket(rate, burst, &self.clock))));
            // A key whose limit changed gets a fresh bucket at its new size.
            if entry.0 != rate.get() {
                *entry = (rate.get(), Arc::new(new_bucket(rate, burst, &self.clock)));
            }
            Arc::clone(&entry.1)
        };
        let per_token = 1.0 / f64::from(rate.get());
        match bucket.check() {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let missing = burst.get().saturating_sub(remaining);
                Decision {
                    limit: rate.get(),
                    remaining,
                    reset_secs: (f64::from(missing) * per_token).ceil() as u64,
                    retry_after_secs: None,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Decision {
                    limit: rate.get(),
                    remaining: 0,
                    reset_secs: (f64::from(burst.get()) * per_token).ceil() as u64,
                    retry_after_secs: Some(wait.as_secs_f64().ceil().max(1.0) as u64),
                }
            }
        }
    }
}

fn new_bucket(rate: NonZeroU32, burst: NonZeroU32, clock: &DefaultClock) -> Bucket {
    RateLimiter::direct_with_clock(Quota::per_second(rate).allow_burst(burst), clock.clone())
        .with_middleware::<StateInformationMiddleware>()
}

/// Where the auth extractor leaves the decision for [`add_headers`] to render.
#[derive(Clone, Default)]
pub struct DecisionSlot(Arc<Mutex<Option<Decision>>>);

impl DecisionSlot {
    pub fn set(&self, d: Decision) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(d);
        }
    }

    fn get(&self) -> Option<Decision> {
        self.0.lock().ok().and_then(|s| *s)
    }
}

/// Middleware: gives the request a slot, and puts the decision on the response.
pub async fn add_headers(mut request: Request, next: Next) -> Response {
    let slot = DecisionSlot::default();
    request.extensions_mut().insert(slot.clone());
    let mut response = next.run(request).await;
    if let Some(d) = slot.get() {
        let headers = response.headers_mut();
        let mut put = |name: &'static str, value: u64| {
            if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
                headers.insert(HeaderName::from_static(name), v);
            }
        };
        put("ratelimit-limit", u64::from(d.limit));
        put("ratelimit-remaining", u64::from(d.remaining));
        put("ratelimit-reset", d.reset_secs);
        if let Some(after) = d.retry_after_secs {
            put("retry-after", after);
        }
    }
    response
}
