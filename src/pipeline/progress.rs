//! Progress of a run, as events a display implements ([`Progress`]): the library counts (inputs recorded,
//! and within an image batch each network call, so a big image shows movement long before it is
//! written, issue 16) and the display draws. [`LogProgress`] writes log lines (cron, CI), [`QuietProgress`]
//! only failures; the terminal bars live in the command-line front end.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::estimate;
use super::manifest::{ManifestRecord, Status};

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Position {
    /// Inputs recorded.
    pub done: usize,
    /// Inputs of the run.
    pub total: usize,
    /// Images done, counting the batch in the network by its share of network calls (never decreases).
    pub images: f64,
    /// Seconds since the run started.
    pub elapsed: f64,
}

impl Position {
    /// Time left from the rate so far (`unknown` before anything is done).
    pub fn eta(&self) -> String {
        if self.images <= 0.0 {
            return "unknown".into();
        }
        let secs = self.elapsed / self.images * (self.total as f64 - self.images).max(0.0);
        estimate::duration(secs)
    }
}

/// The batch in the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    /// Images in the batch.
    pub images: usize,
    /// Their x size (h, w).
    pub size: (usize, usize),
    /// Network calls made so far.
    pub calls: usize,
    /// Network calls the batch needs.
    pub need: usize,
}

impl Batch {
    /// The share of the batch's network calls made, in [0, 1].
    pub fn fraction(&self) -> f64 {
        (self.calls as f64 / self.need as f64).min(1.0)
    }
}

/// A progress display. Every method has a default that does nothing.
pub trait Progress: Send + Sync + std::fmt::Debug {
    /// The run starts: `total` inputs, `nfe` network evaluations per image.
    fn start(&self, _total: usize, _nfe: usize) {}
    /// A network call of the batch in the network is done.
    fn call(&self, _at: &Position, _batch: &Batch) {}
    /// An input is recorded in the manifest.
    fn record(&self, _at: &Position, _rec: &ManifestRecord) {}
    /// The run is over.
    fn finish(&self) {}
}

/// Nothing but a warning per failed input.
#[derive(Debug, Default)]
pub struct QuietProgress;

impl Progress for QuietProgress {
    fn record(&self, _at: &Position, rec: &ManifestRecord) {
        if rec.status == Status::Failed {
            tracing::warn!(
                "failed {}: {}",
                rec.input,
                rec.error.as_deref().unwrap_or("")
            );
        }
    }
}

/// Seconds between two progress lines within an image batch.
const LOG_EVERY: f64 = 10.0;

/// One log line per input, and within a long image batch one every [`LOG_EVERY`] seconds.
#[derive(Debug)]
pub struct LogProgress {
    last: Mutex<Instant>,
}

impl Default for LogProgress {
    fn default() -> Self {
        LogProgress {
            last: Mutex::new(Instant::now()),
        }
    }
}

impl Progress for LogProgress {
    fn call(&self, at: &Position, b: &Batch) {
        let mut last = self.last.lock().expect("progress");
        if last.elapsed().as_secs_f64() < LOG_EVERY {
            return;
        }
        *last = Instant::now();
        let (h, w) = b.size;
        tracing::info!(
            "[{}/{}] restoring {} image{} of {w}x{h}: network call {}/{} ({:.0}%), ETA {}",
            at.done,
            at.total,
            b.images,
            if b.images == 1 { "" } else { "s" },
            b.calls,
            b.need,
            b.fraction() * 100.0,
            at.eta()
        );
    }

    fn record(&self, at: &Position, rec: &ManifestRecord) {
        *self.last.lock().expect("progress") = Instant::now();
        match rec.status {
            Status::Failed => tracing::warn!(
                "[{}/{}] failed {}: {}",
                at.done,
                at.total,
                rec.input,
                rec.error.as_deref().unwrap_or("")
            ),
            s => tracing::info!(
                "[{}/{}] {} {} -> {} ({:.2} s)",
                at.done,
                at.total,
                s,
                rec.input,
                rec.output,
                rec.seconds
            ),
        }
    }
}

/// The run's counts, passed on to a [`Progress`] display.
#[derive(Clone)]
pub(crate) struct Tracker {
    inner: Arc<TrackerInner>,
}

struct TrackerInner {
    view: Arc<dyn Progress>,
    total: usize,
    start: Instant,
    state: Mutex<State>,
}

struct State {
    done: usize,
    batch: Option<Batch>,
    images: f64,
}

impl Tracker {
    pub(crate) fn new(view: Arc<dyn Progress>, total: usize, nfe: usize) -> Self {
        view.start(total, nfe);
        Tracker {
            inner: Arc::new(TrackerInner {
                view,
                total,
                start: Instant::now(),
                state: Mutex::new(State {
                    done: 0,
                    batch: None,
                    images: 0.0,
                }),
            }),
        }
    }

    fn position(&self, st: &State) -> Position {
        Position {
            done: st.done,
            total: self.inner.total,
            images: st.images,
            elapsed: self.inner.start.elapsed().as_secs_f64(),
        }
    }

    /// A batch of `images` of x size `size` enters the network and needs `calls` network calls.
    pub(crate) fn begin_batch(&self, images: usize, size: (usize, usize), calls: usize) {
        self.inner.state.lock().expect("progress").batch = Some(Batch {
            images,
            size,
            calls: 0,
            need: calls.max(1),
        });
    }

    /// The batch in the network is done.
    pub(crate) fn end_batch(&self) {
        self.inner.state.lock().expect("progress").batch = None;
    }

    /// One network call (tile batch) of the batch in flight is done.
    pub(crate) fn tick(&self) {
        let mut st = self.inner.state.lock().expect("progress");
        let Some(mut b) = st.batch else {
            return;
        };
        b.calls += 1;
        st.batch = Some(b);
        let pos = (st.done as f64 + b.fraction() * b.images as f64).min(self.inner.total as f64);
        st.images = st.images.max(pos);
        let at = self.position(&st);
        self.inner.view.call(&at, &b);
    }

    /// An input is recorded.
    pub(crate) fn record(&self, rec: &ManifestRecord) {
        let mut st = self.inner.state.lock().expect("progress");
        st.done += 1;
        st.images = st.images.max(st.done as f64);
        let at = self.position(&st);
        self.inner.view.record(&at, rec);
    }

    pub(crate) fn finish(&self) {
        self.inner.view.finish();
    }
}
