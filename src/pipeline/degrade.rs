//! `conjure degrade`: measurements y = H x + σ_y n from clean images, made exactly as `run` reads them
//! (the same masks from the same per-image seeds), and the mask and noise of one image.

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

use super::discover::discover_all;
use crate::engine::{ModelInfo, OperatorFactory};
use crate::error::{Error, Result};
use crate::imageio::{self, EncodeOptions, Picture};
use crate::operators::Img;
use crate::spec::{image_seed, MaskSpec, PipelineSpec};

/// What `degrade` did.
#[derive(Debug, Clone, Default)]
pub struct DegradeSummary {
    pub written: usize,
    pub failures: Vec<(PathBuf, String)>,
    pub masks: Option<PathBuf>,
}

/// The inpainting mask of the input at `rel` (relative to the input root) for an `h`×`w` image: generated
/// from the image's seed, or loaded from the spec's file / per-image folder; `None` for other operators.
pub fn task_mask(
    spec: &PipelineSpec,
    rel: &Path,
    seed: u64,
    h: usize,
    w: usize,
) -> Result<Option<ndarray::Array2<f64>>> {
    let Some(m) = &spec.task.mask else {
        return Ok(None);
    };
    if let Some(g) = m.generate(h, w, seed)? {
        return Ok(Some(g));
    }
    match m {
        MaskSpec::File { path } => imageio::load_mask(path, h, w).map(Some),
        MaskSpec::PerImage { dir } => {
            imageio::load_mask(&dir.join(rel).with_extension("png"), h, w).map(Some)
        }
        _ => unreachable!("generated above"),
    }
}

/// Add Gaussian measurement noise of std `sigma` to `y` from the image's own stream (seeded by its seed,
/// apart from the sampler's and the mask's streams).
pub fn add_measurement_noise(y: &mut Img, sigma: f64, seed: u64) {
    if sigma > 0.0 {
        let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x6e6f_6973_655f_7921);
        y.mapv_inplace(|v| {
            let n: f64 = StandardNormal.sample(&mut rng);
            v + sigma * n
        });
    }
}

/// Make measurements y = H x + σ_y n from clean images (docs/cli.md, `conjure degrade`).
///
/// Each clean image is converted to the model's channels and value range, degraded with the spec's
/// operator (masks generated or loaded exactly as `run` does, from the same per-image seed), given
/// Gaussian noise of std `task.noise_sigma` from its own seeded stream, and written with the input's
/// format and bit depth (and ICC / EXIF, alpha resampled to y's size) at the same relative path under
/// `output`. For `inpaint`, the mask used for each image is written as a PNG (white = known) at the same
/// relative path under `masks` — ready for `mask: {kind: per-image, dir: …}`.
pub fn degrade(
    spec: &PipelineSpec,
    model: &ModelInfo,
    build_operator: &OperatorFactory,
    input: &Path,
    output: &Path,
    masks: Option<&Path>,
) -> Result<DegradeSummary> {
    let (items, problems) = discover_all(input, Some(output))?;
    std::fs::create_dir_all(output).map_err(|e| Error::io(output, e))?;
    let results: Vec<(PathBuf, Result<()>)> = items
        .par_iter()
        .map(|item| {
            let r = (|| -> Result<()> {
                let pic = imageio::decode(&item.path)?;
                let (h, w) = pic.size();
                let x = imageio::to_model(
                    &imageio::to_channels(&pic.color, model.channels)?,
                    model.value_range,
                );
                let seed = image_seed(spec.seed, &item.rel);
                let mask = task_mask(spec, &item.rel, seed, h, w)?;
                let op = build_operator(&spec.degradation(mask.clone())?, [model.channels, h, w])?;
                let mut y = op.forward(&x);
                add_measurement_noise(&mut y, spec.task.noise_sigma, seed);
                let (_, yh, yw) = y.dim();
                let out_pic = Picture {
                    color: imageio::from_model(&y, model.value_range),
                    alpha: pic.alpha.as_ref().map(|a| {
                        if (yh, yw) == (h, w) {
                            a.clone()
                        } else {
                            imageio::resize_nearest(a, yh, yw)
                        }
                    }),
                    bit_depth: pic.bit_depth,
                    format: pic.format,
                    icc: pic.icc.clone(),
                    exif: pic.exif.clone(),
                    meta: pic.meta.scaled(yw as f64 / w as f64),
                };
                let out = output.join(&item.rel);
                let bytes = imageio::encode(
                    &out_pic,
                    EncodeOptions {
                        format: pic.format,
                        bit_depth: pic.bit_depth,
                        jpeg_quality: spec.io.jpeg_quality,
                    },
                    &out,
                )?;
                imageio::remove_stale_temps(&out)?;
                imageio::write_atomic(&out, &bytes)?;
                if let (Some(m), Some(dir)) = (&mask, masks) {
                    let mp = dir.join(&item.rel).with_extension("png");
                    imageio::write_atomic(&mp, &imageio::encode_mask(m, &mp)?)?;
                }
                Ok(())
            })();
            (item.path.clone(), r)
        })
        .collect();
    let mut s = DegradeSummary {
        masks: spec.task.mask.as_ref().and(masks.map(Path::to_path_buf)),
        ..Default::default()
    };
    for (p, e) in problems {
        s.failures.push((p, e.to_string()));
    }
    for (p, r) in results {
        match r {
            Ok(()) => s.written += 1,
            Err(e) => s.failures.push((p, e.to_string())),
        }
    }
    Ok(s)
}
