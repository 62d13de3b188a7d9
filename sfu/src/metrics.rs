//! The SFU's histograms (the counters are [`crate::SfuStats`]): each subscriber's downlink
//! estimate, sampled four times a second, and how long a datagram takes from its arrival to
//! the end of sending what it produced at once.

use prometheus::{Encoder, Histogram, HistogramOpts, Registry, TextEncoder};

pub struct SfuMetrics {
    registry: Registry,
    pub estimate: Histogram,
    pub processing: Histogram,
}

impl Default for SfuMetrics {
    fn default() -> Self {
        let registry = Registry::new();
        let estimate = Histogram::with_opts(
            HistogramOpts::new(
                "natter_sfu_subscriber_estimate_bps",
                "Each subscriber's downlink estimate (TWCC/GCC), bits/s, sampled every 250 ms",
            )
            .buckets(vec![
                50e3, 100e3, 200e3, 300e3, 500e3, 750e3, 1e6, 1.5e6, 2e6, 3e6, 5e6, 10e6,
            ]),
        )
        .expect("valid histogram");
        let processing = Histogram::with_opts(
            HistogramOpts::new(
                "natter_sfu_forwarding_seconds",
                "From a media datagram's arrival to the end of sending what it produced (str0m \
                 sends written packets on a timer, run at once; its pacer may hold video)",
            )
            .buckets(vec![
                10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 750e-6, 1e-3, 1.5e-3, 2.5e-3, 5e-3,
                10e-3, 50e-3,
            ]),
        )
        .expect("valid histogram");
        registry
            .register(Box::new(estimate.clone()))
            .expect("registers");
        registry
            .register(Box::new(processing.clone()))
            .expect("registers");
        SfuMetrics {
            registry,
            estimate,
            processing,
        }
    }
}

impl SfuMetrics {
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
