//! Image files in and out: PNG (8/16-bit), TIFF (8/16-bit, 32-bit float in), JPEG, and `.npy` output of raw
//! floats. The only place where `image` errors are converted (to [`Error::Image`] naming the file).
//!
//! A decoded file is a [`Picture`]: colour channels (gray or RGB) in [0, 1], an optional alpha plane, the
//! file's bit depth and format, and its ICC profile and EXIF block so that they can be carried to the
//! output (ICC: PNG, TIFF, JPEG; EXIF: PNG, JPEG — not TIFF, where EXIF is a sub-directory the `tiff` encoder
//! does not write).
//! [`to_model`] / [`from_model`] map [0, 1] to the model's `value_range` and back. Resolution, text,
//! TIFF compression and a processing note travel in [`Metadata`] (see [`metadata`]); colour through a
//! model with other channels than the file is [`color`]'s business.

pub mod color;
pub mod metadata;

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::codecs::jpeg::JpegEncoder;
use image::{DynamicImage, ImageBuffer, ImageDecoder, ImageEncoder, ImageReader};
pub use metadata::{Metadata, Resolution, ResolutionUnit};
use ndarray::{Array2, Array3, Axis};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};

use crate::error::{Error, Result};

/// File formats conjure reads (npy: written only, and read for `init_noise`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Png,
    Tiff,
    Jpeg,
    Npy,
}

impl FileFormat {
    /// From a file extension (case-insensitive); `None` for anything that is not an image conjure reads.
    pub fn from_path(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        Some(match ext.as_str() {
            "png" => FileFormat::Png,
            "tif" | "tiff" => FileFormat::Tiff,
            "jpg" | "jpeg" => FileFormat::Jpeg,
            _ => return None,
        })
    }

    /// The extension written for this format (`same` keeps the input's own extension instead).
    pub fn extension(&self) -> &'static str {
        match self {
            FileFormat::Png => "png",
            FileFormat::Tiff => "tif",
            FileFormat::Jpeg => "jpg",
            FileFormat::Npy => "npy",
        }
    }
}

/// Whether `path` names an image conjure reads (by extension: png, tif, tiff, jpg, jpeg).
pub fn is_image_path(path: &Path) -> bool {
    FileFormat::from_path(path).is_some()
}

/// A decoded image.
#[derive(Debug, Clone, PartialEq)]
pub struct Picture {
    /// Colour channels, (1 or 3, H, W), values in [0, 1].
    pub color: Array3<f64>,
    /// Alpha plane (H, W) in [0, 1], if the file has one.
    pub alpha: Option<Array2<f64>>,
    /// Bits per sample of the file: 8 or 16 (32-bit float files count as 16).
    pub bit_depth: u8,
    pub format: FileFormat,
    pub icc: Option<Vec<u8>>,
    pub exif: Option<Vec<u8>>,
    /// Resolution, text, TIFF compression, processing note.
    pub meta: Metadata,
}

impl Picture {
    /// (height, width).
    pub fn size(&self) -> (usize, usize) {
        let d = self.color.dim();
        (d.1, d.2)
    }
}

fn image_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Image {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Decode an image file.
pub fn decode(path: &Path) -> Result<Picture> {
    let format = FileFormat::from_path(path).ok_or_else(|| {
        image_err(
            path,
            "unsupported file extension (expected png, tif, tiff, jpg or jpeg)",
        )
    })?;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_bytes(&bytes, format, path)
}

/// The most pixels (width × height) a decoded image may have: 2²⁷ ≈ 134 million (e.g. 16384 × 8192).
/// Decoding works in f32/f64 (about 50 bytes per pixel at peak), so this bounds one image's memory to a
/// few GiB; a file whose header declares more — a decompression bomb, or a damaged header — is refused
/// before any pixel buffer is allocated.
pub const MAX_PIXELS: u64 = 1 << 27;

/// Decode an in-memory image; `path` only names it in errors. Images over [`MAX_PIXELS`] are refused
/// from their header.
pub fn decode_bytes(bytes: &[u8], format: FileFormat, path: &Path) -> Result<Picture> {
    decode_bytes_limited(bytes, format, path, MAX_PIXELS)
}

/// [`decode_bytes`] with another pixel limit in place of [`MAX_PIXELS`] (the fuzz targets use a lower
/// one, so that libFuzzer's memory limit catches any allocation that the declared size does not bound).
pub fn decode_bytes_limited(
    bytes: &[u8],
    format: FileFormat,
    path: &Path,
    max_pixels: u64,
) -> Result<Picture> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| image_err(path, e))?;
    let reader_format = reader.format();
    if reader_format.is_none() {
        return Err(image_err(
            path,
            format!(
                "not a png, tiff or jpeg file (unrecognized content{})",
                if bytes.is_empty() { ", 0 bytes" } else { "" }
            ),
        ));
    }
    // Decoder-internal allocations (e.g. a PNG's ancillary chunks) stay under image's limit; the pixel
    // buffer is bounded by MAX_PIXELS below, checked from the header (`into_decoder` alone does not).
    reader.limits(image::Limits::default());
    let mut decoder = reader.into_decoder().map_err(|e| image_err(path, e))?;
    let (dw, dh) = decoder.dimensions();
    if u64::from(dw) * u64::from(dh) > max_pixels {
        return Err(image_err(
            path,
            format!(
                "declared size {dw}x{dh} is over the decoding limit of {max_pixels} pixels \
                 (a decompression bomb or a damaged header); not decoded"
            ),
        ));
    }
    let mut limits = image::Limits::no_limits();
    limits.max_alloc = Some(max_pixels * 8);
    limits
        .reserve(decoder.total_bytes())
        .map_err(|e| image_err(path, e))?;
    let icc = decoder.icc_profile().ok().flatten();
    let exif = decoder.exif_metadata().ok().flatten();
    let detected = reader_format.expect("checked above");
    if detected == image::ImageFormat::Jpeg {
        metadata::check_jpeg(bytes).map_err(|e| image_err(path, e))?;
    }
    let meta = metadata::read(bytes, detected);
    let img = DynamicImage::from_decoder(decoder).map_err(|e| image_err(path, e))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let color_type = img.color();
    let bit_depth = if color_type.bytes_per_pixel() / color_type.channel_count() >= 2 {
        16
    } else {
        8
    };
    let gray = !color_type.has_color();
    let has_alpha = color_type.has_alpha();
    // Work in f32 RGBA / LA at full precision, then split.
    let (color, alpha) = if gray {
        let la = img.to_luma_alpha32f();
        let mut c = Array3::zeros((1, h, w));
        let mut a = Array2::zeros((h, w));
        for (x, y, p) in la.enumerate_pixels() {
            c[(0, y as usize, x as usize)] = p.0[0] as f64;
            a[(y as usize, x as usize)] = p.0[1] as f64;
        }
        (c, a)
    } else {
        let rgba = img.to_rgba32f();
        let mut c = Array3::zeros((3, h, w));
        let mut a = Array2::zeros((h, w));
        for (x, y, p) in rgba.enumerate_pixels() {
            for k in 0..3 {
                c[(k, y as usize, x as usize)] = p.0[k] as f64;
            }
            a[(y as usize, x as usize)] = p.0[3] as f64;
        }
        (c, a)
    };
    // Integer images convert exactly (v / 255 or v / 65535 in f32); snap back to the exact rational so
    // that a decode → encode round trip is lossless.
    let snap = |v: f64| -> f64 {
        let m = if bit_depth == 8 { 255.0 } else { 65535.0 };
        (v * m).round() / m
    };
    let is_float = matches!(
        color_type,
        image::ColorType::Rgb32F | image::ColorType::Rgba32F
    );
    if is_float {
        // A float file can hold NaN or ±Inf, which no restoration can use and which would surface
        // later as a misleading "NaN from the network" failure: refuse the file here, by name.
        let planes = if has_alpha { 4 } else { 3 };
        let bad = color.iter().filter(|v| !v.is_finite()).count()
            + if has_alpha {
                alpha.iter().filter(|v| !v.is_finite()).count()
            } else {
                0
            };
        if bad > 0 {
            return Err(image_err(
                path,
                format!(
                    "{bad} of {} float samples are NaN or infinite (expected finite values); \
                     not decoded",
                    planes * h * w
                ),
            ));
        }
    }
    let color = if is_float { color } else { color.mapv(snap) };
    Ok(Picture {
        color,
        alpha: has_alpha.then(|| if is_float { alpha } else { alpha.mapv(snap) }),
        bit_depth,
        format,
        icc,
        exif,
        meta,
    })
}

/// Convert colour channels to `channels` (1 ↔ 3): gray → RGB replicates, RGB → gray uses the Rec. 601 luma
/// weights (0.299, 0.587, 0.114).
pub fn to_channels(color: &Array3<f64>, channels: usize) -> Result<Array3<f64>> {
    let c = color.dim().0;
    if c == channels {
        return Ok(color.clone());
    }
    match (c, channels) {
        (1, 3) => Ok(
            ndarray::concatenate(Axis(0), &[color.view(), color.view(), color.view()])
                .expect("same shapes"),
        ),
        (3, 1) => {
            let g = &color.index_axis(Axis(0), 0) * 0.299
                + &color.index_axis(Axis(0), 1) * 0.587
                + &color.index_axis(Axis(0), 2) * 0.114;
            Ok(g.insert_axis(Axis(0)))
        }
        _ => Err(Error::Unsupported(format!(
            "cannot convert {c} colour channels to {channels}"
        ))),
    }
}

/// [0, 1] → the model's value range [lo, hi].
pub fn to_model(x: &Array3<f64>, range: [f64; 2]) -> Array3<f64> {
    x.mapv(|v| range[0] + (range[1] - range[0]) * v)
}

/// The model's value range → [0, 1] (not clamped).
pub fn from_model(x: &Array3<f64>, range: [f64; 2]) -> Array3<f64> {
    x.mapv(|v| (v - range[0]) / (range[1] - range[0]))
}

/// Nearest-neighbour resampling of a plane to (h, w) (alpha of super-resolved images).
pub fn resize_nearest(a: &Array2<f64>, h: usize, w: usize) -> Array2<f64> {
    let (ih, iw) = a.dim();
    Array2::from_shape_fn((h, w), |(i, j)| a[((i * ih) / h, (j * iw) / w)])
}

/// How to write an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeOptions {
    pub format: FileFormat,
    /// 8 or 16 (JPEG is always 8).
    pub bit_depth: u8,
    pub jpeg_quality: u8,
}

fn quantize(v: f64, max: f64) -> f64 {
    (v.clamp(0.0, 1.0) * max).round()
}

/// Encode a picture (colour in [0, 1], clamped and rounded here) to bytes, carrying ICC, EXIF and
/// [`Metadata`] where the format can hold them (see [`metadata`]). JPEG drops alpha (it has none) and
/// writes 8 bits.
pub fn encode(pic: &Picture, opts: EncodeOptions, path: &Path) -> Result<Vec<u8>> {
    // The TIFF encoder has no gray + alpha: write such images as RGBA.
    let expanded;
    let pic = if opts.format == FileFormat::Tiff && pic.color.dim().0 == 1 && pic.alpha.is_some() {
        expanded = Picture {
            color: to_channels(&pic.color, 3)?,
            ..pic.clone()
        };
        &expanded
    } else {
        pic
    };
    let (c, h, w) = pic.color.dim();
    if c != 1 && c != 3 {
        return Err(image_err(path, format!("cannot write {c} colour channels")));
    }
    let alpha = match opts.format {
        FileFormat::Jpeg => None,
        _ => pic.alpha.as_ref(),
    };
    let depth = if opts.format == FileFormat::Jpeg {
        8
    } else {
        opts.bit_depth
    };
    let nc = c + usize::from(alpha.is_some());
    let max = if depth == 16 { 65535.0 } else { 255.0 };
    let mut samples = Vec::with_capacity(h * w * nc);
    for i in 0..h {
        for j in 0..w {
            for k in 0..c {
                samples.push(quantize(pic.color[(k, i, j)], max));
            }
            if let Some(a) = alpha {
                samples.push(quantize(a[(i, j)], max));
            }
        }
    }
    let (w32, h32) = (w as u32, h as u32);
    let samples = if depth == 16 {
        metadata::Samples::U16(samples.iter().map(|v| *v as u16).collect())
    } else {
        metadata::Samples::U8(samples.iter().map(|v| *v as u8).collect())
    };
    let icc = pic.icc.as_deref();
    let exif = pic.exif.as_deref();
    match opts.format {
        FileFormat::Png => metadata::encode_png(w32, h32, nc, &samples, icc, exif, &pic.meta)
            .map_err(|e| image_err(path, e)),
        FileFormat::Tiff => metadata::encode_tiff(w32, h32, nc, &samples, icc, &pic.meta)
            .map_err(|e| image_err(path, e)),
        FileFormat::Jpeg => {
            let metadata::Samples::U8(s) = samples else {
                unreachable!("jpeg is written at 8 bits")
            };
            let bad = || image_err(path, "internal buffer size mismatch");
            let img = match c {
                1 => DynamicImage::ImageLuma8(ImageBuffer::from_raw(w32, h32, s).ok_or_else(bad)?),
                _ => DynamicImage::ImageRgb8(ImageBuffer::from_raw(w32, h32, s).ok_or_else(bad)?),
            };
            let mut buf = Vec::new();
            let mut enc = JpegEncoder::new_with_quality(&mut buf, opts.jpeg_quality);
            if let Some(p) = icc {
                let _ = enc.set_icc_profile(p.to_vec());
            }
            if let Some(e) = exif {
                let _ = enc.set_exif_metadata(e.to_vec());
            }
            if let Some(r) = &pic.meta.resolution {
                enc.set_pixel_density(metadata::jpeg_density(r));
            }
            img.write_with_encoder(enc)
                .map_err(|e| image_err(path, e))?;
            Ok(match &pic.meta.note {
                Some(n) => metadata::jpeg_with_comment(buf, n),
                None => buf,
            })
        }
        FileFormat::Npy => Err(image_err(path, "npy output is written with encode_npy")),
    }
}

/// Raw floats as `.npy`: float32, (C, H, W), in the model's value range, before any clamping.
pub fn encode_npy(x: &Array3<f64>, path: &Path) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    x.mapv(|v| v as f32)
        .write_npy(&mut buf)
        .map_err(|e| image_err(path, e))?;
    Ok(buf)
}

/// Read a `.npy` of f32 or f64 values with any number of dimensions (as f64).
pub fn read_npy(path: &Path) -> Result<ndarray::ArrayD<f64>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    read_npy_bytes(&bytes, path)
}

/// [`read_npy`] of an in-memory file; `path` only names it in errors. A header that declares more values
/// than the file's data can hold is refused before anything is allocated (the array is allocated from
/// the declared shape, so a few bytes could otherwise ask for terabytes and abort the process).
pub fn read_npy_bytes(bytes: &[u8], path: &Path) -> Result<ndarray::ArrayD<f64>> {
    let mut cursor = Cursor::new(bytes);
    // A header that does not parse is reported by the reads below, with ndarray-npy's message.
    if let Ok(header) = ndarray_npy::npy::header::Header::from_reader(&mut cursor) {
        let data = bytes.len() as u64 - cursor.position();
        let values = header
            .shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64));
        // f32 is the smallest element type read: 4 bytes per value at least.
        if values.is_none_or(|n| n.saturating_mul(4) > data) {
            return Err(image_err(
                path,
                format!(
                    "npy header declares shape {:?} ({} values) but the file holds only {data} \
                     bytes of data (4 or 8 per value); not read",
                    header.shape,
                    values.map_or_else(|| "too many".to_owned(), |n| n.to_string())
                ),
            ));
        }
    }
    if let Ok(a) = ndarray::ArrayD::<f32>::read_npy(bytes) {
        return Ok(a.mapv(f64::from));
    }
    ndarray::ArrayD::<f64>::read_npy(bytes).map_err(|e| image_err(path, e))
}

/// Load an inpainting mask: a PNG (any bit depth, gray or colour) whose white pixels (luma ≥ ½) are known.
/// Returns 1 = known, 0 = missing, of size (h, w) — a mask of another size is an error.
pub fn load_mask(path: &Path, h: usize, w: usize) -> Result<Array2<f64>> {
    let pic = decode(path)?;
    let (mh, mw) = pic.size();
    if (mh, mw) != (h, w) {
        return Err(image_err(
            path,
            format!("mask is {mw}x{mh}, the image is {w}x{h}"),
        ));
    }
    let g = to_channels(&pic.color, 1)?;
    Ok(g.index_axis(Axis(0), 0)
        .mapv(|v| if v >= 0.5 { 1.0 } else { 0.0 }))
}

/// Encode a 0/1 mask as an 8-bit gray PNG (white = known).
pub fn encode_mask(mask: &Array2<f64>, path: &Path) -> Result<Vec<u8>> {
    let pic = Picture {
        color: mask.clone().insert_axis(Axis(0)),
        alpha: None,
        bit_depth: 8,
        format: FileFormat::Png,
        icc: None,
        exif: None,
        meta: Metadata::default(),
    };
    encode(
        &pic,
        EncodeOptions {
            format: FileFormat::Png,
            bit_depth: 8,
            jpeg_quality: 95,
        },
        path,
    )
}

/// Write `bytes` to `path` atomically: a temporary file in the same directory (named
/// `.<file name>.conjure-tmp-<pid>`), fsync, rename over `path`, fsync the directory. A reader never sees
/// a partial file at `path`; a crash leaves at most a temporary file, which [`remove_stale_temps`] clears.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tmp = temp_path(path);
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

const TEMP_TAG: &str = ".conjure-tmp-";

/// `.<file name>.conjure-tmp-`, byte for byte (file names need not be UTF-8).
fn temp_prefix(name: &std::ffi::OsStr) -> std::ffi::OsString {
    let mut p = std::ffi::OsString::from(".");
    p.push(name);
    p.push(TEMP_TAG);
    p
}

/// The temporary name [`write_atomic`] uses for `path`.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = temp_prefix(path.file_name().unwrap_or_default());
    name.push(std::process::id().to_string());
    path.with_file_name(name)
}

/// Whether `path` is one of [`write_atomic`]'s temporary files.
pub fn is_temp_path(path: &Path) -> bool {
    path.file_name().is_some_and(|n| {
        let b = n.as_encoded_bytes();
        b.starts_with(b".") && b.windows(TEMP_TAG.len()).any(|w| w == TEMP_TAG.as_bytes())
    })
}

/// Remove temporary files left for `path` by an interrupted run (any process id). Only this output's own
/// temporaries are touched, so concurrent shards writing other files in the same folder are safe.
pub fn remove_stale_temps(path: &Path) -> Result<usize> {
    let Some(dir) = path.parent() else {
        return Ok(0);
    };
    let Some(name) = path.file_name() else {
        return Ok(0);
    };
    let prefix = temp_prefix(name);
    let prefix = prefix.as_encoded_bytes();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut n = 0;
    for entry in rd.flatten() {
        if entry.file_name().as_encoded_bytes().starts_with(prefix) {
            let p = entry.path();
            std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(format: FileFormat, bit_depth: u8) -> EncodeOptions {
        EncodeOptions {
            format,
            bit_depth,
            jpeg_quality: 95,
        }
    }

    fn ramp(c: usize, h: usize, w: usize, levels: f64) -> Array3<f64> {
        Array3::from_shape_fn((c, h, w), |(k, i, j)| {
            (((k * 7 + i * w + j) as f64 * 37.0) % (levels + 1.0)).round() / levels
        })
    }

    #[test]
    fn png_and_tiff_round_trip_exactly_at_8_and_16_bits() {
        let p = Path::new("x");
        for (fmt, depth, levels) in [
            (FileFormat::Png, 8, 255.0),
            (FileFormat::Png, 16, 65535.0),
            (FileFormat::Tiff, 8, 255.0),
            (FileFormat::Tiff, 16, 65535.0),
        ] {
            for c in [1, 3] {
                let pic = Picture {
                    color: ramp(c, 5, 7, levels),
                    alpha: Some(Array2::from_shape_fn((5, 7), |(i, j)| ((i + j) % 2) as f64)),
                    bit_depth: depth,
                    format: fmt,
                    icc: Some(b"fake icc profile".to_vec()),
                    exif: None,
                    meta: Metadata::default(),
                };
                let bytes = encode(&pic, opts(fmt, depth), p).unwrap();
                let back = decode_bytes(&bytes, fmt, p).unwrap();
                assert_eq!(back.bit_depth, depth);
                let got = to_channels(&back.color, c).unwrap();
                let diff = (&got - &pic.color)
                    .mapv(f64::abs)
                    .fold(0.0f64, |a, b| a.max(*b));
                assert!(diff < 1e-12, "{fmt:?} {depth} {c}: {diff}");
                assert_eq!(back.alpha, pic.alpha);
                if fmt == FileFormat::Png {
                    // The TIFF encoder writes the profile, but `image` 0.25's TIFF decoder does not read
                    // back the BYTE-typed tag it writes, so only PNG can be checked end to end here.
                    assert_eq!(back.icc, pic.icc, "{fmt:?}");
                }
            }
        }
    }

    #[test]
    fn png_carries_exif_and_jpeg_is_close() {
        let p = Path::new("x");
        // A minimal little-endian TIFF header with no entries.
        let exif = b"II*\x00\x08\x00\x00\x00\x00\x00".to_vec();
        let pic = Picture {
            color: Array3::from_elem((3, 8, 8), 0.5),
            alpha: None,
            bit_depth: 8,
            format: FileFormat::Png,
            icc: None,
            exif: Some(exif.clone()),
            meta: Metadata::default(),
        };
        let back = decode_bytes(
            &encode(&pic, opts(FileFormat::Png, 8), p).unwrap(),
            FileFormat::Png,
            p,
        )
        .unwrap();
        assert_eq!(back.exif, Some(exif.clone()));
        let j = decode_bytes(
            &encode(&pic, opts(FileFormat::Jpeg, 8), p).unwrap(),
            FileFormat::Jpeg,
            p,
        )
        .unwrap();
        assert!(j.color.iter().all(|v| (v - 0.5).abs() < 0.02));
        assert_eq!(j.exif, Some(exif));
    }

    #[test]
    fn channel_conversion_and_range() {
        let g = Array3::from_elem((1, 2, 2), 0.25);
        let rgb = to_channels(&g, 3).unwrap();
        assert_eq!(rgb.dim(), (3, 2, 2));
        let back = to_channels(&rgb, 1).unwrap();
        assert!((back[(0, 1, 1)] - 0.25).abs() < 1e-12);
        let m = to_model(&g, [-1.0, 1.0]);
        assert_eq!(m[(0, 0, 0)], -0.5);
        assert_eq!(from_model(&m, [-1.0, 1.0]), g);
    }

    #[test]
    fn corrupt_bytes_are_an_image_error_naming_the_file() {
        let e = decode_bytes(
            b"\x89PNG\r\n\x1a\nnot really",
            FileFormat::Png,
            Path::new("bad.png"),
        )
        .unwrap_err();
        assert!(matches!(e, Error::Image { .. }));
        assert!(e.to_string().contains("bad.png"));
    }

    #[test]
    fn atomic_write_and_stale_temps() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("a.png");
        std::fs::write(dir.path().join(".a.png.conjure-tmp-999"), b"torn").unwrap();
        std::fs::write(dir.path().join(".b.png.conjure-tmp-999"), b"other").unwrap();
        assert_eq!(remove_stale_temps(&out).unwrap(), 1);
        assert!(dir.path().join(".b.png.conjure-tmp-999").exists());
        write_atomic(&out, b"data").unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"data");
        assert!(!temp_path(&out).exists());
        assert!(is_temp_path(&temp_path(&out)));
    }
}
