//! End-to-end tests: the real `natter` binary on loopback with real WebSocket clients.

mod common;

mod accounts;
mod attacks_accounts;
mod attacks_requests;
mod attacks_slow;
mod blobs;
mod bwe_eval;
mod call_media;
mod calls;
mod crash;
mod e2ee;
mod group_calls;
mod group_e2ee;
mod groups;
mod messages;
mod netem_audio;
mod netem_calls;
mod netem_group_call;
mod netem_video;
mod offline;
mod ops;
mod prekeys;
mod presence;
mod protocol;
mod ratelimit;
mod raw;
mod sfu_standalone;
