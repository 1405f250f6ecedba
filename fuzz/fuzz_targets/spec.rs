//! Spec parser: bytes → YAML spec + `--set` overrides → validated `PipelineSpec` (see `fuzz/harness.rs`).
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = harness::spec(data);
});
