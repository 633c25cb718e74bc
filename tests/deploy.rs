//! The deployment files agree with the configs they carry: `deploy/kubernetes/` (ports,
//! probe paths and ports, mounted files, the grace period, the Redis Service),
//! `deploy/compose.yaml` (ports, mounts, service names) and the Dockerfile (its default
//! config and `HEALTHCHECK`). Each config is loaded by the gateway's own loader, with the
//! mounted files written where the manifests mount them. No cluster is needed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn documents(path: &str) -> Vec<Yaml> {
    let text = std::fs::read_to_string(root().join(path)).unwrap();
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn of_kind<'a>(docs: &'a [Yaml], kind: &str, name: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn text(yaml: &Yaml) -> &str {
    yaml.as_str()
        .unwrap_or_else(|| panic!("not a string: {yaml:?}"))
}

fn list(yaml: &Yaml) -> &[Yaml] {
    yaml.as_vec()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("not a list: {yaml:?}"))
}

/// Loads `config` with every path under `mount` (where the manifests mount files) moved
/// into a temporary folder holding `files`: what the container would see.
fn load_as_mounted(
    config: &str,
    mount: &str,
    files: &BTreeMap<String, String>,
) -> portcullis::Snapshot {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    let local = format!("{}/", dir.path().display());
    let text = config.replace(mount, &local);
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, text).unwrap();
    portcullis::config::load(path).unwrap_or_else(|e| panic!("{e}"))
}

fn port(addr: Option<SocketAddr>) -> i64 {
    i64::from(addr.expect("a listener").port())
}

#[test]
fn the_kubernetes_manifests_agree_with_their_config() {
    let docs = documents("deploy/kubernetes/portcullis.yaml");
    let config = text(&of_kind(&docs, "ConfigMap", "portcullis")["data"]["portcullis.toml"]);
    let secret = of_kind(&docs, "Secret", "portcullis");
    let files: BTreeMap<String, String> = secret["stringData"]
        .as_hash()
        .unwrap()
        .iter()
        .map(|(k, v)| (text(k).to_owned(), text(v).to_owned()))
        .collect();
    let snapshot = load_as_mounted(config, "/etc/portcullis/secrets/", &files);
    let server = &snapshot.server;

    let deployment = of_kind(&docs, "Deployment", "portcullis");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &list(&pod["containers"])[0];
    let ports: BTreeMap<&str, i64> = list(&container["ports"])
        .iter()
        .map(|p| (text(&p["name"]), p["containerPort"].as_i64().unwrap()))
        .collect();
    assert_eq!(ports["http"], port(server.http));
    assert_eq!(ports["health"], port(server.health));
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(text(&get["path"]), path, "{probe}");
        assert_eq!(ports[text(&get["port"])], port(server.health), "{probe}");
    }
    // The pod is not killed before the delay and the drain are over.
    let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap();
    assert!(
        grace as u64 > (server.shutdown_delay + server.shutdown_grace).as_secs(),
        "terminationGracePeriodSeconds {grace}"
    );

    // The config file is where --config says, and the secrets where the config reads them.
    let args: Vec<&str> = list(&container["args"]).iter().map(text).collect();
    let config_path = args[args.iter().position(|a| *a == "--config").unwrap() + 1];
    let mounts: BTreeMap<&str, &str> = list(&container["volumeMounts"])
        .iter()
        .map(|m| (text(&m["name"]), text(&m["mountPath"])))
        .collect();
    assert_eq!(mounts["config"], config_path);
    assert_eq!(mounts["secrets"], "/etc/portcullis/secrets");
    for line in config
        .lines()
        .filter(|l| l.contains("/etc/portcullis/secrets/"))
    {
        let file = line.split("/etc/portcullis/secrets/").nth(1).unwrap();
        let file = file.split('"').next().unwrap();
        assert!(files.contains_key(file), "{file} is not in the Secret");
    }
    let volumes: Vec<&Yaml> = list(&pod["volumes"]).iter().collect();
    assert!(
        volumes
            .iter()
            .any(|v| text(&v["name"]) == "config" && text(&v["configMap"]["name"]) == "portcullis")
    );
    assert!(
        volumes
            .iter()
            .any(|v| text(&v["name"]) == "secrets"
                && text(&v["secret"]["secretName"]) == "portcullis")
    );

    // The Service sends to a port the container has.
    let service = of_kind(&docs, "Service", "portcullis");
    for p in list(&service["spec"]["ports"]) {
        assert!(ports.contains_key(text(&p["targetPort"])), "{p:?}");
    }
    assert_eq!(
        service["spec"]["selector"]["app"],
        deployment["spec"]["template"]["metadata"]["labels"]["app"]
    );

    // The Redis of redis.yaml is the one the config names.
    let redis = documents("deploy/kubernetes/redis.yaml");
    let redis_service = of_kind(&redis, "Service", "portcullis-redis");
    let redis_port = list(&redis_service["spec"]["ports"])[0]["port"]
        .as_i64()
        .unwrap();
    assert!(
        config.contains(&format!("redis://portcullis-redis:{redis_port}")),
        "{config}"
    );
}

#[test]
fn the_compose_file_agrees_with_its_config() {
    let compose = &documents("deploy/compose.yaml")[0];
    let services = &compose["services"];
    let gateway = &services["portcullis"];
    let command: Vec<&str> = list(&gateway["command"]).iter().map(text).collect();
    let config_path = command[command.iter().position(|a| *a == "--config").unwrap() + 1];
    let mut mounted = BTreeMap::new();
    for volume in list(&gateway["volumes"]) {
        let mut parts = text(volume).split(':');
        let (host, container) = (parts.next().unwrap(), parts.next().unwrap());
        let file = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy")
            .join(host);
        assert!(file.exists(), "{host} is mounted but missing");
        mounted.insert(container.to_owned(), file);
    }
    let config = std::fs::read_to_string(&mounted[config_path]).unwrap();
    let files: BTreeMap<String, String> = mounted
        .iter()
        .filter_map(|(container, host)| {
            let name = container.strip_prefix("/etc/portcullis/secrets/")?;
            Some((name.to_owned(), std::fs::read_to_string(host).unwrap()))
        })
        .collect();
    for line in config
        .lines()
        .filter(|l| l.contains("/etc/portcullis/secrets/"))
    {
        let file = line.split("/etc/portcullis/secrets/").nth(1).unwrap();
        let file = file.split('"').next().unwrap();
        assert!(files.contains_key(file), "{file} is not mounted");
    }
    let snapshot = load_as_mounted(&config, "/etc/portcullis/secrets/", &files);
    let published = text(&list(&gateway["ports"])[0]);
    assert!(
        published.ends_with(&format!(":{}", port(snapshot.server.http))),
        "{published}"
    );
    // The names the config reaches are services of the file.
    for host in ["redis", "app"] {
        assert!(!services[host].is_badvalue(), "no service {host}");
    }
    assert!(config.contains("redis://redis:"));
    assert!(config.contains("http://app:"));
}

#[test]
fn the_image_default_config_and_healthcheck_agree() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("COPY config/container.toml /etc/portcullis/portcullis.toml"),
        "{dockerfile}"
    );
    assert!(dockerfile.contains("\"--config\", \"/etc/portcullis/portcullis.toml\""));
    let snapshot = portcullis::config::load(root().join("config/container.toml")).unwrap();
    let health = port(snapshot.server.health);
    assert!(
        dockerfile.contains(&format!("http://127.0.0.1:{health}/readyz")),
        "the HEALTHCHECK asks another port than {health}"
    );
    let expose = dockerfile
        .lines()
        .find(|l| l.starts_with("EXPOSE"))
        .unwrap();
    for p in [port(snapshot.server.http), health] {
        assert!(expose.contains(&p.to_string()), "{expose}");
    }
    // No keys in the image's default: nothing to verify tokens with, nothing to leak.
    assert!(snapshot.providers.is_empty());
    // The runtime stage (after the last FROM) takes the binary and that config, no dev keys.
    let runtime = &dockerfile[dockerfile.rfind("\nFROM ").unwrap()..];
    assert!(
        !runtime.contains("config/dev") && !runtime.contains("COPY config "),
        "{runtime}"
    );
    assert!(
        dockerfile.contains("ARG PGO=1") && dockerfile.contains("\"$PGO\" = 1"),
        "the PGO build stays the default, with PGO=0 the fast path"
    );
}

/// The manifests pass the Kubernetes API schemas (kubernetes-validate, `--strict`: no
/// unknown field), and the validator does refuse a broken one.
#[test]
fn the_kubernetes_manifests_pass_the_api_schemas() {
    let validator = root().join("target/validate");
    assert!(
        validator.join("kubernetes_validate").is_dir(),
        "missing: kubernetes-validate in target/validate/ (bash scripts/test.sh fetches it, scripts/validators.txt)"
    );
    let validate = |files: &[PathBuf]| {
        std::process::Command::new("python3")
            .args(["-m", "kubernetes_validate", "--strict"])
            .args(files)
            .env("PYTHONPATH", &validator)
            .output()
            .unwrap()
    };
    let manifests = [
        root().join("deploy/kubernetes/portcullis.yaml"),
        root().join("deploy/kubernetes/redis.yaml"),
    ];
    let out = validate(&manifests);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches("passed for resource").count(), 6, "{text}");

    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    let text = std::fs::read_to_string(&manifests[0]).unwrap();
    std::fs::write(
        &broken,
        text.replace("containerPort: 8080", "contanerPort: 8080"),
    )
    .unwrap();
    assert!(!validate(&[broken]).status.success());
}
