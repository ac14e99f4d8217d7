//! The node's zstd-dict dictionaries, and their rotation.
//!
//! A node starts with the shipped dictionary plus any `--dict` files; those are pinned
//! and served for the node's whole life. It can also retrain: every published event body
//! it compresses for zstd-dict sessions is offered to a bounded sample, and a retrain
//! (every `--dict-retrain`, or on `POST /admin/dictionaries/retrain`) trains a 64 KiB
//! dictionary on that sample, on a blocking thread, and makes it the newest. New
//! sessions that name no dictionary get the newest; connected sessions keep the one
//! they started with, which stays served while any connection holds it and for one
//! resume window after the last one let go (a dropped session may come back asking for
//! it). Only then is a retired, unpinned dictionary pruned.
//!
//! Readers take a cheap snapshot ([`DictStore::current`]); a rotation swaps it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use concord_protocol::zstd_dict::{self, DictId, DictSet, Dictionary};

use crate::session::lock;

/// Bodies kept for retraining: about what trains in a second on one core.
pub const SAMPLE_CAPACITY: usize = 20_000;
/// Fewer sampled bodies than this make a dictionary worse than the shipped one.
pub const MIN_SAMPLES: usize = 1_000;
/// The size retrained dictionaries get (the default `concord dict train --size`).
pub const RETRAIN_SIZE: usize = 64 * 1024;

/// Why a retrain did not happen. Nothing changed; both are transient.
#[derive(Debug, thiserror::Error)]
pub enum RetrainError {
    /// Not enough zstd-dict traffic yet.
    #[error("need at least {MIN_SAMPLES} sampled event bodies to train, have {0}")]
    TooFewSamples(usize),
    /// zstd could not train on the sample (for example, too little variety).
    #[error("training failed: {0}")]
    Training(#[from] zstd_dict::DictError),
}

/// The dictionaries this node serves, their users, and the retraining sample.
#[derive(Debug)]
pub struct DictStore {
    set: RwLock<Arc<DictSet>>,
    pinned: Vec<DictId>,
    /// Unpinned dictionaries no connection holds, since when.
    unused_since: Mutex<HashMap<DictId, Instant>>,
    /// `(t, d)` of recently compressed events.
    sample: Mutex<VecDeque<(String, Bytes)>>,
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(PoisonError::into_inner)
}

impl DictStore {
    /// A store serving `startup` (all pinned), newest last.
    pub fn new(startup: DictSet) -> DictStore {
        let pinned = startup.iter().map(Dictionary::id).collect();
        DictStore {
            set: RwLock::new(Arc::new(startup)),
            pinned,
            unused_since: Mutex::new(HashMap::new()),
            sample: Mutex::new(VecDeque::with_capacity(1024)),
        }
    }

    /// Whether `id` was loaded at startup (public, never retired) rather than retrained.
    pub fn is_pinned(&self, id: DictId) -> bool {
        self.pinned.contains(&id)
    }

    /// The dictionaries served right now, oldest first.
    pub fn current(&self) -> Arc<DictSet> {
        read(&self.set).clone()
    }

    /// Offers one compressed event (its `t` and `d`) to the retraining sample; the
    /// oldest is dropped past [`SAMPLE_CAPACITY`]. Called once per event per dictionary,
    /// not per delivery.
    pub fn sample(&self, t: &str, d: &Bytes) {
        let mut s = lock(&self.sample);
        if s.len() == SAMPLE_CAPACITY {
            s.pop_front();
        }
        s.push_back((t.to_owned(), d.clone()));
    }

    /// Bodies in the sample.
    pub fn sampled(&self) -> usize {
        lock(&self.sample).len()
    }

    /// Makes `dict` the newest: sessions that name no dictionary get it from now on.
    pub fn add(&self, dict: Dictionary) {
        self.update(|set| set.insert(dict));
    }

    /// Swaps in a changed copy of the set, under the write lock, so a retrain and a prune
    /// running at once cannot undo each other.
    fn update(&self, change: impl FnOnce(&mut DictSet)) {
        let mut current = self.set.write().unwrap_or_else(PoisonError::into_inner);
        let mut next = (**current).clone();
        change(&mut next);
        *current = Arc::new(next);
    }

    /// Trains a dictionary on the sample and makes it the newest. Blocking (about a
    /// second for a full sample): run it on a blocking thread.
    pub fn retrain(&self) -> Result<Dictionary, RetrainError> {
        let events: Vec<(String, Bytes)> = lock(&self.sample).iter().cloned().collect();
        if events.len() < MIN_SAMPLES {
            return Err(RetrainError::TooFewSamples(events.len()));
        }
        // Train on what the node compresses: the envelope without `s`.
        let bodies: Vec<Vec<u8>> = events
            .iter()
            .filter_map(|(t, d)| zstd_dict::body_json(0, Some(t), d).ok())
            .collect();
        let dict = zstd_dict::train(&bodies, RETRAIN_SIZE)?;
        self.add(dict.clone());
        Ok(dict)
    }

    /// Removes every unpinned dictionary that is not the newest and that no connection
    /// has held for `grace` (the resume window) as of `now`; returns their ids. A
    /// connection holds a dictionary by holding a clone of it.
    pub fn prune(&self, now: Instant, grace: Duration) -> Vec<DictId> {
        let set = self.current();
        let newest = set.newest().map(Dictionary::id);
        let mut unused = lock(&self.unused_since);
        let mut expired = Vec::new();
        for d in set.iter() {
            let id = d.id();
            // The set's own copy is one holder; any more is a connection.
            let held = d.holders() > 1;
            if self.pinned.contains(&id) || Some(id) == newest || held {
                unused.remove(&id);
                continue;
            }
            let since = *unused.entry(id).or_insert(now);
            if now.saturating_duration_since(since) >= grace {
                expired.push(id);
            }
        }
        if expired.is_empty() {
            return expired;
        }
        drop(set);
        for id in &expired {
            unused.remove(id);
        }
        self.update(|set| {
            for id in &expired {
                set.remove(*id);
            }
        });
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_protocol::corpus::Corpus;

    fn offer(store: &DictStore, n: usize, seed: u64) {
        for e in Corpus::generate(seed, n) {
            store.sample(&e.t, &Bytes::from(e.d));
        }
    }

    #[test]
    fn retraining_needs_a_sample_and_makes_the_newest() {
        let store = DictStore::new([Dictionary::default_shipped()].into_iter().collect());
        let shipped = store.current().newest().unwrap().id();
        assert!(matches!(
            store.retrain(),
            Err(RetrainError::TooFewSamples(0))
        ));
        offer(&store, 3_000, 7);
        let fresh = store.retrain().unwrap();
        assert_ne!(fresh.id(), shipped);
        assert_eq!(store.current().newest().unwrap().id(), fresh.id());
        assert_eq!(store.current().iter().count(), 2);
    }

    #[test]
    fn a_retired_dictionary_lives_while_held_and_for_the_grace_after() {
        let store = DictStore::new([Dictionary::default_shipped()].into_iter().collect());
        offer(&store, 3_000, 1);
        let first = store.retrain().unwrap();
        let held = store.current().find(first.id()).cloned().unwrap();
        drop(first);
        offer(&store, 3_000, 2);
        let second = store.retrain().unwrap().id();
        let grace = Duration::from_secs(60);
        let t0 = Instant::now();
        // Held by a connection: kept however long.
        assert!(store.prune(t0, grace).is_empty());
        assert!(store.prune(t0 + grace * 10, grace).is_empty());
        let id = held.id();
        drop(held);
        // Let go: kept for the grace, then pruned; the shipped one and the newest stay.
        let t1 = t0 + grace * 11;
        assert!(store.prune(t1, grace).is_empty());
        assert!(store.prune(t1 + grace / 2, grace).is_empty());
        assert_eq!(store.prune(t1 + grace, grace), vec![id]);
        let ids: Vec<DictId> = store.current().iter().map(Dictionary::id).collect();
        assert_eq!(ids.len(), 2);
        assert!(!ids.contains(&id));
        assert_eq!(*ids.last().unwrap(), second);
    }
}
