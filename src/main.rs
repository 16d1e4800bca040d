//! `bb-container-expander CONFIG.jsonnet` runs the service, as every Buildbarn binary
//! takes its one configuration file. Subcommands run one-off jobs:
//! `check-config FILE` evaluates and validates a configuration without starting
//! anything; `expand IMAGE...` expands images into the CAS and prints the results.

use bb_container_expander::diagnostics::logging;
use bb_container_expander::program;
use std::process::ExitCode;

/// jemalloc instead of the C library's allocator: the warm Execute path allocates and
/// frees many small buffers on several threads, where glibc's malloc spent a fifth of
/// the process's time (README, "Benchmarks": rows i and l).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const USAGE: &str = "Usage:
  bb-container-expander CONFIG.jsonnet        run the service (`-` reads the configuration from stdin)
  bb-container-expander check-config FILE     evaluate and validate a configuration, then exit
  bb-container-expander expand [--config FILE] [--platform OS/ARCH[/VARIANT]] [--instance-name NAME]
                        [--materialize DIR] IMAGE...
                                              expand images into the CAS (in memory without --config)
                                              and print one JSON line per image";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["check-config", path] => check_config(path),
        ["expand", ..] => expand(&args[1..]),
        ["-h" | "--help" | "help"] => {
            println!("{USAGE}");
            Ok(())
        }
        [path] if !path.starts_with("--") && *path != "check-config" => run(path),
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("Failed to start the Tokio runtime: {e}"))
}

fn check_config(path: &str) -> Result<(), String> {
    let configuration = program::load_configuration(path)?;
    // Building the objects catches what the types cannot (header names, addresses, …).
    runtime()?.block_on(async move { program::Program::from_configuration(configuration) })?;
    println!("Configuration {path} is valid");
    Ok(())
}

fn expand(args: &[String]) -> Result<(), String> {
    // Progress on standard error only: logPaths are the service's.
    logging::init(&[])?;
    let arguments = bb_container_expander::cli::expand::ExpandArguments::parse(args)?;
    let all_ok = runtime()?.block_on(bb_container_expander::cli::expand::run(arguments))?;
    if all_ok {
        Ok(())
    } else {
        Err("Some images could not be expanded".into())
    }
}

fn run(path: &str) -> Result<(), String> {
    let configuration = program::load_configuration(path)?;
    logging::init(&configuration.global.log_paths)?;
    runtime()?.block_on(async move {
        let program = program::Program::from_configuration(configuration)?;
        let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            program::termination_signal().await;
            let _ = shutdown_tx.send(true);
        });
        program.serve(Default::default(), shutdown_rx).await
    })
}
