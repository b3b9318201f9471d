//! The layout editor at `/` in a real headless Chromium, driven by playwright-core
//! (`tests/browser/editor.cjs`) against a real `mixgan serve`; then the files it downloaded
//! are checked here. With `MIXGAN_SCREENSHOTS=DIR` the page's screenshots are kept there
//! (the README's come from `MIXGAN_SCREENSHOTS=docs/ui`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::server::Server;

const PORTRAIT: &str = include_str!("../examples/portrait.json");

fn rgb(path: &Path) -> image::RgbImage {
    image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8()
}

#[test]
fn the_editor_draws_composes_undoes_repairs_and_downloads() {
    let s = Server::start(&[], &[], true);
    let work = tempfile::tempdir().unwrap();
    let shots = std::env::var_os("MIXGAN_SCREENSHOTS").map(PathBuf::from).unwrap_or_else(|| work.path().into());
    std::fs::create_dir_all(&shots).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/editor.cjs");
    let out = Command::new("node")
        .arg(script)
        .arg(&s.base)
        .arg(work.path())
        .arg(&shots)
        .env("MIXGAN_NODE_TOOLS", common::node_tools())
        .output()
        .expect("node runs (make test installs it)");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the browser session failed:\n{stdout}\n{stderr}\nserver:\n{}", s.stderr());
    assert!(stdout.contains("ok the progress bar followed the projection"), "{stdout}");

    // The downloaded layout composes to the downloaded picture.
    let picture = std::fs::read(work.path().join("picture.png")).unwrap();
    let layout = std::fs::read(work.path().join("layout.json")).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&layout).unwrap();
    assert_eq!((v["width"].as_i64(), v["height"].as_i64()), (Some(256), Some(256)));
    assert!(v["label_map"]["png"].is_string() && v["regions"][1]["mask"].is_string(), "{v}");
    let again = s.post("/v1/compose", &[("content-type", "application/json")], &layout);
    assert_eq!(again.status, 200);
    assert_eq!(again.body, picture, "the downloaded layout gives the downloaded picture");

    // The example opened in the editor gives the example's own picture.
    let portrait = std::fs::read(work.path().join("portrait.png")).unwrap();
    assert_eq!(portrait, s.compose(PORTRAIT).body, "the portrait example through the editor differs");

    // The repair kept the picture outside the marked face and changed it inside.
    let (before, after) = (rgb(&work.path().join("picture.png")), rgb(&work.path().join("repaired.png")));
    assert_eq!(after.dimensions(), (256, 256));
    for (x, y) in [(4, 4), (250, 250), (20, 200), (240, 128)] {
        assert_eq!(before.get_pixel(x, y), after.get_pixel(x, y), "outside the region at ({x}, {y})");
    }
    let inside = (100..156).flat_map(|x| (80..160).map(move |y| (x, y)));
    let changed = inside.filter(|&(x, y)| before.get_pixel(x, y) != after.get_pixel(x, y)).count();
    assert!(changed > 1000, "the projected face changed only {changed} pixels");
}

#[test]
fn the_page_and_its_assets_are_served_from_the_binary() {
    let s = Server::start(&[("MIXGAN_API_KEY", "k3y")], &[], true);
    // The page is open; the API it calls is not.
    let page = s.get("/");
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").unwrap().starts_with("text/html"));
    let html = String::from_utf8(page.body).unwrap();
    let ui = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/server/ui");
    for entry in std::fs::read_dir(&ui).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name == "index.html" {
            continue;
        }
        let asset = format!("/ui/{name}");
        assert!(html.contains(&asset), "the page loads {asset}");
        let served = s.get(&asset);
        assert_eq!(served.status, 200, "{asset}");
        assert_eq!(served.body, std::fs::read(ui.join(&name)).unwrap(), "{asset}");
    }
    assert_eq!(s.get("/ui/nope.js").status, 404);
    assert!(!html.contains("http://") && !html.contains("https://"), "the page loads nothing from elsewhere");
    assert_eq!(s.get("/v1/models").status, 401);
    // Every example of examples/ is offered, byte for byte.
    let listed = s.get("/ui/examples/").json();
    let mut names: Vec<String> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    let mut offered: Vec<String> = listed.as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()).collect();
    offered.sort();
    assert_eq!(offered, names);
    for name in names {
        let served = s.get(&format!("/ui/examples/{name}"));
        let file = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(&name)).unwrap();
        assert_eq!(served.body, file, "{name}");
    }
    assert_eq!(s.get("/ui/examples/../Cargo.toml").status, 404);
    assert_eq!(s.get("/ui/examples/nope.json").status, 404);
}
