//! The `portcullis` binary: CLI, logging, config load, bind, serve until a signal, drain.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use portcullis::Snapshot;
use portcullis::explain;
use portcullis::telemetry::{self, LogFormat};

/// Exit status for an invalid config (EX_USAGE, as the style guide asks).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "portcullis",
    // The commit and the optimisation come from build.rs.
    version = concat!(
        env!("CARGO_PKG_VERSION"),
        " (commit ",
        env!("PORTCULLIS_COMMIT"),
        "; ",
        env!("PORTCULLIS_BUILD"),
        ")"
    ),
    about = "An authentication gateway for legacy web apps",
    long_about = "An authentication gateway for legacy web apps.\n\n\
        Portcullis terminates TLS, matches each request against the TOML route rules, checks the \
        credential the route demands (a Bearer JWT or a JWT in a cookie), strips any identity \
        headers the client sent, injects the verified identity (X-Auth-User, ...) and forwards \
        the request to the upstream app.\n\n\
        Logs go to stderr; set the level with RUST_LOG (default: info; the per-request access \
        log is target portcullis::access at info)."
)]
struct Cli {
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the config until SIGTERM/SIGINT (a second signal exits at once).
    Serve {
        /// The config file (TOML).
        #[arg(long, short, env = "PORTCULLIS_CONFIG")]
        config: PathBuf,
        /// Worker threads; default: the number of CPUs (or TOKIO_WORKER_THREADS).
        #[arg(long, env = "PORTCULLIS_WORKERS")]
        workers: Option<usize>,
    },
    /// Validate a config file, lint it and run its [[tests]].
    ///
    /// Prints one line per route, the warnings, and the rule tests as "N passed, M failed".
    /// Exit status: 0 valid, 1 errors or failed tests, 2 warnings with --strict.
    Check {
        /// The config file (TOML).
        #[arg(long, short, env = "PORTCULLIS_CONFIG")]
        config: PathBuf,
        /// Treat warnings as failures (exit 2).
        #[arg(long)]
        strict: bool,
    },
    /// Show what the gateway would do with a request: routes considered, the route chosen,
    /// the provider, each requirement, the decision, and the headers the upstream would get.
    ///
    /// Example: portcullis explain --config config/portcullis.toml GET https://localhost/admin --claims '{"sub":"alice","scope":"admin"}'
    Explain {
        /// The config file (TOML).
        #[arg(long, short, env = "PORTCULLIS_CONFIG")]
        config: PathBuf,
        /// Request method, e.g. GET.
        method: String,
        /// Full URL, e.g. https://crm.example.com/api/x
        url: String,
        /// A real token: verified like a request's.
        #[arg(long, conflicts_with = "claims")]
        token: Option<String>,
        /// Claims as JSON, taken as verified (the signature is not checked).
        #[arg(long)]
        claims: Option<String>,
        /// A request header, "Name: value" (repeatable), e.g. --header "Origin: https://evil.example"
        /// to see the cross-site request check.
        #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
        headers: Vec<String>,
    },
    /// Mint a signed JWT for local testing and print it on stdout.
    ///
    /// Example (dev keys of the default config):
    ///   portcullis token --config config/portcullis.toml --provider dev --key config/dev/signing.key.pem --sub alice
    Token(Box<TokenArgs>),
    /// Ask a running gateway's probe: exit 0 when it answers 200, 1 otherwise (for Docker
    /// HEALTHCHECK, where the image has no curl).
    ///
    /// Example: portcullis health --url http://127.0.0.1:9902/readyz
    Health {
        /// An http:// URL of `server.health` or `server.admin`: /healthz or /readyz.
        #[arg(long, default_value = "http://127.0.0.1:9902/readyz")]
        url: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3)]
        timeout: u64,
    },
    /// API keys for `auth = "api_key"` routes.
    #[command(subcommand, name = "api-key")]
    ApiKey(ApiKeyCommand),
}

#[derive(Subcommand)]
enum ApiKeyCommand {
    /// Make a new key: prints the key once (on stdout) and, on stderr, the entry to add to
    /// the `[api_keys] file` (which holds only the key's SHA-256).
    ///
    /// Example: portcullis api-key new --sub svc-batch --scope crm.read >> key.txt
    New {
        /// The identity the key stands for (`sub`).
        #[arg(long)]
        sub: String,
        /// A scope (repeat for several).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// An extra claim KEY=VALUE; VALUE is parsed as JSON when it can be (repeatable).
        #[arg(long = "claim")]
        claims: Vec<String>,
        /// A note kept in the entry (who holds the key, when it was issued).
        #[arg(long)]
        note: Option<String>,
    },
}

#[derive(Args)]
struct TokenArgs {
    /// PEM private key (RSA, EC or Ed25519, PKCS#8) for RS*/PS*/ES*/EdDSA.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Environment variable holding the HMAC secret, for HS256/384/512.
    #[arg(long)]
    secret_env: Option<String>,
    /// Algorithm; default: the provider's first (with --provider), else RS256 (HS256 with --secret-env).
    #[arg(long)]
    alg: Option<String>,
    /// `kid` header; default: the provider's first bound kid (with --provider).
    #[arg(long)]
    kid: Option<String>,
    /// Take iss, aud, alg and kid defaults from this config file's provider (with --provider).
    #[arg(long, requires = "provider")]
    config: Option<PathBuf>,
    /// Provider name in --config.
    #[arg(long, requires = "config")]
    provider: Option<String>,
    /// `iss` claim.
    #[arg(long)]
    iss: Option<String>,
    /// `aud` claim (repeat for several).
    #[arg(long)]
    aud: Vec<String>,
    /// `sub` claim.
    #[arg(long)]
    sub: Option<String>,
    /// A scope for the `scope` claim (repeat for several).
    #[arg(long)]
    scope: Vec<String>,
    /// Extra claim KEY=VALUE; VALUE is parsed as JSON when it can be (repeat for several).
    /// Example: --claim email=alice@example.com --claim 'groups=["eng","ops"]'
    #[arg(long)]
    claim: Vec<String>,
    /// Lifetime: exp = now + this (e.g. 15m, 1h).
    #[arg(long, default_value = "1h")]
    ttl: String,
}

/// jemalloc, for what it gives back: its background thread returns freed pages to the OS
/// within seconds (dirty/muzzy decay), so the memory of a burst of connections that then go
/// idle (and are parked without their buffers, `server::conn`) does not stay resident.
/// Measured, 10,000 idle connections after a burst of 10,000 requests: glibc malloc kept
/// 469 MiB resident (its free pages sit between live objects), jemalloc 64 MiB after 12 s.
/// Throughput: no difference outside the noise (pinned public route, alternating runs).
/// Its thread cache is sized up for hyper's per-connection buffers by an option compiled in
/// from `.cargo/config.toml` (which says why).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, workers } => {
            telemetry::init(cli.log_format);
            serve(config, workers)
        }
        Command::Check { config, strict } => check(config, strict),
        Command::Explain {
            config,
            method,
            url,
            token,
            claims,
            headers,
        } => explain(config, &method, &url, token, claims, &headers),
        Command::Token(args) => token(args),
        Command::Health { url, timeout } => health(&url, Duration::from_secs(timeout)),
        Command::ApiKey(ApiKeyCommand::New {
            sub,
            scopes,
            claims,
            note,
        }) => match api_key_entry(&sub, &scopes, &claims, note.as_deref()) {
            Ok((key, entry)) => {
                eprintln!(
                    "# Add this entry to the [api_keys] file; the key is shown only once:\n{entry}"
                );
                println!("{key}");
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("portcullis api-key new: {message}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
    }
}

/// A new key and its `[[keys]]` entry (TOML, written with the toml crate so that any `sub`
/// or claim is quoted right).
fn api_key_entry(
    sub: &str,
    scopes: &[String],
    claims: &[String],
    note: Option<&str>,
) -> Result<(String, String), String> {
    if sub.is_empty() {
        return Err("--sub must name the client".into());
    }
    let (key, sha256) = portcullis::auth::api_keys::new_key();
    let mut entry = toml::Table::new();
    entry.insert("sha256".into(), sha256.into());
    entry.insert("sub".into(), sub.into());
    if !scopes.is_empty() {
        entry.insert("scopes".into(), scopes.to_vec().into());
    }
    if let Some(note) = note {
        entry.insert("note".into(), note.into());
    }
    let mut table = toml::Table::new();
    for pair in claims {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("--claim \"{pair}\" is not KEY=VALUE"))?;
        let json = serde_json::from_str(value)
            .unwrap_or_else(|_| serde_json::Value::String(value.to_owned()));
        let value: toml::Value =
            serde_json::from_value(json).map_err(|e| format!("--claim {name}: {e}"))?;
        table.insert(name.into(), value);
    }
    if !table.is_empty() {
        entry.insert("claims".into(), table.into());
    }
    let mut file = toml::Table::new();
    file.insert("keys".into(), toml::Value::Array(vec![entry.into()]));
    let text = toml::to_string(&file).map_err(|e| e.to_string())?;
    Ok((key, text))
}

/// `portcullis health`: one HTTP/1.1 GET with the standard library, the status line read.
fn health(url: &str, timeout: Duration) -> ExitCode {
    match probe(url, timeout) {
        Ok(200) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("{url}: {status}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("{url}: {error}");
            ExitCode::FAILURE
        }
    }
}

fn probe(url: &str, timeout: Duration) -> Result<u16, String> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let uri: http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("only http:// URLs (the probe listener is plain HTTP)".into());
    }
    let authority = uri.authority().ok_or("the URL has no host")?;
    let port = authority.port_u16().unwrap_or(80);
    let addr = (authority.host().trim_matches(['[', ']']), port)
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("the host has no address")?;
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nUser-Agent: portcullis-health\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < 12 {
        match stream.read(&mut head[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) => return Err(e.to_string()),
        }
    }
    let line = std::str::from_utf8(&head[..read]).unwrap_or("");
    line.strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| "no HTTP answer".to_owned())
}

fn check(config: PathBuf, strict: bool) -> ExitCode {
    let snapshot = match portcullis::config::load(config.clone()) {
        Ok(snapshot) => snapshot,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    let routes = portcullis::check::route_summaries(&snapshot);
    println!(
        "{}: ok ({} routes, {} providers, {} upstreams)",
        config.display(),
        routes.len(),
        snapshot.providers.len(),
        snapshot.upstreams.len()
    );
    for line in routes {
        println!("  {line}");
    }
    if let Some(login) = &snapshot.login {
        println!(
            "  login: client {} at provider {}, store {}, idle {}s, lifetime {}s, callback {}",
            login.client_id,
            snapshot.providers[login.provider].name,
            login.store.kind(),
            login.idle_timeout,
            login.lifetime,
            login.redirect_path
        );
    }
    let warnings = portcullis::check::lint(&snapshot);
    for warning in &warnings {
        println!("warning: {warning}");
    }
    let failed = run_rule_tests(&snapshot);
    if failed > 0 {
        return ExitCode::FAILURE;
    }
    if strict && !warnings.is_empty() {
        return ExitCode::from(2);
    }
    ExitCode::SUCCESS
}

/// Runs `[[tests]]`; prints each failure and "N passed, M failed". Returns M.
fn run_rule_tests(snapshot: &Snapshot) -> usize {
    if snapshot.rule_tests.is_empty() {
        return 0;
    }
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        eprintln!("cannot start a runtime for the rule tests");
        return snapshot.rule_tests.len();
    };
    let report = runtime.block_on(portcullis::check::run_rule_tests(snapshot));
    for failure in &report.failures {
        println!("FAIL {failure}");
    }
    println!(
        "tests: {} passed, {} failed",
        report.passed,
        report.failures.len()
    );
    report.failures.len()
}

fn explain(
    config: PathBuf,
    method: &str,
    url: &str,
    token: Option<String>,
    claims: Option<String>,
    headers: &[String],
) -> ExitCode {
    let mut extra = Vec::new();
    for header in headers {
        let Some((name, value)) = header.split_once(':') else {
            eprintln!("--header {header:?}: write \"Name: value\"");
            return ExitCode::from(2);
        };
        extra.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let snapshot = match portcullis::config::load(config.clone()) {
        Ok(snapshot) => snapshot,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let credential = match (token, claims) {
        (Some(token), _) => explain::Credential::Token(token),
        (None, Some(json)) => match serde_json::from_str(&json) {
            Ok(claims) => explain::Credential::Claims(claims),
            Err(e) => {
                eprintln!("--claims: not a JSON object of claims: {e}");
                return ExitCode::from(2);
            }
        },
        (None, None) => explain::Credential::None,
    };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        eprintln!("cannot start a runtime");
        return ExitCode::FAILURE;
    };
    let result = runtime.block_on(async {
        if matches!(credential, explain::Credential::Token(_)) {
            snapshot.start_key_refresh().await?;
        }
        explain::evaluate(&snapshot, method, url, &credential, &extra).await
    });
    match result {
        Ok(evaluation) => {
            print!("{}", evaluation.report());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("portcullis explain: {error}");
            ExitCode::from(2)
        }
    }
}

fn serve(config: PathBuf, workers: Option<usize>) -> ExitCode {
    let snapshot = match portcullis::config::load(config.clone()) {
        Ok(snapshot) => snapshot,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let workers = workers
        .or_else(|| std::env::var("TOKIO_WORKER_THREADS").ok()?.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, portcullis::worker::MAX_WORKERS);
    let result = serve_thread_per_core(config, snapshot, workers);
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(%error, "cannot serve");
            eprintln!("{error}");
            ExitCode::FAILURE
        }
    }
}

/// Thread-per-core: `workers` threads, each a current-thread runtime with its own
/// `SO_REUSEPORT` listeners and its own upstream pools, so a request never changes thread.
/// The first worker (this thread) also runs the process-wide tasks: key refresh, admin
/// listener, config watch, signals.
fn serve_thread_per_core(
    config: PathBuf,
    snapshot: Snapshot,
    workers: usize,
) -> std::io::Result<()> {
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let sets = portcullis::server::StdListeners::bind_per_worker(&snapshot.server, workers)?;
    let primary_runtime = runtime()?;
    let shared = snapshot.shared();
    // Keys first, so that no worker serves a remote provider's tokens before they exist.
    primary_runtime
        .block_on(shared.load().start_key_refresh())
        .map_err(std::io::Error::other)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let slots = portcullis::server::connection_slots(&shared);
    let mut sets = sets.into_iter();
    let primary = sets.next().expect("at least one worker");
    let mut threads = Vec::new();
    for (index, set) in sets.enumerate() {
        let (shared, mut stop, slots) = (shared.clone(), stop_rx.clone(), slots.clone());
        let runtime = runtime()?;
        threads.push(
            std::thread::Builder::new()
                .name(format!("portcullis-worker-{}", index + 1))
                .spawn(move || {
                    portcullis::worker::set_worker(index + 1);
                    runtime.block_on(async move {
                        let listeners = set.into_tokio()?;
                        let stopped = async move {
                            let _ = stop.wait_for(|stop| *stop).await;
                        };
                        portcullis::server::run_worker(listeners, shared, stopped, slots).await
                    })
                })?,
        );
    }
    let result = primary_runtime.block_on(async move {
        let listeners = primary.into_tokio()?;
        tracing::info!(
            config = %config.display(),
            http = ?listeners.http_addr(),
            https = ?listeners.https_addr(),
            admin = ?listeners.admin_addr(),
            workers,
            routes = shared.load().routes.routes().len(),
            hash = %shared.load().config_hash,
            "portcullis listening"
        );
        tokio::spawn(reload_on_sighup(shared.clone()));
        let shutdown = async move {
            shutdown_signal().await;
            let _ = stop_tx.send(true);
        };
        portcullis::server::run_primary(listeners, shared, shutdown, slots).await
    });
    for thread in threads {
        match thread.join() {
            Ok(Err(error)) => tracing::error!(%error, "a worker stopped with an error"),
            Ok(Ok(())) => {}
            Err(_) => tracing::error!("a worker panicked"),
        }
    }
    result
}

/// Reloads the config on every SIGHUP (a failed reload keeps the old config).
async fn reload_on_sighup(shared: portcullis::SharedSnapshot) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!(
            "cannot install the SIGHUP handler; reload with the admin listener or a file change"
        );
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the config");
        let _ = portcullis::reload::reload(&shared).await;
    }
}

/// Resolves on the first SIGTERM or SIGINT; a second one exits the process at once.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("signal received: draining (send it again to exit at once)");
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal: exiting now");
        std::process::exit(1);
    });
}

fn token(args: Box<TokenArgs>) -> ExitCode {
    let args = *args;
    let lifetime = match portcullis::config::duration::parse(&args.ttl) {
        Ok(d) => d,
        Err(message) => {
            eprintln!("--ttl: {message}");
            return ExitCode::from(2);
        }
    };
    let request = portcullis::mint::MintRequest {
        key_file: args.key,
        secret_env: args.secret_env,
        algorithm: args.alg,
        kid: args.kid,
        issuer: args.iss,
        audiences: args.aud,
        subject: args.sub,
        scopes: args.scope,
        claims: args.claim,
        lifetime,
        config: args.config.zip(args.provider),
    };
    match portcullis::mint::mint(&request, portcullis::auth::unix_now()) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("portcullis token: {message}");
            ExitCode::from(2)
        }
    }
}
