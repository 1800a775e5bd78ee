//! The public key, as Keysmith JSON and as a JWKS.

use axum::extract::State;
use axum::Json;
use keysmith_core::token::public_key_base64url;
use serde_json::{json, Value};

use super::AppState;

pub async fn public_key(State(state): State<AppState>) -> Json<Value> {
    Json(crate::signing::public_key_json(&state.signer.public()))
}

pub async fn jwks(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "keys": [{
            "kty": "OKP",
            "crv": "Ed25519",
            "alg": "EdDSA",
            "use": "sig",
            "kid": state.signer.key_id(),
            "x": public_key_base64url(&state.signer.public()),
        }]
    }))
}
