//! Colour through a model with another number of channels than the file.
//!
//! * **RGB file, 1-channel model.** The model restores the luma Y = 0.299 R + 0.587 G + 0.114 B (Rec. 601,
//!   the measurement [`super::to_channels`] gives it). The chroma of the file, the colour differences
//!   Cr = R − Y and Cb = B − Y, is carried to the output unchanged — resampled to the output size with a
//!   bicubic (Catmull–Rom) filter when the output is larger (super-resolution) — and recombined with the
//!   restored luma Ŷ: R = Ŷ + Cr, B = Ŷ + Cb, G = (Ŷ − 0.299 R − 0.114 B) / 0.587. So RGB in gives RGB
//!   out, with the luma restored and the colour as it was (chroma is not restored: for deblurring or
//!   inpainting the colour of a blurred or damaged region stays as in the input).
//! * **Gray file, 3-channel model.** The gray plane is replicated to RGB for the model, and the restored
//!   RGB is written back as gray (its Rec. 601 luma), so gray in gives gray out.
//! * **Colorization** (a 3-channel x from a 1-channel y) writes RGB whatever the input was.

use image::imageops::{resize, FilterType};
use image::{ImageBuffer, Luma};
use ndarray::{Array2, Array3, Axis};

use crate::error::{Error, Result};
use crate::spec::{OperatorKind, PipelineSpec};

const WR: f64 = 0.299;
const WG: f64 = 0.587;
const WB: f64 = 0.114;

/// Refuse, before any image is read, a spec whose task cannot run on a model with `channels` colour
/// channels (so `validate` rejects what `run` would fail on every image).
pub fn check_channels(spec: &PipelineSpec, channels: usize) -> Result<()> {
    if spec.task.operator == OperatorKind::Colorize && channels != 3 {
        return Err(Error::Config {
            message: format!(
                "task.operator colorize restores RGB from gray and needs a 3-channel model, but {} \
                 has {channels} channel{}",
                spec.model.display(),
                if channels == 1 { "" } else { "s" }
            ),
        });
    }
    if channels != 1 && channels != 3 {
        return Err(Error::Config {
            message: format!(
                "{} has {channels} channels; conjure restores gray (1) or RGB (3) images",
                spec.model.display()
            ),
        });
    }
    Ok(())
}

/// A plane resampled to (h, w): unchanged when it has that size already, else bicubic (Catmull–Rom).
pub fn resample(plane: &Array2<f64>, h: usize, w: usize) -> Array2<f64> {
    let (ih, iw) = plane.dim();
    if (ih, iw) == (h, w) {
        return plane.clone();
    }
    let buf: ImageBuffer<Luma<f32>, Vec<f32>> =
        ImageBuffer::from_fn(iw as u32, ih as u32, |x, y| {
            // `resize` clamps f32 samples to [0, 1]; colour differences lie in [-1, 1], so they travel
            // mapped onto [0, 1] and come back.
            Luma([((plane[(y as usize, x as usize)] + 1.0) * 0.5) as f32])
        });
    let out = resize(&buf, w as u32, h as u32, FilterType::CatmullRom);
    Array2::from_shape_fn((h, w), |(i, j)| {
        2.0 * f64::from(out.get_pixel(j as u32, i as u32).0[0]) - 1.0
    })
}

/// The colour planes to write for a restoration `restored` (channels first, [0, 1]) of the file colour
/// `input`; `colorize` when the task made colour from gray. See the module docs.
pub fn to_output(input: &Array3<f64>, restored: Array3<f64>, colorize: bool) -> Array3<f64> {
    let (ci, cr) = (input.dim().0, restored.dim().0);
    match (ci, cr) {
        (3, 1) => {
            let (_, h, w) = restored.dim();
            let y_in = &input.index_axis(Axis(0), 0) * WR
                + &input.index_axis(Axis(0), 1) * WG
                + &input.index_axis(Axis(0), 2) * WB;
            let cr_plane = resample(&(&input.index_axis(Axis(0), 0) - &y_in), h, w);
            let cb_plane = resample(&(&input.index_axis(Axis(0), 2) - &y_in), h, w);
            let y = restored.index_axis(Axis(0), 0);
            let r = &y + &cr_plane;
            let b = &y + &cb_plane;
            let g = (&y - &(&r * WR) - &(&b * WB)) / WG;
            ndarray::stack(Axis(0), &[r.view(), g.view(), b.view()]).expect("same shapes")
        }
        (1, 3) if !colorize => {
            let y = &restored.index_axis(Axis(0), 0) * WR
                + &restored.index_axis(Axis(0), 1) * WG
                + &restored.index_axis(Axis(0), 2) * WB;
            y.insert_axis(Axis(0))
        }
        _ => restored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rgb(h: usize, w: usize) -> Array3<f64> {
        Array3::from_shape_fn((3, h, w), |(k, i, j)| {
            0.2 + 0.6 * (((k + 1) * (i * 3 + j * 7)) % 11) as f64 / 10.0
        })
    }

    #[test]
    fn rgb_through_a_gray_model_keeps_its_colour_exactly_when_the_luma_is_unchanged() {
        let x = rgb(5, 6);
        let luma = super::super::to_channels(&x, 1).unwrap();
        let out = to_output(&x, luma, false);
        let err = (&out - &x).mapv(f64::abs).fold(0.0f64, |a, b| a.max(*b));
        assert!(err < 1e-12, "{err}");
    }

    #[test]
    fn the_restored_luma_is_the_output_luma_and_chroma_is_the_inputs() {
        let x = rgb(4, 4);
        let y_hat = Array3::from_shape_fn((1, 4, 4), |(_, i, j)| 0.3 + 0.05 * (i + j) as f64);
        let out = to_output(&x, y_hat.clone(), false);
        assert_eq!(out.dim(), (3, 4, 4));
        let y_out = super::super::to_channels(&out, 1).unwrap();
        let e = (&y_out - &y_hat)
            .mapv(f64::abs)
            .fold(0.0f64, |a, b| a.max(*b));
        assert!(e < 1e-12, "{e}");
        let y_in = super::super::to_channels(&x, 1).unwrap();
        for (k, c) in [(0, 0), (2, 2)] {
            let d_out = &out.index_axis(Axis(0), k) - &y_out.index_axis(Axis(0), 0);
            let d_in = &x.index_axis(Axis(0), c) - &y_in.index_axis(Axis(0), 0);
            let e = (&d_out - &d_in)
                .mapv(f64::abs)
                .fold(0.0f64, |a, b| a.max(*b));
            assert!(e < 1e-12, "{e}");
        }
    }

    #[test]
    fn super_resolved_luma_gets_chroma_resampled_to_its_size() {
        // A constant chroma resamples to itself at any size.
        let x = Array3::from_shape_fn((3, 3, 4), |(k, _, _)| [0.6, 0.4, 0.3][k]);
        let out = to_output(&x, Array3::from_elem((1, 6, 8), 0.5), false);
        assert_eq!(out.dim(), (3, 6, 8));
        let y = 0.6 * WR + 0.4 * WG + 0.3 * WB;
        for (k, v) in [0.6, 0.4, 0.3].iter().enumerate() {
            let want = v - y + 0.5;
            assert!(out
                .index_axis(Axis(0), k)
                .iter()
                .all(|o| (o - want).abs() < 1e-6));
        }
    }

    #[test]
    fn gray_in_gray_out_unless_colorizing() {
        let g = Array3::from_elem((1, 2, 2), 0.25);
        let restored = Array3::from_shape_fn((3, 2, 2), |(k, _, _)| [0.2, 0.3, 0.1][k]);
        let out = to_output(&g, restored.clone(), false);
        assert_eq!(out.dim(), (1, 2, 2));
        assert!((out[(0, 0, 0)] - (0.2 * WR + 0.3 * WG + 0.1 * WB)).abs() < 1e-12);
        assert_eq!(to_output(&g, restored.clone(), true), restored);
    }
}
