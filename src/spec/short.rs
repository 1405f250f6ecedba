//! The short operator form of `conjure eval --operator` (`denoise`, `sr-bicubic:4`,
//! `deblur-gaussian:9:2.5`, `inpaint:MASK.png`, …), parsed into the same [`TaskSpec`] a spec's `task`
//! block gives, so that both grammars end in one typed task description and one
//! [`TaskSpec::degradation`].

use std::path::PathBuf;

use super::{KernelSpec, MaskSpec, OperatorKind, TaskSpec};
use crate::error::{Error, Result};
use crate::operators::DEFAULT_SVD_THRESHOLD;

/// The short forms, for error messages.
const FORMS: &str =
    "denoise | colorize | sr-average:S | sr-bicubic:S | deblur-gaussian:SIZE:SIGMA \
                     | deblur-uniform:SIZE | inpaint:MASK.png";

impl TaskSpec {
    /// Parse the short form: `denoise` | `colorize` | `sr-average:S` | `sr-bicubic:S` |
    /// `deblur-gaussian:SIZE:SIGMA` (odd SIZE, SIGMA > 0) | `deblur-uniform:SIZE` | `inpaint:MASK` (a mask
    /// file, white = known; the path may itself contain `:`), with S, SIZE ≥ 1. The task is noiseless,
    /// with the default SVD threshold and data consistency on, as a spec's `task` block with only
    /// these keys.
    pub fn parse_short(text: &str) -> Result<TaskSpec> {
        let bad = |expected: &str| Error::invalid("operator", text, expected);
        let int = |s: &str| s.parse::<usize>().ok().filter(|v| *v >= 1);
        let parts: Vec<&str> = text.split(':').collect();
        let operator: OperatorKind = parts[0].parse().map_err(|_| bad(FORMS))?;
        let mut task = TaskSpec {
            operator,
            scale: 1,
            mask: None,
            kernel: None,
            noise_sigma: 0.0,
            svd_threshold: DEFAULT_SVD_THRESHOLD,
            data_consistency: true,
        };
        match (operator, &parts[1..]) {
            (OperatorKind::Denoise | OperatorKind::Colorize, []) => {}
            (OperatorKind::SrAverage | OperatorKind::SrBicubic, [s]) => {
                task.scale =
                    int(s).ok_or_else(|| bad(&format!("{operator}:SCALE with SCALE >= 1")))?;
            }
            (OperatorKind::DeblurGaussian, [size, sigma]) => {
                let size = int(size)
                    .filter(|v| v % 2 == 1)
                    .ok_or_else(|| bad("deblur-gaussian:SIZE:SIGMA with odd SIZE"))?;
                let sigma = sigma
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .ok_or_else(|| bad("deblur-gaussian:SIZE:SIGMA with SIGMA > 0"))?;
                task.kernel = Some(KernelSpec {
                    size,
                    sigma: Some(sigma),
                });
            }
            (OperatorKind::DeblurUniform, [size]) => {
                let size = int(size).ok_or_else(|| bad("deblur-uniform:SIZE with SIZE >= 1"))?;
                task.kernel = Some(KernelSpec { size, sigma: None });
            }
            (OperatorKind::Inpaint, rest) if !rest.is_empty() => {
                task.mask = Some(MaskSpec::File {
                    path: PathBuf::from(rest.join(":")),
                });
            }
            _ => return Err(bad(FORMS)),
        }
        Ok(task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::Degradation;

    #[test]
    fn short_forms_give_the_task_blocks_degradation() {
        let d = |t: &str| TaskSpec::parse_short(t).unwrap().degradation(None).unwrap();
        assert_eq!(d("denoise"), Degradation::Denoise);
        assert_eq!(d("colorize"), Degradation::Colorize);
        assert_eq!(d("sr-average:1"), Degradation::SrAverage { scale: 1 });
        assert_eq!(
            d("sr-bicubic:4"),
            Degradation::SrBicubic {
                scale: 4,
                threshold: DEFAULT_SVD_THRESHOLD
            }
        );
        assert_eq!(
            d("deblur-gaussian:9:2.5"),
            Degradation::DeblurGaussian {
                size: 9,
                sigma: 2.5,
                threshold: DEFAULT_SVD_THRESHOLD
            }
        );
        assert_eq!(
            d("deblur-uniform:4"),
            Degradation::DeblurUniform {
                size: 4,
                threshold: DEFAULT_SVD_THRESHOLD
            }
        );
        let t = TaskSpec::parse_short("inpaint:C:/masks/a.png").unwrap();
        assert_eq!(
            t.mask,
            Some(MaskSpec::File {
                path: PathBuf::from("C:/masks/a.png")
            })
        );
    }

    #[test]
    fn bad_short_forms_name_the_text_and_the_forms() {
        for t in [
            "sr-bicubic:0",
            "sr-average",
            "deblur-gaussian:4:1",
            "deblur-gaussian:5:0",
            "deblur-uniform:x",
            "inpaint",
            "denoise:2",
            "blur",
        ] {
            let e = TaskSpec::parse_short(t).unwrap_err().to_string();
            assert!(e.contains(t), "{t}: {e}");
        }
        let e = TaskSpec::parse_short("blur").unwrap_err().to_string();
        assert!(e.contains("inpaint:MASK.png"), "{e}");
    }
}
