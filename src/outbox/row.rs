//! The stored message with its row id: the one shape every reader of the outbox hands out,
//! kept in a leaf so the read-ahead pages and the outbox facade both use it without a cycle.

use crate::flow::Message;

/// A stored message with its row id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub id: i64,
    pub message: Message,
}
