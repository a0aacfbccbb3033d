//! The discrete-event core of the simulator, in virtual time (nothing
//! sleeps): requests arrive at their trace times, a strategy picks a
//! backend, and the backend's completion is scheduled after its service
//! time, or after the requests ahead of it when all its slots are busy.
//!
//! In-flight counts are kept where a live proxy keeps them: each simulated
//! request holds a real [`InFlight`] guard of the real [`Backend`] until it
//! completes, so a strategy reading `backends.in-flight` during a pick sees
//! the simulated load at that virtual instant, exactly as it would live.
//!
//! Ordering: events happen in time order; at equal times, completions come
//! before arrivals (a request finishing at `t` frees its backend for one
//! arriving at `t`), completions in the order they were scheduled, and
//! arrivals in trace order. A backend with `slots` serves that many requests
//! at once and queues the rest first-in first-out; queued requests count as
//! in flight (the proxy has sent them).
//!
//! [`Backend`]: crate::backend::Backend

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

use super::model::{Distribution, Latency, Rng};
use super::trace::TraceRequest;
use crate::backend::{BackendSet, InFlight};

/// What the strategy decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Picked {
    /// The strategy chose this backend.
    Backend(u32),
    /// The strategy failed; the host's round robin chose this backend.
    Fallback(u32),
    /// No backend: the proxy would answer 503.
    Reject,
}

/// How one backend behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Behaviour {
    pub(crate) latency: Latency,
    /// Requests served at once; `None` is unlimited (a pure delay).
    pub(crate) slots: Option<u32>,
}

/// The service-time model of a run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Model<'a> {
    pub(crate) backends: &'a [Behaviour],
    pub(crate) distribution: Distribution,
    pub(crate) sigma: f64,
}

/// What happened to the requests sent to one backend.
#[derive(Debug, Clone, Default)]
pub(crate) struct BackendOutcome {
    /// Latency (queueing plus service) of every request it completed, ns.
    pub(crate) latencies_ns: Vec<u64>,
    /// Of those, how many the host's round robin sent (plugin failures).
    pub(crate) fallbacks: u64,
    /// Requests that had to wait for a slot, and their total wait.
    pub(crate) queued: u64,
    pub(crate) queue_wait_ns: u128,
    /// Most requests in flight at once.
    pub(crate) peak_in_flight: u32,
}

/// The result of a run.
#[derive(Debug, Clone, Default)]
pub(crate) struct Outcome {
    pub(crate) requests: u64,
    pub(crate) rejected: u64,
    pub(crate) backends: Vec<BackendOutcome>,
    /// Requests per backend, by client address.
    pub(crate) clients: BTreeMap<IpAddr, Vec<u64>>,
    pub(crate) first_arrival_ns: u64,
    pub(crate) last_arrival_ns: u64,
    /// When the last request completed.
    pub(crate) end_ns: u64,
}

/// A scheduled completion: (time, scheduling order, backend, arrival).
type Completion = Reverse<(u64, u64, usize, u64)>;

struct Station {
    busy: u32,
    /// (arrival, service) of requests waiting for a slot.
    waiting: VecDeque<(u64, u64)>,
    /// One guard per request in flight (they are interchangeable).
    in_flight: Vec<InFlight>,
}

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    /// The model does not describe every backend (a bug of the caller).
    #[error("{models} backend models for {backends} backends")]
    ModelCount { models: usize, backends: usize },
    /// `--latency recorded` for a request whose trace line has no
    /// `duration_ms`.
    #[error("request {number} (from {client}) has no recorded duration for `--latency recorded`")]
    NoRecordedDuration {
        /// 1-based, in arrival order.
        number: u64,
        client: IpAddr,
    },
}

/// Replays `requests` (in non-decreasing arrival order; an earlier time is
/// taken as "now") against `set`, asking `pick(request, sequence)` for each.
/// `rng` draws the service-time factors, one per request.
pub(crate) fn run<P>(
    requests: impl Iterator<Item = TraceRequest>,
    set: &Arc<BackendSet>,
    model: Model<'_>,
    mut rng: Rng,
    mut pick: P,
) -> Result<Outcome, RunError>
where
    P: FnMut(&TraceRequest, u64) -> Picked,
{
    let n = set.len();
    if model.backends.len() != n {
        return Err(RunError::ModelCount {
            models: model.backends.len(),
            backends: n,
        });
    }
    let mut outcome = Outcome {
        backends: vec![BackendOutcome::default(); n],
        ..Outcome::default()
    };
    let mut stations: Vec<Station> = (0..n)
        .map(|_| Station {
            busy: 0,
            waiting: VecDeque::new(),
            in_flight: Vec::new(),
        })
        .collect();
    let mut heap: BinaryHeap<Completion> = BinaryHeap::new();
    let mut scheduled: u64 = 0;
    let mut now: u64 = 0;
    let mut requests = requests.peekable();

    loop {
        let arrival = requests.peek().map(|r| r.at_ns.max(now));
        let completion = heap.peek().map(|Reverse((t, ..))| *t);
        let complete_first = match (arrival, completion) {
            (None, None) => break,
            (Some(a), Some(c)) => c <= a,
            (None, Some(_)) => true,
            (Some(_), None) => false,
        };
        if complete_first {
            let Some(Reverse((t, _, b, arrived))) = heap.pop() else {
                break;
            };
            now = t;
            let station = &mut stations[b];
            let done = &mut outcome.backends[b];
            done.latencies_ns.push(t - arrived);
            station.in_flight.pop();
            match station.waiting.pop_front() {
                Some((waited_since, service)) => {
                    done.queue_wait_ns += u128::from(now - waited_since);
                    heap.push(Reverse((now + service, scheduled, b, waited_since)));
                    scheduled += 1;
                }
                None => station.busy -= 1,
            }
            outcome.end_ns = outcome.end_ns.max(now);
            continue;
        }

        let Some(request) = requests.next() else {
            break;
        };
        now = request.at_ns.max(now);
        if outcome.requests == 0 {
            outcome.first_arrival_ns = now;
        }
        outcome.last_arrival_ns = now;
        outcome.end_ns = outcome.end_ns.max(now);
        // Drawn for every request, picked or not, so the n-th request gets
        // the same factor whatever the strategy does (common random numbers).
        let unit = model.distribution.unit(model.sigma, &mut rng);
        let sequence = outcome.requests;
        outcome.requests += 1;
        let (index, fallback) = match pick(&request, sequence) {
            Picked::Backend(i) => (i as usize, false),
            Picked::Fallback(i) => (i as usize, true),
            Picked::Reject => {
                outcome.rejected += 1;
                continue;
            }
        };
        let (Some(backend), Some(behaviour)) = (set.backends.get(index), model.backends.get(index))
        else {
            outcome.rejected += 1;
            continue;
        };
        let service = behaviour
            .latency
            .service_ns(unit, request.recorded_ns)
            .ok_or(RunError::NoRecordedDuration {
                number: sequence + 1,
                client: request.client,
            })?;
        let station = &mut stations[index];
        let done = &mut outcome.backends[index];
        station.in_flight.push(backend.start_request());
        done.peak_in_flight = done.peak_in_flight.max(station.in_flight.len() as u32);
        if fallback {
            done.fallbacks += 1;
        }
        outcome
            .clients
            .entry(request.client)
            .or_insert_with(|| vec![0; n])[index] += 1;
        if behaviour.slots.is_none_or(|slots| station.busy < slots) {
            station.busy += 1;
            heap.push(Reverse((now + service, scheduled, index, now)));
            scheduled += 1;
        } else {
            done.queued += 1;
            station.waiting.push_back((now, service));
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};
    use std::time::Duration;

    use super::*;
    use crate::base::config::ServerConfig;

    fn set(n: usize) -> Arc<BackendSet> {
        let servers: Vec<ServerConfig> = (1..=n)
            .map(|i| {
                let addr = SocketAddr::from((Ipv4Addr::new(10, 0, 0, i as u8), 80));
                ServerConfig {
                    id: format!("b{i}"),
                    address: addr.to_string(),
                    addr,
                    weight: 1,
                }
            })
            .collect();
        Arc::new(BackendSet::build(&servers, None))
    }

    fn fixed(ms: u64, slots: Option<u32>) -> Behaviour {
        Behaviour {
            latency: Latency::Mean(Duration::from_millis(ms)),
            slots,
        }
    }

    fn at(ms: u64) -> TraceRequest {
        TraceRequest::get(ms * 1_000_000, IpAddr::from([192, 0, 2, 1]))
    }

    fn model(backends: &[Behaviour]) -> Model<'_> {
        Model {
            backends,
            distribution: Distribution::Fixed,
            sigma: 0.0,
        }
    }

    #[test]
    fn a_completion_at_the_same_instant_comes_before_the_arrival() {
        let set = set(1);
        let backends = [fixed(10, None)];
        let mut seen = Vec::new();
        // Arrivals at 0, 10 (when the first completes), 15, 20 (when the
        // second completes).
        let trace = [0, 10, 15, 20].map(at);
        let out = run(
            trace.into_iter(),
            &set,
            model(&backends),
            Rng::new(1, 1),
            |_, seq| {
                seen.push((seq, set.backends[0].in_flight()));
                Picked::Backend(0)
            },
        )
        .expect("runs");
        assert_eq!(seen, vec![(0, 0), (1, 0), (2, 1), (3, 1)]);
        assert_eq!(out.backends[0].latencies_ns, vec![10_000_000; 4]);
        assert_eq!(out.end_ns, 30_000_000);
        assert_eq!(set.backends[0].in_flight(), 0, "every guard is released");
        assert_eq!(out.backends[0].peak_in_flight, 2);
    }

    #[test]
    fn a_busy_backend_queues_first_in_first_out() {
        let set = set(1);
        let backends = [fixed(10, Some(1))];
        let mut loads = Vec::new();
        let trace = [0, 1, 2, 25].map(at);
        let out = run(
            trace.into_iter(),
            &set,
            model(&backends),
            Rng::new(1, 1),
            |_, _| {
                loads.push(set.backends[0].in_flight());
                Picked::Backend(0)
            },
        )
        .expect("runs");
        // 0 serves 0-10, 1 waits 9 and serves 10-20, 2 waits 18 and serves
        // 20-30, 25 waits 5 and serves 30-40.
        let ms: Vec<u64> = out.backends[0]
            .latencies_ns
            .iter()
            .map(|ns| ns / 1_000_000)
            .collect();
        assert_eq!(ms, vec![10, 19, 28, 15]);
        assert_eq!(loads, vec![0, 1, 2, 1], "queued requests are in flight");
        assert_eq!(out.backends[0].queued, 3);
        assert_eq!(out.backends[0].queue_wait_ns, 32_000_000);
        assert_eq!(out.end_ns, 40_000_000);
    }

    #[test]
    fn the_picked_backend_sets_the_service_time_and_rejects_are_counted() {
        let set = set(2);
        let backends = [fixed(10, None), fixed(100, None)];
        let trace = [0, 0, 0, 0].map(at);
        let out = run(
            trace.into_iter(),
            &set,
            model(&backends),
            Rng::new(1, 1),
            |_, seq| match seq {
                0 => Picked::Backend(0),
                1 => Picked::Fallback(1),
                2 => Picked::Reject,
                _ => Picked::Backend(7),
            },
        )
        .expect("runs");
        assert_eq!(out.requests, 4);
        assert_eq!(out.rejected, 2, "a reject and an out-of-range answer");
        assert_eq!(out.backends[0].latencies_ns, vec![10_000_000]);
        assert_eq!(out.backends[1].latencies_ns, vec![100_000_000]);
        assert_eq!(out.backends[1].fallbacks, 1);
        assert_eq!(out.clients.values().next(), Some(&vec![1, 1]));
    }

    #[test]
    fn the_same_seed_replays_the_same_latencies() {
        let set = set(3);
        let backends = [fixed(5, Some(2)), fixed(20, None), fixed(50, Some(1))];
        let go = |seed| {
            let model = Model {
                backends: &backends,
                distribution: Distribution::Lognormal,
                sigma: 0.8,
            };
            let trace = (0..300).map(|i| at(i / 3));
            run(trace, &set, model, Rng::new(seed, 2), |_, seq| {
                Picked::Backend((seq % 3) as u32)
            })
            .expect("runs")
            .backends
            .into_iter()
            .map(|b| b.latencies_ns)
            .collect::<Vec<_>>()
        };
        assert_eq!(go(11), go(11));
        assert_ne!(go(11), go(12));
    }

    #[test]
    fn recorded_latency_needs_a_recorded_duration() {
        let set = set(1);
        let backends = [Behaviour {
            latency: Latency::Recorded,
            slots: None,
        }];
        let mut recorded = at(0);
        recorded.recorded_ns = Some(7);
        let out = run(
            [recorded].into_iter(),
            &set,
            model(&backends),
            Rng::new(1, 1),
            |_, _| Picked::Backend(0),
        )
        .expect("runs");
        assert_eq!(out.backends[0].latencies_ns, vec![7]);
        let err = run(
            [at(0)].into_iter(),
            &set,
            model(&backends),
            Rng::new(1, 1),
            |_, _| Picked::Backend(0),
        )
        .expect_err("no recorded duration");
        assert!(err.to_string().contains("request 1"), "{err}");
    }
}
