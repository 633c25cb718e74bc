//! Hot reload: parse, validate, compile, then one atomic swap.
//!
//! Triggered by SIGHUP (`main`), a change of the config file (`watch`, polled and debounced)
//! or `POST /reload` on the admin listener. The new snapshot is compiled against the old one:
//! it keeps the metrics registry (counters continue) and the connection pools of upstreams
//! whose address and pool settings did not change. Requests in flight finish on the snapshot
//! they loaded. An invalid file changes nothing: the error (the same text `check` prints) is
//! logged and counted, and the old config keeps serving. Listener addresses are bound once
//! at start: a changed address is reported as needing a restart, never rebound.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::snapshot::{SharedSnapshot, Snapshot};

/// One reload at a time.
static RELOADING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Reloads the config file of the current snapshot. Returns the new config hash.
pub async fn reload(shared: &SharedSnapshot) -> Result<String, String> {
    let _one_at_a_time = RELOADING.lock().await;
    let old = shared.load_full();
    let result = build(old.clone()).await;
    match &result {
        Ok(new) => {
            report_listener_changes(&old, new);
            let hash = new.config_hash.clone();
            old.metrics.reload(true);
            old.metrics.set_config_hash(&hash);
            shared.store(Arc::clone(new));
            tracing::info!(config = %old.source.display(), %hash, "config reloaded");
            Ok(hash)
        }
        Err(error) => {
            old.metrics.reload(false);
            tracing::error!(config = %old.source.display(), %error, "config reload failed; the previous config keeps serving");
            Err(error.clone())
        }
    }
}

/// Reading and compiling run on the blocking pool: a big config takes a worker's thread
/// for a while (100,000 routes: half a second), and its connections would wait meanwhile.
async fn build(old: Arc<Snapshot>) -> Result<Arc<Snapshot>, String> {
    let new = tokio::task::spawn_blocking(move || {
        crate::config::load_next(old.source.clone(), &old).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| format!("the reload stopped: {e}"))??;
    new.start_key_refresh().await?;
    Ok(Arc::new(new))
}

fn report_listener_changes(old: &Snapshot, new: &Snapshot) {
    let (o, n) = (&old.server, &new.server);
    for (key, before, after) in [
        ("server.http", o.http, n.http),
        ("server.https", o.https, n.https),
        ("server.admin", o.admin, n.admin),
        ("server.health", o.health, n.health),
        ("forward_auth.listen", o.forward_auth, n.forward_auth),
    ] {
        if before != after {
            tracing::warn!(
                key,
                ?before,
                ?after,
                "listener address changed: takes effect after a restart"
            );
        }
    }
    if o.defer_accept != n.defer_accept {
        tracing::warn!(
            key = "server.defer_accept",
            before_s = o.defer_accept.as_secs(),
            after_s = n.defer_accept.as_secs(),
            "listener option changed: takes effect after a restart"
        );
    }
}

/// Polls the config file and every file it names (certificates, keys, CA bundles,
/// secrets), and reloads when one changed and then stayed unchanged for `debounce`
/// (editors write in several steps). A file is looked at through its symlinks, with its
/// inode: Kubernetes updates a mounted ConfigMap or Secret by pointing `..data` at a new
/// folder, which changes no file in place. Ends when `shared` has no other owner.
pub async fn watch(shared: SharedSnapshot, every: Duration, debounce: Duration) {
    let stamps = |snapshot: &crate::snapshot::Snapshot| -> Vec<Stamp> {
        std::iter::once(&snapshot.source)
            .chain(&snapshot.files)
            .map(|p| stamp(p))
            .collect()
    };
    let mut last = stamps(&shared.load());
    loop {
        tokio::time::sleep(every).await;
        if Arc::strong_count(&shared) == 1 {
            return;
        }
        let snapshot = shared.load_full();
        let now = stamps(&snapshot);
        // A config file that cannot be read is being replaced: wait for it.
        if now == last || now[0].is_none() {
            continue;
        }
        tokio::time::sleep(debounce).await;
        let settled = stamps(&snapshot);
        if settled != now {
            continue;
        }
        let changed: Vec<String> = std::iter::once(&snapshot.source)
            .chain(&snapshot.files)
            .zip(last.iter().zip(&settled))
            .filter(|(_, (before, after))| before != after)
            .map(|(path, _)| path.display().to_string())
            .collect();
        drop(snapshot);
        tracing::info!(files = ?changed, "config or a file it names changed");
        let _ = reload(&shared).await;
        // The new config may name other files.
        last = stamps(&shared.load());
    }
}

/// What tells a file's versions apart: modification time, length and inode, of the file a
/// path leads to through its symlinks; `None` while it cannot be read.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &std::path::Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}
