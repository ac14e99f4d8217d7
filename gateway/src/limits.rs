//! Node-wide limits with no IO: the Identify rate limiter.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Discord's identify window: `max_concurrency` identifies per 5 s.
pub const IDENTIFY_WINDOW: Duration = Duration::from_secs(5);

/// A sliding-window limiter: at most `per_window` identifies in any 5 s.
#[derive(Debug)]
pub struct IdentifyLimiter {
    per_window: usize,
    granted: VecDeque<Instant>,
}

impl IdentifyLimiter {
    /// A limiter granting `per_window` identifies per 5 s.
    pub fn new(per_window: u32) -> IdentifyLimiter {
        IdentifyLimiter {
            per_window: per_window.max(1) as usize,
            granted: VecDeque::new(),
        }
    }

    /// Grants an identify at `now`, or says when the next one can be granted.
    pub fn try_acquire(&mut self, now: Instant) -> Result<(), Instant> {
        while self
            .granted
            .front()
            .is_some_and(|t| now.duration_since(*t) >= IDENTIFY_WINDOW)
        {
            self.granted.pop_front();
        }
        if self.granted.len() < self.per_window {
            self.granted.push_back(now);
            Ok(())
        } else {
            // The window is full, so there is a front entry.
            Err(self.granted.front().map_or(now, |t| *t + IDENTIFY_WINDOW))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_max_concurrency_per_five_seconds() {
        let t0 = Instant::now();
        let mut l = IdentifyLimiter::new(2);
        assert!(l.try_acquire(t0).is_ok());
        assert!(l.try_acquire(t0 + Duration::from_secs(1)).is_ok());
        assert_eq!(
            l.try_acquire(t0 + Duration::from_secs(2)),
            Err(t0 + IDENTIFY_WINDOW)
        );
        assert!(l.try_acquire(t0 + IDENTIFY_WINDOW).is_ok());
        assert!(l.try_acquire(t0 + IDENTIFY_WINDOW).is_err());
        assert!(l.try_acquire(t0 + Duration::from_secs(6)).is_ok());
    }
}
