//! The dispatcher: per process, one loop that fans new events out into deliveries and one
//! that works through due deliveries under leases.
//!
//! Concurrency is bounded per endpoint (default 16 requests in flight) and overall (default
//! 512 attempts, each counted until its outcome is recorded): a slow or dead endpoint uses
//! at most its own slots, and claims skip endpoints whose slots are full, so healthy
//! endpoints keep being served at full speed. Leases make a delivery
//! one worker's at a time; a worker that dies leaves leases that run out, and the work
//! comes back.
//!
//! Claims run ahead of the slots: an endpoint may hold as many claimed deliveries waiting
//! as it has slots, and a slot that frees starts the next waiting one at once. Without
//! that, every slot waited for a claim (a store round trip, several on PostgreSQL) between
//! two requests, which bounded one endpoint at about `per_endpoint / (claim + request)`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::Rng;
use tidings_domain::ids::WebhookId;
use tidings_domain::webhook::RetrySchedule;
use tidings_store::{ClaimRequest, ClaimedDelivery, Clock, Store};
use tokio::sync::{Notify, watch};

use crate::{WebhookClient, record_attempt, send_attempt};

#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    pub schedule: RetrySchedule,
    /// Attempts in flight per endpoint.
    pub per_endpoint: usize,
    /// Attempts in flight in this process, counted until their outcome is recorded.
    pub max_in_flight: usize,
    /// How long a claimed delivery stays this worker's (longer than an attempt can take).
    pub lease: Duration,
    /// Longest sleep between looks at the store when nothing wakes the dispatcher.
    pub poll: Duration,
    /// Events read per fan-out pass.
    pub fanout_batch: usize,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            schedule: RetrySchedule::default(),
            per_endpoint: 16,
            max_in_flight: 512,
            lease: Duration::from_secs(60),
            poll: Duration::from_secs(1),
            fanout_batch: 1_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claimed {
    None,
    Some,
    Full,
}

/// In-flight attempts per webhook, shared with the attempt tasks. `D` is a claimed
/// delivery (generic only so that tests can use plain numbers).
struct InFlight<D = ClaimedDelivery> {
    /// Requests waiting for each endpoint's answer.
    per_webhook: HashMap<WebhookId, usize>,
    /// Claimed deliveries waiting for a free slot of their endpoint, oldest first, with
    /// when they were claimed.
    waiting: HashMap<WebhookId, VecDeque<(Instant, D)>>,
    /// Attempts claimed (waiting or started) and not yet recorded, all endpoints.
    total: usize,
}

impl<D> Default for InFlight<D> {
    fn default() -> Self {
        Self {
            per_webhook: HashMap::new(),
            waiting: HashMap::new(),
            total: 0,
        }
    }
}

impl<D> InFlight<D> {
    /// Deliveries of `webhook` this worker holds: in flight or waiting.
    fn held(&self, webhook: &WebhookId) -> usize {
        self.per_webhook.get(webhook).copied().unwrap_or(0)
            + self.waiting.get(webhook).map_or(0, VecDeque::len)
    }

    /// Lets every waiting delivery of `webhook` go: their leases run out, and claims take
    /// them again (if the webhook is still active then).
    fn let_go(&mut self, webhook: WebhookId) {
        if let Some(queue) = self.waiting.remove(&webhook) {
            self.total = self.total.saturating_sub(queue.len());
        }
    }

    /// The next waiting delivery of `webhook`, now counted as in flight. Those that waited
    /// longer than `max_wait` are let go on the way: their leases run out, and they are
    /// claimed again.
    fn start_next(&mut self, webhook: WebhookId, max_wait: Duration) -> Option<D> {
        let queue = self.waiting.get_mut(&webhook)?;
        let mut next = None;
        let mut let_go = 0;
        while let Some((claimed_at, delivery)) = queue.pop_front() {
            if claimed_at.elapsed() <= max_wait {
                next = Some(delivery);
                break;
            }
            let_go += 1;
        }
        if queue.is_empty() {
            self.waiting.remove(&webhook);
        }
        self.total = self.total.saturating_sub(let_go);
        if next.is_some() {
            *self.per_webhook.entry(webhook).or_default() += 1;
        }
        next
    }
}

/// What an attempt task needs, shared by all of them.
struct AttemptContext {
    store: Arc<dyn Store>,
    client: WebhookClient,
    clock: Arc<dyn Clock>,
    schedule: RetrySchedule,
    owner: String,
    /// Longest a claimed delivery waits for a slot before it is let go (its lease runs
    /// out and it is claimed again): half the lease, so a delivery started in time is
    /// recorded well before another worker could take it over.
    max_wait: Duration,
    in_flight: Mutex<InFlight>,
    /// Wakes the claim loop: a slot or a place in the overall count is free.
    wake: Arc<Notify>,
}

impl AttemptContext {
    /// The shared counts. A panic elsewhere while they were held leaves them as they were;
    /// they are counts, still worth using.
    fn state(&self) -> MutexGuard<'_, InFlight> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Attempts `delivery` on a task of its own and records the outcome. When the endpoint
/// has answered, its slot goes to the endpoint's next waiting delivery, if any.
fn spawn_attempt(attempts: Arc<AttemptContext>, delivery: ClaimedDelivery) {
    tokio::spawn(async move {
        let (id, webhook) = (delivery.id, delivery.webhook_id);
        let sent = send_attempt(&attempts.client, attempts.clock.as_ref(), &delivery).await;
        let next = {
            let mut state = attempts.state();
            if let Some(n) = state.per_webhook.get_mut(&webhook) {
                *n -= 1;
                if *n == 0 {
                    state.per_webhook.remove(&webhook);
                }
            }
            if sent.attempt.endpoint_gone() {
                // The webhook is being disabled: nothing more goes to it. Claims skip it
                // once that is recorded; what waits for it here is let go now.
                state.let_go(webhook);
                None
            } else {
                state.start_next(webhook, attempts.max_wait)
            }
        };
        if let Some(next) = next {
            spawn_attempt(Arc::clone(&attempts), next);
        }
        // The claim loop tops the endpoint's waiting deliveries up again.
        attempts.wake.notify_one();
        // The lease keeps this delivery ours until the attempt is recorded.
        let recorded = record_attempt(
            attempts.store.as_ref(),
            attempts.clock.as_ref(),
            &attempts.schedule,
            &attempts.owner,
            delivery,
            sent,
        )
        .await;
        // The process-wide count covers attempts until they are recorded: when the writer
        // falls behind, claims slow down instead of queueing reports without bound (and
        // outliving their leases).
        {
            let mut state = attempts.state();
            state.total = state.total.saturating_sub(1);
        }
        attempts.wake.notify_one();
        if let Err(e) = recorded {
            // The lease runs out and the delivery is attempted again.
            tracing::error!(delivery = %id, error = %e, "recording an attempt failed");
        }
    });
}

pub struct Dispatcher {
    store: Arc<dyn Store>,
    client: WebhookClient,
    clock: Arc<dyn Clock>,
    config: DispatcherConfig,
    wake: Arc<Notify>,
    owner: String,
}

impl Dispatcher {
    pub fn new(
        store: Arc<dyn Store>,
        client: WebhookClient,
        clock: Arc<dyn Clock>,
        config: DispatcherConfig,
        wake: Arc<Notify>,
    ) -> Self {
        let owner = format!("{}-{:08x}", std::process::id(), rand::rng().random::<u32>());
        Self {
            store,
            client,
            clock,
            config,
            wake,
            owner,
        }
    }

    /// Runs until `stop` turns true. In-flight attempts finish on their own tasks.
    ///
    /// Two loops: fan-out (new events into deliveries, a write) and claims (due deliveries
    /// into attempts). They run side by side so that claiming never waits for a fan-out
    /// pass to get through the writer queue: when claims waited, one endpoint's rate was
    /// bounded by the writer's commit cycle. Wake-ups from outside (events ingested,
    /// retries, webhook changes) reach the fan-out loop, which wakes the claim loop after
    /// each pass; a finished attempt wakes the claim loop directly.
    pub async fn run(self, stop: watch::Receiver<bool>) {
        tracing::info!(owner = %self.owner, "webhook dispatcher started");
        let claims_wake = Arc::new(Notify::new());
        tokio::join!(
            self.fan_out_loop(stop.clone(), Arc::clone(&claims_wake)),
            self.claim_loop(stop, claims_wake),
        );
        tracing::info!("webhook dispatcher stopped");
    }

    async fn fan_out_loop(&self, mut stop: watch::Receiver<bool>, claims_wake: Arc<Notify>) {
        while !*stop.borrow() {
            self.fan_out_all().await;
            claims_wake.notify_one();
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.config.poll) => {}
                _ = stop.changed() => {}
            }
        }
    }

    async fn claim_loop(&self, mut stop: watch::Receiver<bool>, wake: Arc<Notify>) {
        let attempts = Arc::new(AttemptContext {
            store: Arc::clone(&self.store),
            client: self.client.clone(),
            clock: Arc::clone(&self.clock),
            schedule: self.config.schedule.clone(),
            owner: self.owner.clone(),
            max_wait: self.config.lease / 2,
            in_flight: Mutex::default(),
            wake: Arc::clone(&wake),
        });
        while !*stop.borrow() {
            let claimed = self.claim_and_start(&attempts).await;
            if claimed == Claimed::Full {
                // More may be due right now; go round again without sleeping.
                tokio::task::yield_now().await;
                continue;
            }
            // With nothing claimable now, due work waits for a free slot (which wakes us)
            // or for the poll; otherwise sleep until the next delivery is due.
            let sleep = match claimed {
                Claimed::None => self.config.poll,
                _ => self.until_next_due().await,
            };
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
                _ = stop.changed() => {}
            }
        }
    }

    async fn fan_out_all(&self) {
        // Bounded: a huge backlog is worked through across iterations of the main loop.
        for _ in 0..100 {
            match self.store.fan_out(self.config.fanout_batch).await {
                Ok(r) if r.events_scanned == self.config.fanout_batch => continue,
                Ok(_) => return,
                Err(e) => {
                    tracing::error!(error = %e, "fan-out failed");
                    return;
                }
            }
        }
    }

    /// Claims what fits: each endpoint up to its free slots, which start at once, and as
    /// many again to wait for a slot.
    async fn claim_and_start(&self, attempts: &Arc<AttemptContext>) -> Claimed {
        let (free, busy) = {
            let state = attempts.state();
            let mut webhooks: Vec<WebhookId> = state.per_webhook.keys().copied().collect();
            webhooks.extend(
                state
                    .waiting
                    .keys()
                    .filter(|w| !state.per_webhook.contains_key(w)),
            );
            let busy: Vec<(WebhookId, usize)> =
                webhooks.into_iter().map(|w| (w, state.held(&w))).collect();
            (self.config.max_in_flight.saturating_sub(state.total), busy)
        };
        if free == 0 {
            return Claimed::None;
        }
        let limit = free.min(256);
        let claim = ClaimRequest {
            owner: self.owner.clone(),
            lease: self.config.lease,
            limit,
            per_webhook: self.config.per_endpoint.saturating_mul(2),
            busy,
        };
        let claimed = match self.store.claim_deliveries(claim).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "claiming deliveries failed");
                return Claimed::None;
            }
        };
        let result = match claimed.len() {
            0 => Claimed::None,
            n if n == limit => Claimed::Full,
            _ => Claimed::Some,
        };
        let start: Vec<ClaimedDelivery> = {
            let mut state = attempts.state();
            let now = Instant::now();
            claimed
                .into_iter()
                .filter_map(|delivery| {
                    let webhook = delivery.webhook_id;
                    state.total += 1;
                    let sending = state.per_webhook.entry(webhook).or_default();
                    if *sending < self.config.per_endpoint {
                        *sending += 1;
                        Some(delivery)
                    } else {
                        state
                            .waiting
                            .entry(webhook)
                            .or_default()
                            .push_back((now, delivery));
                        None
                    }
                })
                .collect()
        };
        for delivery in start {
            spawn_attempt(Arc::clone(attempts), delivery);
        }
        result
    }

    async fn until_next_due(&self) -> Duration {
        match self.store.next_delivery_due().await {
            Ok(Some(due)) => (due - self.clock.now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .clamp(Duration::from_millis(2), self.config.poll),
            Ok(None) => self.config.poll,
            Err(e) => {
                tracing::error!(error = %e, "reading the next due delivery failed");
                self.config.poll
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook(n: u64) -> WebhookId {
        WebhookId::new(26, n)
    }

    /// Claimed `ago` before now.
    fn claimed(ago: Duration) -> Instant {
        Instant::now()
            .checked_sub(ago)
            .expect("the clock is past the test's offsets")
    }

    #[test]
    fn a_freed_slot_takes_the_next_waiting_delivery_of_its_endpoint() {
        let mut state: InFlight<u32> = InFlight::default();
        let (a, b) = (webhook(1), webhook(2));
        state.per_webhook.insert(a, 1);
        state.waiting.insert(
            a,
            VecDeque::from([(claimed(Duration::ZERO), 1), (claimed(Duration::ZERO), 2)]),
        );
        state.total = 3;
        assert_eq!(state.held(&a), 3);
        assert_eq!(state.held(&b), 0);
        assert_eq!(state.start_next(b, Duration::from_secs(30)), None);
        assert_eq!(state.start_next(a, Duration::from_secs(30)), Some(1));
        assert_eq!(state.per_webhook[&a], 2, "now in flight");
        assert_eq!(state.start_next(a, Duration::from_secs(30)), Some(2));
        assert!(!state.waiting.contains_key(&a));
        assert_eq!(state.start_next(a, Duration::from_secs(30)), None);
        assert_eq!(state.total, 3, "still held until recorded");
    }

    #[test]
    fn deliveries_that_waited_too_long_are_let_go() {
        let mut state: InFlight<u32> = InFlight::default();
        let a = webhook(1);
        state.waiting.insert(
            a,
            VecDeque::from([
                (claimed(Duration::from_secs(40)), 1),
                (claimed(Duration::from_secs(31)), 2),
                (claimed(Duration::from_secs(1)), 3),
                (claimed(Duration::from_secs(40)), 4),
            ]),
        );
        state.total = 4;
        // The two stale ones in front are let go (another claim takes them once their
        // leases run out); the fresh one starts; the stale one behind it waits its turn.
        assert_eq!(state.start_next(a, Duration::from_secs(30)), Some(3));
        assert_eq!(state.total, 2);
        assert_eq!(state.per_webhook[&a], 1);
        assert_eq!(state.held(&a), 2);
        assert_eq!(state.start_next(a, Duration::from_secs(30)), None);
        assert_eq!(state.total, 1);
        assert_eq!(state.held(&a), 1, "only the one in flight");
        assert!(!state.waiting.contains_key(&a));
    }

    #[test]
    fn an_endpoint_that_is_gone_lets_its_waiting_deliveries_go() {
        let mut state: InFlight<u32> = InFlight::default();
        let (a, b) = (webhook(1), webhook(2));
        for w in [a, b] {
            state.waiting.insert(
                w,
                VecDeque::from([(claimed(Duration::ZERO), 1), (claimed(Duration::ZERO), 2)]),
            );
        }
        state.total = 4;
        state.let_go(a);
        assert_eq!((state.held(&a), state.held(&b), state.total), (0, 2, 2));
        assert_eq!(state.start_next(a, Duration::from_secs(30)), None);
    }
}
