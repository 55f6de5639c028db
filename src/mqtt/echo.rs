//! Loop prevention between the local broker and upstream (pure).
//!
//! Neither rumqttd's in-process link nor MQTT 3.1.1 has "no local": a subscriber receives its own
//! publishes. Wherever fieldbridge both publishes into a broker and subscribes there (forward
//! filters locally, subscribe filters upstream), it records what it published that its own
//! filters will bring back, and drops exactly one matching copy when it arrives. A copy that
//! never comes back is evicted when the table is full; the worst case is then one duplicate
//! delivery, never a loop, because every hop checks its own table.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

#[derive(Debug)]
pub struct Echoes {
    pending: HashMap<u64, u32>,
    order: VecDeque<u64>,
    cap: usize,
}

fn key(topic: &[u8], payload: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    topic.hash(&mut h);
    payload.hash(&mut h);
    h.finish()
}

impl Echoes {
    pub fn new(cap: usize) -> Self {
        Echoes {
            pending: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// We are about to publish this and will receive it back once.
    pub fn record(&mut self, topic: &[u8], payload: &[u8]) {
        let k = key(topic, payload);
        *self.pending.entry(k).or_default() += 1;
        self.order.push_back(k);
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.forget(old);
            }
        }
    }

    /// True (and consumed) if this is the copy of something we published.
    pub fn take(&mut self, topic: &[u8], payload: &[u8]) -> bool {
        let k = key(topic, payload);
        if !self.pending.contains_key(&k) {
            return false;
        }
        self.forget(k);
        if let Some(pos) = self.order.iter().position(|o| *o == k) {
            self.order.remove(pos);
        }
        true
    }

    fn forget(&mut self, k: u64) {
        if let Some(n) = self.pending.get_mut(&k) {
            *n -= 1;
            if *n == 0 {
                self.pending.remove(&k);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_expected_copy_is_dropped_exactly_once() {
        let mut e = Echoes::new(10);
        e.record(b"t", b"1");
        e.record(b"t", b"1");
        assert!(!e.take(b"t", b"2"), "a different payload is not an echo");
        assert!(!e.take(b"u", b"1"), "a different topic is not an echo");
        assert!(e.take(b"t", b"1"));
        assert!(e.take(b"t", b"1"));
        assert!(!e.take(b"t", b"1"), "a third copy came from someone else");
        assert!(e.is_empty());
    }

    #[test]
    fn a_full_table_forgets_the_oldest_expectation() {
        let mut e = Echoes::new(2);
        e.record(b"a", b"");
        e.record(b"b", b"");
        e.record(b"c", b"");
        assert_eq!(e.len(), 2);
        assert!(!e.take(b"a", b""));
        assert!(e.take(b"b", b""));
        assert!(e.take(b"c", b""));
    }
}
