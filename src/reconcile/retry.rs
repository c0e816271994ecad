//! Writes the API server refused, and when each may be tried again.
//!
//! Looks come every few seconds, and 100 ms after any watch event: on a busy cluster, several a
//! second. A write refused for good (a restart RBAC does not allow, a policy webhook's denial)
//! would be sent again on each of them. Instead each refused write waits before its next try,
//! 2 s after its first refusal, doubling up to 30 s, and meanwhile every look reports its last
//! refusal word for word (so the blockingMessage, and its one `StepFailed` event, stay as they
//! are). A write is named by what it would write, not only where: a different write to the
//! same object (another rotation's restart marker, another bundle) is tried at once. Which
//! failures are refusals, and when the wait starts, is the caller's to say (the reconciler's
//! `attempt`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The wait after a write's first failure.
pub const FIRST_WAIT: Duration = Duration::from_secs(2);
/// The longest wait: how long a fix (a RoleBinding granted, a policy relaxed) may wait to be
/// noticed.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// A failure not tried again for this long past its wait (the workload is gone, or the step
/// moved on to another write) is forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(600);

#[derive(Debug, Default)]
pub struct Retries {
    failed: HashMap<String, Failure>,
}

#[derive(Debug)]
struct Failure {
    /// The refusal, as it was said.
    message: String,
    wait: Duration,
    retry_at: Instant,
}

impl Retries {
    /// The last failure of `write`, when it is not to be tried again before `now`.
    pub fn deferred(&self, write: &str, now: Instant) -> Option<&str> {
        self.failed
            .get(write)
            .filter(|f| now < f.retry_at)
            .map(|f| f.message.as_str())
    }

    /// `write` failed at `now`, saying `message`: the wait before its next try doubles.
    pub fn failed(&mut self, write: &str, message: String, now: Instant) {
        self.failed.retain(|_, f| now < f.retry_at + FORGET_AFTER);
        let wait = match self.failed.get(write) {
            Some(before) => (before.wait * 2).min(MAX_WAIT),
            None => FIRST_WAIT,
        };
        let retry_at = now + wait;
        self.failed.insert(
            write.to_owned(),
            Failure {
                message,
                wait,
                retry_at,
            },
        );
    }

    /// `write` went through: the next failure of it waits the shortest time again.
    pub fn succeeded(&mut self, write: &str) {
        self.failed.remove(write);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_write_waits_twice_as_long_each_time_up_to_the_longest_wait() {
        let mut retries = Retries::default();
        let start = Instant::now();
        let mut now = start;
        let mut waits = Vec::new();
        for _ in 0..7 {
            assert_eq!(retries.deferred("restart a", now), None, "due at {now:?}");
            retries.failed("restart a", "forbidden (403)".to_owned(), now);
            let retry_at = retries.failed["restart a"].retry_at;
            // Held until then, with the refusal as it was said.
            assert_eq!(
                retries.deferred("restart a", retry_at - Duration::from_millis(1)),
                Some("forbidden (403)")
            );
            waits.push((retry_at - now).as_secs());
            now = retry_at;
        }
        assert_eq!(waits, [2, 4, 8, 16, 30, 30, 30]);
        // Another write, even to the same object, is not held by it.
        assert_eq!(
            retries.deferred("restart a with another marker", start),
            None
        );
    }

    #[test]
    fn a_write_that_went_through_is_tried_at_once_and_waits_the_least_after_its_next_failure() {
        let mut retries = Retries::default();
        let now = Instant::now();
        retries.failed("w", "refused".to_owned(), now);
        retries.failed("w", "refused".to_owned(), now);
        retries.succeeded("w");
        assert_eq!(retries.deferred("w", now), None);
        retries.failed("w", "refused again".to_owned(), now);
        assert_eq!(retries.deferred("w", now), Some("refused again"));
        assert_eq!(retries.deferred("w", now + FIRST_WAIT), None);
    }

    #[test]
    fn a_failure_not_tried_again_for_long_is_forgotten() {
        let mut retries = Retries::default();
        let now = Instant::now();
        retries.failed("gone", "refused".to_owned(), now);
        let later = now + FIRST_WAIT + FORGET_AFTER;
        retries.failed("other", "refused".to_owned(), later);
        assert_eq!(retries.failed.len(), 1);
        // Had it been kept, its next failure would have waited twice as long.
        retries.failed("gone", "refused".to_owned(), later);
        assert_eq!(retries.failed["gone"].wait, FIRST_WAIT);
    }
}
