//! Every function libkeysmith exports runs its whole body inside
//! `ffi_panic_boundary!`, so no panic can unwind into C (which aborts the
//! host program). Scans the crate's sources: a new export without the
//! boundary fails here.

use std::collections::BTreeSet;
use std::path::Path;

/// One exported function as written in the source.
struct Export {
    file: String,
    name: String,
    /// The function body between its outer braces.
    body: String,
}

fn sources() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("src dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read source");
            (p.file_name().unwrap().to_string_lossy().into_owned(), text)
        })
        .collect()
}

/// The text from `open` (an index of `{`) to its matching `}`, exclusive,
/// skipping braces inside string literals and comments.
fn braced(text: &str, open: usize) -> &str {
    let bytes = text.as_bytes();
    assert_eq!(bytes[open], b'{');
    let (mut depth, mut i) = (0usize, open);
    let (mut in_str, mut in_line_comment) = (false, false);
    while i < bytes.len() {
        let b = bytes[i];
        if in_line_comment {
            in_line_comment = b != b'\n';
        } else if in_str {
            if b == b'\\' {
                i += 1;
            } else if b == b'"' {
                in_str = false;
            }
        } else if b == b'"' {
            in_str = true;
        } else if b == b'/' && bytes.get(i + 1) == Some(&b'/') {
            in_line_comment = true;
        } else if b == b'{' {
            depth += 1;
        } else if b == b'}' {
            depth -= 1;
            if depth == 0 {
                return &text[open + 1..i];
            }
        }
        i += 1;
    }
    panic!("unbalanced braces");
}

fn exports() -> Vec<Export> {
    let mut exports = Vec::new();
    for (file, text) in sources() {
        let mut from = 0;
        while let Some(at) = text[from..].find("extern \"C\" fn ") {
            let at = from + at;
            let before = &text[..at];
            let attribute = before.rfind("\n#[no_mangle]\n");
            let previous_item_end = before.rfind("\n}").unwrap_or(0);
            assert!(
                attribute.is_some_and(|a| a > previous_item_end),
                "{file}: an extern \"C\" fn at byte {at} has no #[no_mangle]: \
                 every C entry point must be a checked export"
            );
            let name_start = at + "extern \"C\" fn ".len();
            let name_end = name_start + text[name_start..].find('(').expect("(");
            let open = name_end + text[name_end..].find('{').expect("body");
            let body = braced(&text, open);
            exports.push(Export {
                file: file.clone(),
                name: text[name_start..name_end].trim().to_owned(),
                body: body.to_owned(),
            });
            from = open + body.len();
        }
        assert_eq!(
            text.lines().filter(|l| l.trim() == "#[no_mangle]").count(),
            exports.iter().filter(|e| e.file == file).count(),
            "{file}: every #[no_mangle] must be on an extern \"C\" fn"
        );
    }
    exports
}

#[test]
fn every_export_is_inside_the_panic_boundary() {
    let exports = exports();
    assert!(exports.len() >= 20, "found only {} exports", exports.len());
    for export in &exports {
        let body = export.body.trim();
        let rest = body
            .strip_prefix("ffi_panic_boundary! {")
            .unwrap_or_else(|| {
                panic!(
                    "{}: {} must start with `ffi_panic_boundary! {{`, found:\n{body}",
                    export.file, export.name
                )
            });
        // The boundary must be the whole body: nothing after the macro.
        let open = body.len() - rest.len() - 1;
        let inside = braced(body, open);
        let after = body[open + inside.len() + 2..].trim();
        assert!(
            after.is_empty(),
            "{}: {} has code after its panic boundary: {after}",
            export.file,
            export.name
        );
    }
}

#[test]
fn every_export_is_in_the_header_and_nothing_else_is() {
    let header =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("include/keysmith.h"))
            .expect("header");
    let exported: BTreeSet<String> = exports().into_iter().map(|e| e.name).collect();
    let declared: BTreeSet<String> = header
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with('#') && l.contains('('))
        .filter_map(|l| {
            let name = l[..l.find('(')?].split([' ', '*']).next_back()?;
            name.starts_with("ks_").then(|| name.to_owned())
        })
        .collect();
    assert_eq!(exported, declared);
}
