//! The backend model of a simulation: how long each backend takes to serve a
//! request (a distribution around a per-backend mean, or the duration the
//! trace recorded), how many requests it serves at once, and the seeded
//! random numbers behind both.
//!
//! Service times use common random numbers: every request draws one
//! unit-mean factor when it arrives, whichever backend it goes to, and its
//! service time is that factor times the chosen backend's mean. Two
//! strategies replayed with the same seed therefore see the same "heavy" and
//! "light" requests, and differ only by where they send them.

use std::fmt;
use std::time::Duration;

/// Random streams of one seed: request arrivals.
pub const STREAM_ARRIVALS: u64 = 1;
/// Random streams of one seed: service times.
pub const STREAM_SERVICE: u64 = 2;

/// SplitMix64 (Steele, Lea, Flood, "Fast splittable pseudorandom number
/// generators", OOPSLA 2014): tiny, fast, and good enough for a simulation.
/// Deterministic: the same seed gives the same sequence everywhere.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator for one purpose (`stream`) of one seed, so that adding
    /// draws to one stream does not shift the others.
    pub(crate) fn new(seed: u64, stream: u64) -> Self {
        let mut rng = Rng(seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F));
        rng.next_u64();
        rng
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub(crate) fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in 0..n (n > 0), without modulo bias worth mentioning
    /// (Lemire's multiply-shift).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Exponential with mean 1.
    pub(crate) fn exponential(&mut self) -> f64 {
        -(1.0 - self.uniform()).ln()
    }

    /// Standard normal (Box-Muller; one of the pair is used).
    pub(crate) fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]: ln is finite
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// The shape of service times around a backend's mean.
#[derive(Debug, Clone, Copy, PartialEq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// Exactly the mean, every time.
    Fixed,
    /// Exponential (memoryless, the M/M/c queue's service): p50 0.69x,
    /// p99 4.6x the mean.
    Exponential,
    /// Log-normal with shape `--sigma`, scaled so that its mean is the mean
    /// (a long right tail, like measured web latencies).
    Lognormal,
}

impl Distribution {
    /// A factor with mean 1 for one request.
    pub(crate) fn unit(self, sigma: f64, rng: &mut Rng) -> f64 {
        match self {
            Distribution::Fixed => 1.0,
            Distribution::Exponential => rng.exponential(),
            // E[exp(sigma Z - sigma^2 / 2)] = 1.
            Distribution::Lognormal => (sigma * rng.normal() - sigma * sigma / 2.0).exp(),
        }
    }
}

/// How long one backend takes to serve a request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Latency {
    /// The distribution's unit factor times this mean.
    Mean(Duration),
    /// The duration the trace recorded for the request (`duration_ms`).
    Recorded,
}

impl Latency {
    /// Service time in nanoseconds of a request whose unit factor is `unit`
    /// and whose recorded duration is `recorded`; `None` when this backend
    /// replays recorded durations and the request has none.
    pub(crate) fn service_ns(self, unit: f64, recorded: Option<u64>) -> Option<u64> {
        match self {
            Latency::Mean(mean) => Some((mean.as_nanos() as f64 * unit).round().max(0.0) as u64),
            Latency::Recorded => recorded,
        }
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Latency::Mean(d) => write!(f, "{}", format_duration(*d)),
            Latency::Recorded => f.write_str("recorded"),
        }
    }
}

/// Why a duration (`--latency`, `--pick-deadline`) does not parse; the
/// message quotes the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DurationError {
    /// No number in front.
    #[error("`{text}` is not a duration (expected e.g. `20ms`, `1.5ms`, `2s`)")]
    NotANumber { text: String },
    /// A number without a unit.
    #[error("`{text}` has no unit (expected e.g. `20ms`, `2s`)")]
    NoUnit { text: String },
    /// A unit that is not one of ours.
    #[error("`{text}`: unknown unit `{unit}` (expected ns, us, ms, s or m)")]
    UnknownUnit { text: String, unit: String },
    /// Too large (or otherwise not a [`Duration`]).
    #[error("`{text}` is not a usable duration")]
    OutOfRange { text: String },
}

/// `20ms`, `1.5ms`, `250us`, `2s` (units `ns`, `us`/`µs`, `ms`, `s`, `m`).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| DurationError::NotANumber {
        text: text.to_owned(),
    })?;
    let scale = match unit.trim() {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "" => {
            return Err(DurationError::NoUnit {
                text: text.to_owned(),
            });
        }
        other => {
            return Err(DurationError::UnknownUnit {
                text: text.to_owned(),
                unit: other.to_owned(),
            });
        }
    };
    Duration::try_from_secs_f64(value * scale).map_err(|_| DurationError::OutOfRange {
        text: text.to_owned(),
    })
}

/// `20ms`, `1.5ms`, `2s`: the shortest exact-enough form for output.
pub(crate) fn format_duration(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 1000.0 && (ms / 1000.0).fract() == 0.0 {
        format!("{}s", ms / 1000.0)
    } else {
        format!("{}ms", (ms * 1000.0).round() / 1000.0)
    }
}

/// Why a per-backend spec (`--latency`, `--slots`) was refused; the
/// message starts with the flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SpecError<E> {
    /// A value does not parse.
    #[error("{flag}: {error}")]
    Value {
        /// `--latency` or `--slots`.
        flag: &'static str,
        /// What is wrong with the value.
        error: E,
    },
    /// `BACKEND=` names no backend.
    #[error("{flag}: `{backend}` is not a backend (expected 1..={backends} or an id like `b1`)")]
    Backend {
        /// `--latency` or `--slots`.
        flag: &'static str,
        /// The name or number as given.
        backend: String,
        /// How many backends there are.
        backends: usize,
    },
}

/// Parses a per-backend spec: comma-separated items, each `VALUE` (every
/// backend) or `BACKEND=VALUE`, where `BACKEND` is a 1-based number or an
/// id (`b2`). Later items win. Returns one value per backend, starting from
/// `default`.
pub(crate) fn per_backend<T: Clone, E>(
    flag: &'static str,
    spec: &str,
    ids: &[String],
    default: T,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<Vec<T>, SpecError<E>> {
    let value_err = |error| SpecError::Value { flag, error };
    let mut values = vec![default; ids.len()];
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.split_once('=') {
            None => {
                let value = parse(item).map_err(value_err)?;
                values.iter_mut().for_each(|v| *v = value.clone());
            }
            Some((backend, value)) => {
                let backend = backend.trim();
                let index = ids
                    .iter()
                    .position(|id| id == backend)
                    .or_else(|| {
                        backend
                            .parse::<usize>()
                            .ok()
                            .filter(|n| (1..=ids.len()).contains(n))
                            .map(|n| n - 1)
                    })
                    .ok_or_else(|| SpecError::Backend {
                        flag,
                        backend: backend.to_owned(),
                        backends: ids.len(),
                    })?;
                values[index] = parse(value.trim()).map_err(value_err)?;
            }
        }
    }
    Ok(values)
}

/// A `--latency` value: a duration or `recorded`.
pub(crate) fn parse_latency(text: &str) -> Result<Latency, DurationError> {
    if text == "recorded" {
        return Ok(Latency::Recorded);
    }
    parse_duration(text).map(Latency::Mean)
}

/// A `--slots` value that is not a positive count or `unlimited`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a slot count (expected a positive integer or `unlimited`)")]
pub(crate) struct SlotsError {
    /// The value as given.
    text: String,
}

/// A `--slots` value: a positive count or `unlimited`.
pub(crate) fn parse_slots(text: &str) -> Result<Option<u32>, SlotsError> {
    if text == "unlimited" || text == "inf" {
        return Ok(None);
    }
    match text.parse::<u32>() {
        Ok(n) if n > 0 => Ok(Some(n)),
        _ => Err(SlotsError {
            text: text.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("b{i}")).collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_draws_and_another_seed_others() {
        for dist in [Distribution::Exponential, Distribution::Lognormal] {
            let draw = |seed| {
                let mut rng = Rng::new(seed, 7);
                (0..100)
                    .map(|_| dist.unit(0.5, &mut rng))
                    .collect::<Vec<_>>()
            };
            assert_eq!(draw(42), draw(42), "{dist:?}");
            assert_ne!(draw(42), draw(43), "{dist:?}");
        }
        let mut a = Rng::new(1, 1);
        let mut b = Rng::new(1, 2);
        assert_ne!(a.next_u64(), b.next_u64(), "streams are independent");
    }

    #[test]
    fn unit_factors_have_mean_one_and_the_documented_shape() {
        let mean_of = |dist: Distribution| {
            let mut rng = Rng::new(3, 0);
            let n = 200_000;
            let mut draws: Vec<f64> = (0..n).map(|_| dist.unit(0.6, &mut rng)).collect();
            let mean = draws.iter().sum::<f64>() / n as f64;
            draws.sort_by(f64::total_cmp);
            (mean, draws[n / 2], draws[n * 99 / 100])
        };
        assert_eq!(mean_of(Distribution::Fixed), (1.0, 1.0, 1.0));
        let (mean, p50, p99) = mean_of(Distribution::Exponential);
        assert!((mean - 1.0).abs() < 0.01, "{mean}");
        assert!((p50 - 2f64.ln()).abs() < 0.01, "{p50}");
        assert!((p99 - 100f64.ln()).abs() < 0.1, "{p99}");
        let (mean, p50, _) = mean_of(Distribution::Lognormal);
        assert!((mean - 1.0).abs() < 0.01, "{mean}");
        // Median of exp(sigma Z - sigma^2/2) is exp(-sigma^2/2).
        assert!((p50 - (-0.18f64).exp()).abs() < 0.01, "{p50}");
    }

    #[test]
    fn below_stays_in_range() {
        let mut rng = Rng::new(9, 9);
        let mut seen = [0u32; 3];
        for _ in 0..3000 {
            seen[rng.below(3) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 900), "{seen:?}");
    }

    #[test]
    fn durations_parse_with_fractions_and_units() {
        assert_eq!(parse_duration("20ms"), Ok(Duration::from_millis(20)));
        assert_eq!(parse_duration("1.5ms"), Ok(Duration::from_micros(1500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("20").is_err());
        assert!(parse_duration("20 parsecs").is_err());
        assert!(parse_duration("ms").is_err());
        assert_eq!(format_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(format_duration(Duration::from_secs(2)), "2s");
    }

    #[test]
    fn per_backend_specs_apply_defaults_then_overrides() {
        let got = per_backend(
            "--latency",
            "20ms,3=200ms,b1=1ms",
            &ids(3),
            Latency::Recorded,
            parse_latency,
        );
        assert_eq!(
            got,
            Ok(vec![
                Latency::Mean(Duration::from_millis(1)),
                Latency::Mean(Duration::from_millis(20)),
                Latency::Mean(Duration::from_millis(200)),
            ])
        );
        let slots = per_backend("--slots", "2=1", &ids(2), None, parse_slots);
        assert_eq!(slots, Ok(vec![None, Some(1)]));
        let bad = per_backend("--slots", "4=1", &ids(3), None, parse_slots);
        assert!(bad.is_err_and(|e| e.to_string().contains("`4` is not a backend")));
        assert!(per_backend("--slots", "0", &ids(3), None, parse_slots).is_err());
    }

    #[test]
    fn service_times_scale_the_mean_or_replay_the_record() {
        let mean = Latency::Mean(Duration::from_millis(10));
        assert_eq!(mean.service_ns(0.5, None), Some(5_000_000));
        assert_eq!(Latency::Recorded.service_ns(0.5, Some(7)), Some(7));
        assert_eq!(Latency::Recorded.service_ns(0.5, None), None);
    }
}
