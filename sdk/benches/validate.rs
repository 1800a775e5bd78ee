//! Criterion micro-benchmarks of the SDK's local work:
//!
//! - `check_key`: the local key check (target ≤ 1 µs);
//! - `validate_offline`: an answer from the cache — read the file, verify the
//!   token's Ed25519 signature, match its claims, apply the offline rules
//!   (target ≤ 100 µs).
//!
//! `cargo bench -p keysmith --features blocking --bench validate`
//!
//! The cache is filled once through a real HTTP round trip to a tiny signer
//! on loopback, so the file is exactly what the SDK writes.

use std::hint::black_box;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;

use criterion::{criterion_group, criterion_main, Criterion};
use ed25519_dalek::SigningKey;
use keysmith::{Code, ValidateOptions};
use keysmith_core::token::{self, Claims};
use keysmith_core::wire::ValidateRequest;
use keysmith_core::{LicenseKey, Status};

fn check_key(c: &mut Criterion) {
    let key = LicenseKey::generate("KS").unwrap().as_str().to_owned();
    let typed = key.to_lowercase().replace('-', " ");
    let mut typo = key.clone();
    typo.pop();
    typo.push(if key.ends_with('0') { '1' } else { '0' });
    let mut group = c.benchmark_group("check_key");
    group.bench_function("canonical", |b| {
        b.iter(|| keysmith::check_key(black_box(&key)))
    });
    group.bench_function("typed_lowercase_spaces", |b| {
        b.iter(|| keysmith::check_key(black_box(&typed)))
    });
    group.bench_function("typo", |b| b.iter(|| keysmith::check_key(black_box(&typo))));
    group.finish();
}

/// A one-route server that signs a VALID answer for whatever it is asked.
fn signer(key: SigningKey) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let mut writer = stream.try_clone().unwrap();
            let mut reader = BufReader::new(stream);
            let mut len = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let req: ValidateRequest = serde_json::from_slice(&body).unwrap();
            let now = chrono::Utc::now().timestamp();
            let claims = Claims {
                iss: "bench".into(),
                sub: Some("lic_BENCH".into()),
                key_sha256: LicenseKey::parse(req.key.as_deref().unwrap())
                    .unwrap()
                    .sha256_hex(),
                valid: true,
                code: Code::Valid,
                status: Some(Status::Active),
                plan: Some("pro".into()),
                features: vec!["sso".into(), "audit-log".into()],
                license_expires_at: Some("2099-01-01T00:00:00Z".into()),
                domain: req.domain,
                fingerprint: req.fingerprint,
                nonce: req.nonce,
                iat: now,
                exp: now + 7 * 86_400,
            };
            let answer = serde_json::json!({"valid": true, "code": "VALID", "token": token::sign(&key, &claims)});
            let answer = answer.to_string();
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                answer.len()
            );
            let _ = writer
                .write_all(head.as_bytes())
                .and_then(|()| writer.write_all(answer.as_bytes()));
        }
    });
    url
}

fn validate_offline(c: &mut Criterion) {
    let key = SigningKey::from_bytes(&[42; 32]);
    let public_key = token::public_key_base64(&key.verifying_key());
    let url = signer(key);
    let public_key_for_client = public_key.clone();
    let dir = tempfile::tempdir().unwrap();
    let client = keysmith::blocking::Client::builder(url)
        .public_key(public_key_for_client)
        .app_id("bench")
        .cache_dir(dir.path())
        .build()
        .unwrap();
    let license = LicenseKey::generate("KS").unwrap();
    let options = ValidateOptions::new()
        .domain("example.com")
        .fingerprint("bench-machine");
    assert!(client.validate(license.as_str(), &options).unwrap().valid);
    let answer = client.validate_offline(license.as_str(), &options).unwrap();
    assert!(answer.valid && answer.source == keysmith::Source::Cache);

    // For scale: the Ed25519 verification alone, on the same cached token.
    let file = client.cache_path(license.as_str(), &options).unwrap();
    let entry: serde_json::Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    let cached_token = entry["token"].as_str().unwrap().to_owned();
    let keys = keysmith_core::KeySet::from_base64_list(&public_key).unwrap();
    c.bench_function("validate_offline/signature_only", |b| {
        b.iter(|| keys.verify(black_box(&cached_token)).unwrap())
    });

    c.bench_function("validate_offline/from_cache_verified", |b| {
        b.iter(|| {
            let answer = client
                .validate_offline(black_box(license.as_str()), &options)
                .unwrap();
            assert!(answer.valid);
            answer
        })
    });
}

criterion_group!(benches, check_key, validate_offline);
criterion_main!(benches);
