//! Helpers shared by the tests that run the `conjure` binary: which binary, a command for it, the crate
//! root, the shipped specs, and stderr as text.

#![allow(dead_code)] // each test file uses a subset

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;

/// The binary under test: `CONJURE_TEST_BIN` if set (for target folders shared by several checkouts,
/// where `target/release/conjure` may belong to another one), else cargo's own.
pub fn bin() -> PathBuf {
    std::env::var_os("CONJURE_TEST_BIN")
        .map(Into::into)
        .or_else(|| option_env!("CARGO_BIN_EXE_conjure").map(Into::into))
        .expect("the conjure binary: build with the `cli` feature (on by default) or set CONJURE_TEST_BIN")
}

/// A command for the binary under test, with `RUST_LOG` removed so its logging is the default.
pub fn conjure() -> Command {
    let mut c = Command::new(bin());
    c.env_remove("RUST_LOG");
    c
}

/// The crate root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A shipped spec, `pipelines/<name>`.
pub fn spec(name: &str) -> PathBuf {
    root().join("pipelines").join(name)
}

/// A finished process's stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every file under `dir` as (relative path, bytes), sorted, the run manifest excluded (temporaries
/// included, so a test sees any that were left behind).
pub fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v = Vec::new();
    for e in walkdir::WalkDir::new(dir) {
        let e = e.unwrap();
        if e.file_type().is_file() && e.file_name() != "conjure-manifest.jsonl" {
            v.push((
                e.path().strip_prefix(dir).unwrap().to_path_buf(),
                std::fs::read(e.path()).unwrap(),
            ));
        }
    }
    v.sort();
    v
}
