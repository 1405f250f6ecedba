//! Placeholder: being written.

/// Not yet implemented.
#[derive(Debug)]
pub struct SrBicubic;

pub fn bicubic_taps(_scale: usize) -> Vec<f64> {
    Vec::new()
}
