//! Token buckets: how Caged says "this many a minute" (preview requests, DNS queries, failed
//! sign-ins). Pure: the caller passes the time and holds the lock.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A rate: `burst` at once, refilled at `per_second`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub burst: f64,
    pub per_second: f64,
}

impl Rate {
    /// `n` a minute, all of them at once if they come together.
    pub fn per_minute(n: u32) -> Rate {
        Rate {
            burst: f64::from(n),
            per_second: f64::from(n) / 60.0,
        }
    }
}

/// One bucket, full when made.
#[derive(Clone, Copy, Debug)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn full(rate: Rate, now: Instant) -> Bucket {
        Bucket {
            tokens: rate.burst,
            at: now,
        }
    }

    /// Takes one token: `Ok`, or how long until one is there.
    pub fn take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / rate.per_second.max(f64::MIN_POSITIVE),
            ))
        }
    }

    /// Whether a token is there, without taking it.
    pub fn check(&self, rate: Rate, now: Instant) -> Result<(), Duration> {
        let mut probe = *self;
        probe.take(rate, now)
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        self.at = now;
    }

    fn is_full(&self, rate: Rate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + elapsed * rate.per_second >= rate.burst
    }
}

/// A bucket per key, at one rate; bounded, since a full bucket carries no information.
pub struct Buckets<K> {
    rate: Rate,
    buckets: HashMap<K, Bucket>,
}

/// Past this many keys, full buckets are dropped.
const PRUNE_AT: usize = 10_000;

impl<K: Hash + Eq> Buckets<K> {
    pub fn new(rate: Rate) -> Buckets<K> {
        Buckets {
            rate,
            buckets: HashMap::new(),
        }
    }

    /// Takes one of `key`'s tokens: `Ok`, or how long until one is there.
    pub fn take(&mut self, key: K, now: Instant) -> Result<(), Duration> {
        let rate = self.rate;
        self.bucket(key, now).take(rate, now)
    }

    /// Whether `key` has a token, without taking it.
    pub fn check(&self, key: &K, now: Instant) -> Result<(), Duration> {
        match self.buckets.get(key) {
            Some(bucket) => bucket.check(self.rate, now),
            None => Ok(()),
        }
    }

    fn bucket(&mut self, key: K, now: Instant) -> &mut Bucket {
        let rate = self.rate;
        if self.buckets.len() > PRUNE_AT {
            self.buckets.retain(|_, bucket| !bucket.is_full(rate, now));
        }
        self.buckets
            .entry(key)
            .or_insert_with(|| Bucket::full(rate, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_lets_a_burst_through_then_refills_evenly() {
        let start = Instant::now();
        let rate = Rate::per_minute(3);
        let mut buckets = Buckets::new(rate);
        for _ in 0..3 {
            assert_eq!(buckets.take("a", start), Ok(()));
        }
        let wait = buckets.take("a", start).unwrap_err();
        assert_eq!(wait, Duration::from_secs(20));
        // Another key has its own bucket; checking takes nothing.
        assert_eq!(buckets.check(&"b", start), Ok(()));
        assert_eq!(buckets.check(&"a", start), Err(Duration::from_secs(20)));
        assert_eq!(buckets.take("a", start + Duration::from_secs(20)), Ok(()));
        assert!(buckets.take("a", start + Duration::from_secs(21)).is_err());
    }

    #[test]
    fn full_buckets_are_forgotten_past_the_bound() {
        let start = Instant::now();
        let mut buckets = Buckets::new(Rate::per_minute(60));
        for key in 0..=PRUNE_AT {
            buckets.take(key, start).unwrap();
        }
        // A minute on, every bucket is full again; the next new key prunes them all.
        buckets
            .take(usize::MAX, start + Duration::from_secs(60))
            .unwrap();
        assert_eq!(buckets.buckets.len(), 1);
    }
}
