//! The image tensor every module shares: one image (or a measurement, a noise draw, a network output) as a
//! (channels, height, width) array in f64.

use ndarray::Array3;

/// One image (or a measurement) as a (channels, height, width) array in f64.
pub type Img = Array3<f64>;
