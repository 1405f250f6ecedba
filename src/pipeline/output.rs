//! Where outputs go and how they are written: the output path of an input, path safety (nothing is written
//! outside the output folder, whatever symbolic links the tree holds), and the restored image encoded and
//! written atomically (temporary file in the output folder, fsync, rename).

use std::path::{Path, PathBuf};

use super::plan::Job;
use super::RunOptions;
use crate::error::{Error, Result};
use crate::imageio::{self, EncodeOptions, FileFormat, Picture};
use crate::operators::{Img, OperatorRef};
use crate::spec::{BitDepth, OutputFormat, PipelineSpec};

/// The output path of an input: the same relative path under `output`, with the extension of the output
/// format (`same` keeps the input's extension).
pub fn output_path(output: &Path, rel: &Path, format: OutputFormat) -> PathBuf {
    let p = output.join(rel);
    match format {
        OutputFormat::Same => p,
        OutputFormat::Png => p.with_extension("png"),
        OutputFormat::Tiff => p.with_extension("tif"),
        OutputFormat::Jpeg => p.with_extension("jpg"),
        OutputFormat::Npy => p.with_extension("npy"),
    }
}

/// Refuse an output that could land outside the output folder `root` (canonical): a relative input
/// path with anything but plain names (`..`, a root), or an output whose deepest existing folder resolves
/// (through symbolic links) outside `root`. Folders created below that one are new, so they are inside.
///
/// Race-free against other writers creating the same folders (issue 16): each folder is examined with
/// `symlink_metadata` *before* it is resolved, so a folder that does not exist yet is simply skipped,
/// and one that exists (or was just created by another thread) resolves. Only an entry that exists and
/// is a link that cannot be resolved is called a broken link.
pub(crate) fn check_inside(root: &Path, rel: &Path, out: &Path) -> Result<()> {
    check_plain(root, rel, out)?;
    let mut dir = out.parent();
    while let Some(d) = dir {
        match std::fs::symlink_metadata(d) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => dir = d.parent(),
            Err(e) => return Err(outside(root, out, format!("{}: {e}", d.display()))),
            Ok(_) => return resolves_inside(root, out, d).map(|_| ()),
        }
    }
    Err(outside(
        root,
        out,
        "no folder of the output path exists".into(),
    ))
}

/// Create the folders of `out` one by one below the output folder `root` (canonical), resolving each
/// right after it is created (or found), and refuse as soon as one resolves outside `root` (a symbolic
/// link), before anything is created through it. Creating first and resolving second cannot race with
/// another thread creating the same folder: `create_dir` of an existing folder is not an error.
pub(crate) fn create_inside(root: &Path, rel: &Path, out: &Path) -> Result<()> {
    check_plain(root, rel, out)?;
    let mut dir = root.to_path_buf();
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            let next = dir.join(c);
            match std::fs::create_dir(&next) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io(&next, e)),
            }
            dir = resolves_inside(root, out, &next)?;
            if !dir.is_dir() {
                return Err(Error::io(
                    &next,
                    std::io::Error::other("a file is in the way of the output folder"),
                ));
            }
        }
    }
    Ok(())
}

fn outside(root: &Path, out: &Path, why: String) -> Error {
    Error::io(
        out,
        std::io::Error::other(format!(
            "refusing to write outside the output folder {}: {why}",
            root.display()
        )),
    )
}

/// A relative input path of plain names only (no `..`, no root).
fn check_plain(root: &Path, rel: &Path, out: &Path) -> Result<()> {
    match rel
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)))
    {
        true => Ok(()),
        false => Err(outside(
            root,
            out,
            format!("the relative path {} is not plain", rel.display()),
        )),
    }
}

/// The canonical path of the existing folder `d`, if it lies inside `root`.
fn resolves_inside(root: &Path, out: &Path, d: &Path) -> Result<PathBuf> {
    match d.canonicalize() {
        Ok(real) if real.starts_with(root) => Ok(real),
        Ok(real) => Err(outside(
            root,
            out,
            format!(
                "{} resolves to {} (a symbolic link)",
                d.display(),
                real.display()
            ),
        )),
        Err(e) => Err(outside(
            root,
            out,
            format!("{} cannot be resolved (a broken link?): {e}", d.display()),
        )),
    }
}

/// Resolve the input and output of a run (CLI over spec).
pub(crate) fn resolve_io(spec: &PipelineSpec, opts: &RunOptions) -> Result<(PathBuf, PathBuf)> {
    let input = given_or_spec(opts.input.as_ref(), spec.io.input.as_ref(), "input")?;
    let output = given_or_spec(opts.output.as_ref(), spec.io.output.as_ref(), "output")?;
    check_io(&input, &output)?;
    Ok((input, output))
}

/// The `--input` / `--output` given (`what`), else the spec's `io.<what>`, else an error saying so.
pub fn given_or_spec(
    given: Option<&PathBuf>,
    spec: Option<&PathBuf>,
    what: &str,
) -> Result<PathBuf> {
    given.or(spec).cloned().ok_or_else(|| Error::Config {
        message: format!("no {what}: give --{what} or io.{what} in the spec"),
    })
}

/// The input exists and the output is not a file (a folder, or nothing yet): the checks `validate` and
/// `run` share, with plain messages.
pub fn check_io(input: &Path, output: &Path) -> Result<()> {
    if !input.exists() {
        return Err(Error::io(
            input,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "input not found (give an image file or a folder: --input or io.input)",
            ),
        ));
    }
    if output.exists() && !output.is_dir() {
        return Err(Error::io(
            output,
            std::io::Error::other(
                "the output is a file, not a folder; give a folder to write the restored images \
                 into (--output or io.output)",
            ),
        ));
    }
    Ok(())
}

/// The processing note written into every output image: program, version and spec hash.
pub fn processing_note(spec: &PipelineSpec) -> String {
    format!(
        "conjure {} (spec sha256 {})",
        env!("CARGO_PKG_VERSION"),
        spec.hash()
    )
}

/// Encode x̂ (in the model's `value_range`) as the spec's output format and write it atomically at the
/// job's output path, keeping the input's colour, alpha, ICC / EXIF and metadata ([`Picture`] `pic`).
pub(crate) fn write_restored(
    spec: &PipelineSpec,
    out_root: &Path,
    job: &Job,
    pic: &Picture,
    op: &OperatorRef,
    x: &Img,
    value_range: [f64; 2],
) -> Result<()> {
    let io = &spec.io;
    let out = &job.out;
    // Checked again right before writing (a folder may have been replaced by a link meanwhile), folder
    // by folder as they are created.
    create_inside(out_root, &job.item.rel, out)?;
    imageio::remove_stale_temps(out)?;
    let bytes = if io.format == OutputFormat::Npy {
        imageio::encode_npy(x, out)?
    } else {
        let (_, h, w) = x.dim();
        let colorize = op.y_shape()[0] < op.x_shape()[0];
        let restored = imageio::from_model(x, value_range);
        let color = imageio::color::to_output(&pic.color, restored, colorize);
        let alpha = pic.alpha.as_ref().map(|a| {
            if a.dim() == (h, w) {
                a.clone()
            } else {
                imageio::resize_nearest(a, h, w)
            }
        });
        let format = match io.format {
            OutputFormat::Same => pic.format,
            OutputFormat::Png => FileFormat::Png,
            OutputFormat::Tiff => FileFormat::Tiff,
            OutputFormat::Jpeg => FileFormat::Jpeg,
            OutputFormat::Npy => unreachable!(),
        };
        let bit_depth = match io.bit_depth {
            BitDepth::Same => pic.bit_depth,
            BitDepth::Eight => 8,
            BitDepth::Sixteen => 16,
        };
        let out_pic = Picture {
            color,
            alpha,
            bit_depth,
            format,
            icc: pic.icc.clone(),
            exif: pic.exif.clone(),
            meta: imageio::Metadata {
                note: Some(processing_note(spec)),
                ..pic.meta.scaled(spec.task.scale as f64)
            },
        };
        imageio::encode(
            &out_pic,
            EncodeOptions {
                format,
                bit_depth,
                jpeg_quality: io.jpeg_quality,
            },
            out,
        )?
    };
    imageio::write_atomic(out, &bytes)
}
