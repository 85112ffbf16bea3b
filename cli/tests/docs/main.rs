//! Documentation checks: `ARCHITECTURE.md` must stay true to the code it describes.
//!
//! - Every source file it cites exists, and every function, type or test it names
//!   beside a file is defined in that file ([`architecture_citations_exist`]).
//! - The master's layer table matches the imports: each module imports only
//!   modules of its own row or above it ([`master_modules_import_only_the_layers_above_them`]).
//!
//! The checks are pure functions over text, with table tests showing they can fail.

mod citations;
mod layers;

use std::path::{Path, PathBuf};

/// The repository's root (the parent of the `cli` crate).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the cli crate lives in the repository")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()))
}

/// Every `.rs` file under `dir`, relative to the repository root, `/`-separated.
fn rust_files(root: &Path, dir: &str, found: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let relative = format!("{dir}/{name}");
        if entry.path().is_dir() {
            if name != "target" {
                rust_files(root, &relative, found);
            }
        } else if name.ends_with(".rs") {
            found.push(relative);
        }
    }
}

#[test]
fn architecture_citations_exist() {
    let root = repo_root();
    let doc = read(&root.join("ARCHITECTURE.md"));
    let mut files = Vec::new();
    for dir in ["common", "aux", "master", "cli"] {
        rust_files(&root, dir, &mut files);
    }
    let problems = citations::check(&doc, &files, |path| read(&root.join(path)));
    assert!(
        problems.is_empty(),
        "ARCHITECTURE.md cites what the code does not have:\n{}",
        problems.join("\n")
    );
}

#[test]
fn master_modules_import_only_the_layers_above_them() {
    let root = repo_root();
    let doc = read(&root.join("ARCHITECTURE.md"));
    let layers = layers::master_layers(&doc);
    assert!(
        layers.len() >= 5,
        "the master's layer table was not found in ARCHITECTURE.md: {layers:?}"
    );
    let mut files = Vec::new();
    rust_files(&root, "master/src", &mut files);
    let sources: Vec<(String, String)> = files
        .iter()
        .map(|path| (path.clone(), read(&root.join(path))))
        .collect();
    let problems = layers::check(&layers, &sources);
    assert!(
        problems.is_empty(),
        "imports that break ARCHITECTURE.md's master layer table:\n{}",
        problems.join("\n")
    );
}
