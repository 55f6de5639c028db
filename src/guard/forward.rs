//! Forwarding local publishes upstream: a PUBLISH from a local client that matches a
//! `[[forward]]` rule is committed to the outbox *before* rumqttd sees it, so the PUBACK (or
//! PUBREC) the client gets from rumqttd means "on disk and in the local broker" (issue: a
//! forwarded burst was acknowledged, then lost in rumqttd's in-memory log and in a crash).
//!
//! The guard holds such publishes, in the client's order, until their commit; everything the
//! client sends after them waits in the same queue, so order is kept and packet ids need no
//! bookkeeping (the client cannot reuse an id before its ack, which only exists after the
//! commit). Publishes that arrive in one read share one submit; the outbox commits them as an
//! urgent group. QoS 0 follows the same path; only its loss on a failed commit is counted
//! instead of refused.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::config::BridgeRule;
use crate::flow::Message;
use crate::ops::stats::BrokerCounters;
use crate::outbox::{Outbox, OutboxError, Receipt};

/// Publishes per submit at most: one read of the client's socket rarely holds more.
pub const MAX_BATCH: usize = 512;

/// The `[[forward]]` rules and where matching publishes go.
pub struct Forwarder {
    rules: Vec<BridgeRule>,
    outbox: Outbox,
    counters: Arc<BrokerCounters>,
}

impl Forwarder {
    pub fn new(rules: Vec<BridgeRule>, outbox: Outbox, counters: Arc<BrokerCounters>) -> Self {
        Forwarder {
            rules,
            outbox,
            counters,
        }
    }

    /// The upstream topic of a local topic that a rule forwards (the first matching rule wins).
    pub fn remote_topic(&self, topic: &str) -> Option<String> {
        super::session::remote_topic(&self.rules, topic)
    }

    pub fn rules(&self) -> &[BridgeRule] {
        &self.rules
    }

    pub(super) async fn submit(&self, messages: Vec<Message>) -> Result<Receipt, OutboxError> {
        self.outbox.submit(messages).await
    }

    /// Stores a Last Will that rumqttd publishes locally when a client goes away without
    /// DISCONNECT (it no longer passes through a forwarding subscription).
    pub(super) async fn store_will(&self, message: Message) -> Result<(), OutboxError> {
        self.outbox.append(vec![message]).await?;
        self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub(super) fn counters(&self) -> &BrokerCounters {
        &self.counters
    }
}

/// Publishes of one client read, waiting to be submitted together.
#[derive(Default)]
pub(super) struct Pending {
    pub messages: Vec<Message>,
    /// The PUBLISH frames as the client sent them, relayed to rumqttd after the commit.
    pub frames: Vec<u8>,
    /// Publishes with QoS 1 or 2: the client waits for their ack.
    pub acked: usize,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.messages.len() >= MAX_BATCH
    }
}
