//! The gRPC API on the HTTP port, through a Python client generated from proto/ by
//! grpcio-tools and through the Rust (tonic) client: the same picture bytes as HTTP, errors
//! with gRPC codes and the HTTP messages, health following readiness.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::server::Server;
use mixgan::server::grpc::pb;

const PORTRAIT: &str = include_str!("../examples/portrait.json");

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

const PY_CLIENT: &str = r#"
import sys, grpc
sys.path.insert(0, sys.argv[1])
import mixgan_pb2, mixgan_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
target, layout_path, out_path = sys.argv[2], sys.argv[3], sys.argv[4]
with grpc.insecure_channel(target) as channel:
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    print("health", health_pb2.HealthCheckResponse.ServingStatus.Name(health.status))
    stub = mixgan_pb2_grpc.MixganStub(channel)
    reply = stub.Compose(mixgan_pb2.ComposeRequest(layout_json=open(layout_path).read()))
    open(out_path, "wb").write(reply.image)
    print("mime", reply.mime, reply.width, reply.height, len(reply.regions))
    try:
        stub.Compose(mixgan_pb2.ComposeRequest(layout_json='{"width": 8, "height": 8, "regions": [{"class": "dragon", "box": [0, 0, 4, 4]}]}'))
    except grpc.RpcError as e:
        print("error", e.code().name, e.details())
    models = stub.ListModels(mixgan_pb2.ListModelsRequest())
    print("models", ",".join(m.name for m in models.models))
"#;

#[test]
fn a_python_grpc_client_gets_the_bytes_http_gets() {
    let s = Server::start(&[], &[], true);
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = common::python_grpc_client(dir.path());
    let out = dir.path().join("grpc.png");
    let target = s.base.trim_start_matches("http://").to_string();
    let run = Command::new(python)
        .args(["-c", PY_CLIENT])
        .arg(dir.path())
        .arg(&target)
        .arg(root.join("examples/portrait.json"))
        .arg(&out)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{text}{}", String::from_utf8_lossy(&run.stderr));
    assert!(text.contains("health SERVING"), "{text}");
    assert!(text.contains("mime image/png 512 512 3"), "{text}");
    assert!(text.contains("error INVALID_ARGUMENT regions[0].class: unknown class `dragon`"), "{text}");
    assert!(text.contains("models background,face,hand"), "{text}");
    let http = s.compose(PORTRAIT);
    assert_eq!(http.status, 200);
    assert_eq!(std::fs::read(&out).unwrap(), http.body, "gRPC and HTTP pictures differ");
}

#[test]
fn the_rust_client_maps_errors_and_auth() {
    let s = Server::start(&[("MIXGAN_API_KEY", "k3y")], &[], true);
    runtime().block_on(async {
        let mut client = pb::mixgan_client::MixganClient::connect(s.base.clone()).await.unwrap();
        let req = || pb::ComposeRequest { layout_json: PORTRAIT.to_string() };
        let err = client.compose(req()).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        let mut authed = tonic::Request::new(req());
        authed.metadata_mut().insert("authorization", "Bearer k3y".parse().unwrap());
        let reply = client.compose(authed).await.unwrap().into_inner();
        assert_eq!((reply.width, reply.height, reply.mime.as_str()), (512, 512, "image/png"));
        assert!(reply.timings.unwrap().total_ms > 0.0);
        let mut bad = tonic::Request::new(pb::ComposeRequest { layout_json: "{".into() });
        bad.metadata_mut().insert("authorization", "Bearer k3y".parse().unwrap());
        let err = client.compose(bad).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("invalid JSON"), "{}", err.message());
    });
    let metrics = String::from_utf8(s.get("/metrics").body).unwrap();
    assert!(
        metrics.contains("mixgan_requests_total{route=\"/mixgan.v1.Mixgan/Compose\",status=\"grpc_0\"} 1"),
        "{metrics}"
    );
}

#[test]
fn grpc_health_follows_readiness() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let s = Server::start(&[("MIXGAN_WARMUP_ITERATIONS", "60")], &[], false);
    runtime().block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(s.base.clone()).unwrap().connect().await.unwrap();
        let mut health = HealthClient::new(channel);
        let status = |r: tonic::Response<tonic_health::pb::HealthCheckResponse>| r.into_inner().status;
        let first = status(health.check(HealthCheckRequest { service: String::new() }).await.unwrap());
        assert_eq!(first, ServingStatus::NotServing as i32, "serving before warm-up");
        let start = Instant::now();
        loop {
            let now = status(health.check(HealthCheckRequest { service: "mixgan.v1.Mixgan".into() }).await.unwrap());
            if now == ServingStatus::Serving as i32 {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(120), "never serving");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert_eq!(s.get("/readyz").status, 200);
}

/// The one pipeline: HTTP, gRPC and `mixgan render` give the same bytes for every example.
#[test]
fn http_grpc_and_render_give_the_same_bytes_for_every_example() {
    let s = Server::start(&[], &[], true);
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for name in ["portrait", "label_map", "crowd"] {
        let path = root.join(format!("examples/{name}.json"));
        let layout = std::fs::read_to_string(&path).unwrap();
        let http = s.compose(&layout);
        assert_eq!(http.status, 200, "{name}: {}", String::from_utf8_lossy(&http.body));
        let grpc = runtime().block_on(async {
            let mut client = pb::mixgan_client::MixganClient::connect(s.base.clone()).await.unwrap();
            client.compose(pb::ComposeRequest { layout_json: layout.clone() }).await.unwrap().into_inner().image
        });
        let out = dir.path().join(name);
        let run = Command::new(common::bin())
            .arg("render")
            .arg(&path)
            .arg("-o")
            .arg(&out)
            .arg("--models")
            .arg(root.join("models"))
            .output()
            .unwrap();
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        let rendered = std::fs::read(&out).unwrap();
        assert!(grpc == http.body, "{name}: gRPC and HTTP pictures differ");
        assert!(rendered == http.body, "{name}: `mixgan render` and HTTP pictures differ");
    }
}
