//! `[redis]`: the one link to the Redis the instances share (the revocation denylist and
//! `rate_limit.shared = "redis"`), kept across reloads while its settings are unchanged.

use std::time::Duration;

/// A Redis client and its multiplexed connection, made on first use (and remade by the
/// connection manager after a failure).
pub struct RedisLink {
    pub client: redis::Client,
    pub timeout: Duration,
    pub prefix: Box<str>,
    connection: tokio::sync::OnceCell<redis::aio::ConnectionManager>,
    /// What it was built from: a reload keeps it when these are unchanged.
    pub settings: (String, Box<str>, Duration),
}

impl RedisLink {
    pub fn new(client: redis::Client, url: &str, prefix: &str, timeout: Duration) -> RedisLink {
        RedisLink {
            client,
            timeout,
            prefix: prefix.into(),
            connection: tokio::sync::OnceCell::new(),
            settings: (url.to_owned(), prefix.into(), timeout),
        }
    }

    /// The connection when it is made; otherwise `None` at once, and it is being made
    /// (for callers that must not wait: the request path).
    pub fn ready_connection(self: &std::sync::Arc<Self>) -> Option<redis::aio::ConnectionManager> {
        if let Some(conn) = self.connection.get() {
            return Some(conn.clone());
        }
        let link = self.clone();
        tokio::spawn(async move {
            let _ = link.connection().await;
        });
        None
    }

    pub async fn connection(&self) -> Result<redis::aio::ConnectionManager, String> {
        self.connection
            .get_or_try_init(|| async {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(1);
                self.client
                    .get_connection_manager_with_config(config)
                    .await
                    .map_err(|e| format!("cannot connect to Redis: {e}"))
            })
            .await
            .cloned()
    }
}
