//! The comparison grid of `conjure eval --plot`: one row per image, columns clean | y (when measurements
//! were given) | restored, each image enlarged by nearest neighbour so that 32×32 items are visible, with
//! the run's mean PSNR / SSIM as the title and each row's numbers under it. Drawn with the `image` crate
//! and a built-in 5×7 bitmap font (no font files needed).

use std::path::Path;

use image::{Rgb, RgbImage};

use super::eval::{load, EvalReport};
use super::font::{glyph, GLYPH_H, GLYPH_W};
use crate::error::{Error, Result};
use crate::tensor::Img;

/// Cells are at least this many pixels on their longer side.
pub(crate) const CELL_TARGET: usize = 128;
pub(crate) const MARGIN: usize = 10;
pub(crate) const GAP: usize = 8;
pub(crate) const BACKGROUND: Rgb<u8> = Rgb([28, 28, 32]);
pub(crate) const INK: Rgb<u8> = Rgb([235, 235, 235]);
pub(crate) const DIM_INK: Rgb<u8> = Rgb([170, 170, 180]);

/// Width in pixels of `text` drawn at integer `scale`.
pub(crate) fn text_width(text: &str, scale: usize) -> usize {
    text.chars().count() * (GLYPH_W + 1) * scale
}

/// Draw `text` with its top-left corner at (x, y); pixels outside the canvas are skipped.
pub(crate) fn draw_text(
    canvas: &mut RgbImage,
    x: usize,
    y: usize,
    text: &str,
    scale: usize,
    ink: Rgb<u8>,
) {
    let (cw, ch) = (canvas.width() as usize, canvas.height() as usize);
    for (k, c) in text.chars().enumerate() {
        let Some(rows) = glyph(c) else { continue };
        let x0 = x + k * (GLYPH_W + 1) * scale;
        for (r, bits) in rows.iter().enumerate() {
            for col in 0..GLYPH_W {
                if bits & (1 << (GLYPH_W - 1 - col)) == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let (px, py) = (x0 + col * scale + dx, y + r * scale + dy);
                        if px < cw && py < ch {
                            canvas.put_pixel(px as u32, py as u32, ink);
                        }
                    }
                }
            }
        }
    }
}

/// Paint `img` (C, H, W in [0, 1], gray or RGB) centred in the `cw`×`ch` box at (x, y), scaled by nearest
/// neighbour by the largest factor that fits (integer when enlarging, so pixels stay square).
pub(crate) fn draw_image(
    canvas: &mut RgbImage,
    x: usize,
    y: usize,
    cw: usize,
    ch: usize,
    img: &Img,
) {
    let (c, h, w) = img.dim();
    if h == 0 || w == 0 {
        return;
    }
    let mut s = (cw as f64 / w as f64).min(ch as f64 / h as f64);
    if s >= 1.0 {
        s = s.floor();
    }
    let (bw, bh) = (
        ((w as f64 * s) as usize).max(1),
        ((h as f64 * s) as usize).max(1),
    );
    let (ox, oy) = (x + (cw - bw.min(cw)) / 2, y + (ch - bh.min(ch)) / 2);
    let to_u8 = |v: f64| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    for i in 0..bh.min(ch) {
        let si = ((i as f64 / s) as usize).min(h - 1);
        for j in 0..bw.min(cw) {
            let sj = ((j as f64 / s) as usize).min(w - 1);
            let px = if c >= 3 {
                Rgb([
                    to_u8(img[[0, si, sj]]),
                    to_u8(img[[1, si, sj]]),
                    to_u8(img[[2, si, sj]]),
                ])
            } else {
                let v = to_u8(img[[0, si, sj]]);
                Rgb([v, v, v])
            };
            canvas.put_pixel((ox + j) as u32, (oy + i) as u32, px);
        }
    }
}

fn fmt_psnr(p: f64) -> String {
    if p.is_finite() {
        format!("{p:.2} dB")
    } else {
        "INF dB".to_string()
    }
}

/// Draw the grid for the first `rows` evaluated images of `report` and save it as a PNG at `path`.
/// `npy_range` is the value range of `.npy` files (as in [`super::eval::EvalOptions`]).
pub fn plot(report: &EvalReport, path: &Path, rows: usize, npy_range: [f64; 2]) -> Result<()> {
    let records: Vec<_> = report
        .images
        .iter()
        .filter(|r| r.metrics.is_some())
        .take(rows.max(1))
        .collect();
    if records.is_empty() {
        return Err(Error::invalid(
            "plot",
            "no evaluated images",
            "at least one reference image with a restored partner",
        ));
    }
    let with_y = report.measurements.is_some();
    // Load everything first: (clean, y, restored).
    let mut loaded = Vec::with_capacity(records.len());
    for r in &records {
        let x = load(&r.reference, npy_range)?;
        let y = match &r.measurement {
            Some(p) if with_y => Some(load(p, npy_range)?),
            _ => None,
        };
        let x_hat = load(&r.restored, npy_range)?;
        loaded.push((x, y, x_hat));
    }
    let max_h = loaded.iter().map(|(x, _, _)| x.dim().1).max().unwrap_or(1);
    let max_w = loaded.iter().map(|(x, _, _)| x.dim().2).max().unwrap_or(1);
    let factor = CELL_TARGET.div_ceil(max_h.max(max_w)).max(1);
    let (cell_w, cell_h) = (max_w * factor, max_h * factor);

    let columns: Vec<&str> = if with_y {
        vec!["CLEAN", "Y", "RESTORED"]
    } else {
        vec!["CLEAN", "RESTORED"]
    };
    let s = &report.summary;
    let title = format!(
        "MEAN PSNR {}  SSIM {}  N={}",
        s.psnr.map(fmt_psnr).unwrap_or_else(|| "-".into()),
        s.ssim
            .map(|v| format!("{v:.4}"))
            .unwrap_or_else(|| "-".into()),
        s.count
    );
    let title_scale = 2;
    let line = GLYPH_H + 4;
    let grid_w = columns.len() * (cell_w + GAP) - GAP;
    let width = (grid_w.max(text_width(&title, title_scale))) + 2 * MARGIN;
    let top = MARGIN + GLYPH_H * title_scale + 8 + line;
    let row_h = cell_h + line + GAP;
    let height = top + records.len() * row_h + MARGIN;

    let mut canvas = RgbImage::from_pixel(width as u32, height as u32, BACKGROUND);
    draw_text(&mut canvas, MARGIN, MARGIN, &title, title_scale, INK);
    for (k, name) in columns.iter().enumerate() {
        let x = MARGIN + k * (cell_w + GAP) + cell_w.saturating_sub(text_width(name, 1)) / 2;
        draw_text(&mut canvas, x, top - line, name, 1, DIM_INK);
    }
    for (n, (r, (x, y, x_hat))) in records.iter().zip(&loaded).enumerate() {
        let y0 = top + n * row_h;
        let mut images: Vec<&Img> = vec![x];
        if with_y {
            if let Some(y) = y {
                images.push(y);
            }
        }
        let mut col = 0;
        for img in images {
            draw_image(
                &mut canvas,
                MARGIN + col * (cell_w + GAP),
                y0,
                cell_w,
                cell_h,
                img,
            );
            col += 1;
        }
        if with_y && y.is_none() {
            col += 1;
        }
        let last = MARGIN + col * (cell_w + GAP);
        draw_image(&mut canvas, last, y0, cell_w, cell_h, x_hat);
        let m = r.metrics.expect("filtered above");
        let label = format!("{}  {}  SSIM {:.3}", r.name, fmt_psnr(m.psnr), m.ssim);
        draw_text(&mut canvas, MARGIN, y0 + cell_h + 2, &label, 1, DIM_INK);
    }
    canvas
        .save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| Error::Image {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}
