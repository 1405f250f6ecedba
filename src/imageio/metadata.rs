//! Archival metadata: what a scan's file says besides its pixels, read on decode and written back on
//! encode, so that a restoration keeps its source's physical size, compression and notes.
//!
//! | kept from the input          | PNG             | TIFF                                 | JPEG               |
//! |------------------------------|-----------------|--------------------------------------|--------------------|
//! | resolution (scaled for SR)   | `pHYs`          | X/YResolution, ResolutionUnit        | JFIF density       |
//! | text                         | tEXt/zTXt/iTXt  | ImageDescription, Artist, Copyright, DocumentName, DateTime | —  |
//! | compression                  | (always Deflate)| none / LZW / Deflate / PackBits, predictor | (quality: `io.jpeg_quality`) |
//! | ICC profile, EXIF, bit depth | see [`super`]   |                                      |                    |
//!
//! The processing note ([`Metadata::note`], e.g. `conjure 0.1.0 (spec sha256 …)`) is written as a PNG
//! `Software` text chunk, the TIFF `Software` tag and a JPEG comment (COM) segment. Text moves between
//! formats by keyword: PNG `Description`, `Author`, `Copyright`, `Title`, `Creation Time` ↔ TIFF
//! ImageDescription, Artist, Copyright, DocumentName, DateTime; other PNG keywords only go to PNG.
//!
//! Encoding uses the `png` and `tiff` crates directly (the `image` crate's encoders cannot write `pHYs`,
//! text, a TIFF resolution or compression); JPEG still goes through `image`.

use std::borrow::Cow;
use std::io::Cursor;

/// Unit of a [`Resolution`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolutionUnit {
    /// No unit: only the pixel aspect ratio is known.
    None,
    Inch,
    Centimeter,
    Meter,
}

/// Pixels per unit, horizontally and vertically.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resolution {
    pub x: f64,
    pub y: f64,
    pub unit: ResolutionUnit,
}

impl Resolution {
    /// Pixels per inch, when the unit is physical.
    pub fn dpi(&self) -> Option<(f64, f64)> {
        let per_inch = match self.unit {
            ResolutionUnit::None => return None,
            ResolutionUnit::Inch => 1.0,
            ResolutionUnit::Centimeter => 2.54,
            ResolutionUnit::Meter => 0.0254,
        };
        Some((self.x * per_inch, self.y * per_inch))
    }
}

/// What a file says besides its pixels (ICC and EXIF are [`super::Picture`] fields of their own).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Metadata {
    pub resolution: Option<Resolution>,
    /// (keyword, text) pairs, PNG keywords (TIFF tags are mapped to them, see the module docs).
    pub text: Vec<(String, String)>,
    /// The input TIFF's Compression tag (1 none, 5 LZW, 8 / 32946 Deflate, 32773 PackBits, …).
    pub tiff_compression: Option<u16>,
    /// The input TIFF's Predictor tag (2 = horizontal differencing).
    pub tiff_predictor: Option<u16>,
    /// Processing note written into the output (not read from inputs).
    pub note: Option<String>,
}

impl Metadata {
    /// The metadata of an image resampled by `scale` (super-resolution: the output has `scale` times the
    /// pixels per side): the resolution is multiplied so that the physical size stays the same; a
    /// unitless (aspect-ratio) resolution is kept.
    pub fn scaled(&self, scale: f64) -> Metadata {
        let mut m = self.clone();
        if let Some(r) = &mut m.resolution {
            if r.unit != ResolutionUnit::None {
                r.x *= scale;
                r.y *= scale;
            }
        }
        m
    }
}

const TIFF_TEXT: [(tiff::tags::Tag, &str); 5] = [
    (tiff::tags::Tag::ImageDescription, "Description"),
    (tiff::tags::Tag::Artist, "Author"),
    (tiff::tags::Tag::Copyright, "Copyright"),
    (tiff::tags::Tag::Unknown(269), "Title"), // DocumentName
    (tiff::tags::Tag::DateTime, "Creation Time"),
];

/// Read the metadata of an encoded file (best effort: what cannot be read is left out; the pixels are
/// decoded, and damage reported, elsewhere).
pub fn read(bytes: &[u8], format: image::ImageFormat) -> Metadata {
    match format {
        image::ImageFormat::Png => read_png(bytes),
        image::ImageFormat::Tiff => read_tiff(bytes),
        image::ImageFormat::Jpeg => read_jpeg(bytes),
        _ => Metadata::default(),
    }
}

fn read_png(bytes: &[u8]) -> Metadata {
    let mut m = Metadata::default();
    let Ok(mut reader) = png::Decoder::new(Cursor::new(bytes)).read_info() else {
        return m;
    };
    // Chunks after the image data (text is often there) are read by `finish`.
    let _ = reader.finish();
    let info = reader.info();
    m.resolution = info.pixel_dims.map(|d| Resolution {
        x: f64::from(d.xppu),
        y: f64::from(d.yppu),
        unit: match d.unit {
            png::Unit::Meter => ResolutionUnit::Meter,
            png::Unit::Unspecified => ResolutionUnit::None,
        },
    });
    for t in &info.uncompressed_latin1_text {
        m.text.push((t.keyword.clone(), t.text.clone()));
    }
    // Compressed text is inflated up to 1 MiB per chunk (a text "bomb" is left out, not allocated).
    const TEXT_LIMIT: usize = 1 << 20;
    for t in &info.compressed_latin1_text {
        let mut t = t.clone();
        if t.decompress_text_with_limit(TEXT_LIMIT).is_ok() {
            if let Ok(s) = t.get_text() {
                m.text.push((t.keyword.clone(), s));
            }
        }
    }
    for t in &info.utf8_text {
        let mut t = t.clone();
        if t.decompress_text_with_limit(TEXT_LIMIT).is_ok() {
            if let Ok(s) = t.get_text() {
                m.text.push((t.keyword.clone(), s));
            }
        }
    }
    m
}

fn read_tiff(bytes: &[u8]) -> Metadata {
    use tiff::decoder::ifd::Value;
    use tiff::tags::Tag;
    let mut m = Metadata::default();
    let Ok(mut d) = tiff::decoder::Decoder::new(Cursor::new(bytes)) else {
        return m;
    };
    let rational = |v: Option<Value>| match v {
        Some(Value::Rational(n, d)) if d != 0 => Some(f64::from(n) / f64::from(d)),
        _ => None,
    };
    let x = rational(d.find_tag(Tag::XResolution).ok().flatten());
    let y = rational(d.find_tag(Tag::YResolution).ok().flatten());
    let unit = d
        .find_tag_unsigned::<u16>(Tag::ResolutionUnit)
        .ok()
        .flatten()
        .unwrap_or(2);
    if let (Some(x), Some(y)) = (x, y) {
        if x > 0.0 && y > 0.0 && x.is_finite() && y.is_finite() {
            m.resolution = Some(Resolution {
                x,
                y,
                unit: match unit {
                    2 => ResolutionUnit::Inch,
                    3 => ResolutionUnit::Centimeter,
                    _ => ResolutionUnit::None,
                },
            });
        }
    }
    m.tiff_compression = d.find_tag_unsigned(Tag::Compression).ok().flatten();
    m.tiff_predictor = d.find_tag_unsigned(Tag::Predictor).ok().flatten();
    for (tag, key) in TIFF_TEXT {
        if let Ok(Some(Value::Ascii(s))) = d.find_tag(tag) {
            let s = s.trim_end_matches('\0').to_owned();
            if !s.is_empty() {
                m.text.push((key.to_owned(), s));
            }
        }
    }
    m
}

fn read_jpeg(bytes: &[u8]) -> Metadata {
    let mut m = Metadata::default();
    let mut d = zune_jpeg::JpegDecoder::new(zune_core::bytestream::ZCursor::new(bytes));
    if d.decode_headers().is_err() {
        return m;
    }
    if let Some(info) = d.info() {
        let unit = match info.pixel_density {
            1 => ResolutionUnit::Inch,
            2 => ResolutionUnit::Centimeter,
            _ => ResolutionUnit::None,
        };
        // A JFIF density of 1:1 without a unit is the "no information" default.
        let default = unit == ResolutionUnit::None && info.x_density == info.y_density;
        if info.x_density > 0 && info.y_density > 0 && !default {
            m.resolution = Some(Resolution {
                x: f64::from(info.x_density),
                y: f64::from(info.y_density),
                unit,
            });
        }
    }
    m
}

/// Check that a JPEG's entropy-coded data is complete and well formed. The `image` crate decodes
/// leniently (a file cut short comes back with its missing part filled with grey); this decodes again in
/// the decoder's strict mode, where a premature end or a damaged scan is an error.
pub fn check_jpeg(bytes: &[u8]) -> Result<(), String> {
    let options = zune_core::options::DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(usize::MAX)
        .set_max_height(usize::MAX);
    let mut d = zune_jpeg::JpegDecoder::new_with_options(
        zune_core::bytestream::ZCursor::new(bytes),
        options,
    );
    d.decode()
        .map(|_| ())
        .map_err(|e| format!("corrupt or truncated JPEG data ({e:?})"))
}

/// Samples of one image, interleaved, row-major.
pub(crate) enum Samples {
    U8(Vec<u8>),
    U16(Vec<u16>),
}

/// Encode a PNG with the `png` crate: colour type from `channels` (1 gray, 2 gray+alpha, 3 RGB, 4 RGBA),
/// ICC, EXIF, `pHYs` and text from `meta`, the note as a `Software` text chunk.
pub(crate) fn encode_png(
    w: u32,
    h: u32,
    channels: usize,
    samples: &Samples,
    icc: Option<&[u8]>,
    exif: Option<&[u8]>,
    meta: &Metadata,
) -> Result<Vec<u8>, String> {
    let mut info = png::Info::with_size(w, h);
    info.color_type = match channels {
        1 => png::ColorType::Grayscale,
        2 => png::ColorType::GrayscaleAlpha,
        3 => png::ColorType::Rgb,
        _ => png::ColorType::Rgba,
    };
    let data: Cow<[u8]> = match samples {
        Samples::U8(s) => {
            info.bit_depth = png::BitDepth::Eight;
            Cow::Borrowed(s.as_slice())
        }
        Samples::U16(s) => {
            info.bit_depth = png::BitDepth::Sixteen;
            Cow::Owned(s.iter().flat_map(|v| v.to_be_bytes()).collect())
        }
    };
    info.icc_profile = icc.map(|p| Cow::Owned(p.to_vec()));
    info.exif_metadata = exif.map(|p| Cow::Owned(p.to_vec()));
    info.pixel_dims = meta.resolution.map(|r| {
        let (x, y, unit) = match r.dpi() {
            Some((x, y)) => (x / 0.0254, y / 0.0254, png::Unit::Meter),
            None => (r.x, r.y, png::Unit::Unspecified),
        };
        let u = |v: f64| v.round().clamp(1.0, f64::from(u32::MAX)) as u32;
        png::PixelDimensions {
            xppu: u(x),
            yppu: u(y),
            unit,
        }
    });
    let texts = meta
        .text
        .iter()
        .filter(|(k, _)| meta.note.is_none() || k != "Software")
        .cloned()
        .chain(meta.note.clone().map(|n| ("Software".to_owned(), n)));
    // PNG keywords: 1–79 printable Latin-1 characters, no leading, trailing or double spaces; text
    // without NUL. Anything else (a damaged or exotic input chunk) is left out rather than fail the image.
    let keyword_ok = |k: &str| {
        (1..=79).contains(&k.chars().count())
            && k.chars().all(|c| matches!(c as u32, 32..=126 | 161..=255))
            && !k.starts_with(' ')
            && !k.ends_with(' ')
            && !k.contains("  ")
    };
    for (k, t) in texts {
        if !keyword_ok(&k) || t.contains('\0') {
            continue;
        }
        if t.chars().all(|c| (c as u32) < 256) {
            info.uncompressed_latin1_text
                .push(png::text_metadata::TEXtChunk::new(k, t));
        } else {
            info.utf8_text
                .push(png::text_metadata::ITXtChunk::new(k, t));
        }
    }
    let mut buf = Vec::new();
    let enc = png::Encoder::with_info(&mut buf, info).map_err(|e| e.to_string())?;
    let mut wr = enc.write_header().map_err(|e| e.to_string())?;
    wr.write_image_data(&data).map_err(|e| e.to_string())?;
    wr.finish().map_err(|e| e.to_string())?;
    Ok(buf)
}

/// Encode a TIFF with the `tiff` crate: 1 (gray), 2 (gray + alpha, written as RGBA), 3 (RGB) or 4 (RGBA) channels,
/// the input's compression and predictor (schemes the encoder cannot write — JPEG, CCITT, … — become
/// LZW, which is lossless), resolution, mapped text, ICC and the note as `Software`.
pub(crate) fn encode_tiff(
    w: u32,
    h: u32,
    channels: usize,
    samples: &Samples,
    icc: Option<&[u8]>,
    meta: &Metadata,
) -> Result<Vec<u8>, String> {
    use tiff::encoder::colortype::{Gray16, Gray8, RGB16, RGB8, RGBA16, RGBA8};
    let mut buf = Vec::new();
    let mut cur = Cursor::new(&mut buf);
    let r = match (samples, channels) {
        // Gray + alpha has no TIFF colour type in the encoder: written as RGBA with equal colours.
        (Samples::U8(s), 2) => {
            let s: Vec<u8> = s.chunks(2).flat_map(|p| [p[0], p[0], p[0], p[1]]).collect();
            write_tiff::<RGBA8>(&mut cur, w, h, &s, icc, meta)
        }
        (Samples::U16(s), 2) => {
            let s: Vec<u16> = s.chunks(2).flat_map(|p| [p[0], p[0], p[0], p[1]]).collect();
            write_tiff::<RGBA16>(&mut cur, w, h, &s, icc, meta)
        }
        (Samples::U8(s), 1) => write_tiff::<Gray8>(&mut cur, w, h, s, icc, meta),
        (Samples::U8(s), 3) => write_tiff::<RGB8>(&mut cur, w, h, s, icc, meta),
        (Samples::U8(s), 4) => write_tiff::<RGBA8>(&mut cur, w, h, s, icc, meta),
        (Samples::U16(s), 1) => write_tiff::<Gray16>(&mut cur, w, h, s, icc, meta),
        (Samples::U16(s), 3) => write_tiff::<RGB16>(&mut cur, w, h, s, icc, meta),
        (Samples::U16(s), 4) => write_tiff::<RGBA16>(&mut cur, w, h, s, icc, meta),
        _ => return Err(format!("cannot write {channels} channels as TIFF")),
    };
    r.map_err(|e| e.to_string())?;
    Ok(buf)
}

fn rational(v: f64) -> tiff::encoder::Rational {
    // Three decimals are plenty for a resolution; whole numbers stay exact.
    let d = if v.fract() == 0.0 { 1 } else { 1000 };
    let n = (v * f64::from(d)).round().clamp(1.0, f64::from(u32::MAX)) as u32;
    tiff::encoder::Rational { n, d }
}

fn write_tiff<C>(
    cur: &mut Cursor<&mut Vec<u8>>,
    w: u32,
    h: u32,
    data: &[C::Inner],
    icc: Option<&[u8]>,
    meta: &Metadata,
) -> tiff::TiffResult<()>
where
    C: tiff::encoder::colortype::ColorType,
    [C::Inner]: tiff::encoder::TiffValue,
{
    use tiff::encoder::{Compression, DeflateLevel, TiffEncoder};
    use tiff::tags::{Predictor, ResolutionUnit as Unit, Tag};
    let compression = match meta.tiff_compression {
        None | Some(1) => Compression::Uncompressed,
        Some(8) | Some(32946) => Compression::Deflate(DeflateLevel::Balanced),
        Some(32773) => Compression::Packbits,
        Some(_) => Compression::Lzw,
    };
    let predictor = match (meta.tiff_predictor, compression) {
        (Some(2), Compression::Lzw | Compression::Deflate(_)) => Predictor::Horizontal,
        _ => Predictor::None,
    };
    let mut enc = TiffEncoder::new(cur)?
        .with_compression(compression)
        .with_predictor(predictor);
    let mut im = enc.new_image::<C>(w, h)?;
    if let Some(r) = meta.resolution {
        let (x, y, unit) = match r.unit {
            ResolutionUnit::None => (r.x, r.y, Unit::None),
            ResolutionUnit::Inch => (r.x, r.y, Unit::Inch),
            ResolutionUnit::Centimeter => (r.x, r.y, Unit::Centimeter),
            ResolutionUnit::Meter => (r.x / 100.0, r.y / 100.0, Unit::Centimeter),
        };
        im.resolution_unit(unit);
        im.x_resolution(rational(x));
        im.y_resolution(rational(y));
    }
    let d = im.encoder();
    for (tag, key) in TIFF_TEXT {
        if let Some((_, t)) = meta.text.iter().find(|(k, _)| k == key) {
            if t.is_ascii() {
                d.write_tag(tag, t.as_str())?;
            }
        }
    }
    if let Some(n) = &meta.note {
        d.write_tag(Tag::Software, n.as_str())?;
    }
    if let Some(p) = icc {
        d.write_tag(Tag::IccProfile, p)?;
    }
    im.write_data(data)
}

/// Insert a comment (COM) segment holding `note` right after a JPEG's start-of-image marker and its
/// JFIF / EXIF application segments.
pub(crate) fn jpeg_with_comment(jpeg: Vec<u8>, note: &str) -> Vec<u8> {
    let text = &note.as_bytes()[..note.len().min(65000)];
    if jpeg.len() < 4 || jpeg[0..2] != [0xFF, 0xD8] {
        return jpeg;
    }
    // Skip the APPn segments (FF E0..EF) that follow SOI.
    let mut at = 2;
    while at + 4 <= jpeg.len() && jpeg[at] == 0xFF && (0xE0..=0xEF).contains(&jpeg[at + 1]) {
        let len = usize::from(u16::from_be_bytes([jpeg[at + 2], jpeg[at + 3]]));
        at += 2 + len;
    }
    let at = at.min(jpeg.len());
    let mut out = Vec::with_capacity(jpeg.len() + text.len() + 4);
    out.extend_from_slice(&jpeg[..at]);
    out.extend_from_slice(&[0xFF, 0xFE]);
    out.extend_from_slice(&((text.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(text);
    out.extend_from_slice(&jpeg[at..]);
    out
}

/// The JPEG pixel density for a resolution (JFIF holds whole numbers up to 65535).
pub(crate) fn jpeg_density(r: &Resolution) -> image::codecs::jpeg::PixelDensity {
    use image::codecs::jpeg::{PixelDensity, PixelDensityUnit};
    let (x, y, unit) = match r.unit {
        ResolutionUnit::None => (r.x, r.y, PixelDensityUnit::PixelAspectRatio),
        ResolutionUnit::Inch => (r.x, r.y, PixelDensityUnit::Inches),
        ResolutionUnit::Centimeter => (r.x, r.y, PixelDensityUnit::Centimeters),
        ResolutionUnit::Meter => (r.x / 100.0, r.y / 100.0, PixelDensityUnit::Centimeters),
    };
    let u = |v: f64| v.round().clamp(1.0, 65535.0) as u16;
    PixelDensity {
        density: (u(x), u(y)),
        unit,
    }
}
