//! Portcullis: an authentication gateway for legacy web apps.
//!
//! The request path, one module per step:
//! ```text
//! server (accept, tls, h1/h2 detection, idle HTTP/1 parking, timeouts, graceful drain)
//!   └─ proxy::handle ── one Arc<Snapshot> per request (snapshot.rs)
//!        └─ decide ── the decision, shared with `explain` and `[[tests]]`:
//!             limits ─ the gateway's own endpoints (session)
//!             canonical ─ router ─ readings: one path, its route, every reading agrees (I4, I9)
//!             auth: credential → verified Identity, or Public; 401/403 otherwise
//!             csrf: a cookie-authenticated unsafe request must come from this origin
//!           decide::rewrite ── identity: strip, then inject (I2, I3, I10)
//!        └─ upstream::forward ── pooled HTTP/1.1, streamed bodies; 502/504
//!        └─ error ── the one status mapping; outcome ── the decision log's reason
//! ```
//! `config` turns the TOML file into a `Snapshot` (all validation at load time); `check`
//! and `explain` report on it; `telemetry` sets up logging. The modules form an acyclic
//! graph (`tests/layout.rs`): leaves first (`canonical`, `policy`, `csrf`, `outcome`,
//! `worker`, `tls`, `metrics`), then the domain (`router`, `readings`, `auth`, `identity`,
//! `session`), the connectors (`upstream`), the state (`snapshot`, `error`), the decision,
//! the handler, and the listeners on top.

// One exception, measured: `server::sockopt` sets `TCP_DEFER_ACCEPT`, which no safe crate
// offers (`tests/layout.rs` keeps it the only `unsafe` in the crate).
#![deny(unsafe_code)]

pub mod admin;
pub mod assertion;
pub mod auth;
pub mod canonical;
pub mod check;
pub mod config;
pub mod csrf;
pub mod decide;
pub mod error;
pub mod explain;
pub mod forward_auth;
pub mod identity;
pub mod metrics;
pub mod mint;
pub mod outcome;
pub mod policy;
pub mod proxy;
pub mod ratelimit;
pub mod readings;
pub mod redis_link;
pub mod reload;
pub mod revocation;
pub mod router;
pub mod server;
pub mod session;
pub mod snapshot;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod worker;

pub use proxy::ConnInfo;
pub use server::{Listeners, run};
pub use snapshot::{SharedSnapshot, Snapshot};
