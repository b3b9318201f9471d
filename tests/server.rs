//! The service end to end: the real binary on an ephemeral loopback port, a real HTTP client.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::server::{agent, projection_layout, reply, Reply, Server};

const PORTRAIT: &str = include_str!("../examples/portrait.json");
const JSON: (&str, &str) = ("content-type", "application/json");

fn one_face(seed: u32) -> String {
    format!(
        r##"{{"width": 96, "height": 96, "background": {{"color": "#202020"}}, "regions": [{{"class": "face", "seed": {seed}, "box": [16, 16, 64, 64]}}]}}"##
    )
}

#[test]
fn compose_returns_the_picture_and_on_request_its_description() {
    let s = Server::start(&[], &[], true);
    let r = s.post("/v1/compose", &[JSON, ("x-request-id", "req-42")], PORTRAIT.as_bytes());
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("image/png"));
    assert_eq!(r.header("x-request-id"), Some("req-42"));
    let img = image::load_from_memory(&r.body).unwrap();
    assert_eq!((img.width(), img.height()), (512, 512));
    // The same layout gives the same bytes through the server as through `mixgan render`.
    let again = s.compose(PORTRAIT);
    assert_eq!(again.body, r.body);

    let j = s.post("/v1/compose", &[JSON, ("accept", "application/json")], PORTRAIT.as_bytes());
    assert_eq!(j.status, 200);
    let v = j.json();
    let bytes =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, v["image"].as_str().unwrap()).unwrap();
    assert_eq!(bytes, r.body);
    let regions = v["regions"].as_array().unwrap();
    assert_eq!(regions.len(), 3);
    let face = regions.iter().find(|g| g["class"] == "face").unwrap();
    assert_eq!(face["model"], "face");
    assert_eq!(face["seed"], 11);
    assert_eq!(face["box"], serde_json::json!([160, 82, 192, 236]));
    for stage in ["route", "queue", "generate", "composite", "encode", "total"] {
        assert!(v["timings_ms"][stage].as_f64().unwrap() >= 0.0, "{stage}");
    }
    assert!(r.header("x-request-id").is_some());
    assert!(s.get("/healthz").status == 200);

    let models = s.get("/v1/models").json();
    let names: Vec<_> =
        models["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["background", "face", "hand"]);
    assert_eq!(models["models"][1]["resolution"], 64);
    assert_eq!(models["models"][1]["device"], "cpu");
    assert_eq!(models["models"][1]["batching"]["max_batch"], 8);
    assert_eq!(models["models"][1]["ready"], true);
    assert_eq!(models["models"][1]["projects"], true);

    // Repair: the picture just served as the background, its face projected and regenerated.
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &r.body);
    let repair = format!(
        r#"{{"width": 512, "height": 512, "background": {{"image": "{b64}"}}, "regions": [{{"class": "face", "ellipse": [256, 200, 96, 118], "project": true, "project_steps": 20}}]}}"#
    );
    let fixed = s.post("/v1/compose", &[JSON, ("accept", "application/json")], repair.as_bytes());
    assert_eq!(fixed.status, 200, "{}", String::from_utf8_lossy(&fixed.body));
    let v = fixed.json();
    assert_eq!(v["background"], serde_json::json!({"image": true}));
    assert!(v["timings_ms"]["project"].as_f64().unwrap() > 0.0);
    let bytes =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, v["image"].as_str().unwrap()).unwrap();
    let (before, after) = (img.to_rgb8(), image::load_from_memory(&bytes).unwrap().to_rgb8());
    assert_eq!(before.get_pixel(10, 500), after.get_pixel(10, 500), "far from the face nothing changes");
}

#[test]
fn every_error_class_has_its_status_and_json_body() {
    let s = Server::start(&[("MIXGAN_MAX_BODY_BYTES", "4096")], &[], true);
    // Status, error code, headers, body.
    type Case<'a> = (u16, &'a str, Vec<(&'a str, &'a str)>, Vec<u8>);
    let cases: Vec<Case> = vec![
        (400, "malformed_json", vec![JSON], b"{\"width\": ".to_vec()),
        (
            422,
            "invalid_layout",
            vec![JSON],
            br#"{"width": 64, "height": 64, "regions": [{"class": "dragon", "box": [0, 0, 8, 8]}]}"#.to_vec(),
        ),
        (415, "unsupported_media_type", vec![("content-type", "text/plain")], one_face(1).into_bytes()),
        (415, "unsupported_media_type", vec![], one_face(1).into_bytes()),
        (413, "body_too_large", vec![JSON], vec![b' '; 10_000]),
    ];
    for (status, code, headers, body) in cases {
        let r = s.post("/v1/compose", &headers, &body);
        assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.code(), code);
        assert!(!r.json()["error"]["message"].as_str().unwrap().is_empty());
    }
    let r = s.post(
        "/v1/compose",
        &[JSON],
        br#"{"width": 64, "height": 64, "regions": [{"class": "dragon", "box": [0, 0, 8, 8]}]}"#,
    );
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("regions[0].class: unknown class `dragon`"));
    let r = s.get("/v2/nothing");
    assert_eq!((r.status, r.code().as_str()), (404, "not_found"));
    // Still serving after all that.
    assert_eq!(s.compose(&one_face(2)).status, 200);

    let slow = Server::start(&[("MIXGAN_REQUEST_TIMEOUT_MS", "1")], &[], true);
    let r = slow.compose(PORTRAIT);
    assert_eq!((r.status, r.code().as_str()), (504, "timeout"));
}

#[test]
fn a_full_queue_answers_503_at_once() {
    // Batches wait up to 2 s to fill, and each model queue holds one job.
    let s = Server::start(
        &[
            ("MIXGAN_QUEUE_CAPACITY", "1"),
            ("MIXGAN_MAX_WAIT_MS", "2000"),
            ("MIXGAN_MAX_BATCH", "64"),
            ("MIXGAN_WARMUP_ITERATIONS", "0"),
        ],
        &[],
        true,
    );
    let base = s.base.clone();
    let first = std::thread::spawn(move || {
        let a = agent(Some(Duration::from_secs(30)));
        let r = a
            .post(format!("{base}/v1/compose"))
            .header("content-type", "application/json")
            .send(one_face(1).as_bytes())
            .unwrap();
        r.status().as_u16()
    });
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let r = s.compose(&one_face(2));
    assert_eq!((r.status, r.code().as_str()), (503, "overloaded"), "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(t.elapsed() < Duration::from_millis(500), "the refusal took {:?}", t.elapsed());
    assert_eq!(first.join().unwrap(), 200);
    let metrics = String::from_utf8(s.get("/metrics").body).unwrap();
    assert!(metrics.contains("mixgan_rejected_total{reason=\"overload\"} 1"), "{metrics}");
}

#[test]
fn bearer_auth_guards_v1_only() {
    let s = Server::start(&[("MIXGAN_API_KEY", "s3cret")], &[], true);
    assert_eq!(s.compose(&one_face(1)).status, 401);
    assert_eq!(s.post("/v1/compose", &[JSON, ("authorization", "Bearer wrong")], one_face(1).as_bytes()).status, 401);
    assert_eq!(s.get("/v1/models").status, 401);
    let ok = s.post("/v1/compose", &[JSON, ("authorization", "Bearer s3cret")], one_face(1).as_bytes());
    assert_eq!(ok.status, 200);
    assert_eq!(s.get_with("/v1/models", &[("authorization", "Bearer s3cret")]).status, 200);
    for open in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        assert_eq!(s.get(open).status, 200, "{open}");
    }
}

#[test]
fn not_ready_until_warmed_up() {
    let s = Server::start(&[("MIXGAN_WARMUP_ITERATIONS", "60")], &[], false);
    let r = s.get("/readyz");
    assert_eq!(r.status, 503, "ready before warming up");
    assert_eq!(r.code(), "not_ready");
    assert_eq!(s.get("/healthz").status, 200, "alive while loading");
    assert_eq!(s.compose(&one_face(1)).code(), "not_ready");
    s.wait_ready(Duration::from_secs(120));
    assert_eq!(s.compose(&one_face(1)).status, 200);
}

#[test]
fn sigterm_drains_the_request_in_flight_then_exits_0() {
    // The request waits ~1.5 s in the batcher, so SIGTERM arrives while it is in flight.
    let mut s = Server::start(
        &[("MIXGAN_MAX_WAIT_MS", "1500"), ("MIXGAN_MAX_BATCH", "64"), ("MIXGAN_WARMUP_ITERATIONS", "0")],
        &[],
        true,
    );
    let base = s.base.clone();
    let req = std::thread::spawn(move || {
        let a = agent(Some(Duration::from_secs(30)));
        let mut r = a
            .post(format!("{base}/v1/compose"))
            .header("content-type", "application/json")
            .send(one_face(3).as_bytes())
            .unwrap();
        (r.status().as_u16(), r.body_mut().read_to_vec().unwrap())
    });
    std::thread::sleep(Duration::from_millis(400));
    s.signal("TERM");
    let (status, body) = req.join().unwrap();
    assert_eq!(status, 200);
    assert!(image::load_from_memory(&body).is_ok());
    assert_eq!(s.wait_exit(Duration::from_secs(30)), Some(0));
    assert!(s.stderr().contains("SIGTERM"), "{}", s.stderr());
}

#[test]
fn concurrent_requests_share_batches_and_each_shows_what_it_shows_alone() {
    let s = Server::start(
        &[("MIXGAN_MAX_WAIT_MS", "30"), ("MIXGAN_MAX_BATCH", "16"), ("MIXGAN_WARMUP_ITERATIONS", "0")],
        &[],
        true,
    );
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let base = s.base.clone();
            std::thread::spawn(move || {
                let a = agent(Some(Duration::from_secs(60)));
                (0..3)
                    .map(|i| {
                        let seed = t * 10 + i;
                        (
                            seed,
                            reply(
                                a.post(format!("{base}/v1/compose"))
                                    .header(JSON.0, JSON.1)
                                    .send(one_face(seed).as_bytes()),
                            ),
                        )
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let answers: Vec<(u32, Reply)> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert!(answers.iter().all(|(_, r)| r.status == 200));
    // Each request has one face patch: a mean batch above 1 means requests were batched together.
    let (sum, count) = s.histogram("mixgan_batch_size", "model=\"face\"");
    assert_eq!(sum, 24.0);
    assert!(sum / count > 1.0, "mean face batch {}", sum / count);
    // Batched with others, each answer shows its own layout: what the layout gives alone, but
    // for the float sums of a larger batch (within a level; another seed's face is tens off).
    let pixels = |body: &[u8]| image::load_from_memory(body).expect("a picture").to_rgb8();
    for (seed, batched) in &answers {
        let alone = s.compose(&one_face(*seed));
        assert_eq!(alone.status, 200);
        let (a, b) = (pixels(&batched.body), pixels(&alone.body));
        let worst = a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
        assert!(worst <= 2, "seed {seed}: batched differs from alone by {worst} levels");
    }
}

#[test]
fn metrics_pass_promtool_and_cover_the_pipeline() {
    let s = Server::start(&[], &[], true);
    assert_eq!(s.compose(PORTRAIT).status, 200);
    assert_eq!(s.compose("{").status, 400);
    let r = s.get("/metrics");
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let text = String::from_utf8(r.body).unwrap();
    for needle in [
        "mixgan_requests_total{route=\"/v1/compose\",status=\"200\"} 1",
        "mixgan_requests_total{route=\"/v1/compose\",status=\"400\"} 1",
        "mixgan_request_duration_seconds_bucket{route=\"/v1/compose\",le=\"0.1\"}",
        "mixgan_stage_duration_seconds_count{stage=\"route\"}",
        "mixgan_stage_duration_seconds_count{stage=\"queue\"}",
        "mixgan_stage_duration_seconds_count{stage=\"generate\"}",
        "mixgan_stage_duration_seconds_count{stage=\"composite\"}",
        "mixgan_stage_duration_seconds_count{stage=\"encode\"}",
        "mixgan_batch_size_bucket{model=\"hand\",le=\"2\"}",
        "mixgan_queue_depth{model=\"face\"} 0",
        "mixgan_in_flight_requests",
        "mixgan_rejected_total",
        "mixgan_models_loaded 3",
        "mixgan_ready 1",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in\n{text}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("metrics.txt");
    std::fs::write(&file, &text).unwrap();
    let out = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .expect("promtool (Debian package prometheus; `make test` installs it)");
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn openapi_lists_every_endpoint_and_each_answers() {
    let s = Server::start(&[], &[], true);
    let doc = s.get("/openapi.json").json();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["components"]["schemas"]["Layout"]["properties"]["regions"].is_object());
    assert!(doc["components"]["schemas"]["Error"].is_object());
    let paths = doc["paths"].as_object().unwrap();
    assert_eq!(paths.len(), 6);
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let r = match method.as_str() {
                "get" => s.get(path),
                _ => s.post(path, &[JSON], one_face(1).as_bytes()),
            };
            assert_ne!(r.status, 404, "{method} {path}");
            assert_ne!(r.status, 405, "{method} {path}");
        }
    }
}

#[test]
fn cors_is_off_unless_configured() {
    let preflight = |s: &Server| {
        let req = s
            .agent
            .options(s.url("/v1/compose"))
            .header("origin", "http://example.com")
            .header("access-control-request-method", "POST");
        let r = req.call().unwrap();
        r.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap().to_string())
    };
    let off = Server::start(&[], &[], true);
    assert_eq!(preflight(&off), None);
    let on = Server::start(&[("MIXGAN_CORS_ORIGINS", "http://example.com")], &[], true);
    assert_eq!(preflight(&on).as_deref(), Some("http://example.com"));
}

#[test]
fn json_logs_carry_the_request_id() {
    let s = Server::start(&[], &["--log-format", "json"], true);
    s.post("/v1/compose", &[JSON, ("x-request-id", "abc-123")], one_face(5).as_bytes());
    std::thread::sleep(Duration::from_millis(100));
    let line = s
        .stderr()
        .lines()
        .find(|l| l.contains("abc-123"))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("{}", s.stderr()));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["fields"]["request_id"], "abc-123");
    assert_eq!(v["fields"]["status"], 200);
}

#[test]
fn a_job_whose_client_left_is_dropped() {
    let s = Server::start(
        &[("MIXGAN_MAX_WAIT_MS", "1500"), ("MIXGAN_MAX_BATCH", "64"), ("MIXGAN_WARMUP_ITERATIONS", "0")],
        &[],
        true,
    );
    let impatient = agent(Some(Duration::from_millis(300)));
    let r =
        impatient.post(s.url("/v1/compose")).header("content-type", "application/json").send(one_face(7).as_bytes());
    assert!(r.is_err(), "the client should give up first");
    std::thread::sleep(Duration::from_millis(2000));
    let text = String::from_utf8(s.get("/metrics").body).unwrap();
    assert!(text.contains("mixgan_dropped_jobs_total{model=\"face\"} 1"), "{text}");
    assert_eq!(s.compose(&one_face(8)).status, 200);
}

#[test]
fn overload_gets_pictures_or_503_and_the_server_survives() {
    use mixgan::cli::loadtest::{closed_loop, open_loop, Target};
    let s = Server::start(&[("MIXGAN_LOG", "warn")], &[], true);
    let target = Target { url: s.base.clone(), api_key: None, layout: one_face(4).into_bytes() };
    let sustainable = closed_loop(&target, 8, Duration::from_secs(2)).rps();
    let r = open_loop(&target, 2.0 * sustainable, Duration::from_secs(5), 64, || {});
    let other: Vec<_> = r.statuses.keys().filter(|c| **c != 200 && **c != 503).collect();
    assert!(other.is_empty(), "answers other than 200/503: {:?}", r.statuses);
    assert!(r.ok() > 0, "{:?}", r.statuses);
    assert_eq!(s.get("/healthz").status, 200);
    assert_eq!(s.compose(&one_face(5)).status, 200);
}

#[test]
fn a_flood_of_projections_gets_503s_while_portraits_are_served() {
    // `mixgan loadtest --flood` against a real server: it fails on any answer but 200 or 503.
    let s = Server::start(&[("MIXGAN_LOG", "warn")], &[], true);
    let out = Command::new(common::bin())
        .args(["loadtest", "--flood", "--seconds", "6", "--flood-steps", "60", "--url", &s.base])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let line = |start: &str| text.lines().find(|l| l.starts_with(start)).unwrap_or_default().to_string();
    let flooded = line("layout, under the flood");
    assert!(flooded.contains("by status {200: ") && !flooded.contains("503"), "portraits are all served: {text}");
    assert!(line("projections").contains("503"), "the surplus projections are refused: {text}");
    assert!(text.contains("layout p99 under the flood / idle p50: "), "{text}");
}

#[test]
fn bad_settings_stop_the_server_before_it_listens() {
    let models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    // Variables, flags, and what the message must name.
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], &'a str);
    let cases: [Case; 4] = [
        (&[("MIXGAN_COMPOSITE_ON", "gpu")], &[], "MIXGAN_COMPOSITE_ON"),
        (&[], &["--device", "cuda:7"], "device"),
        (&[("MIXGAN_MAX_BATCH", "0")], &[], "max_batch"),
        (&[("MIXGAN_MAX_WIDTH", "wide")], &[], "MIXGAN_MAX_WIDTH"),
    ];
    for (env, args, named) in cases {
        let mut cmd = Command::new(common::bin());
        cmd.args(["serve", "--addr", "127.0.0.1:0", "--models"]).arg(&models).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success(), "{env:?} {args:?} started");
        assert!(!stdout.contains("listening"), "{env:?} {args:?} listened first: {stdout}");
        assert!(stderr.contains(named), "{env:?} {args:?}: {stderr}");
    }
}

#[test]
fn clients_that_hang_up_on_projections_stop_costing_anything() {
    // Search budget and CPU slots that admit all four (admission is the next test's subject).
    let s = Server::start(&[("MIXGAN_MAX_SEARCH_IN_FLIGHT", "4000"), ("MIXGAN_CPU_SLOTS", "8")], &[], true);
    let timed = || {
        let t = Instant::now();
        assert_eq!(s.compose(PORTRAIT).status, 200);
        t.elapsed()
    };
    let mut idle: Vec<Duration> = (0..5).map(|_| timed()).collect();
    idle.sort();
    let idle = idle[2];
    // Four clients ask for 1000-step projections (a minute of work each here) and hang up.
    let layout = projection_layout(64, 1000);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (url, layout) = (s.url("/v1/compose"), layout.clone());
            std::thread::spawn(move || {
                let impatient = agent(Some(Duration::from_millis(1000)));
                impatient.post(&url).header("content-type", "application/json").send(layout.as_bytes()).is_err()
            })
        })
        .collect();
    for c in clients {
        assert!(c.join().unwrap(), "the client should give up first");
    }
    // Within a second the server is idle again: no projection runs on for nobody.
    std::thread::sleep(Duration::from_millis(1000));
    let before = s.cpu_seconds();
    std::thread::sleep(Duration::from_millis(1000));
    let busy = s.cpu_seconds() - before;
    assert!(busy < 0.15, "the server used {busy:.2} s of CPU in the second after its clients left");
    // Medians of a few, so one slow answer on a busy test machine does not decide.
    let mut after: Vec<Duration> = (0..3).map(|_| timed()).collect();
    after.sort();
    let after = after[1];
    assert!(after <= idle * 2, "a portrait took {after:?} after the hang-ups, {idle:?} idle");
    let text = String::from_utf8(s.get("/metrics").body).unwrap();
    assert!(text.contains("mixgan_cancelled_total{reason=\"client_left\"} 4"), "{text}");
}

#[test]
fn searches_beyond_their_budget_get_503_while_plain_requests_go_on() {
    // One 1000-step projection fills the budget; a second is refused at once, a portrait is not.
    let s = Server::start(&[("MIXGAN_MAX_SEARCH_IN_FLIGHT", "1000")], &[], true);
    let layout = projection_layout(64, 1000);
    let first = {
        let (url, layout) = (s.url("/v1/compose"), layout.clone());
        std::thread::spawn(move || {
            let impatient = agent(Some(Duration::from_millis(3000)));
            impatient.post(&url).header("content-type", "application/json").send(layout.as_bytes()).is_err()
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let second = s.post("/v1/compose", &[JSON], layout.as_bytes());
    assert_eq!(second.status, 503, "{}", String::from_utf8_lossy(&second.body));
    assert_eq!(second.header("retry-after"), Some("1"));
    assert!(String::from_utf8_lossy(&second.body).contains("projections"), "{}", String::from_utf8_lossy(&second.body));
    assert!(started.elapsed() < Duration::from_millis(500), "refused at once");
    assert_eq!(s.compose(PORTRAIT).status, 200);
    assert!(first.join().unwrap(), "the first client gives up on its long search");
    let text = String::from_utf8(s.get("/metrics").body).unwrap();
    assert!(text.contains("mixgan_rejected_total{reason=\"search_budget\"} 1"), "{text}");
    // Its budget comes back when it ends: the next search is admitted (and hung up on).
    std::thread::sleep(Duration::from_millis(300));
    let impatient = agent(Some(Duration::from_millis(500)));
    let r = impatient.post(s.url("/v1/compose")).header("content-type", "application/json").send(layout.as_bytes());
    assert!(r.is_err(), "admitted, so the client timed out rather than getting a 503: {:?}", r.map(|r| r.status()));
}
