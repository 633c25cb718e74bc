//! Active health checks of the targets of an upstream (see `targets`): one task per target,
//! on the runtime that starts them (the first worker's), ending with the target's pool.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use super::pool::Pool;
use super::state::HealthCheck;
use super::targets::TargetSet;

impl TargetSet {
    /// Starts the health checks of the targets that have none running (on the calling
    /// runtime: the first worker's). Each ends when its pool is dropped.
    pub fn start_health_checks(&self, upstream: &str) {
        for pool in self.pools.iter() {
            let Some(check) = pool.settings().health_check.clone() else {
                continue;
            };
            if pool.state.retired() || pool.state.checking.swap(true, Relaxed) {
                continue;
            }
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                pool.state.checking.store(false, Relaxed);
                continue;
            };
            runtime.spawn(health_checks(
                Arc::downgrade(pool),
                check,
                upstream.to_owned(),
            ));
        }
    }
}

async fn health_checks(pool: std::sync::Weak<Pool>, check: HealthCheck, upstream: String) {
    let (mut successes, mut failures) = (0u32, 0u32);
    loop {
        let Some(target) = pool.upgrade() else { return };
        if target.state.retired() {
            return;
        }
        let host = check.host.clone().unwrap_or_else(|| {
            http::HeaderValue::from_str(target.authority().as_str())
                .unwrap_or(http::HeaderValue::from_static("localhost"))
        });
        let outcome = super::exchange::probe(&target, &check.path, &host, check.timeout).await;
        let state = &target.state;
        match outcome {
            Ok(status) if status.is_success() || status.is_redirection() => {
                successes += 1;
                failures = 0;
                if !state.healthy() && successes >= check.healthy {
                    state.set_healthy(true);
                    tracing::warn!(upstream, target = %target.authority(), "target passes its health checks again");
                }
            }
            outcome => {
                failures += 1;
                successes = 0;
                if state.healthy() && failures >= check.unhealthy {
                    state.set_healthy(false);
                    let reason = match outcome {
                        Ok(status) => format!("status {}", status.as_u16()),
                        Err(e) => crate::telemetry::error_chain(&e),
                    };
                    tracing::warn!(upstream, target = %target.authority(), reason, "target failed its health checks; taken out");
                }
            }
        }
        drop(target);
        tokio::time::sleep(check.interval).await;
    }
}
