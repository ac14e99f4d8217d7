//! The topic table: sequence counters, bounded logs and local subscribers per topic.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::event::{Event, SharedEvent, Topic, required_intent};

/// Something that can subscribe to topics: in the node, a handle to a live session.
pub trait Subscriber {
    /// A key unique among subscribers, used to unsubscribe in O(1).
    fn key(&self) -> u128;
}

impl<T: Subscriber + ?Sized> Subscriber for Arc<T> {
    fn key(&self) -> u128 {
        (**self).key()
    }
}

/// One topic's state.
#[derive(Debug)]
struct TopicState<S> {
    /// The last sequence number given out (0 before the first event).
    seq: u64,
    /// The newest events, oldest first, at most `log_capacity` of them.
    log: VecDeque<SharedEvent>,
    /// Local subscribers, in a dense vector for fast fan-out.
    subscribers: Vec<S>,
    /// Subscriber key -> index in `subscribers`, built only past [`INDEX_THRESHOLD`]
    /// subscribers: most topics (every user's) have one or two, and a scan is cheaper
    /// than a hash map's memory for each.
    index: Option<HashMap<u128, usize>>,
}

/// How many subscribers a topic has before it keeps a key index.
const INDEX_THRESHOLD: usize = 16;

impl<S> Default for TopicState<S> {
    fn default() -> Self {
        TopicState {
            seq: 0,
            log: VecDeque::new(),
            subscribers: Vec::new(),
            index: None,
        }
    }
}

impl<S: Subscriber> TopicState<S> {
    fn position(&self, key: u128) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(&key).copied(),
            None => self.subscribers.iter().position(|s| s.key() == key),
        }
    }

    fn insert(&mut self, subscriber: S) -> bool {
        let key = subscriber.key();
        if self.position(key).is_some() {
            return false;
        }
        if let Some(index) = &mut self.index {
            index.insert(key, self.subscribers.len());
        }
        self.subscribers.push(subscriber);
        if self.index.is_none() && self.subscribers.len() > INDEX_THRESHOLD {
            let index = self
                .subscribers
                .iter()
                .enumerate()
                .map(|(i, s)| (s.key(), i))
                .collect();
            self.index = Some(index);
        }
        true
    }

    fn remove(&mut self, key: u128) -> bool {
        let Some(i) = self.position(key) else {
            return false;
        };
        self.subscribers.swap_remove(i);
        if let Some(index) = &mut self.index {
            index.remove(&key);
            if let Some(moved) = self.subscribers.get(i) {
                index.insert(moved.key(), i);
            }
        }
        if self.subscribers.is_empty() {
            // Free the vector and the index of a topic nobody listens to any more.
            self.subscribers = Vec::new();
            self.index = None;
        }
        true
    }
}

/// What [`TopicTable::publish`] decided: one shared event and who receives it.
#[derive(Debug)]
pub struct Delivery<'a, S> {
    /// The event, serialised once.
    pub event: SharedEvent,
    /// The local subscribers of its topic, in subscription order.
    pub subscribers: &'a [S],
}

/// Topics with their sequence counters, logs and subscribers.
#[derive(Debug)]
pub struct TopicTable<S> {
    topics: HashMap<Topic, TopicState<S>>,
    log_capacity: usize,
}

impl<S: Subscriber> TopicTable<S> {
    /// A table whose topic logs keep the newest `log_capacity` events each.
    pub fn new(log_capacity: usize) -> Self {
        TopicTable {
            topics: HashMap::new(),
            log_capacity,
        }
    }

    /// Subscribes `subscriber` to `topic`. Returns `false` if it already was.
    pub fn subscribe(&mut self, topic: Topic, subscriber: S) -> bool {
        self.topics.entry(topic).or_default().insert(subscriber)
    }

    /// Unsubscribes the subscriber with `key` from `topic`. Returns whether it was.
    pub fn unsubscribe(&mut self, topic: Topic, key: u128) -> bool {
        self.topics
            .get_mut(&topic)
            .is_some_and(|state| state.remove(key))
    }

    /// The local subscribers of `topic`.
    pub fn subscribers(&self, topic: Topic) -> &[S] {
        self.topics
            .get(&topic)
            .map_or(&[], |s| s.subscribers.as_slice())
    }

    /// Whether `key` is subscribed to `topic`.
    pub fn is_subscribed(&self, topic: Topic, key: u128) -> bool {
        self.topics
            .get(&topic)
            .is_some_and(|s| s.position(key).is_some())
    }

    /// The last sequence number of `topic` (0 if nothing was published).
    pub fn seq(&self, topic: Topic) -> u64 {
        self.topics.get(&topic).map_or(0, |s| s.seq)
    }

    /// Sequences a new event on `topic`, appends it to the topic log, and plans its
    /// delivery to the local subscribers.
    pub fn publish(
        &mut self,
        topic: Topic,
        event_type: &str,
        body: Bytes,
        now: Instant,
    ) -> Delivery<'_, S> {
        let seq = self.seq(topic) + 1;
        self.publish_sequenced(topic, seq, event_type, body, now)
    }

    /// Like [`TopicTable::publish`], for an event another node already sequenced (a
    /// clustered guild's owner): it takes `seq`, normally the topic's last + 1. A gap or
    /// a step back means the owner's sequence moved under this node (a resync); the
    /// table follows the owner, and the node invalidates the guild's sessions.
    pub fn publish_sequenced(
        &mut self,
        topic: Topic,
        seq: u64,
        event_type: &str,
        body: Bytes,
        now: Instant,
    ) -> Delivery<'_, S> {
        let state = self.topics.entry(topic).or_default();
        state.seq = seq;
        let event = Arc::new(Event {
            topic: Some(topic),
            topic_seq: state.seq,
            required_intent: required_intent(topic, event_type),
            event_type: event_type.into(),
            body,
            published_at: now,
            dict_bodies: std::sync::Mutex::new(Vec::new()),
        });
        if self.log_capacity > 0 {
            if state.log.len() == self.log_capacity {
                state.log.pop_front();
            }
            state.log.push_back(Arc::clone(&event));
        }
        Delivery {
            event,
            subscribers: &state.subscribers,
        }
    }

    /// The logged events of `topic` after `after_seq`, oldest first, or `None` if the
    /// log no longer reaches back that far (the caller must then resynchronise).
    pub fn log_since(&self, topic: Topic, after_seq: u64) -> Option<Vec<SharedEvent>> {
        let Some(state) = self.topics.get(&topic) else {
            return (after_seq == 0).then(Vec::new);
        };
        if after_seq >= state.seq {
            return Some(Vec::new());
        }
        let oldest = state.log.front().map_or(state.seq + 1, |e| e.topic_seq);
        if after_seq + 1 < oldest {
            return None;
        }
        Some(
            state
                .log
                .iter()
                .filter(|e| e.topic_seq > after_seq)
                .cloned()
                .collect(),
        )
    }

    /// How many topics the table holds.
    pub fn len(&self) -> usize {
        self.topics.len()
    }

    /// Whether the table holds no topic.
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use concord_protocol::{GuildId, UserId, intents};

    #[derive(Clone, Debug, PartialEq)]
    struct Sub(u128);
    impl Subscriber for Sub {
        fn key(&self) -> u128 {
            self.0
        }
    }

    const G: Topic = Topic::Guild(GuildId(1));

    #[test]
    fn publish_sequences_and_plans_one_shared_event() {
        let now = Instant::now();
        let mut t = TopicTable::new(4);
        assert!(t.subscribe(G, Sub(1)));
        assert!(!t.subscribe(G, Sub(1)));
        t.subscribe(G, Sub(2));
        let d = t.publish(G, "MESSAGE_CREATE", Bytes::from_static(b"{}"), now);
        assert_eq!(d.event.topic_seq, 1);
        assert_eq!(d.subscribers, &[Sub(1), Sub(2)]);
        assert_eq!(d.event.required_intent, Some(intents::GUILD_MESSAGES));
        let d = t.publish(G, "X", Bytes::new(), now);
        assert_eq!(d.event.topic_seq, 2);
        assert_eq!(t.seq(G), 2);
        assert_eq!(t.seq(Topic::User(UserId(1))), 0);
    }

    #[test]
    fn unsubscribe_keeps_the_index_dense() {
        let mut t = TopicTable::new(0);
        for k in 0..5 {
            t.subscribe(G, Sub(k));
        }
        assert!(t.unsubscribe(G, 1));
        assert!(!t.unsubscribe(G, 1));
        assert!(t.unsubscribe(G, 4));
        assert!(t.unsubscribe(G, 0));
        let mut left: Vec<u128> = t.subscribers(G).iter().map(|s| s.0).collect();
        left.sort();
        assert_eq!(left, vec![2, 3]);
        assert!(t.is_subscribed(G, 3) && !t.is_subscribed(G, 0));
        assert!(t.unsubscribe(G, 3) && t.unsubscribe(G, 2));
        assert!(t.subscribers(G).is_empty());
    }

    #[test]
    fn large_topics_switch_to_an_index_and_stay_consistent() {
        let mut t = TopicTable::new(0);
        for k in 0..100 {
            assert!(t.subscribe(G, Sub(k)));
        }
        assert!(!t.subscribe(G, Sub(50)));
        for k in (0..100).step_by(3) {
            assert!(t.unsubscribe(G, k));
        }
        for k in 0..100 {
            assert_eq!(t.is_subscribed(G, k), k % 3 != 0, "{k}");
        }
        let mut keys: Vec<u128> = t.subscribers(G).iter().map(|s| s.0).collect();
        keys.sort();
        assert_eq!(keys, (0..100).filter(|k| k % 3 != 0).collect::<Vec<_>>());
    }

    #[test]
    fn log_is_bounded_and_answers_gap_fills() {
        let now = Instant::now();
        let mut t: TopicTable<Sub> = TopicTable::new(3);
        assert_eq!(t.log_since(G, 0).unwrap().len(), 0);
        for _ in 0..5 {
            t.publish(G, "X", Bytes::new(), now);
        }
        let seqs = |v: Vec<SharedEvent>| v.iter().map(|e| e.topic_seq).collect::<Vec<_>>();
        assert_eq!(seqs(t.log_since(G, 2).unwrap()), vec![3, 4, 5]);
        assert_eq!(seqs(t.log_since(G, 4).unwrap()), vec![5]);
        assert_eq!(seqs(t.log_since(G, 5).unwrap()), Vec::<u64>::new());
        assert!(t.log_since(G, 1).is_none(), "seq 2 fell out of the log");
    }
}
