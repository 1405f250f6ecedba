//! [`TiledDenoiser`]: run a fixed-size network on images of any size (docs/design.md §1).
//!
//! The sampler works on the whole image; only the network sees model-size tiles. The wrapper
//!
//! 1. reflect-pads an image that is smaller than a tile along an axis up to one tile (at the bottom / right,
//!    numpy's `reflect` mode, edge pixel not repeated); the padding is cropped off the output again;
//! 2. cuts the (padded) image into overlapping tiles: along an axis of length L with tile size T and overlap
//!    o, n = 1 + ⌈(L − T)/(T − o)⌉ tiles start at p_i = round(i (L − T)/(n − 1)), so the first starts at 0,
//!    the last is flush with the far edge, they are evenly spaced, and neighbours overlap by at least o;
//! 3. runs the inner denoiser on all tiles of all images of the batch, at most `batch_size` tiles per call,
//!    each tile with its image's time input;
//! 4. blends: out = Σ_tiles Ŵ_tile ⊙ f(tile), with Ŵ_tile = W_tile / Σ_tiles W_tile. W_tile is the outer
//!    product of two 1-D windows that rise over the first o pixels of a tile and fall over its last o pixels
//!    as a raised cosine, sin²(π (j + ½) / (2o)), and are flat (1) on a side that lies on the image border.
//!    The windows are strictly positive, so the normalized weights sum to one at every pixel.
//!
//! The blend is linear in the tile outputs, so the VJP is exact:
//! Jᵀ u = Rᵀ Σ_tiles scatter(J_fᵀ (Ŵ_tile ⊙ u_tile)), where Rᵀ adds the cotangent of padded pixels back to
//! the pixels they were reflected from. Tiles are processed in a fixed order and every tile is computed
//! separately by the inner denoiser, so results do not depend on `batch_size` (for an inner denoiser that
//! keeps per-sample computations per sample, as the [`Denoiser`] contract asks).
//!
//! With overlap 0 the windows are flat and overlapping pixels (if the even spacing makes tiles overlap) are
//! plain averages; a non-local network will then show seams.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ndarray::{s, Array2, Array4, ArrayView4, Axis};

use super::Denoiser;
use crate::error::{Error, Result};

/// Tile geometry and batching (spec `runtime.tile`, `runtime.batch_size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileConfig {
    /// Tile height (the network's input height).
    pub tile_h: usize,
    /// Tile width (the network's input width).
    pub tile_w: usize,
    /// Minimum overlap between neighbouring tiles, in pixels; must be < the tile size (default 8).
    pub overlap: usize,
    /// Most tiles per network call (default 16).
    pub batch_size: usize,
}

impl TileConfig {
    /// Tiles of `tile_h`×`tile_w` with the defaults overlap 8 and batch size 16.
    pub fn new(tile_h: usize, tile_w: usize) -> Self {
        TileConfig {
            tile_h,
            tile_w,
            overlap: 8,
            batch_size: 16,
        }
    }

    /// Check the configuration.
    pub fn validate(&self) -> Result<()> {
        if self.tile_h == 0 || self.tile_w == 0 {
            return Err(Error::invalid(
                "tile size",
                format!("{}x{}", self.tile_h, self.tile_w),
                "at least 1x1",
            ));
        }
        if self.overlap >= self.tile_h.min(self.tile_w) {
            return Err(Error::invalid(
                "tile overlap",
                self.overlap,
                format!("less than the tile size {}x{}", self.tile_h, self.tile_w),
            ));
        }
        if self.batch_size == 0 {
            return Err(Error::invalid("batch_size", 0, ">= 1"));
        }
        Ok(())
    }
}

/// Start offsets of the tiles along one axis of (padded) length `len` ≥ `tile`: first at 0, last at
/// `len − tile`, evenly spaced (rounded), neighbours overlapping by at least `overlap` (< `tile`).
pub fn tile_origins(len: usize, tile: usize, overlap: usize) -> Vec<usize> {
    assert!(
        len >= tile && overlap < tile,
        "tile_origins({len}, {tile}, {overlap})"
    );
    if len == tile {
        return vec![0];
    }
    let span = len - tile;
    let stride = tile - overlap;
    let n = 1 + span.div_ceil(stride);
    (0..n)
        .map(|i| ((i * span) as f64 / (n - 1) as f64).round() as usize)
        .collect()
}

/// 1-D blend window of a tile of length `tile`: raised-cosine ramps over `overlap` pixels at each end that
/// does not lie on the image border.
fn window(tile: usize, overlap: usize, ramp_start: bool, ramp_end: bool) -> Vec<f64> {
    let ramp = |j: usize| {
        if j >= overlap {
            1.0
        } else {
            let s = (std::f64::consts::PI * (j as f64 + 0.5) / (2.0 * overlap as f64)).sin();
            s * s
        }
    };
    (0..tile)
        .map(|j| {
            let a = if ramp_start { ramp(j) } else { 1.0 };
            let b = if ramp_end { ramp(tile - 1 - j) } else { 1.0 };
            a * b
        })
        .collect()
}

/// Reflection index into an axis of length `len` ≥ 1 (numpy `reflect`: … 2 1 | 0 1 2 … L−1 | L−2 …).
fn reflect(p: usize, len: usize) -> usize {
    if len == 1 {
        return 0;
    }
    let period = 2 * (len - 1);
    let q = p % period;
    if q < len {
        q
    } else {
        period - q
    }
}

/// Where the tiles of one image size go and how they are blended.
#[derive(Debug, Clone)]
pub struct TilePlan {
    /// Image size (H, W).
    pub size: (usize, usize),
    /// Size after reflect padding to at least one tile (H', W').
    pub padded: (usize, usize),
    /// Tile start rows in the padded frame.
    pub ys: Vec<usize>,
    /// Tile start columns in the padded frame.
    pub xs: Vec<usize>,
    /// Normalized blend weights Ŵ of each tile (row-major over (ys, xs)), tile-shaped.
    pub weights: Vec<Array2<f64>>,
    tile: (usize, usize),
}

impl TilePlan {
    /// Plan the tiles for an image of `h`×`w` under `cfg`.
    pub fn new(h: usize, w: usize, cfg: &TileConfig) -> Result<Self> {
        cfg.validate()?;
        if h == 0 || w == 0 {
            return Err(Error::invalid(
                "image size",
                format!("{h}x{w}"),
                "at least 1x1",
            ));
        }
        let (th, tw) = (cfg.tile_h, cfg.tile_w);
        let (ph, pw) = (h.max(th), w.max(tw));
        let ys = tile_origins(ph, th, cfg.overlap);
        let xs = tile_origins(pw, tw, cfg.overlap);
        let wy: Vec<Vec<f64>> = (0..ys.len())
            .map(|i| window(th, cfg.overlap, i > 0, i + 1 < ys.len()))
            .collect();
        let wx: Vec<Vec<f64>> = (0..xs.len())
            .map(|j| window(tw, cfg.overlap, j > 0, j + 1 < xs.len()))
            .collect();
        let mut norm = Array2::<f64>::zeros((ph, pw));
        let mut raw = Vec::with_capacity(ys.len() * xs.len());
        for (i, &y0) in ys.iter().enumerate() {
            for (j, &x0) in xs.iter().enumerate() {
                let wt = Array2::from_shape_fn((th, tw), |(r, c)| wy[i][r] * wx[j][c]);
                let mut view = norm.slice_mut(s![y0..y0 + th, x0..x0 + tw]);
                view += &wt;
                raw.push(wt);
            }
        }
        let mut weights = Vec::with_capacity(raw.len());
        let mut k = 0;
        for &y0 in &ys {
            for &x0 in &xs {
                let n = norm.slice(s![y0..y0 + th, x0..x0 + tw]);
                weights.push(&raw[k] / &n);
                k += 1;
            }
        }
        Ok(TilePlan {
            size: (h, w),
            padded: (ph, pw),
            ys,
            xs,
            weights,
            tile: (th, tw),
        })
    }

    /// Number of tiles per image.
    pub fn len(&self) -> usize {
        self.weights.len()
    }

    /// Never true: every image has at least one tile.
    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// Start (row, column) of tile `k` in the padded frame.
    pub fn origin(&self, k: usize) -> (usize, usize) {
        (self.ys[k / self.xs.len()], self.xs[k % self.xs.len()])
    }

    /// Σ_tiles Ŵ_tile over the padded frame (all ones up to rounding).
    pub fn coverage(&self) -> Array2<f64> {
        let mut acc = Array2::zeros(self.padded);
        for (k, wt) in self.weights.iter().enumerate() {
            let (y0, x0) = self.origin(k);
            let mut v = acc.slice_mut(s![y0..y0 + self.tile.0, x0..x0 + self.tile.1]);
            v += wt;
        }
        acc
    }

    /// Reflect-pad a batch [B, C, H, W] to [B, C, H', W'].
    fn pad(&self, x: &ArrayView4<f64>) -> Array4<f64> {
        let (h, w) = self.size;
        let (ph, pw) = self.padded;
        if (ph, pw) == (h, w) {
            return x.to_owned();
        }
        let (b, c) = (x.shape()[0], x.shape()[1]);
        Array4::from_shape_fn((b, c, ph, pw), |(n, ch, r, q)| {
            x[[n, ch, reflect(r, h), reflect(q, w)]]
        })
    }

    /// Adjoint of [`pad`](Self::pad): add each padded pixel back onto its source pixel.
    fn pad_adjoint(&self, g: Array4<f64>) -> Array4<f64> {
        let (h, w) = self.size;
        if self.padded == (h, w) {
            return g;
        }
        let (b, c, ph, pw) = g.dim();
        let mut out = Array4::zeros((b, c, h, w));
        for n in 0..b {
            for ch in 0..c {
                for r in 0..ph {
                    let rr = reflect(r, h);
                    for q in 0..pw {
                        out[[n, ch, rr, reflect(q, w)]] += g[[n, ch, r, q]];
                    }
                }
            }
        }
        out
    }

    /// Crop [B, C, H', W'] to [B, C, H, W].
    fn crop(&self, x: Array4<f64>) -> Array4<f64> {
        let (h, w) = self.size;
        if self.padded == (h, w) {
            return x;
        }
        x.slice(s![.., .., ..h, ..w]).to_owned()
    }

    /// Zero-extend [B, C, H, W] to [B, C, H', W'] (adjoint of the crop).
    fn uncrop(&self, x: &ArrayView4<f64>) -> Array4<f64> {
        let (h, w) = self.size;
        if self.padded == (h, w) {
            return x.to_owned();
        }
        let (b, c) = (x.shape()[0], x.shape()[1]);
        let mut out = Array4::zeros((b, c, self.padded.0, self.padded.1));
        out.slice_mut(s![.., .., ..h, ..w]).assign(x);
        out
    }
}

/// Wraps a fixed-tile-size [`Denoiser`] so that it accepts images of any size (see the module docs).
pub struct TiledDenoiser {
    inner: Arc<dyn Denoiser>,
    cfg: TileConfig,
    /// The most tiles one image has been cut into so far (0 before the first call), so that
    /// [`Denoiser::engine`] says "tiled" only when something was.
    max_tiles: AtomicUsize,
}

impl TiledDenoiser {
    /// Wrap `inner`, whose networks take `cfg.tile_h`×`cfg.tile_w` inputs.
    pub fn new(inner: Arc<dyn Denoiser>, cfg: TileConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(TiledDenoiser {
            inner,
            cfg,
            max_tiles: AtomicUsize::new(0),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &TileConfig {
        &self.cfg
    }

    /// The tile plan for an image of `h`×`w`.
    pub fn plan(&self, h: usize, w: usize) -> Result<TilePlan> {
        TilePlan::new(h, w, &self.cfg)
    }

    fn check(&self, x: &ArrayView4<f64>, t: &[f64]) -> Result<TilePlan> {
        if x.shape()[0] != t.len() {
            return Err(Error::Shape(format!(
                "tiled denoiser got x {:?} with {} time inputs",
                x.shape(),
                t.len()
            )));
        }
        let plan = self.plan(x.shape()[2], x.shape()[3])?;
        self.max_tiles.fetch_max(plan.len(), Ordering::Relaxed);
        Ok(plan)
    }

    /// Gather the tiles of a padded batch: [B·n_tiles, C, th, tw] (image-major) and their time inputs.
    fn gather(&self, plan: &TilePlan, xp: &Array4<f64>, t: &[f64]) -> (Array4<f64>, Vec<f64>) {
        let (th, tw) = plan.tile;
        let (b, c) = (xp.shape()[0], xp.shape()[1]);
        let nt = plan.len();
        let mut tiles = Array4::zeros((b * nt, c, th, tw));
        let mut ts = Vec::with_capacity(b * nt);
        for (n, &tn) in t.iter().enumerate().take(b) {
            for k in 0..nt {
                let (y0, x0) = plan.origin(k);
                tiles
                    .index_axis_mut(Axis(0), n * nt + k)
                    .assign(&xp.slice(s![n, .., y0..y0 + th, x0..x0 + tw]));
                ts.push(tn);
            }
        }
        (tiles, ts)
    }

    /// Σ_tiles Ŵ_tile ⊙ tile, scattered into a padded batch [B, C, H', W'].
    fn blend(&self, plan: &TilePlan, tiles: &Array4<f64>, b: usize) -> Array4<f64> {
        let (th, tw) = plan.tile;
        let c = tiles.shape()[1];
        let nt = plan.len();
        let mut out = Array4::zeros((b, c, plan.padded.0, plan.padded.1));
        for n in 0..b {
            for k in 0..nt {
                let (y0, x0) = plan.origin(k);
                let wt = &plan.weights[k];
                let tile = tiles.index_axis(Axis(0), n * nt + k);
                for ch in 0..c {
                    let mut dst = out.slice_mut(s![n, ch, y0..y0 + th, x0..x0 + tw]);
                    ndarray::Zip::from(&mut dst)
                        .and(&tile.index_axis(Axis(0), ch))
                        .and(wt)
                        .for_each(|d, &v, &w| *d += w * v);
                }
            }
        }
        out
    }

    /// Consecutive ranges of at most `batch_size` tiles covering 0..n, in order.
    fn chunks(&self, n: usize) -> Vec<std::ops::Range<usize>> {
        (0..n)
            .step_by(self.cfg.batch_size)
            .map(|i| i..(i + self.cfg.batch_size).min(n))
            .collect()
    }
}

fn concat(parts: Vec<Array4<f64>>) -> Result<Array4<f64>> {
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    ndarray::concatenate(Axis(0), &views)
        .map_err(|e| Error::Shape(format!("inner denoiser returned inconsistent tiles: {e}")))
}

fn check_tile_out(out: &Array4<f64>, want: &[usize]) -> Result<()> {
    if out.shape() != want {
        return Err(Error::Shape(format!(
            "inner denoiser returned {:?} for tiles {:?}",
            out.shape(),
            want
        )));
    }
    Ok(())
}

impl TiledDenoiser {
    /// The blended forward; `for_vjp` routes the tile batches through the inner `predict_for_vjp`.
    fn predict_tiles(&self, x: ArrayView4<f64>, t: &[f64], for_vjp: bool) -> Result<Array4<f64>> {
        let plan = self.check(&x, t)?;
        let b = x.shape()[0];
        let xp = plan.pad(&x);
        let (tiles, ts) = self.gather(&plan, &xp, t);
        let mut parts = Vec::new();
        for r in self.chunks(tiles.shape()[0]) {
            let xin = tiles.slice(s![r.clone(), .., .., ..]);
            let out = if for_vjp {
                self.inner.predict_for_vjp(xin, &ts[r])?
            } else {
                self.inner.predict(xin, &ts[r])?
            };
            check_tile_out(&out, xin.shape())?;
            parts.push(out);
        }
        let outs = concat(parts)?;
        Ok(plan.crop(self.blend(&plan, &outs, b)))
    }
}

impl Denoiser for TiledDenoiser {
    /// The inner engine and how images went through it: "tiled HxW, overlap O" once an image has been
    /// cut into tiles, "whole images" when every image so far fitted one tile, and before any call the
    /// tile size that larger images would get.
    fn engine(&self) -> String {
        let (h, w, o) = (self.cfg.tile_h, self.cfg.tile_w, self.cfg.overlap);
        match self.max_tiles.load(Ordering::Relaxed) {
            0 => format!(
                "{} (images over {h}x{w} in {h}x{w} tiles, overlap {o})",
                self.inner.engine()
            ),
            1 => format!("{} (whole images, not tiled)", self.inner.engine()),
            _ => format!("{} (tiled {h}x{w}, overlap {o})", self.inner.engine()),
        }
    }

    fn predict(&self, x: ArrayView4<f64>, t: &[f64]) -> Result<Array4<f64>> {
        self.predict_tiles(x, t, false)
    }

    /// The tile batches are those [`vjp`](Denoiser::vjp) will send at the same (x, t), so the inner
    /// denoiser finds the residuals it kept for each.
    fn predict_for_vjp(&self, x: ArrayView4<f64>, t: &[f64]) -> Result<Array4<f64>> {
        self.predict_tiles(x, t, true)
    }

    fn has_vjp(&self) -> bool {
        self.inner.has_vjp()
    }

    fn vjp(
        &self,
        x: ArrayView4<f64>,
        t: &[f64],
        cot: ArrayView4<f64>,
    ) -> Result<(Array4<f64>, Array4<f64>)> {
        let plan = self.check(&x, t)?;
        if cot.shape() != x.shape() {
            return Err(Error::Shape(format!(
                "cotangent {:?} vs input {:?}",
                cot.shape(),
                x.shape()
            )));
        }
        let b = x.shape()[0];
        let (th, tw) = plan.tile;
        let nt = plan.len();
        let xp = plan.pad(&x);
        let (tiles, ts) = self.gather(&plan, &xp, t);
        // Cotangent of each tile output: Ŵ_tile ⊙ (Cᵀ u)_tile.
        let up = plan.uncrop(&cot);
        let (mut ctiles, _) = self.gather(&plan, &up, t);
        for (i, mut ct) in ctiles.outer_iter_mut().enumerate() {
            let wt = &plan.weights[i % nt];
            for mut chan in ct.outer_iter_mut() {
                chan *= wt;
            }
        }
        let mut outs = Vec::new();
        let mut grads = Vec::new();
        for r in self.chunks(tiles.shape()[0]) {
            let xin = tiles.slice(s![r.clone(), .., .., ..]);
            let cin = ctiles.slice(s![r.clone(), .., .., ..]);
            let (o, g) = self.inner.vjp(xin, &ts[r], cin)?;
            check_tile_out(&o, xin.shape())?;
            check_tile_out(&g, xin.shape())?;
            outs.push(o);
            grads.push(g);
        }
        let outs = concat(outs)?;
        let grads = concat(grads)?;
        let out = plan.crop(self.blend(&plan, &outs, b));
        // Scatter-add the tile VJPs (no weights: they were applied to the cotangent), then undo the padding.
        let c = x.shape()[1];
        let mut gp = Array4::zeros((b, c, plan.padded.0, plan.padded.1));
        for n in 0..b {
            for k in 0..nt {
                let (y0, x0) = plan.origin(k);
                let mut dst = gp.slice_mut(s![n, .., y0..y0 + th, x0..x0 + tw]);
                dst += &grads.index_axis(Axis(0), n * nt + k);
            }
        }
        Ok((out, plan.pad_adjoint(gp)))
    }
}
