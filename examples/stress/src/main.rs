//! `switchyard-stress`: parse the command line, run, print the report (text
//! or JSON) on stdout. Ctrl-C stops the run early and still prints what
//! completed.

use std::io::Write;

use anyhow::Context;
use clap::Parser;
use switchyard_stress::{Cli, run_until};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let json = cli.json;
    let report = run_until(cli.into(), ctrl_c()).await?;

    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &report).context("writing the report")?;
        writeln!(out)?;
    } else {
        write!(out, "{report}")?;
    }
    out.flush().context("writing the report")
}

/// Completes on Ctrl-C; never, if the handler cannot be installed.
async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}
