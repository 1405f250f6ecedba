//! The fuzz targets' checks under plain `cargo test` (no cargo-fuzz, no nightly): every seed in
//! `fuzz/corpus/<target>/` and every input that once crashed a target, saved in
//! `fuzz/regressions/<target>/`, goes through the same function the target calls (`fuzz/harness.rs`,
//! included below). A panic there is a failure; so is a refused seed (the seeds are valid files) and an
//! error that does not name the file it is about.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};

use harness::Outcome;

fn dir(kind: &str, target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target)
}

/// Run `check` on every file of `fuzz/<kind>/<target>/`; returns (file, outcome) pairs.
fn replay(kind: &str, target: &str, check: fn(&[u8]) -> Outcome) -> Vec<(PathBuf, Outcome)> {
    harness::files_in(&dir(kind, target))
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            let name = p.display().to_string();
            let outcome = std::panic::catch_unwind(|| check(&bytes))
                .unwrap_or_else(|_| panic!("{name}: the {target} check panicked (message above)"));
            (p, outcome)
        })
        .collect()
}

/// A refusal must say what is wrong and where: spec errors carry the spec's name (or the `--set`
/// argument at fault), image errors the file's.
fn assert_names_problem(file: &Path, e: &conjure::Error, names: &[&str]) {
    let msg = e.to_string();
    assert!(
        names.iter().any(|n| msg.contains(n)),
        "{}: error does not name {names:?}: {msg}",
        file.display()
    );
    let after = names
        .iter()
        .find_map(|n| msg.split_once(n).map(|(_, rest)| rest))
        .unwrap_or_default();
    assert!(
        after
            .trim_start_matches([':', ' '])
            .chars()
            .any(char::is_alphabetic),
        "{}: error names no problem: {msg}",
        file.display()
    );
}

#[test]
fn spec_seed_corpus_is_accepted_and_round_trips() {
    let seeds = replay("corpus", "spec", harness::spec);
    assert!(seeds.len() >= 5, "spec seed corpus missing");
    for (p, o) in seeds {
        if let Outcome::Rejected(e) = o {
            panic!("{}: seed refused: {e}", p.display());
        }
    }
}

#[test]
fn decode_seed_corpus_covers_every_format_and_decodes() {
    let seeds = replay("corpus", "decode", harness::decode);
    for f in [b"\x89PNG".as_slice(), b"II*\0", b"\xff\xd8", b"\x93NUMPY"] {
        assert!(
            seeds
                .iter()
                .any(|(p, _)| std::fs::read(p).unwrap().starts_with(f)),
            "no seed starting with {f:?}"
        );
    }
    for (p, o) in seeds {
        if let Outcome::Rejected(e) = o {
            panic!("{}: seed refused: {e}", p.display());
        }
    }
}

#[test]
fn spec_regressions_do_not_panic_and_errors_name_the_spec() {
    for (p, o) in replay("regressions", "spec", harness::spec) {
        if let Outcome::Rejected(e) = o {
            assert_names_problem(&p, &e, &[harness::SPEC_FILE, "--set "]);
        }
    }
}

#[test]
fn decode_regressions_do_not_panic_and_errors_name_the_file() {
    for (p, o) in replay("regressions", "decode", harness::decode) {
        if let Outcome::Rejected(e) = o {
            assert_names_problem(&p, &e, &[harness::IMAGE_FILE]);
        }
    }
}

/// Inputs the fuzzers found that were accepted or crashed before their fix, and what the error must say
/// now: (target, file in `fuzz/regressions/<target>/`, fragment of the error).
const FOUND: &[(&str, &str, &str)] = &[
    // A float TIFF with a NaN sample decoded into a picture with NaN (found by `decode`).
    ("decode", "tiff-float-nan.tif", "NaN or infinite"),
    // An .npy whose header declares 99999999 x 99999 values in 180 bytes: the allocation failed and
    // aborted the process. Found by review of the decode target, not by libFuzzer: the shape has to grow
    // inside a header of fixed length for the file to parse, which random mutation did not reach.
    ("decode", "npy-shape-bomb.npy", "declares shape"),
];

#[test]
fn inputs_the_fuzzers_found_are_refused_with_their_reason() {
    for (target, name, fragment) in FOUND {
        let path = dir("regressions", target).join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let outcome = match *target {
            "spec" => harness::spec(&bytes),
            _ => harness::decode(&bytes),
        };
        match outcome {
            Outcome::Rejected(e) => {
                let msg = e.to_string();
                assert!(msg.contains(fragment), "{name}: {msg}");
                let names = if *target == "spec" {
                    harness::SPEC_FILE
                } else {
                    harness::IMAGE_FILE
                };
                assert!(msg.contains(names), "{name}: {msg}");
            }
            Outcome::Accepted => panic!("{name}: accepted"),
        }
    }
}

/// The harness's own checks can fail: a picture over the fuzz pixel limit is refused from its header,
/// and the spec round trip catches a spec that does not parse back to itself.
#[test]
fn the_harness_checks_bite() {
    // An 8-bit gray PNG whose IHDR declares 4096 x 4096 (16 Mpx > FUZZ_MAX_PIXELS = 1 Mpx).
    let mut png = std::fs::read(dir("corpus", "decode").join("gray8.png")).unwrap();
    assert_eq!(&png[12..16], b"IHDR");
    png[16..20].copy_from_slice(&4096u32.to_be_bytes());
    png[20..24].copy_from_slice(&4096u32.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    match harness::decode(&png) {
        Outcome::Rejected(e) => assert!(e.to_string().contains("decoding limit"), "{e}"),
        Outcome::Accepted => panic!("a 16 Mpx header passed the 1 Mpx fuzz limit"),
    }

    // render() is what the round trip compares against: a changed field must show up in it.
    let text = std::fs::read_to_string(dir("corpus", "spec").join("sr4-c-pigdm.yaml")).unwrap();
    let spec = conjure::spec::PipelineSpec::parse(
        &text,
        harness::SPEC_FILE,
        Path::new(harness::SPEC_BASE),
        &[],
    )
    .unwrap();
    let mut other = spec.clone();
    other.seed += 1;
    assert_ne!(harness::render(&spec), harness::render(&other));
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}
