//! The layout editor at `/`: a page, its script and style sheet, and the bundled example
//! layouts, all compiled into the binary (no CDN, nothing fetched at run time). The page speaks
//! only the documented API; this module serves files and nothing else.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

const INDEX: &str = include_str!("ui/index.html");

/// The page's scripts (loaded in this order) and its style sheet, under `/ui/`.
pub const ASSETS: [(&str, &str); 6] = [
    ("state.js", include_str!("ui/state.js")),
    ("layout.js", include_str!("ui/layout.js")),
    ("compose.js", include_str!("ui/compose.js")),
    ("canvas.js", include_str!("ui/canvas.js")),
    ("panels.js", include_str!("ui/panels.js")),
    ("editor.css", include_str!("ui/editor.css")),
];

/// The example layouts of `examples/`, offered by the page's "open an example".
pub const EXAMPLES: [(&str, &str); 3] = [
    ("portrait.json", include_str!("../../examples/portrait.json")),
    ("crowd.json", include_str!("../../examples/crowd.json")),
    ("label_map.json", include_str!("../../examples/label_map.json")),
];

/// The page's routes, open to all (the API calls it makes carry the key the user enters).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { file("text/html; charset=utf-8", INDEX) }))
        .route("/ui/examples/", get(|| async { Json(EXAMPLES.map(|(name, _)| name)) }))
        .route("/ui/examples/{name}", get(example))
        .route("/ui/{name}", get(asset))
}

fn file(mime: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, mime), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

async fn asset(Path(name): Path<String>) -> Response {
    let mime = if name.ends_with(".css") { "text/css; charset=utf-8" } else { "text/javascript; charset=utf-8" };
    match ASSETS.iter().find(|(n, _)| *n == name) {
        Some((_, text)) => file(mime, text),
        None => missing(&name),
    }
}

async fn example(Path(name): Path<String>) -> Response {
    match EXAMPLES.iter().find(|(n, _)| *n == name) {
        Some((_, text)) => file("application/json", text),
        None => missing(&name),
    }
}

fn missing(name: &str) -> Response {
    let body = serde_json::json!({"error": {"code": "not_found", "message": format!("no file `{name}` under /ui/")}});
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}
