//! A process-wide cap on request rate, so many concurrent reads stay under a provider's limit
//! (DigitalOcean Spaces allows about 1500 requests per second per IP address).

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// Spaces requests evenly: each caller gets the next free slot and waits until it.
#[derive(Debug)]
pub struct RateLimiter {
    /// Time between two requests; zero disables the cap.
    interval: Duration,
    /// The next free slot.
    next: Mutex<Option<Instant>>,
}

impl RateLimiter {
    /// At most `per_second` requests a second; 0 means no cap.
    #[must_use]
    pub fn new(per_second: u32) -> Self {
        let interval = if per_second == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs(1) / per_second
        };
        RateLimiter {
            interval,
            next: Mutex::new(None),
        }
    }

    /// Waits for this request's slot.
    pub async fn acquire(&self) {
        if self.interval.is_zero() {
            return;
        }
        let slot = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            let slot = next.map_or(now, |n| n.max(now));
            *next = Some(slot + self.interval);
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn requests_are_spaced_to_the_cap() {
        let limiter = RateLimiter::new(100);
        let start = Instant::now();
        for _ in 0..201 {
            limiter.acquire().await;
        }
        // 201 requests at 100/s: the last one waits for the 200th interval, two seconds.
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_means_no_cap() {
        let limiter = RateLimiter::new(0);
        let start = Instant::now();
        for _ in 0..1000 {
            limiter.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
