//! Models shipped with conjure, addressable from any spec as `model: builtin:<name>` (e.g.
//! `builtin:fmnist-ddpm`, `builtin:fmnist-flow`), wherever the spec file lives.
//!
//! The models are not compiled into the binary (they are 15 MB each, and every test binary links the
//! library); a name is looked up, in this order, in
//! 1. the folder named by the environment variable `CONJURE_MODELS`,
//! 2. `models/` next to the executable, then `../share/conjure/models/` from it (an installed layout),
//! 3. the `models/` folder of the source tree the binary was built from (`cargo run`, `cargo install
//!    --path .`),
//!
//! and the first folder holding `<name>/model.yaml` wins.

use std::path::{Path, PathBuf};

/// The prefix of a built-in model reference in a spec.
pub const PREFIX: &str = "builtin:";

/// The folders searched for built-in models, in order (they need not exist).
pub fn search_path() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("CONJURE_MODELS").filter(|d| !d.is_empty()) {
        dirs.push(PathBuf::from(d));
    }
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push(exe_dir.join("models"));
        dirs.push(exe_dir.join("../share/conjure/models"));
    }
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("models"));
    dirs
}

/// The model folders under the first folder of [`search_path`] that has any.
pub fn available() -> Vec<String> {
    for d in search_path() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut names: Vec<String> = rd
            .flatten()
            .filter(|e| e.path().join("model.yaml").is_file())
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .collect();
        if !names.is_empty() {
            names.sort();
            return names;
        }
    }
    Vec::new()
}

/// The folder of `builtin:<name>` (`reference` with or without the prefix); `Err` says what was tried.
pub fn resolve(reference: &str) -> Result<PathBuf, String> {
    let name = reference.strip_prefix(PREFIX).unwrap_or(reference);
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !name.starts_with('.');
    if !valid {
        return Err(format!(
            "invalid built-in model name {name:?} (expected e.g. {PREFIX}fmnist-ddpm)"
        ));
    }
    let dirs = search_path();
    for d in &dirs {
        let m = d.join(name);
        if m.join("model.yaml").is_file() {
            return Ok(m);
        }
    }
    let known = available();
    Err(format!(
        "built-in model {name:?} not found (looked in {}){}; set CONJURE_MODELS to the folder that \
         holds the model folders",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        if known.is_empty() {
            String::new()
        } else {
            format!("; built-in models: {}", known.join(", "))
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_models_resolve_to_the_source_tree_and_unknown_names_list_the_known_ones() {
        if std::env::var_os("CONJURE_MODELS").is_some() {
            return;
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        for name in ["fmnist-ddpm", "fmnist-flow"] {
            let d = resolve(&format!("builtin:{name}")).unwrap();
            assert_eq!(
                d.canonicalize().unwrap(),
                root.join(name).canonicalize().unwrap()
            );
        }
        let e = resolve("builtin:no-such-model").unwrap_err();
        assert!(
            e.contains("no-such-model") && e.contains("fmnist-ddpm"),
            "{e}"
        );
        assert!(resolve("builtin:../models")
            .unwrap_err()
            .contains("invalid"));
        assert!(resolve("builtin:").unwrap_err().contains("invalid"));
    }
}
