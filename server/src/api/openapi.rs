//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 document of the whole API.
//!
//! Written by hand in `server/openapi.json` and held to the code from two
//! sides: `tests/tests/openapi.rs` checks that the router serves exactly the
//! documented routes and that real answers match the documented schemas, and
//! `scripts/schemathesis.sh` fuzzes a live server against it.

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;

/// The document, as served.
pub const DOCUMENT: &str = include_str!("../../openapi.json");

pub async fn document() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], DOCUMENT)
}

#[cfg(test)]
mod tests {
    use super::DOCUMENT;

    #[test]
    fn the_document_is_openapi_3_1_json() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).expect("openapi.json is JSON");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."));
        assert!(doc["paths"].as_object().is_some_and(|p| !p.is_empty()));
    }
}
