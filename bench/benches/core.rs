//! Micro-benchmarks of the per-request work that needs no storage: the key
//! check, domain normalisation, the JSON of the request and answer, token
//! signing and verification.
//!
//! `cargo bench -p keysmith-bench --bench core`
#![forbid(unsafe_code)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use ed25519_dalek::SigningKey;
use keysmith_core::domain::normalize_domain;
use keysmith_core::key::check_key;
use keysmith_core::token::{self, Claims, KeySet};
use keysmith_core::wire::{LicenseSummary, ValidateRequest, ValidateResponse};
use keysmith_core::{Code, LicenseKey, Status};

/// The claims of a typical `VALID` answer.
fn claims(key: &LicenseKey) -> Claims {
    Claims {
        iss: "keysmith".into(),
        sub: Some("lic_8J2K4M6P9Q".into()),
        key_sha256: key.sha256_hex(),
        valid: true,
        code: Code::Valid,
        status: Some(Status::Active),
        plan: Some("professional".into()),
        features: vec!["sso".into(), "audit-log".into()],
        license_expires_at: Some("2027-03-06T00:00:00Z".into()),
        domain: Some("app1.customer42.example.com".into()),
        fingerprint: None,
        nonce: Some("0123456789abcdef".into()),
        iat: 1_772_755_200,
        exp: 1_773_360_000,
    }
}

fn key_check(c: &mut Criterion) {
    let key = LicenseKey::generate("KS").expect("valid prefix");
    let canonical = key.as_str().to_owned();
    // What a user might paste: lowercase, no dashes, O for 0 and I for 1.
    let sloppy = canonical
        .replace('-', "")
        .to_lowercase()
        .replace('0', "o")
        .replace('1', "i");
    let mut typo = canonical.clone().into_bytes();
    typo[4] = if typo[4] == b'A' { b'B' } else { b'A' };
    let typo = String::from_utf8(typo).expect("ASCII");

    let mut group = c.benchmark_group("key");
    group.bench_function("check_key", |b| b.iter(|| check_key(black_box(&canonical))));
    group.bench_function("check_key_sloppy_input", |b| {
        b.iter(|| check_key(black_box(&sloppy)))
    });
    group.bench_function("check_key_typo", |b| b.iter(|| check_key(black_box(&typo))));
    group.bench_function("parse", |b| {
        b.iter(|| LicenseKey::parse(black_box(&canonical)))
    });
    group.bench_function("sha256_hex", |b| b.iter(|| black_box(&key).sha256_hex()));
    group.finish();
}

fn request_and_answer(c: &mut Criterion) {
    let key = LicenseKey::generate("KS").expect("valid prefix");
    let body = format!(
        r#"{{"key":"{}","domain":"app1.customer42.example.com","nonce":"0123456789abcdef"}}"#,
        key.as_str()
    );
    let signing_key = SigningKey::from_bytes(&[7; 32]);
    let answer = ValidateResponse {
        valid: true,
        code: Code::Valid,
        error: None,
        message: None,
        license: Some(LicenseSummary {
            id: "lic_8J2K4M6P9Q".into(),
            status: Status::Active,
            plan: "professional".into(),
            expires_at: None,
            features: vec!["sso".into(), "audit-log".into()],
        }),
        nonce: Some("0123456789abcdef".into()),
        token: Some(token::sign(&signing_key, &claims(&key))),
    };

    let mut group = c.benchmark_group("wire");
    group.bench_function("parse_validate_request", |b| {
        b.iter(|| serde_json::from_slice::<ValidateRequest>(black_box(body.as_bytes())))
    });
    group.bench_function("normalize_domain", |b| {
        b.iter(|| normalize_domain(black_box("App1.Customer42.Example.COM.")))
    });
    group.bench_function("serialize_validate_response", |b| {
        b.iter(|| serde_json::to_vec(black_box(&answer)))
    });
    // The server's way: the token written into the answer as it is.
    let (unsigned, token) = (
        ValidateResponse {
            token: None,
            ..answer.clone()
        },
        answer.token.clone(),
    );
    group.bench_function("answer_json_with_token", |b| {
        b.iter(|| black_box(&unsigned).to_json_with(black_box(token.as_deref())))
    });
    group.finish();
}

fn tokens(c: &mut Criterion) {
    let key = LicenseKey::generate("KS").expect("valid prefix");
    let signing_key = SigningKey::from_bytes(&[7; 32]);
    let claims = claims(&key);
    let signed = token::sign(&signing_key, &claims);
    let mut trusted = KeySet::default();
    trusted.push(signing_key.verifying_key());

    // The server's path: a TokenSigner kept for the process, signing with
    // AWS-LC (keysmith-core feature `aws-lc`, on through keysmith-server).
    let signer = token::TokenSigner::new(signing_key.clone());
    // The JWS signing input of the same token, for the raw signature costs.
    let input = signed.rsplit_once('.').expect("compact JWS").0.to_owned();

    let mut group = c.benchmark_group("token");
    group.bench_function("sign", |b| b.iter(|| signer.sign(black_box(&claims))));
    group.bench_function("signature-ed25519-dalek", |b| {
        b.iter(|| ed25519_dalek::Signer::sign(&signing_key, black_box(input.as_bytes())))
    });
    group.bench_function("verify", |b| b.iter(|| trusted.verify(black_box(&signed))));
    group.bench_function("key_id", |b| {
        b.iter(|| token::key_id(black_box(&signing_key.verifying_key())))
    });
    group.finish();
}

criterion_group!(benches, key_check, request_and_answer, tokens);
criterion_main!(benches);
