//! The dispatcher: per process, one loop that fans new events out into deliveries and one
//! that works through due deliveries under leases.
//!
//! Concurrency is bounded per endpoint (default 16 requests in flight) and overall (default
//! 512 attempts, each counted until its outcome is recorded): a slow or dead endpoint uses
//! at most its own slots, and claims skip endpoints whose slots are full, so healthy
//! endpoints keep being served at full speed. Leases make a delivery
//! one worker's at a time; a worker that dies leaves leases that run out, and the work
//! comes back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tidings_domain::ids::WebhookId;
use tidings_domain::webhook::RetrySchedule;
use tidings_store::{ClaimRequest, Clock, Store};
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

/// In-flight attempts per webhook, shared with the attempt tasks.
#[derive(Default)]
struct InFlight {
    /// Requests waiting for each endpoint's answer.
    per_webhook: HashMap<WebhookId, usize>,
    /// Attempts started and not yet recorded, all endpoints.
    total: usize,
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
        let in_flight: Arc<Mutex<InFlight>> = Arc::default();
        while !*stop.borrow() {
            let claimed = self.claim_and_start(&in_flight, &wake).await;
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

    /// Claims what fits and starts an attempt task for each.
    async fn claim_and_start(
        &self,
        in_flight: &Arc<Mutex<InFlight>>,
        wake: &Arc<Notify>,
    ) -> Claimed {
        let (free, busy) = {
            let Ok(state) = in_flight.lock() else {
                return Claimed::None;
            };
            let busy: Vec<(WebhookId, usize)> =
                state.per_webhook.iter().map(|(w, n)| (*w, *n)).collect();
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
            per_webhook: self.config.per_endpoint,
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
        for delivery in claimed {
            let webhook = delivery.webhook_id;
            if let Ok(mut state) = in_flight.lock() {
                *state.per_webhook.entry(webhook).or_default() += 1;
                state.total += 1;
            }
            let (store, client, clock) = (
                Arc::clone(&self.store),
                self.client.clone(),
                Arc::clone(&self.clock),
            );
            let (schedule, owner) = (self.config.schedule.clone(), self.owner.clone());
            let (in_flight, wake) = (Arc::clone(in_flight), Arc::clone(wake));
            tokio::spawn(async move {
                let id = delivery.id;
                let sent = send_attempt(&client, clock.as_ref(), &delivery).await;
                // The endpoint has answered: its slot is free for the next request. The
                // lease keeps this delivery ours until the attempt is recorded.
                if let Ok(mut state) = in_flight.lock()
                    && let Some(n) = state.per_webhook.get_mut(&webhook)
                {
                    *n -= 1;
                    if *n == 0 {
                        state.per_webhook.remove(&webhook);
                    }
                }
                wake.notify_one();
                let recorded = record_attempt(
                    store.as_ref(),
                    clock.as_ref(),
                    &schedule,
                    &owner,
                    delivery,
                    sent,
                )
                .await;
                // The process-wide count covers attempts until they are recorded: when the
                // writer falls behind, claims slow down instead of queueing reports without
                // bound (and outliving their leases).
                if let Ok(mut state) = in_flight.lock() {
                    state.total = state.total.saturating_sub(1);
                }
                wake.notify_one();
                if let Err(e) = recorded {
                    // The lease runs out and the delivery is attempted again.
                    tracing::error!(delivery = %id, error = %e, "recording an attempt failed");
                }
            });
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
