//! The container and Kubernetes files: linted by hadolint and checkov, and every path, port and
//! metric they name exists in the server.

mod common;

use std::path::PathBuf;
use std::process::Command;

use mixgan::server::Endpoint;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tool(name: &str) -> PathBuf {
    common::tools_dir().join(name)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap()
}

/// Values of `key: value` lines in YAML or Dockerfile text.
fn values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().trim_start_matches("- ").strip_prefix(key))
        .map(|v| v.trim().trim_matches('"').to_string())
        .collect()
}

#[test]
fn hadolint_passes_the_dockerfile() {
    let out = Command::new(tool("hadolint")).arg(root().join("docker/Dockerfile")).output().expect("hadolint");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn checkov_passes_the_manifests() {
    let out = Command::new(tool("checkov"))
        .args(["-d", "deploy/k8s", "--framework", "kubernetes", "--quiet", "--compact", "--skip-download"])
        .current_dir(root())
        .output()
        .expect("checkov");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("Failed checks: 0"), "{text}");
}

#[test]
fn every_path_port_and_metric_named_exists_in_the_server() {
    let endpoints: Vec<&str> = Endpoint::ALL.iter().map(|e| e.path()).collect();
    let deployment = read("deploy/k8s/deployment.yaml");
    let paths = values(&deployment, "path:");
    assert!(paths.len() >= 3, "{paths:?}");
    for p in paths.iter().chain(values(&deployment, "prometheus.io/path:").iter()) {
        assert!(endpoints.contains(&p.as_str()), "the deployment names {p}, which the server does not serve");
    }
    assert_eq!(values(&deployment, "containerPort:"), vec!["8080"]);
    assert!(deployment.contains("\"0.0.0.0:8080\""));
    let dockerfile = read("docker/Dockerfile");
    assert!(dockerfile.contains("EXPOSE 8080") && dockerfile.contains("\"0.0.0.0:8080\""));
    assert!(dockerfile.contains("http://127.0.0.1:8080/healthz"));
    // The pod runs the image as tests/container.rs runs it: Kubernetes' `args` replace the
    // image's CMD whole, as the same user, with a read-only root file system.
    let cmd = r#"CMD ["serve", "--addr", "0.0.0.0:8080", "--models", "/app/models"]"#;
    assert_eq!(dockerfile.matches(cmd).count(), 1, "the runtime stage both targets start from has {cmd}");
    assert_eq!(dockerfile.matches(r#"ENTRYPOINT ["mixgan"]"#).count(), 1);
    assert!(deployment.contains(r#"args: ["serve", "--addr", "0.0.0.0:8080", "--models", "/app/models"]"#));
    assert_eq!(dockerfile.matches("USER 10001:10001").count(), 2);
    assert_eq!(values(&deployment, "runAsUser:"), vec!["10001"]);
    assert_eq!(values(&deployment, "runAsGroup:"), vec!["10001"]);
    assert_eq!(values(&deployment, "readOnlyRootFilesystem:"), vec!["true"]);
    assert!(deployment.contains("mountPath: /tmp"));
    let container_test = read("tests/container.rs");
    for flag in ["\"--read-only\"", "\"/tmp\"", "\"ALL\"", "MIXGAN_GRACE_PERIOD_S=30"] {
        assert!(container_test.contains(flag), "the container test runs the image with {flag}");
    }
    assert!(read("docker/compose.yaml").contains("\"8080:8080\""));
    let metrics = mixgan::server::metrics::Metrics::new();
    metrics.register_model("face");
    metrics.queue_seconds.with_label_values(&["face"]).observe(0.1);
    let text = metrics.render();
    for name in ["mixgan_queue_duration_seconds_sum", "mixgan_queue_duration_seconds_count"] {
        assert!(text.contains(name), "{name}");
        assert!(read("deploy/k8s/prometheus-adapter-rules.yaml")
            .contains(name.trim_end_matches("_sum").trim_end_matches("_count")));
    }
    // The environment variables the manifests set are settings the server reads.
    let known = toml::Table::try_from(mixgan::config::Config::default()).unwrap();
    for name in values(&deployment, "name:").iter().filter(|n| n.starts_with("MIXGAN_")) {
        let key = name.trim_start_matches("MIXGAN_").to_lowercase();
        assert!(known.contains_key(&key), "{name} is not a setting");
    }
    // The probes answer on a live server.
    let s = common::server::Server::start(&[], &[], true);
    for p in &paths {
        assert_eq!(s.get(p).status, 200, "{p}");
    }
}
