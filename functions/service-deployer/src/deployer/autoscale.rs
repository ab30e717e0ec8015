//! How many processes a revision wants, decided as Knative's Pod Autoscaler (KPA) decides it,
//! from the revision's observed concurrency (requests in flight plus requests waiting in the
//! activator), averaged over each [`TICK`] by the activator:
//!
//! - **Target.** Each process is meant to carry `concurrency × 70 %` requests (Knative's
//!   `container-concurrency-target-percentage`), or `100 × 70 %` when the function sets no
//!   limit (Knative's `container-concurrency-target-default`).
//! - **Stable window** ([`STABLE_WINDOW`], 60 s): `desired = ceil(average concurrency over the
//!   window / target)`.
//! - **Panic window** ([`PANIC_WINDOW`], 6 s, 10 % of the stable one): when the same division
//!   over the panic window reaches twice the processes there are ([`PANIC_THRESHOLD`]), the
//!   autoscaler panics: it follows the panic window and never scales down, until a whole
//!   stable window passes without reaching the threshold again.
//! - **Bounds.** The result is held within `minScale..=maxScale`, and at least one process
//!   stays while a request came within `scaleToZeroAfterSeconds`; once none did for that long,
//!   the revision goes down to `minScale` (zero by default) whatever the window still holds.
//!
//! This type only decides; the activator (`activator.rs`) starts and stops processes, and
//! also starts one at once when requests wait beyond what starting processes will take (as
//! Knative's activator pokes the autoscaler instead of waiting for the next tick).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// How often concurrency is sampled and the decision taken.
pub const TICK: Duration = Duration::from_secs(1);
/// The window desired processes follow in normal operation.
pub const STABLE_WINDOW: Duration = Duration::from_secs(60);
/// The short window that reacts to bursts.
pub const PANIC_WINDOW: Duration = Duration::from_secs(6);
/// Panic once the panic window wants this many times the processes there are.
pub const PANIC_THRESHOLD: f64 = 2.0;
/// The share of `concurrency` each process is meant to carry.
pub const TARGET_UTILIZATION: f64 = 0.7;
/// Requests per process aimed at when the function sets no concurrency limit.
pub const DEFAULT_TARGET: f64 = 100.0;

/// The bounds a revision scales within (its function's `scaling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Fewest processes.
    pub min: u32,
    /// Most processes.
    pub max: u32,
    /// Requests one process serves at once (0: unlimited).
    pub concurrency: u32,
    /// Time without a request before the revision goes down to `min`.
    pub idle: Duration,
}

impl Bounds {
    /// The function's scaling as bounds.
    pub fn of(scaling: &klambda_events::spec::Scaling) -> Self {
        Self {
            min: scaling.min_scale,
            max: scaling.max_scale.max(1),
            concurrency: scaling.concurrency,
            idle: Duration::from_secs(u64::from(scaling.scale_to_zero_after_seconds)),
        }
    }

    /// Requests each process is meant to carry.
    fn target(&self) -> f64 {
        match self.concurrency {
            0 => DEFAULT_TARGET * TARGET_UTILIZATION,
            limit => f64::from(limit) * TARGET_UTILIZATION,
        }
    }
}

/// The decisions of one revision: its samples and whether it panics.
#[derive(Debug)]
pub struct Autoscaler {
    bounds: Bounds,
    /// (when, concurrency) of the last [`STABLE_WINDOW`].
    samples: VecDeque<(Instant, f64)>,
    /// When the panic threshold was last reached, while panicking.
    panicking_since: Option<Instant>,
    /// When the revision started: a window not yet full averages over what it has.
    born: Instant,
}

impl Autoscaler {
    /// An autoscaler within `bounds`, starting at `now`.
    pub fn new(bounds: Bounds, now: Instant) -> Self {
        Self {
            bounds,
            samples: VecDeque::new(),
            panicking_since: None,
            born: now,
        }
    }

    /// Records the concurrency observed at `now`.
    pub fn observe(&mut self, now: Instant, concurrency: f64) {
        self.samples.push_back((now, concurrency));
        while let Some(&(at, _)) = self.samples.front() {
            if now.duration_since(at) < STABLE_WINDOW {
                break;
            }
            self.samples.pop_front();
        }
    }

    /// The average concurrency of the last `window` (samples missing since the revision was
    /// born count as nothing; before a full window, over what has passed).
    fn average(&self, now: Instant, window: Duration) -> f64 {
        let sum: f64 = self
            .samples
            .iter()
            .filter(|(at, _)| now.duration_since(*at) < window)
            .map(|(_, c)| c)
            .sum();
        let span = window.min(now.duration_since(self.born)).max(TICK);
        let ticks = (span.as_secs_f64() / TICK.as_secs_f64()).round().max(1.0);
        sum / ticks
    }

    /// Whether the autoscaler is in panic mode now.
    pub fn panicking(&self) -> bool {
        self.panicking_since.is_some()
    }

    /// How many processes the revision wants at `now`, having `current` (ready or starting)
    /// and its last request at `last_request`.
    pub fn desired(&mut self, now: Instant, current: u32, last_request: Option<Instant>) -> u32 {
        let target = self.bounds.target();
        // A hair below an exact multiple is that multiple (0.7 × 60 / 60 / 0.7 is not quite 1).
        let wanted = |average: f64| {
            (average / target - 1e-9)
                .ceil()
                .clamp(0.0, f64::from(u32::MAX)) as u32
        };
        let stable = wanted(self.average(now, STABLE_WINDOW));
        let panic = wanted(self.average(now, PANIC_WINDOW));
        if f64::from(panic) >= PANIC_THRESHOLD * f64::from(current.max(1)) && panic > current {
            self.panicking_since = Some(now);
        } else if self
            .panicking_since
            .is_some_and(|since| now.duration_since(since) >= STABLE_WINDOW)
        {
            self.panicking_since = None;
        }
        let mut desired = match self.panicking_since {
            Some(_) => panic.max(current),
            None => stable,
        };
        let recent = last_request.is_some_and(|at| now.duration_since(at) < self.bounds.idle);
        if recent {
            desired = desired.max(1);
        } else {
            // Idle for the whole grace period: down to the floor, whatever the window holds.
            desired = 0;
            self.panicking_since = None;
        }
        desired.clamp(self.bounds.min, self.bounds.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(min: u32, max: u32, concurrency: u32, idle_seconds: u64) -> Bounds {
        Bounds {
            min,
            max,
            concurrency,
            idle: Duration::from_secs(idle_seconds),
        }
    }

    /// Feeds `concurrency` once per tick for `ticks` ticks from `from`; returns the time after.
    fn feed(scaler: &mut Autoscaler, from: Instant, ticks: u32, concurrency: f64) -> Instant {
        let mut now = from;
        for _ in 0..ticks {
            now += TICK;
            scaler.observe(now, concurrency);
        }
        now
    }

    #[test]
    fn steady_load_wants_load_over_seventy_percent_of_concurrency() {
        let born = Instant::now();
        let mut scaler = Autoscaler::new(bounds(0, 10, 10, 60), born);
        let now = feed(&mut scaler, born, 60, 14.0);
        // 14 in flight, 7 per process aimed at: 2 processes.
        assert_eq!(scaler.desired(now, 2, Some(now)), 2);
        assert!(!scaler.panicking());
    }

    #[test]
    fn no_limit_aims_at_seventy_requests_per_process() {
        let born = Instant::now();
        let mut scaler = Autoscaler::new(bounds(0, 10, 0, 60), born);
        let now = feed(&mut scaler, born, 60, 71.0);
        assert_eq!(scaler.desired(now, 2, Some(now)), 2);
    }

    #[test]
    fn a_burst_panics_and_panic_never_scales_down_within_the_stable_window() {
        let born = Instant::now();
        let mut scaler = Autoscaler::new(bounds(0, 8, 1, 600), born);
        let quiet = feed(&mut scaler, born, 60, 0.7);
        assert_eq!(scaler.desired(quiet, 1, Some(quiet)), 1);
        // Eight waiting for 6 s: the panic window wants 12 (> 2 × 1), held to maxScale 8.
        let burst = feed(&mut scaler, quiet, 6, 8.0);
        assert_eq!(scaler.desired(burst, 1, Some(burst)), 8);
        assert!(scaler.panicking());
        // The burst is over, but the stable window has not passed: no scale down.
        let after = feed(&mut scaler, burst, 30, 0.7);
        assert_eq!(scaler.desired(after, 8, Some(after)), 8);
        // A whole stable window without panic: back to what the stable window wants.
        let calm = feed(&mut scaler, after, 61, 0.7);
        assert_eq!(scaler.desired(calm, 8, Some(calm)), 1);
        assert!(!scaler.panicking());
    }

    #[test]
    fn idle_past_the_grace_period_goes_to_min_scale_whatever_the_window_holds() {
        let born = Instant::now();
        let mut scaler = Autoscaler::new(bounds(0, 4, 1, 2), born);
        let busy = feed(&mut scaler, born, 5, 100.0);
        assert_eq!(scaler.desired(busy, 4, Some(busy)), 4);
        // One second of quiet is within the grace period: still wanted.
        let soon = feed(&mut scaler, busy, 1, 0.0);
        assert_eq!(scaler.desired(soon, 4, Some(busy)), 4);
        let later = feed(&mut scaler, soon, 2, 0.0);
        assert_eq!(scaler.desired(later, 4, Some(busy)), 0);
        assert!(!scaler.panicking());
    }

    #[test]
    fn min_scale_is_kept_when_idle_and_a_recent_request_keeps_one() {
        let born = Instant::now();
        let mut floor = Autoscaler::new(bounds(2, 4, 1, 2), born);
        let later = feed(&mut floor, born, 10, 0.0);
        assert_eq!(floor.desired(later, 2, None), 2);

        let mut one = Autoscaler::new(bounds(0, 4, 0, 60), born);
        let now = feed(&mut one, born, 10, 0.1);
        assert_eq!(one.desired(now, 1, Some(now)), 1);
        assert_eq!(one.desired(now, 1, None), 0);
    }

    #[test]
    fn a_young_revision_averages_over_what_has_passed() {
        let born = Instant::now();
        let mut scaler = Autoscaler::new(bounds(0, 10, 1, 60), born);
        // Three seconds at 7 in flight: 7 on average, not 7 × 3 / 60.
        let now = feed(&mut scaler, born, 3, 7.0);
        assert_eq!(scaler.desired(now, 10, Some(now)), 10);
    }
}
