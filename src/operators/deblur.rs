//! Placeholder: being written.

/// Not yet implemented.
#[derive(Debug)]
pub struct Deblur;

pub fn gaussian_kernel(_size: usize, _sigma: f64) -> Vec<f64> {
    Vec::new()
}
