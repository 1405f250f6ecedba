//! Shards of a job: `--shard I/N`, Slurm job arrays and Kubernetes Indexed Jobs.

use crate::error::{Error, Result};

/// `--shard I/N`: this process handles the inputs whose position in the sorted list ≡ I (mod N).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// Whether this shard handles the input at `index` of the sorted list.
    pub fn keeps(&self, index: usize) -> bool {
        index % self.count == self.index
    }

    /// Parse `I/N` with 0 ≤ I < N.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || Error::invalid("shard", s, "I/N with 0 <= I < N, e.g. 0/4");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    /// The shard of a job array: `(SLURM_ARRAY_TASK_ID − SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP`
    /// of `SLURM_ARRAY_TASK_COUNT` (the step is 1 unless the array was given as `MIN-MAX:STEP`), else
    /// `JOB_COMPLETION_INDEX` of `CONJURE_SHARD_COUNT` (Kubernetes Indexed Job). `None` when neither is
    /// set; an error when only one variable of a pair is set or the index is not below the count.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let num = |k: &str| -> Result<Option<usize>> {
            match var(k) {
                None => Ok(None),
                Some(v) if v.trim().is_empty() => Ok(None),
                Some(v) => v
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| Error::invalid(k, v, "a non-negative integer")),
            }
        };
        let make = |index: usize, count: usize, what: &str| {
            if count == 0 || index >= count {
                Err(Error::invalid(
                    what,
                    format!("{index}/{count}"),
                    "an index below the task count (and a count of at least 1)",
                ))
            } else {
                Ok(Some(Shard { index, count }))
            }
        };
        let half = |set: &str, unset: &str| {
            Err(Error::invalid(
                set,
                var(set).unwrap_or_default(),
                format!("to be set together with {unset}, which is not set"),
            ))
        };
        match (num("SLURM_ARRAY_TASK_ID")?, num("SLURM_ARRAY_TASK_COUNT")?) {
            (Some(id), Some(count)) => {
                let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
                let step = num("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
                let offset = id.checked_sub(min).ok_or_else(|| {
                    Error::invalid(
                        "SLURM_ARRAY_TASK_ID",
                        id,
                        format!(">= SLURM_ARRAY_TASK_MIN {min}"),
                    )
                })?;
                if offset % step != 0 {
                    return Err(Error::invalid(
                        "SLURM_ARRAY_TASK_ID",
                        id,
                        format!(
                            "SLURM_ARRAY_TASK_MIN {min} plus a multiple of SLURM_ARRAY_TASK_STEP {step} \
                             (use --shard I/N for arrays given as lists)"
                        ),
                    ));
                }
                return make(offset / step, count, "slurm array task");
            }
            (Some(_), None) => return half("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"),
            (None, Some(_)) => return half("SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_ID"),
            (None, None) => {}
        }
        match (num("JOB_COMPLETION_INDEX")?, num("CONJURE_SHARD_COUNT")?) {
            (Some(index), Some(count)) => make(index, count, "job completion index"),
            (Some(_), None) => half("JOB_COMPLETION_INDEX", "CONJURE_SHARD_COUNT"),
            (None, Some(_)) => half("CONJURE_SHARD_COUNT", "JOB_COMPLETION_INDEX"),
            (None, None) => Ok(None),
        }
    }
}
