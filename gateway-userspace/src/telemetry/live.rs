//! Running totals of the answered requests that the status page's charts
//! turn into rates and latencies (prometheus-client's series are not
//! readable without encoding them). The page diffs two readings.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use serde::Serialize;

/// Upper bounds of the latency buckets, in milliseconds (the last bucket is
/// everything slower): enough to estimate a p99 between two readings.
pub const LATENCY_BOUNDS_MS: [u64; 11] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 5_000];

#[derive(Debug, Default)]
pub struct LiveTotals {
    requests: AtomicU64,
    server_errors: AtomicU64,
    duration_us: AtomicU64,
    buckets: [AtomicU64; LATENCY_BOUNDS_MS.len() + 1],
}

/// One reading (every value counts from the start).
#[derive(Debug, Clone, Serialize)]
pub struct LiveReading {
    pub requests: u64,
    /// Answers with a 5xx status.
    pub server_errors: u64,
    pub duration_seconds: f64,
    pub latency_bounds_ms: &'static [u64],
    /// Requests per bucket (not cumulative), one more than the bounds.
    pub latency_buckets: Vec<u64>,
}

impl LiveTotals {
    pub fn record(&self, status: u16, duration: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.server_errors.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        self.duration_us.fetch_add(micros, Ordering::Relaxed);
        let index = LATENCY_BOUNDS_MS
            .iter()
            .position(|&bound| micros <= bound * 1_000)
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
    }

    pub fn read(&self) -> LiveReading {
        LiveReading {
            requests: self.requests.load(Ordering::Relaxed),
            server_errors: self.server_errors.load(Ordering::Relaxed),
            duration_seconds: self.duration_us.load(Ordering::Relaxed) as f64 / 1e6,
            latency_bounds_ms: &LATENCY_BOUNDS_MS,
            latency_buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_errors_and_buckets_by_duration() {
        let live = LiveTotals::default();
        live.record(200, Duration::from_micros(800));
        live.record(503, Duration::from_millis(30));
        live.record(200, Duration::from_secs(9));
        let reading = live.read();
        assert_eq!((reading.requests, reading.server_errors), (3, 1));
        assert_eq!(reading.latency_buckets[0], 1);
        assert_eq!(reading.latency_buckets[5], 1);
        assert_eq!(reading.latency_buckets[LATENCY_BOUNDS_MS.len()], 1);
        assert!((reading.duration_seconds - 9.0308).abs() < 1e-9);
    }
}
