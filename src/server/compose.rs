//! `POST /v1/compose`: checks the body's type and size, hands the layout to
//! [`AppState::render`], and answers with the picture, or with `Accept: application/json`
//! the picture in base64 with the resolved regions and timings, or with
//! `Accept: text/event-stream` the request's progress events and then that JSON answer.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde_json::json;
use tokio_stream::StreamExt as _;

use super::error::ApiError;
use super::progress::{Frame, Watching};
use super::state::AppState;
use crate::pipeline::Rendered;
use crate::router::Background;

pub(super) async fn post_compose(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    state.engine()?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.to_ascii_lowercase().starts_with("application/json") {
        return Err(ApiError::UnsupportedMediaType(content_type.to_string()));
    }
    let limit = state.config.max_body_bytes;
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| ApiError::BodyTooLarge { limit })?;
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    if accept.contains("text/event-stream") {
        let frames = Watching::start(state.clone(), bytes.to_vec()).await?;
        let events = frames.map(|frame| Ok::<_, Infallible>(event(frame)));
        // The comments keep a quiet stream alive and find a client that left.
        return Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(1))).into_response());
    }
    let want_json = accept.contains("application/json");
    let rendered = state.render(bytes.to_vec(), None).await?;
    let timings = rendered.timings;
    let mut resp = if want_json {
        Json(describe(rendered)).into_response()
    } else {
        ([(header::CONTENT_TYPE, rendered.format.mime())], rendered.bytes).into_response()
    };
    // For the request's log line.
    resp.extensions_mut().insert(timings);
    Ok(resp)
}

/// One server-sent event: `event:` names it, `data:` is its JSON. The last is `result` (the
/// JSON answer) or `error` (the error body with its HTTP status).
fn event(frame: Frame) -> Event {
    let (name, data) = match frame {
        Frame::Progress(p) => {
            let data = serde_json::to_value(&p).unwrap_or_default();
            (data["event"].as_str().unwrap_or("progress").to_string(), data)
        }
        Frame::Done(done) => match *done {
            Ok(rendered) => ("result".into(), describe(rendered)),
            Err(e) => (
                "error".into(),
                json!({"status": e.status().as_u16(), "error": {"code": e.code(), "message": e.to_string()}}),
            ),
        },
    };
    Event::default().event(name).data(data.to_string())
}

/// The JSON answer: the picture in base64, what each region resolved to, the timings.
fn describe(rendered: Rendered) -> serde_json::Value {
    let Rendered { bytes, format, plan, timings, .. } = rendered;
    let regions: Vec<_> = plan
        .regions
        .iter()
        .map(|r| {
            let harmony = r
                .harmony
                .map(|h| json!({"ring_error_before": h.ring_error_before, "ring_error_after": h.ring_error_after}));
            json!({
                "source": r.source, "class": r.class, "model": r.model.name(), "seed": r.params.seed, "z": r.z,
                "box": [r.rect.x, r.rect.y, r.rect.w, r.rect.h],
                "visible": [r.visible.x, r.visible.y, r.visible.w, r.visible.h],
                "matte": r.matte_name(), "harmony": harmony,
            })
        })
        .collect();
    let background = match &plan.background {
        Background::Color(c) => json!({"color": format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])}),
        Background::Image(_) => json!({"image": true}),
        Background::Generated { model, params, .. } => json!({"model": model.name(), "seed": params.seed}),
    };
    let timings_ms: serde_json::Map<_, _> =
        timings.in_ms().into_iter().map(|(k, v)| (k.to_string(), v.into())).collect();
    json!({
        "image": base64::engine::general_purpose::STANDARD.encode(&bytes),
        "format": format!("{format:?}").to_lowercase(),
        "mime": format.mime(),
        "width": plan.width, "height": plan.height,
        "background": background,
        "regions": regions,
        "detections": plan.detections.iter().map(|d| json!({
            "source": d.source, "detector": d.detector, "class": d.class,
            "box": d.rect, "score": d.score, "region": d.region,
        })).collect::<Vec<_>>(),
        "timings_ms": timings_ms,
    })
}
