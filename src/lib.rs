//! Portcullis: an authentication gateway for legacy web apps.
//!
//! The request path, one module per step:
//! ```text
//! server (accept, tls, h1/h2 detection, idle HTTP/1 parking, graceful drain)
//!   └─ proxy::handle ── one Arc<Snapshot> per request (snapshot.rs)
//!        1. canonical  ── canonical host and path; 400 when ambiguous
//!        2. router     ── most specific route; none → 404, upstream untouched
//!        3. auth       ── credential → verified Identity, or Public; 401/403 otherwise
//!                         (a session from `session`: OIDC login, sealed cookies, stores)
//!        4. identity   ── strip hop-by-hop + spoofed identity + consumed credential, inject
//!        5. proxy::upstream ── pooled keep-alive client, streamed bodies; 502/504
//!        └─ proxy::error ── the one status mapping; access log line (no secrets)
//! ```
//! `config` turns the TOML file into a `Snapshot` (all validation at load time);
//! `telemetry` sets up logging.

#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod canonical;
pub mod check;
pub mod config;
pub mod csrf;
pub mod decide;
pub mod error;
pub mod explain;
pub mod identity;
pub mod metrics;
pub mod mint;
pub mod outcome;
pub mod policy;
pub mod proxy;
pub mod readings;
pub mod reload;
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
