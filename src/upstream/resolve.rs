//! Named targets resolved for balancing: each address a target's name resolves to is a
//! target of its own, with its own pool, health, ejection and metrics (what Envoy's strict
//! DNS clusters do). `targets = ["http://crm:8080"]` with `crm` resolving to two addresses
//! balances over two instances.
//!
//! - One task per upstream that has a named target (on the first worker) looks every name
//!   up every `dns_refresh`, with the system's resolver (`/etc/hosts`, then DNS), each
//!   lookup bounded by `connect_timeout`.
//! - When an address appeared or went, a new [`TargetSet`] is swapped in: the pools of the
//!   addresses still there are kept (their idle connections, health and counts), new
//!   addresses get new pools, and requests already under way finish on the set they started
//!   with.
//! - A lookup that fails, or finds nothing, keeps the last addresses (logged once, when it
//!   starts failing). Until a name has been resolved once, its target connects by name,
//!   resolved per connection: what every named target does with `dns_refresh = "0s"`.
//! - IP literals are never looked up.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;

use super::pool::Pool;
use super::targets::TargetSet;

/// Looks a host and port up.
pub type Lookup = Arc<
    dyn Fn(String, u16) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>>
        + Send
        + Sync,
>;

/// The system's resolver (getaddrinfo, on tokio's blocking threads).
pub fn system() -> Lookup {
    Arc::new(|host, port| {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect())
        })
    })
}

/// The name and port of `pool`'s target, unless its host is an IP literal.
pub fn name_of(pool: &Pool) -> Option<(String, u16)> {
    let authority = pool.authority();
    let host = authority.host();
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if bare.parse::<IpAddr>().is_ok() {
        return None;
    }
    let default_port = if pool.tls().is_some() { 443 } else { 80 };
    Some((
        bare.to_owned(),
        authority.port_u16().unwrap_or(default_port),
    ))
}

/// The pools for what each configured target resolved to (`None`: an IP literal, or a lookup
/// that failed): `current`'s pools for addresses that are still there, new pools for new
/// ones; a target whose lookup failed keeps its pools in `current`, or its configured pool
/// (which connects by name) if it has none. `None` when that is `current`'s list.
pub fn reconcile(
    configured: &[Arc<Pool>],
    current: &TargetSet,
    resolved: &[Option<Vec<SocketAddr>>],
) -> Option<Vec<Arc<Pool>>> {
    let mut pools = Vec::with_capacity(current.pools.len());
    for (template, addrs) in configured.iter().zip(resolved) {
        let mine = current.pools.iter().filter(|p| p.same_target(template));
        match addrs {
            Some(addrs) => pools.extend(addrs.iter().map(|&addr| {
                mine.clone()
                    .find(|p| p.addr() == Some(addr))
                    .cloned()
                    .unwrap_or_else(|| template.at(addr))
            })),
            None => {
                let before = pools.len();
                pools.extend(mine.cloned());
                if pools.len() == before {
                    pools.push(template.clone());
                }
            }
        }
    }
    let unchanged = pools.len() == current.pools.len()
        && pools
            .iter()
            .zip(current.pools.iter())
            .all(|(a, b)| Arc::ptr_eq(a, b));
    (!unchanged).then_some(pools)
}

/// Starts resolving the named targets of upstream `name` every `every`, on the calling
/// runtime (the first worker's), and the health checks of the targets it finds. Ends when
/// `set` (the snapshot that holds it) is gone.
pub fn start(
    name: &str,
    set: &Arc<ArcSwap<TargetSet>>,
    configured: &[Arc<Pool>],
    every: Duration,
    lookup: Lookup,
) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(refresh(
        name.to_owned(),
        Arc::downgrade(set),
        configured.into(),
        every,
        lookup,
    ));
}

async fn refresh(
    upstream: String,
    set: Weak<ArcSwap<TargetSet>>,
    configured: Box<[Arc<Pool>]>,
    every: Duration,
    lookup: Lookup,
) {
    let names: Vec<Option<(String, u16)>> = configured.iter().map(|p| name_of(p)).collect();
    let mut failing = vec![false; configured.len()];
    loop {
        let mut resolved = Vec::with_capacity(names.len());
        for ((name, template), failing) in names.iter().zip(&*configured).zip(&mut failing) {
            let Some((host, port)) = name else {
                resolved.push(None);
                continue;
            };
            let timeout = template.settings().connect_timeout;
            let outcome = match tokio::time::timeout(timeout, lookup(host.clone(), *port)).await {
                Ok(Ok(addrs)) if !addrs.is_empty() => Ok(addrs),
                Ok(Ok(_)) => Err("the name has no address".to_owned()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {timeout:?} (connect_timeout)")),
            };
            match outcome {
                Ok(mut addrs) => {
                    addrs.sort_unstable();
                    addrs.dedup();
                    if std::mem::replace(failing, false) {
                        tracing::warn!(upstream, target = %template.authority(), "target resolves again");
                    }
                    resolved.push(Some(addrs));
                }
                Err(reason) => {
                    if !std::mem::replace(failing, true) {
                        tracing::warn!(upstream, target = %template.authority(), reason, "cannot resolve target; its last addresses stay in use");
                    }
                    resolved.push(None);
                }
            }
        }
        let Some(shared) = set.upgrade() else { return };
        let current = shared.load_full();
        let now = match reconcile(&configured, &current, &resolved) {
            Some(pools) => {
                // A configured pool replaced by its addresses never comes back in this
                // snapshot: its health checks end.
                for template in configured.iter() {
                    if !pools.iter().any(|p| Arc::ptr_eq(p, template)) {
                        template.state.retire();
                    }
                }
                let next = Arc::new(TargetSet::new(pools, current.balance, current.ejection));
                tracing::info!(upstream, targets = %addresses(&next), "upstream targets resolved");
                shared.store(next.clone());
                next
            }
            None => current,
        };
        now.start_health_checks(&upstream);
        drop((shared, now));
        tokio::time::sleep(every).await;
    }
}

/// `name=address, …` for the log.
fn addresses(set: &TargetSet) -> String {
    set.pools
        .iter()
        .map(|p| match p.addr() {
            Some(addr) => format!("{}={addr}", p.authority()),
            None => p.authority().to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::PoolSettings;
    use crate::upstream::targets::{Balance, Ejection};
    use prometheus_client::metrics::counter::Counter;

    fn template(authority: &str) -> Arc<Pool> {
        let settings = PoolSettings {
            connect_timeout: Duration::from_secs(1),
            max_idle: 4,
            idle_timeout: Duration::from_secs(10),
            health_check: None,
        };
        Pool::new(
            authority.parse().unwrap(),
            settings,
            None,
            2,
            Counter::default(),
        )
    }

    fn set(pools: Vec<Arc<Pool>>) -> TargetSet {
        let ejection = Ejection {
            after: 5,
            duration: Duration::from_secs(30),
        };
        TargetSet::new(pools, Balance::RoundRobin, ejection)
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn names_are_looked_up_and_literals_are_not() {
        assert_eq!(
            name_of(&template("crm.internal:8080")),
            Some(("crm.internal".to_owned(), 8080))
        );
        assert_eq!(name_of(&template("crm")), Some(("crm".to_owned(), 80)));
        assert_eq!(name_of(&template("10.0.0.5:8080")), None);
        assert_eq!(name_of(&template("[::1]:8080")), None);
    }

    #[test]
    fn addresses_become_targets_and_unchanged_ones_keep_their_pools() {
        let (name, literal) = (template("crm:8080"), template("10.0.0.9:8080"));
        let configured = [name.clone(), literal.clone()];
        let start = set(configured.to_vec());
        // Before the first lookup: the name's pool connects by name; nothing to change
        // while every lookup fails.
        assert!(reconcile(&configured, &start, &[None, None]).is_none());

        let (a, b, c) = (
            addr("10.0.0.5:8080"),
            addr("10.0.0.6:8080"),
            addr("[::1]:8080"),
        );
        let first = reconcile(&configured, &start, &[Some(vec![a, b]), None]).unwrap();
        assert_eq!(first.len(), 3);
        assert_eq!(first[0].addr(), Some(a));
        assert_eq!(first[1].addr(), Some(b));
        assert!(Arc::ptr_eq(&first[2], &literal));
        assert!(first.iter().all(|p| !Arc::ptr_eq(p, &name)));
        assert_eq!(first[0].authority().as_str(), "crm:8080");
        let first = set(first);

        // The same answer: nothing to swap.
        assert!(reconcile(&configured, &first, &[Some(vec![a, b]), None]).is_none());
        // b went, c came: a keeps its pool (and its connections and counts).
        let second = reconcile(&configured, &first, &[Some(vec![a, c]), None]).unwrap();
        assert!(Arc::ptr_eq(&second[0], &first.pools[0]));
        assert_eq!(second[1].addr(), Some(c));
        assert!(!Arc::ptr_eq(&second[1], &first.pools[1]));
        let second = set(second);
        // A failed lookup keeps the last addresses.
        assert!(reconcile(&configured, &second, &[None, None]).is_none());
    }

    #[tokio::test]
    async fn requests_are_balanced_over_the_addresses_a_name_resolves_to() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Two instances on two loopback addresses, on one port: what one name with two
        // A records looks like. Each answers with the address it was reached on.
        let first = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = first.local_addr().unwrap().port();
        let Ok(second) = tokio::net::TcpListener::bind(("127.0.0.2", port)).await else {
            panic!("127.0.0.2:{port} cannot be bound: this test needs the whole of 127/8");
        };
        for listener in [first, second] {
            tokio::spawn(async move {
                loop {
                    let (mut stream, _) = listener.accept().await.unwrap();
                    let local = stream.local_addr().unwrap().ip().to_string();
                    tokio::spawn(async move {
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = stream.read(&mut buf).await {
                            if n == 0 {
                                return;
                            }
                            let answer = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{local}",
                                local.len()
                            );
                            if stream.write_all(answer.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            });
        }
        let configured = [template(&format!("app.test:{port}"))];
        let shared = Arc::new(ArcSwap::from_pointee(set(configured.to_vec())));
        // The name resolves to both; lookups of anything else fail.
        let lookup: Lookup = Arc::new(move |host, p| {
            Box::pin(async move {
                assert_eq!((host.as_str(), p), ("app.test", port));
                Ok(vec![
                    SocketAddr::from(([127, 0, 0, 2], port)),
                    SocketAddr::from(([127, 0, 0, 1], port)),
                ])
            })
        });
        start(
            "app",
            &shared,
            &configured,
            Duration::from_secs(3600),
            lookup,
        );
        for _ in 0..100 {
            if shared.load().pools.len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let targets = shared.load_full();
        assert_eq!(targets.pools.len(), 2, "the name was never resolved");
        // The configured pool is out, and its health checks would end.
        assert!(configured[0].state.retired());

        let mut seen = Vec::new();
        for _ in 0..4 {
            let index = targets.pick();
            let request = http::Request::get("/")
                .header(http::header::HOST, "app.test")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            let (parts, body) = request.into_parts();
            let response = crate::upstream::exchange::send(
                &targets.pools[index],
                &parts,
                |_| {},
                body,
                Duration::from_secs(5),
                Some((&targets, index)),
            )
            .await
            .unwrap();
            let body = crate::upstream::body::UpstreamBody::new(
                response.into_body(),
                Duration::from_secs(5),
            );
            let body = http_body_util::BodyExt::collect(body)
                .await
                .unwrap()
                .to_bytes();
            seen.push(String::from_utf8(body.to_vec()).unwrap());
        }
        seen.sort();
        assert_eq!(seen, ["127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.2"]);
    }
}
