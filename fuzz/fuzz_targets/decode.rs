//! Image decode path: bytes → PNG / TIFF / JPEG / npy decoding with the pipeline's limits (see
//! `fuzz/harness.rs`).
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = harness::decode(data);
});
