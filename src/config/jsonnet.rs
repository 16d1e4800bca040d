//! Loads a configuration file the way every Buildbarn binary does (bb-storage
//! `util.UnmarshalConfigurationFromFile`): the file is evaluated as Jsonnet, every
//! environment variable of the process is an external variable (`std.extVar('POD_NAME')`),
//! imports resolve relative to the importing file, and `-` reads the file from standard
//! input. The resulting JSON is then decoded into a typed configuration in which unknown
//! fields are errors (see `decode`).

use jrsonnet_evaluator::manifest::JsonFormat;
use jrsonnet_evaluator::trace::{CompactFormat, PathResolver, TraceFormat};
use jrsonnet_evaluator::{FileImportResolver, State};
use std::path::Path;

/// Evaluates the Jsonnet file at `path` (`-` for standard input) to JSON.
pub fn evaluate_file(path: &str) -> Result<serde_json::Value, String> {
    if path == "-" {
        let mut code = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut code)
            .map_err(|e| format!("Failed to read standard input: {e}"))?;
        return evaluate(|state| state.evaluate_snippet("<stdin>", code.as_str()));
    }
    // Read it once ourselves, for an error that names the file when it cannot be read.
    std::fs::read(path).map_err(|e| format!("{e}"))?;
    let absolute = std::path::absolute(Path::new(path)).map_err(|e| format!("{e}"))?;
    evaluate(|state| state.import(absolute.as_path()))
}

/// Evaluates a Jsonnet snippet; imports resolve relative to the working directory.
pub fn evaluate_snippet(name: &str, code: &str) -> Result<serde_json::Value, String> {
    evaluate(|state| state.evaluate_snippet(name, code))
}

fn evaluate(
    run: impl FnOnce(&State) -> jrsonnet_evaluator::Result<jrsonnet_evaluator::Val>,
) -> Result<serde_json::Value, String> {
    let context = jrsonnet_stdlib::ContextInitializer::new(PathResolver::new_cwd_fallback());
    for (name, value) in std::env::vars_os() {
        let (Some(name), Some(value)) = (name.to_str(), value.to_str()) else {
            return Err(format!(
                "Environment variable {:?} is not valid UTF-8",
                name.to_string_lossy()
            ));
        };
        context.add_ext_str(name.into(), value.into());
    }
    let mut builder = State::builder();
    builder
        .import_resolver(FileImportResolver::default())
        .context_initializer(context);
    let state = builder.build();
    let _entered = state.enter();
    let format_error = |e: &jrsonnet_evaluator::Error| {
        let trace = CompactFormat {
            resolver: PathResolver::new_cwd_fallback(),
            max_trace: 20,
            padding: 4,
        };
        format!(
            "Failed to evaluate configuration: {}",
            trace.format(e).unwrap_or_else(|_| e.to_string())
        )
    };
    let value = run(&state).map_err(|e| format_error(&e))?;
    let json = value
        .manifest(JsonFormat::minify())
        .map_err(|e| format_error(&e))?;
    serde_json::from_str(&json).map_err(|e| format!("Failed to evaluate configuration: {e}"))
}

/// Decodes evaluated JSON into a typed configuration. Errors name the field by its path
/// (`grpcServers[0].listenAdresses`), as protojson does.
pub fn decode<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            format!("Failed to unmarshal configuration: {}", e.inner())
        } else {
            format!("Failed to unmarshal configuration: {path}: {}", e.inner())
        }
    })
}

/// Evaluates and decodes the file at `path`, with Buildbarn's error prefix.
pub fn load_file<T: serde::de::DeserializeOwned>(path: &str) -> Result<T, String> {
    let shown = if path == "-" { "standard input" } else { path };
    evaluate_file(path)
        .and_then(decode)
        .map_err(|e| format!("Failed to read configuration from {shown}: {e}"))
}
