//! The terminal progress bar of `conjure run` (indicatif), drawing the library's progress events.

use std::sync::OnceLock;

use conjure::pipeline::progress::{Batch, Position, Progress};
use conjure::pipeline::{ManifestRecord, Status};

/// Position in thousandths of an image, so a batch in the network moves the bar.
const SCALE: f64 = 1000.0;

/// One bar with the images done, the batch in flight and an ETA, drawn from the start of the run.
#[derive(Debug, Default)]
pub struct Bars {
    bar: OnceLock<indicatif::ProgressBar>,
}

impl Bars {
    fn with(&self, f: impl FnOnce(&indicatif::ProgressBar)) {
        if let Some(b) = self.bar.get() {
            f(b);
        }
    }
}

impl Progress for Bars {
    fn start(&self, total: usize, nfe: usize) {
        let b = indicatif::ProgressBar::new(total as u64 * SCALE as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {msg}  ETA {eta}",
            )
            .expect("valid template"),
        );
        b.set_message(format!("0/{total} images, NFE {nfe}/image"));
        let _ = self.bar.set(b);
    }

    fn call(&self, at: &Position, batch: &Batch) {
        self.with(|b| {
            b.set_position((at.images * SCALE) as u64);
            b.set_message(format!(
                "{}/{} images, batch of {} at {:.0}%",
                at.done,
                at.total,
                batch.images,
                batch.fraction() * 100.0
            ));
        });
    }

    fn record(&self, at: &Position, rec: &ManifestRecord) {
        self.with(|b| {
            if rec.status == Status::Failed {
                b.println(format!(
                    "failed {}: {}",
                    rec.input,
                    rec.error.as_deref().unwrap_or("")
                ));
            }
            b.set_position((at.images * SCALE) as u64);
            b.set_message(format!("{}/{} images", at.done, at.total));
        });
    }

    fn finish(&self) {
        self.with(|b| b.finish_and_clear());
    }
}
