//! [`ByteBudget`]: a bound on bytes in flight.
//!
//! A publish reserves its size before it goes out and gives it back when it
//! is answered. Past the bound, reservations wait: a client that publishes
//! faster than the backend persists is slowed down, and the gateway's
//! memory stays bounded, with nothing refused or dropped. The Pulsar backend
//! holds one for the whole gateway; a handler holds one per connection.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes that may be in flight at once, shared by the clones of one budget.
#[derive(Debug, Clone)]
pub struct ByteBudget {
    permits: Arc<Semaphore>,
    /// The bound, in bytes: a larger reservation takes all of it.
    max: u32,
}

/// Bytes reserved from a [`ByteBudget`], given back on drop.
#[derive(Debug)]
pub struct Reservation {
    _permit: OwnedSemaphorePermit,
}

impl ByteBudget {
    /// A budget of `max_bytes` (at least 1, at most `u32::MAX`).
    pub fn new(max_bytes: usize) -> ByteBudget {
        let max = u32::try_from(max_bytes.min(Semaphore::MAX_PERMITS))
            .unwrap_or(u32::MAX)
            .max(1);
        ByteBudget {
            permits: Arc::new(Semaphore::new(max as usize)),
            max,
        }
    }

    /// Reserves `bytes`, waiting while the budget lacks them. A reservation
    /// larger than the whole budget waits for all of it, so one oversized
    /// message still goes, alone. Cancel-safe: a dropped wait reserves
    /// nothing.
    pub async fn reserve(&self, bytes: usize) -> Reservation {
        let wanted = u32::try_from(bytes).unwrap_or(u32::MAX).clamp(1, self.max);
        match self.permits.clone().acquire_many_owned(wanted).await {
            Ok(permit) => Reservation { _permit: permit },
            // The semaphore is never closed.
            Err(_) => unreachable!("a byte budget's semaphore is never closed"),
        }
    }

    /// Bytes that could be reserved now without waiting.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    /// The bound, in bytes.
    pub fn max(&self) -> usize {
        self.max as usize
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn reservations_wait_past_the_bound_and_resume_when_given_back() {
        let budget = ByteBudget::new(100);
        let first = budget.reserve(60).await;
        assert_eq!(budget.available(), 40);
        let waiting = budget.reserve(60);
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut waiting)
                .await
                .is_err(),
            "60 more bytes do not fit while 60 of 100 are reserved"
        );
        drop(first);
        let second = waiting.await;
        assert_eq!(budget.available(), 40);
        drop(second);
        assert_eq!(budget.available(), 100);
    }

    #[tokio::test]
    async fn an_oversized_reservation_takes_the_whole_budget() {
        let budget = ByteBudget::new(10);
        let whole = budget.reserve(1_000_000).await;
        assert_eq!(budget.available(), 0);
        drop(whole);
        let empty = budget.reserve(0).await;
        assert_eq!(budget.available(), 9, "an empty message still counts");
        drop(empty);
        assert_eq!(ByteBudget::new(0).max(), 1);
    }
}
