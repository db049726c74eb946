//! The listener manager: which listeners exist, which sockets are bound, and hitless
//! replacement when the configuration changes.
//!
//! A bound socket lives in a `ListenerSlot`; its accept loop reads the slot's current
//! `Listener` for every new connection. Replacing a listener at the same address swaps the
//! slot's pointer (no socket is closed, no connection is refused) and tells the old
//! listener's connections to drain; connections keep the `Listener` they were accepted with.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tracing::info;

use crate::config::address::ListenAddr;
use crate::listener::{self, Listener, ListenerTable};
use crate::server::Shared;

/// A bound listener socket and the listener currently serving it.
#[derive(Debug)]
pub struct ListenerSlot {
    /// The listener new connections are handed to.
    pub current: ArcSwap<Listener>,
    stop: watch::Sender<bool>,
}

impl ListenerSlot {
    /// Stops accepting (the socket closes when the accept loop ends).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }
}

#[derive(Debug)]
struct Active {
    listener: Arc<Listener>,
    /// `None` for `bind_to_port: false` listeners (reached only by original-dst handoff).
    slot: Option<Arc<ListenerSlot>>,
    /// Added by a control plane (for `/config_dump`), not from the bootstrap.
    dynamic: bool,
}

/// Owns every listener of the process.
#[derive(Debug)]
pub struct ListenerManager {
    shared: Arc<Shared>,
    handle: tokio::runtime::Handle,
    active: Mutex<Vec<(Arc<str>, Active)>>,
}

impl ListenerManager {
    /// A manager spawning accept loops on `handle` (the data-plane runtime).
    pub fn new(shared: Arc<Shared>, handle: tokio::runtime::Handle) -> Self {
        ListenerManager {
            shared,
            handle,
            active: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Arc<str>, Active)>> {
        // Each mutation is completed before the lock is released; a panic cannot leave a
        // half-updated list behind.
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `l`, or replaces the listener of the same name. Binds the socket when the address
    /// is new; keeps the socket when only the config changed.
    pub fn upsert(&self, l: Arc<Listener>, dynamic: bool) -> Result<(), String> {
        let mut active = self.lock();
        let existing = active.iter().position(|(n, _)| **n == *l.name);
        // A socket already bound at this address (by this listener's previous version).
        let reuse = existing
            .and_then(|i| {
                let a = &active[i].1;
                (a.listener.addr == l.addr && a.listener.bind_to_port == l.bind_to_port)
                    .then(|| a.slot.clone())
            })
            .flatten();
        if existing.is_none() || reuse.is_none() {
            if let Some((other, _)) = active.iter().find(|(n, a)| {
                **n != *l.name
                    && a.listener.addr == l.addr
                    && l.bind_to_port
                    && a.listener.bind_to_port
            }) {
                return Err(format!(
                    "address {} is already used by listener {other}",
                    l.addr
                ));
            }
        }
        let slot = match reuse {
            Some(slot) => {
                slot.current.store(l.clone());
                Some(slot)
            }
            None if l.bind_to_port => Some(self.bind(&l)?),
            None => None,
        };
        let new = Active {
            listener: l.clone(),
            slot,
            dynamic,
        };
        match existing {
            Some(i) => {
                let old = std::mem::replace(&mut active[i].1, new);
                retire(&old, active[i].1.slot.as_ref());
            }
            None => active.push((l.name.clone(), new)),
        }
        self.publish(&active);
        Ok(())
    }

    /// Removes the listener `name`: its socket closes and its connections drain.
    pub fn remove(&self, name: &str) -> bool {
        let mut active = self.lock();
        let Some(i) = active.iter().position(|(n, _)| **n == *name) else {
            return false;
        };
        let (_, old) = active.remove(i);
        retire(&old, None);
        self.publish(&active);
        true
    }

    /// Stops accepting on the selected listeners (`/drain_listeners`, shutdown).
    pub fn stop_accepting(&self, inbound_only: bool) {
        for (_, a) in self.lock().iter() {
            if !inbound_only || a.listener.inbound {
                if let Some(s) = &a.slot {
                    s.stop();
                }
            }
        }
    }

    /// Stops the selected listeners after `delay` (graceful drain).
    pub fn stop_accepting_after(self: &Arc<Self>, inbound_only: bool, delay: Duration) {
        let me = self.clone();
        self.handle.spawn(async move {
            tokio::time::sleep(delay).await;
            me.stop_accepting(inbound_only);
        });
    }

    /// Names of dynamic listeners (for `/config_dump`).
    pub fn dynamic_names(&self) -> Vec<Arc<str>> {
        self.lock()
            .iter()
            .filter(|(_, a)| a.dynamic)
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn bind(&self, l: &Arc<Listener>) -> Result<Arc<ListenerSlot>, String> {
        let _rt = self.handle.enter();
        let bound = listener::bind(&l.addr).map_err(|e| format!("cannot bind {}: {e}", l.addr))?;
        let (stop, stop_rx) = watch::channel(false);
        let slot = Arc::new(ListenerSlot {
            current: ArcSwap::new(l.clone()),
            stop,
        });
        self.handle.spawn(listener::accept_loop(
            slot.clone(),
            bound,
            self.shared.clone(),
            stop_rx,
        ));
        info!(listener = %l.name, "listening on {}", l.addr);
        Ok(slot)
    }

    fn publish(&self, active: &[(Arc<str>, Active)]) {
        let mut table = ListenerTable::default();
        for (_, a) in active {
            if let ListenAddr::Tcp(addr) = &a.listener.addr {
                table.by_addr.insert(*addr, a.listener.clone());
            }
        }
        self.shared.listeners.store(Arc::new(table));
        self.shared.listener_list.store(Arc::new(
            active.iter().map(|(_, a)| a.listener.clone()).collect(),
        ));
        self.shared
            .stats
            .gauge("listener_manager.total_listeners_active")
            .set(active.len() as i64);
    }
}

/// Retires a replaced or removed listener: its connections drain; its socket closes unless
/// `kept` is the same slot (then the new listener now serves it).
fn retire(old: &Active, kept: Option<&Arc<ListenerSlot>>) {
    old.listener.start_drain();
    if let Some(slot) = &old.slot {
        if !kept.is_some_and(|k| Arc::ptr_eq(k, slot)) {
            slot.stop();
        }
    }
}
