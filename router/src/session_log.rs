//! One session's dispatch sequence, replay index and write cursor.
//!
//! The log is both the session's outbound queue and its replay buffer: every dispatch is
//! pushed here with the session's next `s`, the connection writes what is past its write
//! cursor, and a resume moves the cursor back to the client's last `s`. Entries leave
//! when the client acknowledges them (the `d` of its heartbeat), or when the log passes
//! its count or byte limit, oldest first; a resume from before the oldest entry is then
//! refused instead of silently skipping events.

use std::collections::VecDeque;

use concord_protocol::Seq;

use crate::event::SharedEvent;

/// How much a session's replay buffer may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayLimits {
    /// The most events kept.
    pub max_events: usize,
    /// The most event bytes kept (bodies and names; the bytes are shared, this bounds
    /// what one session can pin).
    pub max_bytes: usize,
}

impl Default for ReplayLimits {
    fn default() -> Self {
        ReplayLimits {
            max_events: 1024,
            max_bytes: 1 << 20,
        }
    }
}

/// Why a resume was refused. Nothing changes on a refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    /// The client claims a `s` the session never sent (close 4007). Permanent.
    #[error("resume seq {client} is ahead of the session's last seq {last}")]
    Ahead {
        /// The client's seq.
        client: u64,
        /// The session's last seq.
        last: u64,
    },
    /// Events after the client's `s` have left the replay buffer (op 9, not resumable).
    #[error("events after seq {client} left the replay buffer (oldest kept: {oldest})")]
    TooOld {
        /// The client's seq.
        client: u64,
        /// The oldest seq still kept.
        oldest: u64,
    },
}

/// A session's sequence counter, replay index and write cursor.
#[derive(Debug)]
pub struct SessionLog {
    /// Kept events; `entries[i]` has seq `last_seq - entries.len() + 1 + i`.
    entries: VecDeque<SharedEvent>,
    last_seq: u64,
    written: u64,
    bytes: usize,
    limits: ReplayLimits,
    /// With synchronous replication: the last seq the session's replica acknowledged.
    /// Nothing past it is written (a client could otherwise hold an `s` no replica
    /// knows). `None`: writes are not gated.
    replicated: Option<u64>,
}

impl SessionLog {
    /// An empty log; the first pushed event gets seq 1.
    pub fn new(limits: ReplayLimits) -> Self {
        SessionLog {
            entries: VecDeque::new(),
            last_seq: 0,
            written: 0,
            bytes: 0,
            limits,
            replicated: None,
        }
    }

    /// A log that continues after `last_seq`, as if everything up to it was written: a
    /// session rebuilt on another node from its replica, for a client whose last `s`
    /// was `last_seq`.
    pub fn continuing_after(limits: ReplayLimits, last_seq: Seq) -> Self {
        let mut log = SessionLog::new(limits);
        log.last_seq = last_seq.0;
        log.written = last_seq.0;
        log
    }

    /// Gates writes on replication: from now on only what [`SessionLog::mark_replicated`]
    /// covered is unwritten-and-writable. Everything pushed so far counts as replicated.
    pub fn gate_on_replication(&mut self) {
        self.replicated = Some(self.last_seq);
    }

    /// The replica acknowledged everything up to `seq`.
    pub fn mark_replicated(&mut self, seq: Seq) {
        if let Some(r) = &mut self.replicated {
            *r = (*r).max(seq.0.min(self.last_seq));
        }
    }

    /// Whether pushed events wait for their replica before they may be written.
    pub fn awaits_replica(&self) -> bool {
        self.replicated.is_some_and(|r| r < self.last_seq)
    }

    /// The seq of the oldest kept event (`last_seq + 1` when none is kept).
    fn first_seq(&self) -> u64 {
        self.last_seq + 1 - self.entries.len() as u64
    }

    /// Gives `event` the next seq and keeps it; returns the seq.
    pub fn push(&mut self, event: SharedEvent) -> Seq {
        self.last_seq += 1;
        self.bytes += event.weight();
        self.entries.push_back(event);
        while self.entries.len() > 1
            && (self.entries.len() > self.limits.max_events || self.bytes > self.limits.max_bytes)
        {
            if let Some(old) = self.entries.pop_front() {
                self.bytes -= old.weight();
            }
        }
        Seq(self.last_seq)
    }

    /// The last seq given out.
    pub fn last_seq(&self) -> Seq {
        Seq(self.last_seq)
    }

    /// How many events were pushed but not yet written to the connection.
    pub fn pending(&self) -> u64 {
        self.last_seq - self.written
    }

    /// Whether an unwritten event already left the buffer: the connection can no longer
    /// deliver in order and must be closed (the client may resume if the gap is after
    /// what it received, which [`SessionLog::rewind`] decides).
    pub fn has_write_gap(&self) -> bool {
        self.written + 1 < self.first_seq()
    }

    /// The events not yet written that may be written (with synchronous replication,
    /// those the replica holds), oldest first, with their seqs.
    pub fn unwritten(&self) -> impl Iterator<Item = (Seq, &SharedEvent)> {
        let first = self.first_seq();
        let skip = usize::try_from(self.written.saturating_sub(first - 1)).unwrap_or(usize::MAX);
        let upto = self.replicated.unwrap_or(u64::MAX);
        self.entries
            .iter()
            .enumerate()
            .skip(skip)
            .map(move |(i, e)| (Seq(first + i as u64), e))
            .take_while(move |(s, _)| s.0 <= upto)
    }

    /// The kept events after `client`, oldest first, with their seqs: what a resume
    /// from `client` replays (for handing the session to another node).
    ///
    /// # Errors
    /// As [`SessionLog::rewind`]; nothing changes.
    pub fn after(
        &self,
        client: Seq,
    ) -> Result<impl Iterator<Item = (Seq, &SharedEvent)>, ResumeError> {
        self.check_resume(client.0)?;
        let first = self.first_seq();
        let skip = usize::try_from(client.0 + 1 - first).unwrap_or(usize::MAX);
        Ok(self
            .entries
            .iter()
            .enumerate()
            .skip(skip)
            .map(move |(i, e)| (Seq(first + i as u64), e)))
    }

    /// The seq before the oldest kept event: the oldest `s` a client can resume from.
    pub fn oldest_resumable(&self) -> Seq {
        Seq(self.first_seq() - 1)
    }

    fn check_resume(&self, client: u64) -> Result<(), ResumeError> {
        if client > self.last_seq {
            return Err(ResumeError::Ahead {
                client,
                last: self.last_seq,
            });
        }
        if client + 1 < self.first_seq() {
            return Err(ResumeError::TooOld {
                client,
                oldest: self.first_seq(),
            });
        }
        Ok(())
    }

    /// Records that everything up to `seq` was written.
    pub fn mark_written(&mut self, seq: Seq) {
        self.written = self.written.max(seq.0.min(self.last_seq));
    }

    /// The client confirmed it received everything up to `seq` (its heartbeat): those
    /// events no longer need to be kept. Entries not yet written stay.
    pub fn acknowledge(&mut self, seq: Seq) {
        let upto = seq.0.min(self.written);
        while self.first_seq() <= upto {
            match self.entries.pop_front() {
                Some(old) => self.bytes -= old.weight(),
                None => break,
            }
        }
        // An idle session should own no buffer at all.
        if self.entries.is_empty() {
            self.entries.shrink_to_fit();
        }
    }

    /// Prepares a resume from the client's last seq: everything after it is unwritten
    /// again.
    pub fn rewind(&mut self, client: Seq) -> Result<(), ResumeError> {
        self.check_resume(client.0)?;
        self.written = client.0;
        Ok(())
    }

    /// How many events are kept, and their bytes.
    pub fn kept(&self) -> (usize, usize) {
        (self.entries.len(), self.bytes)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::event::Event;
    use bytes::Bytes;
    use std::time::Instant;

    fn ev(n: usize) -> SharedEvent {
        Event::session_only("X", Bytes::from(vec![b'1'; n]), Instant::now())
    }

    fn unwritten(log: &SessionLog) -> Vec<u64> {
        log.unwritten().map(|(s, _)| s.0).collect()
    }

    #[test]
    fn assigns_seqs_and_tracks_writes() {
        let mut log = SessionLog::new(ReplayLimits::default());
        assert_eq!(log.push(ev(1)), Seq(1));
        assert_eq!(log.push(ev(1)), Seq(2));
        assert_eq!(unwritten(&log), vec![1, 2]);
        log.mark_written(Seq(1));
        assert_eq!(unwritten(&log), vec![2]);
        assert_eq!(log.pending(), 1);
        log.mark_written(Seq(2));
        assert!(unwritten(&log).is_empty());
    }

    #[test]
    fn resume_replays_after_the_client_seq() {
        let mut log = SessionLog::new(ReplayLimits::default());
        for _ in 0..5 {
            log.push(ev(1));
        }
        log.mark_written(Seq(5));
        log.rewind(Seq(2)).unwrap();
        assert_eq!(unwritten(&log), vec![3, 4, 5]);
        log.rewind(Seq(5)).unwrap();
        assert!(unwritten(&log).is_empty());
        assert_eq!(
            log.rewind(Seq(6)),
            Err(ResumeError::Ahead { client: 6, last: 5 })
        );
    }

    #[test]
    fn limits_evict_oldest_and_refuse_stale_resumes() {
        let mut log = SessionLog::new(ReplayLimits {
            max_events: 3,
            max_bytes: 1000,
        });
        for _ in 0..5 {
            log.push(ev(10));
        }
        assert_eq!(log.kept().0, 3);
        assert!(log.has_write_gap(), "1 and 2 left before being written");
        assert_eq!(
            log.rewind(Seq(1)),
            Err(ResumeError::TooOld {
                client: 1,
                oldest: 3
            })
        );
        log.rewind(Seq(2)).unwrap();
        assert!(!log.has_write_gap());
        assert_eq!(unwritten(&log), vec![3, 4, 5]);

        let mut by_bytes = SessionLog::new(ReplayLimits {
            max_events: 100,
            max_bytes: 25,
        });
        for _ in 0..4 {
            by_bytes.push(ev(10));
        }
        assert_eq!(by_bytes.kept(), (2, 22));
        // The newest event is always kept, even if it alone is over the byte limit.
        by_bytes.push(ev(100));
        assert_eq!(by_bytes.kept().0, 1);
    }

    #[test]
    fn with_replication_gated_only_replicated_events_are_written() {
        let mut log = SessionLog::new(ReplayLimits::default());
        log.push(ev(1));
        log.gate_on_replication();
        log.push(ev(1));
        log.push(ev(1));
        assert!(log.awaits_replica());
        assert_eq!(unwritten(&log), vec![1]);
        log.mark_replicated(Seq(2));
        assert_eq!(unwritten(&log), vec![1, 2]);
        log.mark_replicated(Seq(9));
        assert_eq!(unwritten(&log), vec![1, 2, 3]);
        assert!(!log.awaits_replica());
        assert_eq!(log.pending(), 3);
    }

    #[test]
    fn a_continued_log_starts_after_the_client_seq() {
        let mut log = SessionLog::continuing_after(ReplayLimits::default(), Seq(41));
        assert_eq!(log.push(ev(1)), Seq(42));
        assert_eq!(unwritten(&log), vec![42]);
        assert_eq!(log.oldest_resumable(), Seq(41));
        let after: Vec<u64> = log.after(Seq(41)).unwrap().map(|(s, _)| s.0).collect();
        assert_eq!(after, vec![42]);
        assert!(log.after(Seq(40)).is_err());
        assert!(log.after(Seq(43)).is_err());
    }

    #[test]
    fn acknowledge_frees_only_written_events() {
        let mut log = SessionLog::new(ReplayLimits::default());
        for _ in 0..4 {
            log.push(ev(1));
        }
        log.mark_written(Seq(3));
        log.acknowledge(Seq(4));
        assert_eq!(log.kept().0, 1, "seq 4 is unwritten and stays");
        assert_eq!(unwritten(&log), vec![4]);
        log.rewind(Seq(3)).unwrap();
        assert_eq!(
            log.rewind(Seq(1)),
            Err(ResumeError::TooOld {
                client: 1,
                oldest: 4
            })
        );
    }
}
