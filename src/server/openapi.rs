//! The OpenAPI 3.1 document, built from the endpoint table the server mounts
//! ([`Endpoint::ALL`]), the error codes `ApiError` answers and the published layout JSON
//! Schema (which a test holds to the parser), so it cannot drift.

use serde_json::{json, Value};

use super::error::ApiError;
use super::routes::Endpoint;

const LAYOUT_SCHEMA: &str = include_str!("../../schema/layout.schema.json");

/// The layout schema as OpenAPI components: the top level as `Layout`, its `$defs` as
/// `Layout_<name>`, with references rewritten to match.
fn layout_components() -> serde_json::Map<String, Value> {
    let text = LAYOUT_SCHEMA.replace("\"#/$defs/", "\"#/components/schemas/Layout_");
    let mut schema: Value = serde_json::from_str(&text).expect("the bundled layout schema is JSON");
    let obj = schema.as_object_mut().expect("the layout schema is an object");
    let defs = obj.remove("$defs").and_then(|d| d.as_object().cloned()).unwrap_or_default();
    obj.remove("$schema");
    obj.remove("$id");
    let mut out = serde_json::Map::new();
    out.insert("Layout".into(), schema);
    for (name, def) in defs {
        out.insert(format!("Layout_{name}"), def);
    }
    out
}

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

pub fn document() -> Value {
    let mut schemas = layout_components();
    schemas.insert(
        "Error".into(),
        json!({
            "type": "object", "required": ["error"],
            "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
                "code": {"type": "string", "enum": ApiError::CODES},
                "message": {"type": "string"}}}}
        }),
    );
    schemas.insert(
        "ComposeResult".into(),
        json!({
            "type": "object",
            "properties": {
                "image": {"type": "string", "contentEncoding": "base64"},
                "format": {"enum": ["png", "jpeg", "webp"]},
                "mime": {"type": "string"},
                "width": {"type": "integer"}, "height": {"type": "integer"},
                "background": {"type": "object", "description": "{\"color\": \"#rrggbb\"}, {\"model\", \"seed\"} or {\"image\": true}"},
                "regions": {"type": "array", "items": {"type": "object", "properties": {
                    "source": {"type": "string"}, "class": {"type": ["string", "null"]}, "model": {"type": "string"},
                    "seed": {"type": "integer"}, "z": {"type": "number"},
                    "box": {"type": "array", "items": {"type": "integer"}, "description": "[x, y, w, h] before clipping"},
                    "visible": {"type": "array", "items": {"type": "integer"}, "description": "[x, y, w, h] on the canvas"}}}},
                "detections": {"type": "array", "description": "What the layout's `detect` entries found", "items": {"type": "object", "properties": {
                    "source": {"type": "string"}, "detector": {"type": "string"}, "class": {"type": "string"},
                    "box": {"type": "array", "items": {"type": "number"}, "description": "[x, y, w, h] as found"},
                    "score": {"type": "number"},
                    "region": {"type": ["string", "null"], "description": "The region it became; null when min_size, max_size or top_k left it out"}}}},
                "timings_ms": {"type": "object", "properties": {
                    "route": {"type": "number"}, "detect": {"type": "number"}, "project": {"type": "number"}, "queue": {"type": "number"}, "generate": {"type": "number"},
                    "composite": {"type": "number"}, "encode": {"type": "number"}, "total": {"type": "number"}}}
            }
        }),
    );
    schemas.insert(
        "Model".into(),
        json!({"type": "object", "properties": {
            "name": {"type": "string"}, "classes": {"type": "array", "items": {"type": "string"}},
            "kind": {"type": "string"}, "resolution": {"type": "integer"}, "channels": {"type": "integer"},
            "c_dim": {"type": "integer"}, "device": {"type": "string"},
            "batching": {"type": "object", "properties": {"max_batch": {"type": "integer"}, "max_wait_ms": {"type": "integer"}}},
            "queue_depth": {"type": "integer"}, "ready": {"type": "boolean"},
            "projects": {"type": "boolean", "description": "Regions served by it may `project`."},
            "precision": {"type": ["string", "null"], "enum": ["auto", "fp32", "fp16", "bf16", null],
                          "description": "A native generator's arithmetic; null for TorchScript models."}}}),
    );
    let mut paths = serde_json::Map::new();
    for endpoint in Endpoint::ALL {
        let summary = endpoint.summary();
        let mut op = match endpoint {
            Endpoint::Compose => json!({
                "summary": summary,
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Layout"}}}},
                "responses": {
                    "200": {"description": "The picture; with `Accept: application/json`, the picture in base64 with the resolved regions and timings; with `Accept: text/event-stream`, server-sent events (queued, planned, step, batch, composited) ending with `result` (the JSON answer) or `error`",
                            "content": {"image/png": {}, "image/jpeg": {}, "image/webp": {},
                                        "application/json": {"schema": {"$ref": "#/components/schemas/ComposeResult"}},
                                        "text/event-stream": {"schema": {"type": "string"}}}},
                    "400": error_response("The body is not JSON"),
                    "401": error_response("Missing or wrong bearer token"),
                    "413": error_response("The body is too large"),
                    "415": error_response("The body is not application/json"),
                    "422": error_response("The router refused the layout; the message names the field"),
                    "503": error_response("Overloaded (a queue is full) or not ready; see Retry-After"),
                    "504": error_response("The request timed out"),
                    "500": error_response("Anything else")
                }
            }),
            Endpoint::Models => json!({
                "summary": summary,
                "responses": {"200": {"description": "The models", "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"models": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}}}}}}},
                    "401": error_response("Missing or wrong bearer token"), "503": error_response("Not ready")}
            }),
            Endpoint::Readyz => json!({"summary": summary, "responses": {
                "200": {"description": "Ready", "content": {"application/json": {}}}, "503": error_response("Not ready")}}),
            Endpoint::Metrics => {
                json!({"summary": summary, "responses": {"200": {"description": "Prometheus text format", "content": {"text/plain": {}}}}})
            }
            Endpoint::Healthz | Endpoint::OpenApi => {
                json!({"summary": summary, "responses": {"200": {"description": "OK", "content": {"application/json": {}}}}})
            }
        };
        if endpoint.guarded() {
            op["security"] = json!([{"bearer": []}, {}]);
        }
        paths.insert(endpoint.path().to_string(), json!({ endpoint.method(): op }));
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "mixgan", "version": env!("CARGO_PKG_VERSION"),
                 "description": "A mixture of StyleGANs: a layout in, one composed picture out."},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_resolves() {
        let doc = document();
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for part in text.split("\"#/components/schemas/").skip(1) {
            let target = part.split('"').next().unwrap();
            let name = target.split('/').next().unwrap();
            assert!(schemas.contains_key(name), "dangling reference to {target}");
        }
        assert!(!text.contains("$defs"));
        assert_eq!(doc["paths"].as_object().unwrap().len(), Endpoint::ALL.len());
    }
}
