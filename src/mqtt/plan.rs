//! The uplink's send plan (pure): which outbox rows to read next, and what to wait for, so that
//! `uplink` only moves data between this plan, the outbox and the MQTT client.
//!
//! Why it exists: the order of sending after a reconnect is policy, and policy should be readable
//! and tested without a broker. Rows stored before the connection came up (ids ≤ `replay_end`)
//! are the backlog; rows committed after it are live. While a backlog remains, live rows may take
//! at most half of the free in-flight window each round and the backlog takes the rest, so a
//! dashboard sees current values within one round trip even while hours of backlog drain. Each
//! stream is in id order; between the two, consumers order by the payload's `ts`. The optional
//! `upstream.replay_rate` (messages/s, a token bucket with one second of burst) limits the
//! backlog only. The backlog is done when a page comes back shorter than asked.
//!
//! Invariants: a stream's cursor only moves forward, to the last id actually read (or, for the
//! live stream, to the newest id asked for when nothing is left: those rows were acked or dropped
//! meanwhile). After `stop`, nothing more is fetched; the session ends when no row is in flight or
//! the grace deadline passes. The plan does not know packet ids (`outbox::inflight` does) and
//! never touches the outbox, the clock or the network: the caller passes ids, counts and `now`.

use std::time::{Duration, Instant};

/// How many rows each stream may send this round.
pub fn quotas(room: usize, live_pending: bool, backlog_pending: bool) -> (usize, usize) {
    match (live_pending, backlog_pending) {
        (_, false) => (room, 0),
        (false, true) => (0, room),
        (true, true) => {
            let live = room.div_ceil(2);
            (live, room - live)
        }
    }
}

/// From this many publishes in flight, the uplink reads acknowledgements every `PACE` instead of
/// waking for each one that arrives.
///
/// Why: during a drain the broker returns PUBACKs a few at a time, and a wake-up for each small
/// batch (a sleep in `epoll_wait`, a task switch, a write of two or three publishes) was a large
/// share of the gateway's CPU: one wake-up per 2.2 messages, a fifth of its profile in the
/// scheduler. With this many in flight the broker still has several milliseconds of work
/// queued when we look, so pacing does not starve it, and each turn then refills the window
/// with one write. Below it (a window a broker capped at 100, or a drain's tail) every arrival
/// is read at once, because waiting would leave the broker idle.
pub const PACED_DEPTH: usize = 256;
/// How often a paced uplink reads (tokio's timer resolution: one millisecond).
pub const PACE: Duration = Duration::from_millis(1);

/// How long the uplink waits before reading what has arrived, or `None` to read each arrival
/// at once. Never paced while stopping: the grace period is spent on acknowledgements. Not
/// paced either after a paced read that found nothing (`heard_nothing`): a broker that has
/// stopped answering would otherwise wake the uplink every `PACE` until the keep-alive ping
/// gives up on it; waiting on the socket costs nothing, and the next arrival resumes the pace.
pub fn read_pace(in_flight: usize, stopping: bool, heard_nothing: bool) -> Option<Duration> {
    (in_flight >= PACED_DEPTH && !stopping && !heard_nothing).then_some(PACE)
}

/// Which of the two id ranges a fetch reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Rows committed after the connection came up.
    Live,
    /// Rows stored before the connection came up (ids ≤ `replay_end`).
    Backlog,
}

/// One page to read from the outbox: rows with `after < id ≤ upto`, oldest first, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetch {
    pub stream: Stream,
    pub after: i64,
    pub upto: i64,
    pub max: usize,
}

/// What the uplink waits for between rounds (besides the MQTT event loop, always polled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    /// Wake up when the outbox commits a newer row: nothing live is pending and there is room.
    pub newer_rows: bool,
    /// Wake up after this long: the replay rate holds the backlog back. `None` while the bucket
    /// has a token or the rate is unlimited: a timer armed on every turn of a fast drain costs
    /// a timer-wheel registration per message, and the loop's tick covers the rest.
    pub replay_token: Option<Duration>,
    /// Stopping: end the session at this instant even with rows still unacknowledged.
    pub deadline: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Live,
    Backlog,
    Over,
}

/// The send state of one connection.
#[derive(Debug)]
pub struct SendPlan {
    window: usize,
    replay_end: i64,
    backlog_sent: i64,
    backlog_done: bool,
    live_sent: i64,
    bucket: Bucket,
    /// Where the current round is: live first, then the backlog, then wait.
    phase: Phase,
    /// The newest committed row id of this round, as `next_fetch` was told it. `wait` asks to be
    /// woken for anything newer, so a commit during the round is announced, not missed.
    seen: i64,
    /// The outbox's "newest row" channel is closed: do not wait on it.
    latest_closed: bool,
    /// Set by `stop`: the end of the grace period.
    deadline: Option<Instant>,
}

impl SendPlan {
    /// `window`: publishes allowed in flight; `replay_end`: the newest row id when the connection
    /// came up; `replay_rate`: backlog messages per second, `None` for unlimited.
    pub fn new(window: usize, replay_end: i64, replay_rate: Option<f64>, now: Instant) -> Self {
        SendPlan {
            window,
            replay_end,
            backlog_sent: 0,
            backlog_done: replay_end == 0,
            live_sent: replay_end,
            bucket: Bucket::new(replay_rate, now),
            phase: Phase::Live,
            seen: replay_end,
            latest_closed: false,
            deadline: None,
        }
    }

    /// The next page to read in this round, or `None` when the round is over (then `wait`).
    /// `in_flight` counts every publish requested and not yet acknowledged (control messages
    /// too); `newest` is the newest committed row id, read once at the start of the round (the
    /// caller marks it seen on the channel that announces newer ones).
    pub fn next_fetch(&mut self, in_flight: usize, newest: i64, now: Instant) -> Option<Fetch> {
        self.seen = self.seen.max(newest);
        if self.deadline.is_some() || in_flight >= self.window {
            self.phase = Phase::Over;
            return None;
        }
        let room = self.window - in_flight;
        if self.phase == Phase::Live {
            self.phase = Phase::Backlog;
            let live_pending = newest > self.live_sent;
            let (live_cap, _) = quotas(room, live_pending, !self.backlog_done);
            if live_cap > 0 && live_pending {
                return Some(Fetch {
                    stream: Stream::Live,
                    after: self.live_sent,
                    upto: newest,
                    max: live_cap,
                });
            }
        }
        if self.phase == Phase::Backlog {
            self.phase = Phase::Over;
            if self.backlog_done {
                return None;
            }
            // The live rows just read are in flight now: `room` already excludes them.
            let max = room.min(self.bucket.available(now));
            if max > 0 {
                return Some(Fetch {
                    stream: Stream::Backlog,
                    after: self.backlog_sent,
                    upto: self.replay_end,
                    max,
                });
            }
        }
        None
    }

    /// `fetch` returned `rows` rows, the last with id `last_id`; the caller sends them all.
    /// Returns true when this read finished the backlog.
    pub fn fetched(&mut self, fetch: &Fetch, rows: usize, last_id: Option<i64>) -> bool {
        match fetch.stream {
            Stream::Live => {
                // Empty: everything up to `upto` was acked or dropped meanwhile.
                self.live_sent = last_id.unwrap_or(fetch.upto);
                false
            }
            Stream::Backlog => {
                let done = rows < fetch.max;
                self.backlog_done |= done;
                self.backlog_sent = last_id.unwrap_or(self.backlog_sent);
                self.bucket.take(rows);
                done
            }
        }
    }

    /// Ends the round: what to wait for, given what is in flight. Newer rows are waited for when
    /// the round sent every live row it saw: ids committed since are announced to the caller.
    pub fn wait(&mut self, in_flight: usize) -> Wait {
        self.phase = Phase::Live;
        let room = self.deadline.is_none() && in_flight < self.window;
        let replay_held = room && !self.backlog_done;
        Wait {
            newer_rows: room && !self.latest_closed && self.seen <= self.live_sent,
            replay_token: if replay_held {
                self.bucket.next_token()
            } else {
                None
            },
            deadline: self.deadline,
        }
    }

    /// The outbox will announce no newer rows (it is shutting down).
    pub fn latest_closed(&mut self) {
        self.latest_closed = true;
    }

    /// Stop was asked: fetch nothing more, and give what is in flight `grace` to be acknowledged.
    pub fn stop(&mut self, now: Instant, grace: Duration) {
        if self.deadline.is_none() {
            self.deadline = Some(now + grace);
        }
    }

    /// The end of the grace period, once stopping.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn stopping(&self) -> bool {
        self.deadline.is_some()
    }

    /// The session can end: stopping, and no outbox row is waiting for its acknowledgement.
    pub fn finished(&self, rows_in_flight: usize) -> bool {
        self.stopping() && rows_in_flight == 0
    }
}

/// A token bucket; `None` rate means unlimited.
#[derive(Debug)]
pub struct Bucket {
    rate: Option<f64>,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(rate: Option<f64>, now: Instant) -> Self {
        Bucket {
            rate,
            tokens: rate.unwrap_or(0.0),
            last: now,
        }
    }

    /// Whole tokens available now.
    pub fn available(&mut self, now: Instant) -> usize {
        let Some(rate) = self.rate else {
            return usize::MAX;
        };
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * rate).min(rate.max(1.0));
        self.tokens.floor() as usize
    }

    pub fn take(&mut self, n: usize) {
        if self.rate.is_some() {
            self.tokens -= n as f64;
        }
    }

    /// When the next token is due, if the bucket is empty.
    pub fn next_token(&self) -> Option<Duration> {
        let rate = self.rate?;
        if self.tokens >= 1.0 {
            return None;
        }
        Some(Duration::from_secs_f64((1.0 - self.tokens) / rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeSet, VecDeque};

    /// What happens to the plan, in order.
    #[derive(Debug, Clone, Copy)]
    enum Ev {
        /// Rows up to this id are committed (one row per id).
        Commit(i64),
        /// Rows up to this id are gone from the outbox (acked in an earlier session, or dropped).
        Vanish(i64),
        /// The clock, in ms since the connection came up.
        At(u64),
        /// One turn of the uplink loop: fetch what the plan asks for (sending it all), then wait.
        Round,
        /// A `Round` while whose writes rows up to this id are committed: after its fetches,
        /// before its wait.
        CommitMidRound(i64),
        /// The oldest `n` publishes in flight are acknowledged.
        Ack(usize),
        /// A control message (the gateway status) is published.
        Control,
        /// The outbox stops announcing rows.
        Closed,
        /// Stop asked, with this grace in ms.
        Stop(u64),
    }

    /// What the plan said.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Out {
        /// stream, after, upto, max → rows the outbox returned
        Fetch(Stream, i64, i64, usize, usize),
        /// newer rows, replay token (ms), deadline (ms)
        Wait(bool, Option<u64>, Option<u64>),
        /// `finished` turned true
        Finished,
    }
    use Ev::*;
    use Out::*;
    use Stream::{Backlog as B, Live as L};

    const IDLE: Out = Wait(true, None, None);
    const BUSY: Out = Wait(false, None, None);

    /// Runs `events` against a plan whose connection came up with rows `1..=stored` committed.
    fn run(window: usize, stored: i64, rate: Option<f64>, events: &[Ev]) -> Vec<Out> {
        let t0 = Instant::now();
        let mut now = t0;
        let mut rows: BTreeSet<i64> = (1..=stored).collect();
        let mut newest = stored;
        let mut flight: VecDeque<Option<i64>> = VecDeque::new();
        let mut plan = SendPlan::new(window, stored, rate, t0);
        let ms = |i: Instant| i.duration_since(t0).as_millis() as u64;
        let mut out = Vec::new();
        for ev in events {
            match *ev {
                Commit(n) => {
                    rows.extend(newest + 1..=n);
                    newest = newest.max(n);
                }
                Vanish(n) => rows.retain(|id| *id > n),
                At(t) => now = t0 + Duration::from_millis(t),
                Round | CommitMidRound(_) => {
                    while let Some(f) = plan.next_fetch(flight.len(), newest, now) {
                        let page: Vec<i64> = rows
                            .iter()
                            .filter(|id| (f.after + 1..=f.upto).contains(*id))
                            .take(f.max)
                            .copied()
                            .collect();
                        plan.fetched(&f, page.len(), page.last().copied());
                        flight.extend(page.iter().map(|id| Some(*id)));
                        out.push(Fetch(f.stream, f.after, f.upto, f.max, page.len()));
                    }
                    if let CommitMidRound(n) = *ev {
                        rows.extend(newest + 1..=n);
                        newest = newest.max(n);
                    }
                    let w = plan.wait(flight.len());
                    let token = w.replay_token.map(|d| d.as_millis() as u64);
                    out.push(Wait(w.newer_rows, token, w.deadline.map(ms)));
                }
                Ack(n) => {
                    for id in flight.drain(..n).flatten() {
                        rows.remove(&id);
                    }
                    let in_flight = flight.iter().flatten().count();
                    if plan.finished(in_flight) {
                        out.push(Finished);
                    }
                }
                Control => flight.push_back(None),
                Closed => plan.latest_closed(),
                Stop(grace) => plan.stop(now, Duration::from_millis(grace)),
            }
        }
        out
    }

    struct Case {
        name: &'static str,
        window: usize,
        stored: i64,
        rate: Option<f64>,
        events: &'static [Ev],
        want: &'static [Out],
    }

    fn check(cases: &[Case]) {
        for c in cases {
            let got = run(c.window, c.stored, c.rate, c.events);
            assert_eq!(got, c.want, "{}", c.name);
        }
    }

    #[test]
    fn the_backlog_is_replayed_oldest_first_in_pages_that_fill_the_window() {
        check(&[
            Case {
                name: "two pages, then idle",
                window: 4,
                stored: 6,
                rate: None,
                events: &[Round, Ack(4), Round],
                want: &[Fetch(B, 0, 6, 4, 4), BUSY, Fetch(B, 4, 6, 4, 2), IDLE],
            },
            Case {
                name: "an empty outbox has no backlog",
                window: 4,
                stored: 0,
                rate: None,
                events: &[Round],
                want: &[IDLE],
            },
            Case {
                name: "the gateway status takes a place in the window",
                window: 4,
                stored: 6,
                rate: None,
                events: &[Control, Round],
                want: &[Fetch(B, 0, 6, 3, 3), BUSY],
            },
        ]);
    }

    #[test]
    fn live_rows_take_at_most_half_the_window_while_a_backlog_remains() {
        check(&[
            Case {
                name: "both pending: half each",
                window: 10,
                stored: 100,
                rate: None,
                events: &[Commit(120), Round, Ack(10), Round],
                want: &[
                    Fetch(L, 100, 120, 5, 5),
                    Fetch(B, 0, 100, 5, 5),
                    BUSY,
                    Fetch(L, 105, 120, 5, 5),
                    Fetch(B, 5, 100, 5, 5),
                    BUSY,
                ],
            },
            Case {
                name: "what live leaves of its half goes to the backlog",
                window: 10,
                stored: 100,
                rate: None,
                events: &[Commit(102), Round],
                want: &[Fetch(L, 100, 102, 5, 2), Fetch(B, 0, 100, 8, 8), BUSY],
            },
            Case {
                name: "odd room: live gets the larger half",
                window: 9,
                stored: 100,
                rate: None,
                events: &[Commit(120), Round],
                want: &[Fetch(L, 100, 120, 5, 5), Fetch(B, 0, 100, 4, 4), BUSY],
            },
            Case {
                name: "without a backlog live takes the whole window",
                window: 10,
                stored: 0,
                rate: None,
                events: &[Commit(20), Round],
                want: &[Fetch(L, 0, 20, 10, 10), BUSY],
            },
            Case {
                name: "after the backlog live takes the whole window",
                window: 10,
                stored: 3,
                rate: None,
                events: &[Round, Ack(3), Commit(30), Round],
                want: &[Fetch(B, 0, 3, 10, 3), IDLE, Fetch(L, 3, 30, 10, 10), BUSY],
            },
        ]);
    }

    #[test]
    fn the_backlog_is_done_when_a_fetch_returns_fewer_rows_than_asked() {
        check(&[
            Case {
                name: "a short page ends it",
                window: 4,
                stored: 10,
                rate: None,
                events: &[Vanish(7), Round, Ack(3), Round],
                want: &[Fetch(B, 0, 10, 4, 3), IDLE, IDLE],
            },
            Case {
                name: "a full page does not, the next (empty) one does",
                window: 4,
                stored: 4,
                rate: None,
                events: &[Round, Ack(4), Round, Round],
                want: &[Fetch(B, 0, 4, 4, 4), BUSY, Fetch(B, 4, 4, 4, 0), IDLE, IDLE],
            },
            Case {
                name: "once done, the rate limit no longer wakes the loop",
                window: 4,
                stored: 2,
                rate: Some(1.0),
                events: &[Round, At(5000), Round, At(6000), Round, At(9000), Round],
                want: &[
                    Fetch(B, 0, 2, 1, 1),
                    Wait(true, Some(1000), None),
                    Fetch(B, 1, 2, 1, 1),
                    Wait(true, Some(1000), None),
                    Fetch(B, 2, 2, 1, 0),
                    IDLE,
                    IDLE,
                ],
            },
        ]);
    }

    #[test]
    fn the_rate_limit_holds_back_only_the_backlog() {
        check(&[
            Case {
                name: "live keeps its half, the backlog gets the tokens",
                window: 10,
                stored: 100,
                rate: Some(2.0),
                events: &[Commit(105), Round, At(500), Round, At(1000), Round],
                want: &[
                    Fetch(L, 100, 105, 5, 5),
                    Fetch(B, 0, 100, 2, 2),
                    Wait(true, Some(500), None),
                    Fetch(B, 2, 100, 1, 1),
                    Wait(true, Some(500), None),
                    Fetch(B, 3, 100, 1, 1),
                    Wait(true, Some(500), None),
                ],
            },
            Case {
                name: "new live rows go out while the bucket is empty",
                window: 10,
                stored: 100,
                rate: Some(1.0),
                events: &[Round, Commit(103), Round],
                want: &[
                    Fetch(B, 0, 100, 1, 1),
                    Wait(true, Some(1000), None),
                    Fetch(L, 100, 103, 5, 3),
                    Wait(true, Some(1000), None),
                ],
            },
            Case {
                name: "a full window waits for acks, not for tokens",
                window: 2,
                stored: 100,
                rate: Some(1.0),
                events: &[Commit(102), Round],
                want: &[Fetch(L, 100, 102, 1, 1), Fetch(B, 0, 100, 1, 1), BUSY],
            },
        ]);
    }

    #[test]
    fn an_empty_live_page_moves_the_live_cursor_to_the_newest_id_asked_for() {
        check(&[Case {
            name: "rows acked or dropped before they were read",
            window: 10,
            stored: 0,
            rate: None,
            events: &[Commit(5), Vanish(5), Round, Round],
            want: &[Fetch(L, 0, 5, 10, 0), IDLE, IDLE],
        }]);
    }

    #[test]
    fn the_loop_waits_for_newer_rows_only_with_room_nothing_pending_and_the_outbox_open() {
        check(&[
            Case {
                name: "live rows left over (window full)",
                window: 2,
                stored: 0,
                rate: None,
                events: &[Commit(5), Round],
                want: &[Fetch(L, 0, 5, 2, 2), BUSY],
            },
            Case {
                name: "live rows committed after the round",
                window: 4,
                stored: 0,
                rate: None,
                events: &[Commit(1), Round, Commit(2), Round],
                want: &[Fetch(L, 0, 1, 4, 1), IDLE, Fetch(L, 1, 2, 3, 1), IDLE],
            },
            Case {
                // The wake-up for them must stay on: nothing else may come (no PUBACK due).
                name: "live rows committed while the round was writing",
                window: 4,
                stored: 0,
                rate: None,
                events: &[Commit(1), CommitMidRound(3), Round],
                want: &[Fetch(L, 0, 1, 4, 1), IDLE, Fetch(L, 1, 3, 3, 2), IDLE],
            },
            Case {
                name: "the outbox is closed",
                window: 4,
                stored: 0,
                rate: None,
                events: &[Closed, Round],
                want: &[BUSY],
            },
        ]);
    }

    #[test]
    fn after_stop_nothing_is_fetched_and_the_session_ends_when_no_row_is_in_flight() {
        check(&[
            Case {
                name: "grace runs from the stop; the status does not hold the end back",
                window: 4,
                stored: 6,
                rate: None,
                events: &[
                    Round,
                    At(100),
                    Stop(2000),
                    Control,
                    Commit(9),
                    Round,
                    Ack(2),
                    Ack(2),
                ],
                want: &[
                    Fetch(B, 0, 6, 4, 4),
                    BUSY,
                    Wait(false, None, Some(2100)),
                    Finished,
                ],
            },
            Case {
                name: "a second stop does not extend the grace",
                window: 4,
                stored: 0,
                rate: None,
                events: &[Stop(1000), At(500), Stop(1000), Round],
                want: &[Wait(false, None, Some(1000))],
            },
        ]);
    }

    #[test]
    fn live_rows_get_at_most_half_the_window_only_while_a_backlog_remains() {
        let cases = [
            // room, live pending, backlog pending → (live, backlog)
            (10, true, true, (5, 5)),
            (9, true, true, (5, 4)),
            (1, true, true, (1, 0)),
            (10, true, false, (10, 0)),
            (10, false, true, (0, 10)),
            (10, false, false, (10, 0)),
            (0, true, true, (0, 0)),
        ];
        for (room, live, backlog, want) in cases {
            assert_eq!(quotas(room, live, backlog), want, "{room} {live} {backlog}");
        }
    }

    #[test]
    fn acknowledgements_are_read_on_a_pace_only_with_a_deep_window_while_they_keep_coming_and_not_while_stopping(
    ) {
        let cases = [
            // in flight, stopping, the last paced read found nothing → pace
            (0, false, false, None),
            (64, false, false, None),
            (PACED_DEPTH - 1, false, false, None),
            (PACED_DEPTH, false, false, Some(PACE)),
            (1000, false, false, Some(PACE)),
            (1000, true, false, None),
            (1000, false, true, None),
            (PACED_DEPTH - 1, false, true, None),
        ];
        for (in_flight, stopping, heard_nothing, want) in cases {
            assert_eq!(
                read_pace(in_flight, stopping, heard_nothing),
                want,
                "{in_flight} {stopping} {heard_nothing}"
            );
        }
    }

    #[test]
    fn the_bucket_refills_at_its_rate_with_one_second_of_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(Some(100.0), t0);
        assert_eq!(b.available(t0), 100);
        b.take(100);
        assert_eq!(b.available(t0), 0);
        assert!(b.next_token().unwrap() <= Duration::from_millis(10));
        assert_eq!(b.available(t0 + Duration::from_millis(250)), 25);
        // never more than one second's worth
        assert_eq!(b.available(t0 + Duration::from_secs(60)), 100);
        let mut unlimited = Bucket::new(None, t0);
        assert_eq!(unlimited.available(t0), usize::MAX);
        assert_eq!(unlimited.next_token(), None);
    }
}
