//! `switchyard-stress`: parse the command line, run, print the report (text
//! or JSON) on stdout, and exit 0 if every request succeeded, 1 if any
//! failed (or none completed), 2 if nothing could be run. Ctrl-C stops the
//! run early and still prints what completed. A closed stdout (piped into
//! `head`) ends the program quietly: the reader has what it wanted.

use std::{
    io::{self, Write},
    process::ExitCode,
};

use clap::Parser;
use switchyard_stress::{Cli, Options, Report, run_until};

/// Exit status when some request failed or none completed.
const FAILED: u8 = 1;
/// Exit status when nothing could be run (clap uses it for usage errors).
const NOT_RUN: u8 = 2;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let report = match Options::try_from(cli) {
        Ok(options) => run_until(options, ctrl_c()).await,
        Err(error) => Err(error),
    };
    let report = match report {
        Ok(report) => report,
        Err(error) => {
            complain(&anyhow::Error::from(error));
            return ExitCode::from(NOT_RUN);
        }
    };
    let status = if report.all_succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(FAILED)
    };
    match print(&report, json) {
        Ok(()) => status,
        // Whoever reads stdout stopped reading (`| head`): not an error.
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => status,
        Err(error) => {
            complain(&anyhow::Error::from(error).context("cannot write the report"));
            ExitCode::from(NOT_RUN)
        }
    }
}

/// Writes the report on stdout, as text or JSON.
fn print(report: &Report, json: bool) -> io::Result<()> {
    let mut out = io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, report)?;
        writeln!(out)?;
    } else {
        write!(out, "{report}")?;
    }
    out.flush()
}

/// Says on stderr what went wrong, with its causes, and nothing if stderr
/// is closed too (`eprintln!` would panic).
fn complain(error: &anyhow::Error) {
    let _ = writeln!(io::stderr(), "switchyard-stress: error: {error:#}");
}

/// Completes on Ctrl-C; never, if the handler cannot be installed.
async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}
