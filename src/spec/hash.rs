//! The spec's hashes over a canonical serialisation of the resolved settings (docs/spec.md, "The spec
//! hash"): a JSON document keyed by the spec's own key names, with object keys sorted, no whitespace, numbers
//! as serde_json writes them (shortest round-trip form) and paths as resolved. It changes when a resolved
//! setting changes, never when the code that holds the settings is refactored or renamed.
//!
//! Before this form, the hashes were SHA-256 of the `Debug` rendering of the settings; manifests written
//! then carry such a `settings_hash`, which [`PipelineSpec::settings_hash_matches`] still accepts
//! ([`legacy_settings_hash`]).

use std::path::Path;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{BitDepth, MaskSpec, OutputFormat, PipelineSpec, Side, TileSize};
use crate::model::{EngineChoice, Provider};

/// SHA-256 (hex) of `v` written canonically.
pub(super) fn digest(v: &Value) -> String {
    let mut text = String::new();
    write_canonical(v, &mut text);
    hex(&Sha256::digest(text.as_bytes()))
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// JSON with object keys in sorted order at every level and no whitespace.
fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(it, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn path(p: &Path) -> Value {
    Value::String(p.to_string_lossy().into_owned())
}

fn opt_path(p: Option<&std::path::PathBuf>) -> Value {
    p.map_or(Value::Null, |p| path(p))
}

/// `task`, `sampler`, `seed`, `model`, `version`, the tile geometry and the output encoding: what decides
/// an output's bytes.
pub(super) fn settings(spec: &PipelineSpec) -> Value {
    let t = &spec.task;
    let mask = t.mask.as_ref().map_or(Value::Null, |m| match m {
        MaskSpec::Box {
            x,
            y,
            width,
            height,
        } => json!({"kind": "box", "x": x, "y": y, "width": width, "height": height}),
        MaskSpec::Random { fraction } => json!({"kind": "random", "fraction": fraction}),
        MaskSpec::Half { side } => json!({"kind": "half", "side": match side {
            Side::Left => "left",
            Side::Right => "right",
            Side::Top => "top",
            Side::Bottom => "bottom",
        }}),
        MaskSpec::File { path: p } => json!({"kind": "file", "path": path(p)}),
        MaskSpec::PerImage { dir } => json!({"kind": "per-image", "dir": path(dir)}),
    });
    let kernel = t
        .kernel
        .as_ref()
        .map_or(Value::Null, |k| json!({"size": k.size, "sigma": k.sigma}));
    let c = &spec.sampler.config;
    let mut v = json!({
        "version": spec.version,
        "model": path(&spec.model),
        "task": {
            "operator": t.operator.as_str(),
            "scale": t.scale,
            "mask": mask,
            "kernel": kernel,
            "noise_sigma": t.noise_sigma,
            "svd_threshold": t.svd_threshold,
            "data_consistency": t.data_consistency,
        },
        "sampler": {
            "name": c.name.as_str(),
            "steps": c.steps,
            "guidance": c.guidance,
            "lambda": c.lambda,
            "start_time": c.start_time,
            "end_time": c.end_time,
            "eta": c.eta,
            "eta_b": c.eta_b,
            "num_eps": c.num_eps,
            "variant": c.variant.map(|v| v.as_str()),
            "jacobian": c.jacobian.as_str(),
            "init_noise": opt_path(spec.sampler.init_noise.as_ref()),
        },
        "seed": spec.seed,
        "runtime": {"tile": tile(spec)},
        "io": {
            "format": format_name(spec.io.format),
            "bit_depth": bit_depth(spec.io.bit_depth),
            "jpeg_quality": spec.io.jpeg_quality,
        },
    });
    // `sampler.samples` enters only when it averages (K > 1), so that every spec written before the key
    // existed keeps its hash (and its outputs keep resuming).
    if spec.sampler.samples != 1 {
        v["sampler"]["samples"] = json!(spec.sampler.samples);
    }
    v
}

/// Every resolved key but the spec file's own path, `runtime.batch_size` and `runtime.threads` (which
/// cannot change a result) and where `model` was set.
pub(super) fn resolved(spec: &PipelineSpec) -> Value {
    let mut v = settings(spec);
    let r = &spec.runtime;
    v["runtime"] = json!({
        "engine": match r.engine {
            EngineChoice::Auto => "auto",
            EngineChoice::OnnxRuntime => "onnxruntime",
            EngineChoice::Tract => "tract",
        },
        "providers": r.providers.iter().map(|p| match p {
            Provider::TensorRt => "tensorrt",
            Provider::Cuda => "cuda",
            Provider::Cpu => "cpu",
        }).collect::<Vec<_>>(),
        "tile": tile(spec),
        "trt_cache": opt_path(r.trt_cache.as_ref()),
    });
    v["io"]["input"] = opt_path(spec.io.input.as_ref());
    v["io"]["output"] = opt_path(spec.io.output.as_ref());
    v["io"]["skip_existing"] = Value::Bool(spec.io.skip_existing);
    v
}

fn tile(spec: &PipelineSpec) -> Value {
    let size = match spec.runtime.tile_size {
        TileSize::Model => json!("model"),
        TileSize::Pixels(p) => json!(p),
    };
    json!({"size": size, "overlap": spec.runtime.tile_overlap})
}

fn format_name(f: OutputFormat) -> &'static str {
    match f {
        OutputFormat::Same => "same",
        OutputFormat::Png => "png",
        OutputFormat::Tiff => "tiff",
        OutputFormat::Jpeg => "jpeg",
        OutputFormat::Npy => "npy",
    }
}

fn bit_depth(b: BitDepth) -> Value {
    match b {
        BitDepth::Same => json!("same"),
        BitDepth::Eight => json!(8),
        BitDepth::Sixteen => json!(16),
    }
}

/// The `settings_hash` conjure wrote before the canonical form: SHA-256 of the `Debug` rendering of
/// (version, model, task, sampler, seed, tile size, tile overlap, format, bit depth, JPEG quality), with
/// `sampler.variant` rendered as the string it then was. Kept only to accept manifests written then; the
/// test `resume_accepts_a_manifest_written_with_the_legacy_settings_hash` pins it to a hash computed by
/// that version, so a change to the `Debug` rendering of these types shows up there.
pub fn legacy_settings_hash(spec: &PipelineSpec) -> String {
    #[derive(Debug)]
    #[allow(dead_code)] // read through `Debug` only
    struct SamplerConfig<'a> {
        name: crate::samplers::SamplerName,
        steps: Option<usize>,
        guidance: Option<f64>,
        lambda: Option<f64>,
        start_time: Option<f64>,
        end_time: Option<f64>,
        eta: Option<f64>,
        eta_b: Option<f64>,
        num_eps: Option<f64>,
        variant: Option<&'a str>,
        jacobian: crate::model::JacobianMode,
    }
    #[derive(Debug)]
    #[allow(dead_code)]
    struct SamplerSpec<'a> {
        config: SamplerConfig<'a>,
        init_noise: Option<&'a std::path::PathBuf>,
    }
    let c = &spec.sampler.config;
    let sampler = SamplerSpec {
        config: SamplerConfig {
            name: c.name,
            steps: c.steps,
            guidance: c.guidance,
            lambda: c.lambda,
            start_time: c.start_time,
            end_time: c.end_time,
            eta: c.eta,
            eta_b: c.eta_b,
            num_eps: c.num_eps,
            variant: c.variant.map(|v| v.as_str()),
            jacobian: c.jacobian,
        },
        init_noise: spec.sampler.init_noise.as_ref(),
    };
    let what = (
        &spec.version,
        &spec.model,
        &spec.task,
        &sampler,
        spec.seed,
        spec.runtime.tile_size,
        spec.runtime.tile_overlap,
        spec.io.format,
        spec.io.bit_depth,
        spec.io.jpeg_quality,
    );
    hex(&Sha256::digest(format!("{what:?}").as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Override;

    fn parse(text: &str, sets: &[&str]) -> PipelineSpec {
        let ov: Vec<Override> = sets.iter().map(|s| Override::parse(s).unwrap()).collect();
        PipelineSpec::parse(text, "t.yaml", Path::new("/base"), &ov).unwrap()
    }

    const MINIMAL: &str =
        "model: m\ntask:\n  operator: denoise\nsampler:\n  name: c-pigdm\nseed: 3\n";

    #[test]
    fn settings_hash_is_the_sha256_of_the_canonical_text() {
        // Written out by hand: every resolved setting under its spec key, keys sorted, defaults filled in.
        let text = concat!(
            r#"{"io":{"bit_depth":"same","format":"same","jpeg_quality":95},"model":"/base/m","#,
            r#""runtime":{"tile":{"overlap":8,"size":"model"}},"#,
            r#""sampler":{"end_time":null,"eta":null,"eta_b":null,"guidance":null,"init_noise":null,"#,
            r#""jacobian":"exact","lambda":null,"name":"c-pigdm","num_eps":null,"start_time":null,"#,
            r#""steps":null,"variant":null},"seed":3,"#,
            r#""task":{"data_consistency":true,"kernel":null,"mask":null,"noise_sigma":0.0,"#,
            r#""operator":"denoise","scale":1,"svd_threshold":0.03},"version":1}"#
        );
        let spec = parse(MINIMAL, &[]);
        let mut got = String::new();
        write_canonical(&settings(&spec), &mut got);
        assert_eq!(got, text);
        assert_eq!(spec.settings_hash(), hex(&Sha256::digest(text.as_bytes())));
    }

    #[test]
    fn hashes_follow_the_settings_only() {
        let base = parse(MINIMAL, &[]);
        // Settings that cannot change a result change neither hash; paths change only the full hash.
        let same = parse(MINIMAL, &["runtime.batch_size=3", "runtime.threads=2"]);
        assert_eq!(same.hash(), base.hash());
        assert_eq!(same.settings_hash(), base.settings_hash());
        let moved = parse(MINIMAL, &["io.output=/elsewhere"]);
        assert_ne!(moved.hash(), base.hash());
        assert_eq!(moved.settings_hash(), base.settings_hash());
        for set in [
            "sampler.steps=10",
            "sampler.variant=noisy",
            "sampler.jacobian=identity",
            "seed=4",
            "task.noise_sigma=0.1",
            "io.format=png",
            "runtime.tile.overlap=4",
        ] {
            let other = parse(MINIMAL, &[set]);
            assert_ne!(other.settings_hash(), base.settings_hash(), "{set}");
            assert_ne!(other.hash(), base.hash(), "{set}");
        }
    }

    #[test]
    fn legacy_settings_hashes_match_the_earlier_version() {
        // settings_hash / hash as conjure computed them before the canonical form (the `Debug` rendering),
        // printed by that version for these specs parsed with base folder /base.
        let cases: [(&str, &[&str], &str); 5] = [
            (
                MINIMAL,
                &[],
                "f2423d71d6c6311517e44bc48135bbc326282b75ddb10a2cc1d39bf6dea264f2",
            ),
            (
                MINIMAL,
                &["sampler.steps=10"],
                "18d5628373813b2d74ed7005429eabf8d856313c886ae93a32ff3cf807aacc67",
            ),
            (
                "model: /models/x\ntask:\n  operator: inpaint\n  mask: {kind: box, x: 1, y: 2, width: 3, \
                 height: 4}\n  noise_sigma: 0.05\nsampler:\n  name: c-pigdm\n  variant: noisy\n  \
                 jacobian: finite-difference\n  guidance: 2.5\nseed: 7\nruntime:\n  tile: {size: 64, \
                 overlap: 4}\nio:\n  format: jpeg\n  jpeg_quality: 80\n",
                &[],
                "9bd95aecbd2aa8b85a3f53ba9e796c4eb1a2aba707a3cf500801ca0be4a6bb71",
            ),
            (
                "model: flows/y\ntask:\n  operator: deblur-gaussian\n  kernel: {size: 9, sigma: 2.0}\n\
                 sampler:\n  name: c-pigfm\n  variant: official\n  steps: 7\nio:\n  bit_depth: 16\n",
                &[],
                "5b69ef23b7453b17d8bd23f9af079f51e663e40bc57e541476472024408f04a5",
            ),
            (
                "model: m\ntask:\n  operator: sr-bicubic\n  scale: 4\nsampler:\n  name: pigdm\n  \
                 variant: discrete\n  init_noise: z.npy\n",
                &[],
                "7889701506c5e31e2507513cc974025fd217605f33e2740a3b13d72cc7b1f538",
            ),
        ];
        for (text, sets, legacy) in cases {
            let spec = parse(text, sets);
            assert_eq!(legacy_settings_hash(&spec), legacy, "{text} {sets:?}");
            assert!(spec.settings_hash_matches(legacy));
            assert_ne!(spec.settings_hash(), legacy);
        }
    }
}
