//! A sink that records what the client gives it.
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use super::WAIT;
use crate::ads::{Rejection, Resource, ResourceSink, ResourceUpdate};

/// A [`ResourceSink`](crate::ads::ResourceSink) that records everything it is given and rejects
/// the resources a test chooses.
pub struct RecordingSink {
    state: Mutex<SinkState>,
    events: watch::Sender<u64>,
    #[allow(clippy::type_complexity)]
    reject: Box<dyn Fn(&Resource) -> Option<String> + Send + Sync>,
    #[allow(clippy::type_complexity)]
    on_apply: Mutex<Option<Box<dyn Fn(&AppliedUpdate) + Send + Sync>>>,
}

/// An owned copy of a [`ResourceUpdate`](crate::ads::ResourceUpdate).
#[derive(Clone, Debug, PartialEq)]
pub struct AppliedUpdate {
    /// See [`ResourceUpdate::type_url`](crate::ads::ResourceUpdate::type_url).
    pub type_url: String,
    /// See [`ResourceUpdate::version_info`](crate::ads::ResourceUpdate::version_info).
    pub version_info: String,
    /// See [`ResourceUpdate::resources`](crate::ads::ResourceUpdate::resources).
    pub resources: Vec<Resource>,
    /// See [`ResourceUpdate::removed`](crate::ads::ResourceUpdate::removed).
    pub removed: Vec<String>,
    /// See [`ResourceUpdate::state_of_the_world`](crate::ads::ResourceUpdate::state_of_the_world).
    pub state_of_the_world: bool,
}

#[derive(Default)]
struct SinkState {
    updates: Vec<AppliedUpdate>,
    connection: Vec<bool>,
    fetch_timeouts: Vec<String>,
}

impl RecordingSink {
    /// Accepts everything.
    pub fn new() -> Arc<Self> {
        Self::rejecting(|_| None)
    }

    /// Rejects each resource for which `reject` returns a reason.
    pub fn rejecting(
        reject: impl Fn(&Resource) -> Option<String> + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(RecordingSink {
            state: Mutex::default(),
            events: watch::channel(0).0,
            reject: Box::new(reject),
            on_apply: Mutex::new(None),
        })
    }

    /// Runs `f` inside every `apply` (after recording), e.g. to change subscriptions the
    /// way a listener update changes RDS names.
    pub fn on_apply(&self, f: impl Fn(&AppliedUpdate) + Send + Sync + 'static) {
        *self.on_apply.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(f));
    }

    fn lock(&self) -> MutexGuard<'_, SinkState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every update applied so far.
    pub fn updates(&self) -> Vec<AppliedUpdate> {
        self.lock().updates.clone()
    }

    /// Every connection-state change so far.
    pub fn connection_changes(&self) -> Vec<bool> {
        self.lock().connection.clone()
    }

    /// Type URLs whose initial fetch timed out.
    pub fn fetch_timeouts(&self) -> Vec<String> {
        self.lock().fetch_timeouts.clone()
    }

    /// Waits until an update at index ≥ `from` satisfies `pred`; returns its index and it.
    pub async fn wait_update(
        &self,
        from: usize,
        pred: impl Fn(&AppliedUpdate) -> bool,
    ) -> (usize, AppliedUpdate) {
        let mut events = self.events.subscribe();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some((i, u)) = self
                .lock()
                .updates
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, u)| pred(u))
            {
                return (i, u.clone());
            }
            if tokio::time::timeout_at(deadline, events.changed())
                .await
                .is_err()
            {
                panic!(
                    "no matching update from index {from} within {WAIT:?}; applied:\n{:#?}",
                    self.updates()
                );
            }
        }
    }

    /// Waits until `pred` holds for the sink's recorded state (connection changes, timeouts).
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&RecordingSink) -> bool) {
        let mut events = self.events.subscribe();
        let deadline = tokio::time::Instant::now() + WAIT;
        while !pred(self) {
            if tokio::time::timeout_at(deadline, events.changed())
                .await
                .is_err()
            {
                panic!("timed out waiting for {what}");
            }
        }
    }
}

impl ResourceSink for RecordingSink {
    fn apply(&self, update: ResourceUpdate<'_>) -> Vec<Rejection> {
        let rejections: Vec<_> = update
            .resources
            .iter()
            .filter_map(|r| (self.reject)(r).map(|why| Rejection::new(r.name.clone(), why)))
            .collect();
        let owned = AppliedUpdate {
            type_url: update.type_url.to_string(),
            version_info: update.version_info.to_string(),
            resources: update.resources.to_vec(),
            removed: update.removed.to_vec(),
            state_of_the_world: update.state_of_the_world,
        };
        if let Some(f) = &*self.on_apply.lock().unwrap_or_else(|e| e.into_inner()) {
            f(&owned);
        }
        self.lock().updates.push(owned);
        self.events.send_modify(|n| *n += 1);
        rejections
    }

    fn on_connection_state(&self, connected: bool) {
        self.lock().connection.push(connected);
        self.events.send_modify(|n| *n += 1);
    }

    fn on_initial_fetch_timeout(&self, type_url: &str) {
        self.lock().fetch_timeouts.push(type_url.to_string());
        self.events.send_modify(|n| *n += 1);
    }
}
