//! The deployment examples in deploy/: the config file passes
//! `--check-config`, the systemd unit passes `systemd-analyze verify`, and
//! the Kubernetes manifests parse, with probes, ports and settings that
//! match the server's.

use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

use crate::util::{run_to_exit, server_bin, TempFile};

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
}

fn read(file: &str) -> String {
    std::fs::read_to_string(deploy(file)).unwrap_or_else(|e| panic!("deploy/{file}: {e}"))
}

/// `start --config FILE --check-config` accepts the file.
async fn assert_valid_config(path: &str) {
    let run = run_to_exit(&["start", "--config", path, "--check-config"], &[]).await;
    assert!(run.status.success(), "{path}: {run:?}");
    assert!(
        run.stdout.contains("the configuration is valid"),
        "{}",
        run.stdout
    );
}

#[tokio::test]
async fn the_example_config_passes_check_config() {
    assert_valid_config(deploy("broadcast-server.toml").to_str().unwrap()).await;
}

#[tokio::test]
async fn the_systemd_unit_verifies() {
    // The unit names the installed binary; verify it against this build.
    let unit = read("broadcast-server.service");
    assert!(unit.contains("ExecStart=/usr/local/bin/broadcast-server start --config "));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broadcast-server.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/broadcast-server", server_bin()),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd; .ci/test.sh installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    assert!(
        !stderr.contains("broadcast-server.service"),
        "warnings about the unit: {stderr}"
    );
}

#[tokio::test]
async fn the_kubernetes_example_matches_the_server() {
    let docs = YamlLoader::load_from_str(&read("kubernetes.yaml")).expect("valid YAML");
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        ["ConfigMap", "Deployment", "Service", "PodDisruptionBudget"]
    );
    let of = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"].as_str() == Some(kind))
            .unwrap()
    };

    // The settings it mounts are valid.
    let toml = of("ConfigMap")["data"]["broadcast-server.toml"]
        .as_str()
        .expect("the config file");
    let file = TempFile::new("k8s.toml", toml);
    assert_valid_config(file.path()).await;

    // The probes are the server's, on the port the config listens on.
    let spec = &of("Deployment")["spec"]["template"]["spec"];
    let container = &spec["containers"][0];
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/livez")
    );
    let ws = container["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some("ws"))
        .expect("a ws port");
    assert_eq!(ws["containerPort"].as_i64(), Some(8080));
    assert!(toml.contains("port = 8080"), "{toml}");
    // The grace period outlasts the preStop pause, the drain and the
    // shutdown timeout (5 s by default).
    let grace = spec["terminationGracePeriodSeconds"].as_i64().unwrap();
    let pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_i64()
        .unwrap();
    let drain: i64 = toml
        .lines()
        .find_map(|l| l.strip_prefix("drain-period = "))
        .expect("a drain period")
        .parse()
        .unwrap();
    assert!(
        grace > pause + drain + 5,
        "grace {grace} s, preStop {pause} s, drain {drain} s"
    );
    assert_eq!(container["args"][0], Yaml::String("start".into()));
}
