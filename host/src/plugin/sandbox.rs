//! The WASI a strategy gets: just enough for guests built with Rust's `std`
//! (or another language's runtime) to instantiate, and nothing that reaches
//! outside the sandbox or blocks the request path.
//!
//! - stdout and stderr go to the proxy's log, a line at a time, at most
//!   [`LOG_LINES_PER_SEC`] lines per second per instance; stdin is empty;
//! - no environment variables, arguments, working directory, files or
//!   sockets: those imports are not defined and trap if called
//!   (`define_unknown_imports_as_traps`);
//! - clocks and randomness work;
//! - nothing blocks: every pollable is ready at once, so a guest that
//!   "sleeps" just spins into its pick deadline.
//!
//! wasmtime-wasi's synchronous bindings were not used because they run
//! `block_on` for blocking stream and poll calls, which panics inside a tokio
//! worker and would block the request path if it did not.

use std::time::{Instant, SystemTime};

use wasmtime::StoreContextMut;
use wasmtime::component::{
    ComponentType, Lift, Linker, LinkerInstance, Lower, Resource, ResourceType,
};

/// Store data that holds a [`SandboxState`]: what the sandbox's imports
/// work on.
pub trait Sandboxed: Send + 'static {
    /// The instance's sandbox state.
    fn sandbox(&mut self) -> &mut SandboxState;
}

/// Lines a single instance may log per second; the rest are counted and
/// dropped.
pub const LOG_LINES_PER_SEC: u32 = 20;
/// A longer line is cut.
const MAX_LINE: usize = 1024;
/// Largest `check-write` permit.
const WRITE_PERMIT: u64 = 4096;
/// Largest randomness request.
const MAX_RANDOM: u64 = 1 << 16;

/// WASI version defined; semver matching serves any `0.2.x` import.
const V: &str = "0.2.0";

// Host representations of the WASI resources. They carry no state: stdout
// and stderr are told apart by their rep.
struct OutputStream;
struct InputStream;
struct Pollable;
struct IoError;
struct TerminalInput;
struct TerminalOutput;

const STDOUT: u32 = 1;
const STDERR: u32 = 2;

#[derive(ComponentType, Lift, Lower)]
#[component(variant)]
enum StreamError {
    #[component(name = "last-operation-failed")]
    LastOperationFailed(Resource<IoError>),
    #[component(name = "closed")]
    Closed,
}

#[derive(ComponentType, Lift, Lower, Clone, Copy)]
#[component(record)]
struct Datetime {
    seconds: u64,
    nanoseconds: u32,
}

/// Per-instance sandbox state: buffered output and the log budget.
#[derive(Debug)]
pub struct SandboxState {
    label: String,
    line: Vec<u8>,
    window_start: Instant,
    lines_in_window: u32,
    dropped: u64,
    started: Instant,
    rng: u64,
}

impl SandboxState {
    /// State for an instance whose log lines are tagged with `label`.
    pub fn new(label: String) -> Self {
        // A per-process random key, varied per instance by the clock.
        let seed = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            Instant::now(),
        );
        Self {
            label,
            line: Vec::new(),
            window_start: Instant::now(),
            lines_in_window: 0,
            dropped: 0,
            started: Instant::now(),
            rng: seed,
        }
    }

    fn write(&mut self, stream: u32, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                self.flush_line(stream);
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
    }

    fn flush_line(&mut self, stream: u32) {
        if self.window_start.elapsed().as_secs() >= 1 {
            if self.dropped > 0 {
                tracing::warn!(plugin = %self.label, dropped = self.dropped, "plugin output rate-limited");
            }
            self.window_start = Instant::now();
            self.lines_in_window = 0;
            self.dropped = 0;
        }
        if self.lines_in_window < LOG_LINES_PER_SEC {
            self.lines_in_window += 1;
            let text = String::from_utf8_lossy(&self.line);
            if stream == STDERR {
                tracing::warn!(plugin = %self.label, "stderr: {text}");
            } else {
                tracing::info!(plugin = %self.label, "stdout: {text}");
            }
        } else {
            self.dropped += 1;
        }
        self.line.clear();
    }

    /// SplitMix64: randomness for `insecure` and `random` alike. Strategies
    /// need spread, not secrets.
    fn next_u64(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn random_bytes(&mut self, len: u64) -> wasmtime::Result<Vec<u8>> {
        if len > MAX_RANDOM {
            wasmtime::bail!("random bytes request of {len} exceeds {MAX_RANDOM}");
        }
        let mut out = Vec::with_capacity(len as usize);
        while out.len() < len as usize {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len as usize);
        Ok(out)
    }
}

type Ctx<'a, T> = StoreContextMut<'a, T>;

fn sandbox<'a, T: Sandboxed>(store: &'a mut Ctx<'_, T>) -> &'a mut SandboxState {
    store.data_mut().sandbox()
}

fn no_dtor<T>(_: Ctx<'_, T>, _: u32) -> wasmtime::Result<()> {
    Ok(())
}

fn instance<'a, T: Sandboxed>(
    linker: &'a mut Linker<T>,
    name: &str,
) -> wasmtime::Result<LinkerInstance<'a, T>> {
    linker.instance(&format!("{name}@{V}"))
}

fn ready() -> Resource<Pollable> {
    Resource::new_own(0)
}

/// Adds the sandbox WASI to `linker`.
pub fn add_to_linker<T: Sandboxed>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    let mut error = instance(linker, "wasi:io/error")?;
    error.resource("error", ResourceType::host::<IoError>(), no_dtor)?;
    error.func_wrap(
        "[method]error.to-debug-string",
        |_: Ctx<'_, T>, (_,): (Resource<IoError>,)| Ok(("sandboxed stream error".to_string(),)),
    )?;

    let mut poll = instance(linker, "wasi:io/poll")?;
    poll.resource("pollable", ResourceType::host::<Pollable>(), no_dtor)?;
    poll.func_wrap(
        "[method]pollable.ready",
        |_: Ctx<'_, T>, (_,): (Resource<Pollable>,)| Ok((true,)),
    )?;
    poll.func_wrap(
        "[method]pollable.block",
        |_: Ctx<'_, T>, (_,): (Resource<Pollable>,)| Ok(()),
    )?;
    poll.func_wrap(
        "poll",
        |_: Ctx<'_, T>, (list,): (Vec<Resource<Pollable>>,)| {
            Ok(((0..list.len() as u32).collect::<Vec<u32>>(),))
        },
    )?;

    add_streams(linker)?;
    add_cli(linker)?;
    add_clocks_and_random(linker)
}

fn add_streams<T: Sandboxed>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    type Out = Resource<OutputStream>;
    type In = Resource<InputStream>;
    type Written = Result<(), StreamError>;
    let mut s = instance(linker, "wasi:io/streams")?;
    s.resource("input-stream", ResourceType::host::<InputStream>(), no_dtor)?;
    s.resource(
        "output-stream",
        ResourceType::host::<OutputStream>(),
        no_dtor,
    )?;
    s.resource("error", ResourceType::host::<IoError>(), no_dtor)?;
    s.resource("pollable", ResourceType::host::<Pollable>(), no_dtor)?;

    s.func_wrap(
        "[method]output-stream.check-write",
        |_: Ctx<'_, T>, (_,): (Out,)| Ok((Ok::<u64, StreamError>(WRITE_PERMIT),)),
    )?;
    for name in [
        "[method]output-stream.write",
        "[method]output-stream.blocking-write-and-flush",
    ] {
        s.func_wrap(
            name,
            |mut store: Ctx<'_, T>, (out, bytes): (Out, Vec<u8>)| {
                sandbox(&mut store).write(out.rep(), &bytes);
                Ok((Written::Ok(()),))
            },
        )?;
    }
    for name in [
        "[method]output-stream.write-zeroes",
        "[method]output-stream.blocking-write-zeroes-and-flush",
    ] {
        s.func_wrap(name, |_: Ctx<'_, T>, (_, _): (Out, u64)| {
            Ok((Written::Ok(()),))
        })?;
    }
    for name in [
        "[method]output-stream.flush",
        "[method]output-stream.blocking-flush",
    ] {
        s.func_wrap(name, |_: Ctx<'_, T>, (_,): (Out,)| Ok((Written::Ok(()),)))?;
    }
    for name in [
        "[method]output-stream.splice",
        "[method]output-stream.blocking-splice",
    ] {
        s.func_wrap(name, |_: Ctx<'_, T>, (_, _, _): (Out, In, u64)| {
            Ok((Err::<u64, StreamError>(StreamError::Closed),))
        })?;
    }
    s.func_wrap(
        "[method]output-stream.subscribe",
        |_: Ctx<'_, T>, (_,): (Out,)| Ok((ready(),)),
    )?;

    for name in [
        "[method]input-stream.read",
        "[method]input-stream.blocking-read",
    ] {
        s.func_wrap(name, |_: Ctx<'_, T>, (_, _): (In, u64)| {
            Ok((Err::<Vec<u8>, StreamError>(StreamError::Closed),))
        })?;
    }
    for name in [
        "[method]input-stream.skip",
        "[method]input-stream.blocking-skip",
    ] {
        s.func_wrap(name, |_: Ctx<'_, T>, (_, _): (In, u64)| {
            Ok((Err::<u64, StreamError>(StreamError::Closed),))
        })?;
    }
    s.func_wrap(
        "[method]input-stream.subscribe",
        |_: Ctx<'_, T>, (_,): (In,)| Ok((ready(),)),
    )?;
    Ok(())
}

fn add_cli<T: Sandboxed>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    let mut env = instance(linker, "wasi:cli/environment")?;
    env.func_wrap("get-environment", |_: Ctx<'_, T>, (): ()| {
        Ok((Vec::<(String, String)>::new(),))
    })?;
    env.func_wrap("get-arguments", |_: Ctx<'_, T>, (): ()| {
        Ok((Vec::<String>::new(),))
    })?;
    env.func_wrap("initial-cwd", |_: Ctx<'_, T>, (): ()| Ok((None::<String>,)))?;

    instance(linker, "wasi:cli/exit")?.func_wrap(
        "exit",
        |_: Ctx<'_, T>, (status,): (Result<(), ()>,)| -> wasmtime::Result<()> {
            wasmtime::bail!(
                "plugin called exit({})",
                if status.is_ok() { "ok" } else { "err" }
            )
        },
    )?;

    let mut stdin = instance(linker, "wasi:cli/stdin")?;
    stdin.resource("input-stream", ResourceType::host::<InputStream>(), no_dtor)?;
    stdin.func_wrap("get-stdin", |_: Ctx<'_, T>, (): ()| {
        Ok((Resource::<InputStream>::new_own(0),))
    })?;
    for (iface, func, rep) in [
        ("wasi:cli/stdout", "get-stdout", STDOUT),
        ("wasi:cli/stderr", "get-stderr", STDERR),
    ] {
        let mut out = instance(linker, iface)?;
        out.resource(
            "output-stream",
            ResourceType::host::<OutputStream>(),
            no_dtor,
        )?;
        out.func_wrap(func, move |_: Ctx<'_, T>, (): ()| {
            Ok((Resource::<OutputStream>::new_own(rep),))
        })?;
    }

    instance(linker, "wasi:cli/terminal-input")?.resource(
        "terminal-input",
        ResourceType::host::<TerminalInput>(),
        no_dtor,
    )?;
    instance(linker, "wasi:cli/terminal-output")?.resource(
        "terminal-output",
        ResourceType::host::<TerminalOutput>(),
        no_dtor,
    )?;
    let mut t = instance(linker, "wasi:cli/terminal-stdin")?;
    t.resource(
        "terminal-input",
        ResourceType::host::<TerminalInput>(),
        no_dtor,
    )?;
    t.func_wrap("get-terminal-stdin", |_: Ctx<'_, T>, (): ()| {
        Ok((None::<Resource<TerminalInput>>,))
    })?;
    for (iface, func) in [
        ("wasi:cli/terminal-stdout", "get-terminal-stdout"),
        ("wasi:cli/terminal-stderr", "get-terminal-stderr"),
    ] {
        let mut t = instance(linker, iface)?;
        t.resource(
            "terminal-output",
            ResourceType::host::<TerminalOutput>(),
            no_dtor,
        )?;
        t.func_wrap(func, |_: Ctx<'_, T>, (): ()| {
            Ok((None::<Resource<TerminalOutput>>,))
        })?;
    }
    Ok(())
}

fn add_clocks_and_random<T: Sandboxed>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    let mut mono = instance(linker, "wasi:clocks/monotonic-clock")?;
    mono.resource("pollable", ResourceType::host::<Pollable>(), no_dtor)?;
    mono.func_wrap("now", |mut store: Ctx<'_, T>, (): ()| {
        Ok((sandbox(&mut store).started.elapsed().as_nanos() as u64,))
    })?;
    mono.func_wrap("resolution", |_: Ctx<'_, T>, (): ()| Ok((1u64,)))?;
    mono.func_wrap("subscribe-instant", |_: Ctx<'_, T>, (_,): (u64,)| {
        Ok((ready(),))
    })?;
    mono.func_wrap("subscribe-duration", |_: Ctx<'_, T>, (_,): (u64,)| {
        Ok((ready(),))
    })?;

    let mut wall = instance(linker, "wasi:clocks/wall-clock")?;
    wall.func_wrap("now", |_: Ctx<'_, T>, (): ()| {
        let d = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        Ok((Datetime {
            seconds: d.as_secs(),
            nanoseconds: d.subsec_nanos(),
        },))
    })?;
    wall.func_wrap("resolution", |_: Ctx<'_, T>, (): ()| {
        Ok((Datetime {
            seconds: 0,
            nanoseconds: 1,
        },))
    })?;

    for (iface, bytes_fn, u64_fn) in [
        ("wasi:random/random", "get-random-bytes", "get-random-u64"),
        (
            "wasi:random/insecure",
            "get-insecure-random-bytes",
            "get-insecure-random-u64",
        ),
    ] {
        let mut r = instance(linker, iface)?;
        r.func_wrap(bytes_fn, |mut store: Ctx<'_, T>, (len,): (u64,)| {
            Ok((sandbox(&mut store).random_bytes(len)?,))
        })?;
        r.func_wrap(u64_fn, |mut store: Ctx<'_, T>, (): ()| {
            Ok((sandbox(&mut store).next_u64(),))
        })?;
    }
    instance(linker, "wasi:random/insecure-seed")?.func_wrap(
        "insecure-seed",
        |mut store: Ctx<'_, T>, (): ()| {
            let s = sandbox(&mut store);
            Ok(((s.next_u64(), s.next_u64()),))
        },
    )?;
    Ok(())
}
