//! The serving threads. Client connections are served by `workers` threads
//! (one per core by default), each running its own single-threaded tokio
//! runtime, in the manner of nginx's worker processes. A connection, its
//! requests and the backend connections those requests use live on one
//! thread: no work stealing and no wake-ups across cores on the request path
//! (with one shared multi-threaded runtime, waking tasks on the other core
//! was a large part of the proxy's CPU).
//!
//! Everything else (health checks, reloads, admin, discovery, plugin
//! compiles) runs on the main runtime. What the workers share (routes,
//! backends, counters) is behind atomics and `ArcSwap`s; plugin instances
//! are per thread already ([`crate::plugin`]), and so are idle backend
//! connections ([`crate::backend::pool`]).
//!
//! Also here: what a drain waits for, the client connections open on each
//! worker ([`Connections`]) and the upgraded connections open now
//! ([`Tunnels`]).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::time::{Instant, Sleep};

thread_local! {
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
    /// Timers free for reuse on this worker (see [`timer`]).
    static SPARE_TIMERS: RefCell<Vec<Pin<Box<Sleep>>>> = const { RefCell::new(Vec::new()) };
}

/// Most spare timers a worker keeps.
const MAX_SPARE_TIMERS: usize = 512;

/// The index of the worker running on this thread (from 0), or None on
/// any other thread.
pub fn current() -> Option<usize> {
    WORKER.with(Cell::get)
}

/// A running worker: resolves when its thread is done (its future ended
/// and every task it spawned was dropped).
#[derive(Debug)]
pub struct Worker(oneshot::Receiver<()>);

impl Worker {
    /// Waits for the worker's thread to finish.
    pub async fn finished(self) {
        // An error means the thread ended without saying so (a panic):
        // finished all the same.
        let _ = self.0.await;
    }
}

/// Starts `count` worker threads; worker `i` runs `run(i)` on a fresh
/// single-threaded runtime until that future ends, then drops whatever
/// tasks it still has. The runtimes are all built before any thread
/// starts, so an error leaves nothing running.
pub fn spawn<F, Fut>(count: usize, run: F) -> io::Result<Vec<Worker>>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let runtimes = (0..count)
        .map(|_| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        })
        .collect::<io::Result<Vec<_>>>()?;
    let run = Arc::new(run);
    let mut workers = Vec::with_capacity(count);
    for (index, runtime) in runtimes.into_iter().enumerate() {
        let (done, finished) = oneshot::channel();
        let run = Arc::clone(&run);
        std::thread::Builder::new()
            .name(format!("switchyard-worker-{index}"))
            .spawn(move || {
                WORKER.with(|w| w.set(Some(index)));
                runtime.block_on(run(index));
                drop(runtime);
                let _ = done.send(());
            })?;
        workers.push(Worker(finished));
    }
    Ok(workers)
}

/// Client connections open on each worker: what the accept loops balance
/// on ([`Connections::assign`]) and what `/metrics` shows.
///
/// Every worker waits on the same listening sockets, the kernel wakes them
/// all for a new connection, and the first one awake accepts every
/// connection queued by then. A burst of clients (a load generator, the
/// connection pool of a proxy in front) could all land on one thread and
/// leave the other cores idle. So a worker that already serves clearly more
/// than the least busy one passes a new connection on to it, as HAProxy's
/// multi-queue accept does; with even counts nothing is passed, and a
/// connection's requests then stay on one thread as before.
#[derive(Debug)]
pub struct Connections {
    open: Box<[AtomicUsize]>,
}

impl Connections {
    /// Counts for `workers` workers (at least one).
    pub fn new(workers: usize) -> Self {
        Self {
            open: (0..workers.max(1)).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    /// Open client connections per worker now.
    pub fn open(&self) -> Vec<usize> {
        self.open
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect()
    }

    /// The worker that serves a connection worker `me` just accepted,
    /// counted there until the returned [`Seat`] drops: `me`, or the least
    /// busy worker when [`should_pass`] says so.
    pub fn assign(self: &Arc<Self>, me: usize) -> Seat {
        let open = self.open.iter().map(|n| n.load(Ordering::Relaxed));
        let worker = should_pass(open, me).unwrap_or(me);
        self.seat(worker)
    }

    /// Counts one more connection on `worker`, until the seat drops.
    pub fn seat(self: &Arc<Self>, worker: usize) -> Seat {
        let worker = worker.min(self.open.len() - 1);
        self.open[worker].fetch_add(1, Ordering::Relaxed);
        Seat {
            connections: Arc::clone(self),
            worker,
        }
    }
}

/// The least busy worker, when worker `me` serves at least 2 more
/// connections than it (and 1/16 more, so that with many connections open
/// small differences are not worth a hand-over); the first such worker on
/// a tie. `open` holds every worker's count, by worker index; None when
/// `me` is not among them.
pub fn should_pass(open: impl IntoIterator<Item = usize>, me: usize) -> Option<usize> {
    let mut mine = None;
    let mut least: Option<(usize, usize)> = None;
    for (worker, n) in open.into_iter().enumerate() {
        if worker == me {
            mine = Some(n);
        }
        if least.is_none_or(|(_, fewest)| n < fewest) {
            least = Some((worker, n));
        }
    }
    let (least, fewest) = least?;
    (mine? >= fewest + 2 + fewest / 16).then_some(least)
}

/// A client connection's place in its worker's count.
#[derive(Debug)]
pub struct Seat {
    connections: Arc<Connections>,
    worker: usize,
}

impl Seat {
    /// The worker that serves the connection.
    pub fn worker(&self) -> usize {
        self.worker
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.connections.open[self.worker].fetch_sub(1, Ordering::Relaxed);
    }
}

/// A timer for one request that fires `after` from now (or in 30 years,
/// for a timeout too long to add to the clock), reused from earlier
/// requests of this worker when one is free.
///
/// Each new tokio timer that becomes the earliest of its runtime wakes the
/// runtime's event loop with a write to its eventfd, even from the loop's own
/// thread: with a fresh response timer per request that was a system call
/// for many requests. A reused timer moved to a later deadline
/// is only an atomic store. A dropped [`Timer`] goes back to its worker's
/// spares (off the workers, it is simply dropped).
pub fn timer(after: Duration) -> Timer {
    let deadline = deadline(after);
    let spare = current().and_then(|_| SPARE_TIMERS.with(|spares| spares.borrow_mut().pop()));
    let sleep = match spare {
        Some(mut sleep) => {
            sleep.as_mut().reset(deadline);
            sleep
        }
        None => Box::pin(tokio::time::sleep_until(deadline)),
    };
    Timer(Some(sleep))
}

/// `after` from now, or 30 years for a timeout too long for the clock.
fn deadline(after: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(after)
        .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 86_400))
}

/// A request's timer (see [`timer`]); a future that completes at its
/// deadline.
#[derive(Debug)]
pub struct Timer(Option<Pin<Box<Sleep>>>);

impl Timer {
    /// Moves the deadline to `after` from now: one timer for a request's
    /// successive waits (a later deadline is an atomic store, as for a
    /// spare reused by [`timer`]).
    pub fn reset(&mut self, after: Duration) {
        if let Some(sleep) = &mut self.0 {
            sleep.as_mut().reset(deadline(after));
        }
    }
}

impl Future for Timer {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.0 {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        let Some(mut sleep) = self.0.take() else {
            return;
        };
        if current().is_none() {
            return;
        }
        // Forget the waker of the request that used it, so that a spare
        // firing wakes nobody (and keeps no finished task alive).
        let _ = sleep.as_mut().poll(&mut Context::from_waker(Waker::noop()));
        SPARE_TIMERS.with(|spares| {
            let mut spares = spares.borrow_mut();
            if spares.len() < MAX_SPARE_TIMERS {
                spares.push(sleep);
            }
        });
    }
}

/// The tunnels open now, so that a drain can wait for them.
#[derive(Debug, Default)]
pub struct Tunnels {
    open: AtomicUsize,
    closed: Notify,
}

impl Tunnels {
    /// Counts one tunnel until the guard is dropped.
    pub fn open(self: &Arc<Self>) -> TunnelGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        TunnelGuard(Arc::clone(self))
    }

    /// Tunnels open now.
    pub fn count(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Completes when no tunnel is open.
    pub async fn all_closed(&self) {
        loop {
            let notified = self.closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One open tunnel, counted in [`Tunnels`].
#[derive(Debug)]
pub struct TunnelGuard(Arc<Tunnels>);

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_worker_runs_on_its_own_thread_and_knows_its_index() {
        assert_eq!(current(), None);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let workers = spawn(3, move |i| {
            let tx = tx.clone();
            async move {
                // Spawned tasks stay on the worker's thread.
                let seen = tokio::spawn(async { current() }).await.ok().flatten();
                let _ = tx.send((i, current(), seen, std::thread::current().id()));
            }
        })
        .expect("runtimes");
        for w in workers {
            w.finished().await;
        }
        let mut seen = Vec::new();
        while let Some(s) = rx.recv().await {
            seen.push(s);
        }
        seen.sort_by_key(|s| s.0);
        assert_eq!(seen.len(), 3);
        for (i, s) in seen.iter().enumerate() {
            assert_eq!((s.0, s.1, s.2), (i, Some(i), Some(i)));
        }
        assert_ne!(seen[0].3, seen[1].3);
        assert_ne!(seen[1].3, seen[2].3);
    }

    #[test]
    fn a_connection_is_passed_on_only_from_a_clearly_busier_worker() {
        // Even, or one apart: kept (a hand-over costs a cross-thread wake).
        assert_eq!(should_pass([0, 0], 0), None);
        assert_eq!(should_pass([5, 4], 0), None);
        assert_eq!(should_pass([4, 5], 0), None);
        // Two apart: to the least busy; the first of equals on a tie.
        assert_eq!(should_pass([6, 4], 0), Some(1));
        assert_eq!(should_pass([3, 1, 1, 2], 0), Some(1));
        assert_eq!(should_pass([3, 1, 1, 2], 3), None);
        // With many open, 1/16 more is tolerated.
        assert_eq!(should_pass([170, 160], 0), None);
        assert_eq!(should_pass([172, 160], 0), Some(1));
        // One worker: nothing to pass to.
        assert_eq!(should_pass([9], 0), None);
        // A worker that is not counted passes nothing.
        assert_eq!(should_pass([1, 5], 7), None);
    }

    #[test]
    fn a_burst_accepted_by_one_worker_ends_up_spread_evenly() {
        let connections = Arc::new(Connections::new(3));
        // Worker 0 is the one awake and accepts all 60.
        let seats: Vec<Seat> = (0..60).map(|_| connections.assign(0)).collect();
        let open = connections.open();
        assert_eq!(open.iter().sum::<usize>(), 60);
        // Worker 0 keeps a connection until it has 2 (and 1/16) more than
        // the least busy: with 19 there, it may hold 22.
        assert_eq!(
            open.iter().max().zip(open.iter().min()),
            Some((&22, &19)),
            "{open:?}"
        );
        assert!(open[1..].iter().all(|&n| n >= 19), "{open:?}");
        // Seats count until dropped.
        let on_two = seats.iter().filter(|s| s.worker() == 2).count();
        assert_eq!(on_two, open[2]);
        drop(seats);
        assert_eq!(connections.open(), vec![0, 0, 0]);
    }

    #[tokio::test]
    async fn a_reused_timer_fires_at_its_new_deadline() {
        let (tx, rx) = oneshot::channel();
        let tx = std::sync::Mutex::new(Some(tx));
        let workers = spawn(1, move |_| {
            let tx = tx.lock().ok().and_then(|mut t| t.take());
            async move {
                // A long timer, dropped unfired: its spare is reused below.
                let first = timer(Duration::from_secs(3600));
                drop(first);
                let reused = SPARE_TIMERS.with(|s| s.borrow().len());
                let start = Instant::now();
                timer(Duration::from_millis(30)).await;
                let waited = start.elapsed();
                let fresh_after = SPARE_TIMERS.with(|s| s.borrow().len());
                if let Some(tx) = tx {
                    let _ = tx.send((reused, waited, fresh_after));
                }
            }
        })
        .expect("runtime");
        let (spares_before, waited, spares_after) = rx.await.expect("worker ran");
        for w in workers {
            w.finished().await;
        }
        assert_eq!(spares_before, 1, "a dropped timer is kept");
        assert!(
            waited >= Duration::from_millis(30) && waited < Duration::from_secs(10),
            "fired after {waited:?}, not at the earlier deadline"
        );
        assert_eq!(spares_after, 1, "and given back after use");
    }

    #[tokio::test]
    async fn a_timeout_too_long_for_the_clock_does_not_panic() {
        let never = timer(Duration::MAX);
        let fired = tokio::time::timeout(Duration::from_millis(20), never).await;
        assert!(fired.is_err(), "a 30-year timer did not fire within 20 ms");
    }

    #[tokio::test]
    async fn off_the_workers_timers_are_plain() {
        let start = Instant::now();
        timer(Duration::from_millis(10)).await;
        assert!(start.elapsed() >= Duration::from_millis(10));
        assert_eq!(SPARE_TIMERS.with(|s| s.borrow().len()), 0);
    }

    #[tokio::test]
    async fn the_tunnel_count_wakes_the_drain_when_it_reaches_zero() {
        let tunnels = Arc::new(Tunnels::default());
        let a = tunnels.open();
        let b = tunnels.open();
        let waiter = tokio::spawn({
            let tunnels = Arc::clone(&tunnels);
            async move { tunnels.all_closed().await }
        });
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(b);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(tunnels.count(), 0);
    }
}
