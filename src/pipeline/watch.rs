//! Progress inside an image and prompt stops at any image size (issue 16).
//!
//! A big image is many tiles per network evaluation, so one evaluation can take minutes. [`NetWatch`]
//! wraps the network *inside* the tiling ([`NetWatch::wrap`], then [`TiledDenoiser`]), so it sees every
//! tile batch: before each call it refuses to go on once the run's stop flag is set (the batch is then
//! discarded, as a stop between steps does), and after each call it tells its listeners (the progress
//! display) how many tiles went through. A stop therefore takes effect within one tile batch.
//!
//! [`TiledDenoiser`]: crate::model::tiled::TiledDenoiser

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ndarray::{Array4, ArrayView4};

use crate::error::{Error, Result};
use crate::model::tiled::TileConfig;
use crate::model::Denoiser;

/// Called after each network call with the number of tiles (images) it took.
pub type Listener = Arc<dyn Fn(usize) + Send + Sync>;

/// The stop flag and listeners of the network calls of a run (see the module docs).
#[derive(Default)]
pub struct NetWatch {
    stop: Option<Arc<AtomicBool>>,
    tiles: Option<TileConfig>,
    calls: AtomicUsize,
    listeners: Mutex<Vec<Listener>>,
}

impl std::fmt::Debug for NetWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetWatch")
            .field("stop", &self.stop)
            .field("tiles", &self.tiles)
            .field("calls", &self.calls)
            .finish_non_exhaustive()
    }
}

impl NetWatch {
    /// A watch refusing calls once `stop` is set; `tiles` is how the network it wraps is tiled (for the
    /// number of calls an evaluation takes), `None` for a network that takes whole images.
    pub fn new(stop: Option<Arc<AtomicBool>>, tiles: Option<TileConfig>) -> Arc<Self> {
        Arc::new(NetWatch {
            stop,
            tiles,
            ..Default::default()
        })
    }

    /// The network calls made so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The tiling of the watched network.
    pub fn tiles(&self) -> Option<&TileConfig> {
        self.tiles.as_ref()
    }

    /// Call `f` after every network call.
    pub fn listen(&self, f: Listener) {
        self.listeners.lock().expect("listeners").push(f);
    }

    /// Drop every listener.
    pub fn clear(&self) {
        self.listeners.lock().expect("listeners").clear();
    }

    /// `inner` behind this watch.
    pub fn wrap(self: &Arc<Self>, inner: Arc<dyn Denoiser>) -> Arc<dyn Denoiser> {
        Arc::new(Watched {
            inner,
            watch: Arc::clone(self),
        })
    }

    fn before(&self) -> Result<()> {
        match self.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) {
            true => Err(Error::Interrupted),
            false => Ok(()),
        }
    }

    fn after(&self, tiles: usize) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let listeners = self.listeners.lock().expect("listeners").clone();
        for l in listeners {
            l(tiles);
        }
    }
}

struct Watched {
    inner: Arc<dyn Denoiser>,
    watch: Arc<NetWatch>,
}

impl Denoiser for Watched {
    fn engine(&self) -> String {
        self.inner.engine()
    }
    fn predict(&self, x: ArrayView4<f64>, t: &[f64]) -> Result<Array4<f64>> {
        self.watch.before()?;
        let out = self.inner.predict(x, t)?;
        self.watch.after(x.shape()[0]);
        Ok(out)
    }
    // Forwarded, not left to the trait's default (a plain forward): the split-VJP engines keep this
    // call's residuals for the VJP that follows; without it every VJP ran the forward again.
    fn predict_for_vjp(&self, x: ArrayView4<f64>, t: &[f64]) -> Result<Array4<f64>> {
        self.watch.before()?;
        let out = self.inner.predict_for_vjp(x, t)?;
        self.watch.after(x.shape()[0]);
        Ok(out)
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
        self.watch.before()?;
        let out = self.inner.vjp(x, t, cot)?;
        self.watch.after(x.shape()[0]);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::CallLog;

    #[test]
    fn every_entry_point_reaches_the_watched_network_and_counts() {
        let inner = Arc::new(CallLog::default());
        let watch = NetWatch::new(None, None);
        let seen = Arc::new(AtomicUsize::new(0));
        let s = Arc::clone(&seen);
        watch.listen(Arc::new(move |n| {
            s.fetch_add(n, Ordering::SeqCst);
        }));
        let net = watch.wrap(inner.clone());
        let x = Array4::<f64>::zeros((3, 1, 2, 2));
        net.predict(x.view(), &[0.5; 3]).unwrap();
        net.predict_for_vjp(x.view(), &[0.5; 3]).unwrap();
        net.vjp(x.view(), &[0.5; 3], x.view()).unwrap();
        assert_eq!(inner.calls(), ["predict", "predict_for_vjp", "vjp"]);
        assert_eq!((watch.calls(), seen.load(Ordering::SeqCst)), (3, 9));
    }

    #[test]
    fn a_set_stop_flag_refuses_every_entry_point() {
        let stop = Arc::new(AtomicBool::new(true));
        let inner = Arc::new(CallLog::default());
        let net = NetWatch::new(Some(stop), None).wrap(inner.clone());
        let x = Array4::<f64>::zeros((1, 1, 2, 2));
        assert!(net.predict(x.view(), &[0.5]).is_err());
        assert!(net.predict_for_vjp(x.view(), &[0.5]).is_err());
        assert!(net.vjp(x.view(), &[0.5], x.view()).is_err());
        assert!(inner.calls().is_empty());
    }
}
