//! `gilgal`: one binary for the platform (`gilgal server`) and its command-line client.
//!
//! `main` stays thin: parse arguments, run, print any error as one line that says what to do.

mod cli;
mod commands;
mod credentials;
mod edge;
mod link;
mod listeners;
mod output;
mod server;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Before parsing (and before any thread): a linked directory's project and environment
    // become the defaults of `-p`/`-e`.
    link::export_defaults();
    let args = cli::Cli::parse();
    match run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", commands::describe_error(&err));
            ExitCode::FAILURE
        }
    }
}

fn run(args: cli::Cli) -> anyhow::Result<ExitCode> {
    match args.command {
        cli::Command::Server(server_args) => server::run(server_args),
        cli::Command::Edge(edge_args) => edge::run(edge_args),
        command => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(commands::run(args.global, command))
        }
    }
}
