//! The layout editor at `/`: a page, its script and style sheet, and the bundled example
//! layouts, all compiled into the binary (no CDN, nothing fetched at run time). The page speaks
//! only the documented API; this module serves files and nothing else.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/editor.js");
const STYLE: &str = include_str!("ui/editor.css");

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
        .route("/ui/editor.js", get(|| async { file("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/ui/editor.css", get(|| async { file("text/css; charset=utf-8", STYLE) }))
        .route("/ui/examples/", get(|| async { Json(EXAMPLES.map(|(name, _)| name)) }))
        .route("/ui/examples/{name}", get(example))
}

fn file(mime: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, mime), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

async fn example(Path(name): Path<String>) -> Response {
    match EXAMPLES.iter().find(|(n, _)| *n == name) {
        Some((_, text)) => file("application/json", text),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": {"code": "not_found", "message": format!("no example `{name}`")}})),
        )
            .into_response(),
    }
}
