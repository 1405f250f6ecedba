//! Shared bench settings: a criterion [`Measurement`] of the benchmarking thread's **CPU time**, so that
//! numbers taken on a small machine shared with other jobs measure the code, not the queue for a core.
//!
//! On 64-bit Linux it reads the thread's CPU clock (`clock_gettime(CLOCK_THREAD_CPUTIME_ID)`, ns
//! resolution); elsewhere, or with `CONJURE_BENCH_CLOCK=wall`, it is wall time. All
//! benched code is single-threaded, so on an idle machine the two agree; under load the CPU time still
//! includes cache and memory-bandwidth interference from other jobs, so compare numbers taken close
//! together (or, better, `--save-baseline` / `--baseline` in one sitting).

use std::time::{Duration, Instant};

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{Criterion, Throughput};

/// Thread CPU time where available, else wall time (see the module docs).
pub struct CpuTime {
    cpu: bool,
}

impl CpuTime {
    pub fn new() -> Self {
        let wall = std::env::var("CONJURE_BENCH_CLOCK").is_ok_and(|v| v == "wall");
        CpuTime {
            cpu: !wall && thread_cpu_ns().is_some(),
        }
    }
}

/// CPU time of the calling thread in ns, from `clock_gettime(CLOCK_THREAD_CPUTIME_ID)` (exact at the
/// moment of the call, unlike `/proc/thread-self/schedstat`, which lags by up to a scheduler tick).
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
fn thread_cpu_ns() -> Option<u64> {
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec with the C layout of 64-bit Linux.
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
fn thread_cpu_ns() -> Option<u64> {
    None
}

impl Measurement for CpuTime {
    type Intermediate = (Instant, u64);
    type Value = Duration;

    fn start(&self) -> Self::Intermediate {
        let cpu = if self.cpu {
            thread_cpu_ns().unwrap_or(0)
        } else {
            0
        };
        (Instant::now(), cpu)
    }
    fn end(&self, (t0, c0): Self::Intermediate) -> Self::Value {
        let wall = t0.elapsed();
        if self.cpu {
            Duration::from_nanos(thread_cpu_ns().unwrap_or(c0).saturating_sub(c0))
        } else {
            wall
        }
    }
    fn add(&self, v1: &Self::Value, v2: &Self::Value) -> Self::Value {
        *v1 + *v2
    }
    fn zero(&self) -> Self::Value {
        Duration::ZERO
    }
    fn to_f64(&self, value: &Self::Value) -> f64 {
        value.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &NsFormatter
    }
}

struct NsFormatter;

impl ValueFormatter for NsFormatter {
    fn scale_values(&self, ns: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = if ns < 1e3 {
            (1.0, "ns")
        } else if ns < 1e6 {
            (1e-3, "µs")
        } else if ns < 1e9 {
            (1e-6, "ms")
        } else {
            (1e-9, "s")
        };
        values.iter_mut().for_each(|v| *v *= factor);
        unit
    }
    fn scale_throughputs(
        &self,
        _typical: f64,
        throughput: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        let n = match *throughput {
            Throughput::Bytes(n) | Throughput::BytesDecimal(n) => n as f64,
            Throughput::Elements(n) => n as f64,
            Throughput::Bits(n) => n as f64,
        };
        values.iter_mut().for_each(|v| *v = n * 1e9 / *v);
        "units/s"
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

/// Pin glibc's malloc thresholds (mmap above 32 MiB only, trim above 512 MiB), so that image-sized
/// buffers are recycled from the heap instead of being mmapped, page-faulted and unmapped on every
/// allocation. glibc adapts these thresholds by itself after the first large `free`, but how far depends
/// on what ran before: without pinning, the same sampler bench measured 2× apart in a full run and in
/// isolation (page faults are kernel CPU time of the thread). A long-running pipeline sees the adapted
/// state, which this reproduces. No-op outside glibc.
fn pin_malloc_thresholds() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: mallopt only changes allocator tuning parameters; called before any benchmark runs.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, 512 << 20);
        }
    }
}

/// Minimal settings for small shared machines: 10 samples, short warm-up and measurement; malloc
/// thresholds pinned ([`pin_malloc_thresholds`]).
pub fn criterion() -> Criterion<CpuTime> {
    pin_malloc_thresholds();
    Criterion::default()
        .with_measurement(CpuTime::new())
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
}
