//! Placeholder: being written.

/// Not yet implemented.
#[derive(Debug)]
pub struct Inpaint;
