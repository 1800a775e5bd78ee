//! The committed header is what the pinned cbindgen makes of `src/` today.
//!
//! CI runs `cargo test`, so a stale `include/keysmith.h` fails CI. To
//! refresh it after changing the ABI:
//!
//! ```sh
//! KEYSMITH_UPDATE_HEADER=1 cargo test -p keysmith-ffi --test header
//! ```

use std::path::Path;

fn generate() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    // Parse `src/` alone (no `cargo metadata`, which could wait on the lock
    // of the `cargo test` that runs us); `mod` declarations are followed.
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen generates the header");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("UTF-8 header")
}

#[test]
fn committed_header_is_up_to_date() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("include/keysmith.h");
    let generated = generate();
    if std::env::var_os("KEYSMITH_UPDATE_HEADER").is_some() {
        std::fs::write(&path, &generated).expect("write header");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let first_difference = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or("at the end".to_owned(), |n| format!("at line {}", n + 1));
        panic!(
            "{} is stale (first difference {first_difference}); regenerate it with\n  \
             KEYSMITH_UPDATE_HEADER=1 cargo test -p keysmith-ffi --test header\n\
             and commit it",
            path.display()
        );
    }
}

#[test]
fn header_declares_what_the_spec_pins() {
    let header = generate();
    for item in [
        "#ifndef KEYSMITH_H",
        "extern \"C\" {",
        "KS_OK = 0,",
        "typedef struct ks_client ks_client;",
        "typedef struct ks_validation ks_validation;",
        "const char *ks_version(void);",
        "const char *ks_last_error(void);",
        "ks_result ks_key_check(const char *key);",
        "bool ks_validation_valid(const ks_validation *v);",
        "int64_t ks_validation_expires_at(const ks_validation *v);",
        "void ks_validation_free(ks_validation *v);",
        "void ks_client_free(ks_client *client);",
    ] {
        assert!(header.contains(item), "header lacks {item:?}:\n{header}");
    }
}
