//! Prometheus metrics of the messaging gateway (`natter_messaging_*`), one registry per server.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    /// Authenticated WebSocket connections.
    pub connections: IntGauge,
    /// Frames received, by type.
    pub frames_in: IntCounterVec,
    /// Frames sent, by type.
    pub frames_out: IntCounterVec,
    /// Items waiting in device queues.
    pub queue_items: IntGauge,
    /// From a message's commit to the recipient device's `ack`.
    pub send_to_delivered: Histogram,
    /// Error frames and error responses, by code.
    pub errors: IntCounterVec,
    /// Jobs per storage transaction.
    pub store_batch_jobs: Histogram,
    /// Time to commit one storage transaction (including fsync).
    pub store_commit: Histogram,
    /// HTTP requests, by route and status.
    pub http_requests: IntCounterVec,
    /// Calls offered.
    pub call_attempts: IntCounter,
    /// Calls answered.
    pub calls_answered: IntCounter,
    /// Calls that ended without being answered, by reason (declined, busy, timeout, …).
    pub calls_failed: IntCounterVec,
    /// From `call_offer` to the answer reaching the server.
    pub call_setup: Histogram,
    /// Requests refused by admission control (`overloaded`).
    pub overloaded: IntCounter,
    /// Connections cut off for not reading, by reason (`bytes`: over `max_outbound_bytes`;
    /// `blocked`: no write progress for `write_timeout_ms`).
    pub slow_consumers: IntCounterVec,
    /// Sockets closed for sending no `hello` in time.
    pub hello_timeouts: IntCounter,
    /// Jobs waiting for the storage thread (sampled when scraped).
    pub store_queue: IntGauge,
    /// Time the writer spent on its own WAL checkpoints (between batches).
    pub store_checkpoint: Histogram,
    /// Devices admitted to a group call.
    pub room_joins: IntCounter,
    /// Group calls going on (sampled when scraped).
    pub rooms: IntGauge,
    /// Devices in a group call (sampled when scraped).
    pub room_participants: IntGauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let connections = IntGauge::new(
            "natter_messaging_connections",
            "Authenticated WebSocket connections",
        )
        .unwrap();
        let frames_in = IntCounterVec::new(
            Opts::new(
                "natter_messaging_frames_in_total",
                "Frames received, by type",
            ),
            &["type"],
        )
        .unwrap();
        let frames_out = IntCounterVec::new(
            Opts::new("natter_messaging_frames_out_total", "Frames sent, by type"),
            &["type"],
        )
        .unwrap();
        let queue_items = IntGauge::new(
            "natter_messaging_queue_items",
            "Items waiting in device queues",
        )
        .unwrap();
        let send_to_delivered = Histogram::with_opts(
            HistogramOpts::new(
                "natter_messaging_send_to_delivered_seconds",
                "Time from a message being stored to the recipient device acknowledging it",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
                600.0, 3600.0, 86400.0,
            ]),
        )
        .unwrap();
        let errors = IntCounterVec::new(
            Opts::new("natter_messaging_errors_total", "Errors returned, by code"),
            &["code"],
        )
        .unwrap();
        let store_batch_jobs = Histogram::with_opts(
            HistogramOpts::new(
                "natter_messaging_store_batch_jobs",
                "Jobs committed together in one storage transaction",
            )
            .buckets(vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0]),
        )
        .unwrap();
        let store_commit = Histogram::with_opts(
            HistogramOpts::new(
                "natter_messaging_store_commit_seconds",
                "Time to commit one storage transaction, fsync included",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
            ]),
        )
        .unwrap();
        let http_requests = IntCounterVec::new(
            Opts::new(
                "natter_messaging_http_requests_total",
                "HTTP requests, by route and status",
            ),
            &["route", "status"],
        )
        .unwrap();
        let call_attempts =
            IntCounter::new("natter_messaging_call_attempts_total", "Calls offered").unwrap();
        let calls_answered =
            IntCounter::new("natter_messaging_calls_answered_total", "Calls answered").unwrap();
        let calls_failed = IntCounterVec::new(
            Opts::new(
                "natter_messaging_calls_failed_total",
                "Calls that ended unanswered, by reason",
            ),
            &["reason"],
        )
        .unwrap();
        let call_setup = Histogram::with_opts(
            HistogramOpts::new(
                "natter_messaging_call_setup_seconds",
                "Time from a call offer to its answer",
            )
            .buckets(vec![
                0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 45.0, 120.0,
            ]),
        )
        .unwrap();
        let overloaded = IntCounter::new(
            "natter_messaging_overloaded_total",
            "Requests refused by admission control with `overloaded`",
        )
        .unwrap();
        let slow_consumers = IntCounterVec::new(
            Opts::new(
                "natter_messaging_slow_consumer_disconnects_total",
                "Connections cut off for not reading (bytes: over max_outbound_bytes; blocked: no write progress within write_timeout_ms)",
            ),
            &["reason"],
        )
        .unwrap();
        let hello_timeouts = IntCounter::new(
            "natter_messaging_hello_timeouts_total",
            "Sockets closed for sending no hello in time",
        )
        .unwrap();
        let store_queue = IntGauge::new(
            "natter_messaging_store_queue_jobs",
            "Jobs waiting for the storage thread",
        )
        .unwrap();
        let store_checkpoint = Histogram::with_opts(
            HistogramOpts::new(
                "natter_messaging_store_checkpoint_seconds",
                "Time the storage writer spent on a WAL checkpoint between batches",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
            ]),
        )
        .unwrap();
        registry
            .register(Box::new(store_checkpoint.clone()))
            .unwrap();
        let room_joins = IntCounter::new(
            "natter_messaging_room_joins_total",
            "Devices admitted to a group call",
        )
        .unwrap();
        let rooms = IntGauge::new("natter_messaging_rooms", "Group calls going on").unwrap();
        let room_participants = IntGauge::new(
            "natter_messaging_room_participants",
            "Devices in a group call",
        )
        .unwrap();
        registry.register(Box::new(room_joins.clone())).unwrap();
        registry.register(Box::new(rooms.clone())).unwrap();
        registry
            .register(Box::new(room_participants.clone()))
            .unwrap();
        for c in [&overloaded, &hello_timeouts] {
            registry.register(Box::new(c.clone())).unwrap();
        }
        registry.register(Box::new(slow_consumers.clone())).unwrap();
        registry.register(Box::new(store_queue.clone())).unwrap();
        registry.register(Box::new(call_attempts.clone())).unwrap();
        registry.register(Box::new(calls_answered.clone())).unwrap();
        registry.register(Box::new(call_setup.clone())).unwrap();
        for c in [
            &frames_in,
            &frames_out,
            &errors,
            &http_requests,
            &calls_failed,
        ] {
            registry.register(Box::new(c.clone())).unwrap();
        }
        registry.register(Box::new(connections.clone())).unwrap();
        registry.register(Box::new(queue_items.clone())).unwrap();
        registry
            .register(Box::new(send_to_delivered.clone()))
            .unwrap();
        registry
            .register(Box::new(store_batch_jobs.clone()))
            .unwrap();
        registry.register(Box::new(store_commit.clone())).unwrap();
        Metrics {
            registry,
            connections,
            frames_in,
            frames_out,
            queue_items,
            send_to_delivered,
            errors,
            store_batch_jobs,
            store_commit,
            http_requests,
            call_attempts,
            calls_answered,
            calls_failed,
            call_setup,
            overloaded,
            slow_consumers,
            hello_timeouts,
            store_queue,
            store_checkpoint,
            room_joins,
            rooms,
            room_participants,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
