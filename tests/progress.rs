//! Progress streams, read by real clients: `curl -N` for the HTTP API's server-sent events,
//! the generated Python client for gRPC's `ComposeStream`, and hang-ups on both that stop the
//! work they asked for.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Command;
use std::time::Duration;

use common::server::{projection_layout, Server};
use mixgan::server::grpc::pb;
use serde_json::Value;

/// Reads a server-sent event stream into (event, data) pairs.
fn parse_events(text: &str) -> Vec<(String, Value)> {
    let mut events = Vec::new();
    for block in text.split("\n\n") {
        let field = |name: &str| block.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
        if let (Some(event), Some(data)) = (field("event:"), field("data:")) {
            events.push((event.to_string(), serde_json::from_str(data).unwrap()));
        }
    }
    events
}

#[test]
fn curl_reads_a_projection_s_progress_as_server_sent_events() {
    let s = Server::start(&[], &[], true);
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("repair.json");
    std::fs::write(&layout, projection_layout(64, 60)).unwrap();
    let out = Command::new("curl")
        .args(["-sN", "-D", "-", "-H", "content-type: application/json", "-H", "accept: text/event-stream"])
        .arg("--data-binary")
        .arg(format!("@{}", layout.display()))
        .arg(s.url("/v1/compose"))
        .output()
        .expect("curl runs");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.to_ascii_lowercase().contains("content-type: text/event-stream"), "{text}");
    let events = parse_events(&text);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    // In order: queued, planned, the search's steps, the face's batch, composited, the result.
    let mut kinds = names.clone();
    kinds.dedup();
    assert_eq!(kinds, ["queued", "planned", "step", "batch", "composited", "result"], "{names:?}");
    let planned = &events[1].1;
    assert_eq!((planned["width"].as_i64(), planned["search_steps"].as_u64()), (Some(64), Some(60)));
    assert_eq!(planned["jobs"][0]["model"], "face");
    let steps: Vec<&Value> = events.iter().filter(|(n, _)| n == "step").map(|(_, d)| d).collect();
    assert!(steps.len() >= 10, "a step event every few steps: {}", steps.len());
    let done: Vec<u64> = steps.iter().map(|d| d["done"].as_u64().unwrap()).collect();
    assert!(done.windows(2).all(|w| w[0] < w[1]), "{done:?}");
    assert_eq!((done.last(), steps[0]["total"].as_u64()), (Some(&60), Some(60)));
    assert_eq!(steps[0]["search"], "project");
    let loss = |d: &Value| d["loss"].as_f64().unwrap();
    assert!(loss(steps.last().unwrap()) < loss(steps[0]), "the search brings its loss down");
    let result = &events.last().unwrap().1;
    let png = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, result["image"].as_str().unwrap());
    let img = image::load_from_memory(&png.unwrap()).unwrap();
    assert_eq!((img.width(), img.height()), (64, 64));
    assert!(result["timings_ms"]["project"].as_f64().unwrap() > 0.0);

    // A layout refused before it is planned gets its own status, not a stream.
    let bad = s.post(
        "/v1/compose",
        &[("content-type", "application/json"), ("accept", "text/event-stream")],
        br#"{"width": 64, "height": 64, "regions": [{"class": "dragon", "box": [0, 0, 8, 8]}]}"#,
    );
    assert_eq!(bad.status, 422);
    assert!(bad.json()["error"]["message"].as_str().unwrap().contains("regions[0].class"), "{:?}", bad.json());
}

const PY_STREAM: &str = r#"
import sys, grpc
sys.path.insert(0, sys.argv[1])
import mixgan_pb2, mixgan_pb2_grpc
with grpc.insecure_channel(sys.argv[2]) as channel:
    stub = mixgan_pb2_grpc.MixganStub(channel)
    for event in stub.ComposeStream(mixgan_pb2.ComposeRequest(layout_json=open(sys.argv[3]).read())):
        kind = event.WhichOneof("event")
        if kind == "planned":
            print("planned", event.planned.width, event.planned.search_steps)
        elif kind == "step":
            print("step", event.step.search, event.step.done, event.step.total, event.step.loss)
        elif kind == "batch":
            print("batch", event.batch.model, event.batch.patches)
        elif kind == "result":
            print("result", event.result.mime, event.result.width, len(event.result.image))
        else:
            print(kind)
    try:
        for event in stub.ComposeStream(mixgan_pb2.ComposeRequest(layout_json='{"width": 8}')):
            print("unexpected", event)
    except grpc.RpcError as e:
        print("error", e.code().name)
"#;

#[test]
fn the_python_grpc_client_reads_the_same_events() {
    let s = Server::start(&[], &[], true);
    let dir = tempfile::tempdir().unwrap();
    let python = common::python_grpc_client(dir.path());
    let layout = dir.path().join("repair.json");
    std::fs::write(&layout, projection_layout(64, 40)).unwrap();
    let target = s.base.trim_start_matches("http://").to_string();
    let run = Command::new(python).args(["-c", PY_STREAM]).arg(dir.path()).arg(&target).arg(&layout).output().unwrap();
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{text}{}", String::from_utf8_lossy(&run.stderr));
    let lines: Vec<&str> = text.lines().collect();
    let mut kinds: Vec<&str> = lines.iter().map(|l| l.split(' ').next().unwrap()).collect();
    kinds.dedup();
    assert_eq!(kinds, ["queued", "planned", "step", "batch", "composited", "result", "error"], "{text}");
    assert!(text.contains("planned 64 40\n"), "{text}");
    assert!(text.contains("step project 40 40 "), "{text}");
    assert!(text.contains("batch face 1\n"), "{text}");
    assert!(text.contains("result image/png 64 "), "{text}");
    assert!(text.contains("error INVALID_ARGUMENT"), "{text}");
}

#[test]
fn hanging_up_on_either_stream_stops_its_search() {
    let s = Server::start(&[("MIXGAN_MAX_SEARCH_IN_FLIGHT", "4000")], &[], true);
    let layout = projection_layout(64, 1000);
    // Server-sent events: read the first step, then hang up.
    {
        let r = s
            .agent
            .post(s.url("/v1/compose"))
            .header("content-type", "application/json")
            .header("accept", "text/event-stream")
            .send(layout.as_bytes())
            .unwrap();
        let mut lines = BufReader::new(r.into_body().into_reader()).lines();
        assert!(lines.by_ref().map_while(Result::ok).any(|l| l == "event: step"));
    }
    // gRPC: the same, then drop the call.
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        let mut client = pb::mixgan_client::MixganClient::connect(s.base.clone()).await.unwrap();
        let req = pb::ComposeRequest { layout_json: layout.clone() };
        let mut stream = client.compose_stream(req).await.unwrap().into_inner();
        while let Some(event) = stream.message().await.unwrap() {
            if matches!(event.event, Some(pb::compose_event::Event::Step(_))) {
                break;
            }
        }
    });
    // Within a second of the hang-ups the server is idle.
    std::thread::sleep(Duration::from_millis(1000));
    let before = s.cpu_seconds();
    std::thread::sleep(Duration::from_millis(1000));
    let busy = s.cpu_seconds() - before;
    assert!(busy < 0.15, "the server used {busy:.2} s of CPU in the second after its clients left");
    let text = String::from_utf8(s.get("/metrics").body).unwrap();
    assert!(text.contains("mixgan_cancelled_total{reason=\"client_left\"} 2"), "{text}");
}
