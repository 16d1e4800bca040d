//! Logs, as Buildbarn binaries write them: every event goes to standard error and is
//! appended to each file of `global.logPaths`. `RUST_LOG` sets the level (`info` when
//! unset or invalid).
//!
//! ANSI colour codes are written only to a standard error that is a terminal (and
//! `NO_COLOR` is unset or empty): a container log, a pipe or a redirected file gets
//! plain text, and so does every file of `logPaths`.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::EnvFilter;

/// Whether standard error gets colours: only a terminal, and only without `NO_COLOR`.
pub(crate) fn stderr_is_coloured() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The files of `global.logPaths`, opened for appending. Each event is formatted
/// first and then written with one call per file, so lines of concurrent events do
/// not interleave.
#[derive(Clone)]
struct LogFiles(Arc<Vec<File>>);

impl LogFiles {
    fn open(paths: &[String]) -> Result<Self, String> {
        let files = paths
            .iter()
            .map(|path| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("Failed to open log file {path}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(Arc::new(files)))
    }
}

impl Write for &LogFiles {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // One unwritable file must not keep the event from the others.
        let mut result = Ok(buf.len());
        for mut file in self.0.iter() {
            if let Err(e) = file.write_all(buf) {
                result = Err(e);
            }
        }
        result
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogFiles {
    type Writer = &'a LogFiles;
    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

/// The subscriber [`init`] installs: `filter` for every output, `stderr` with colours
/// if `stderr_colours`, and the files of `log_paths` (created if missing) without.
pub(crate) fn subscriber<W>(
    filter: EnvFilter,
    stderr: W,
    stderr_colours: bool,
    log_paths: &[String],
) -> Result<impl tracing::Subscriber + Send + Sync + 'static, String>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let files = if log_paths.is_empty() {
        None
    } else {
        Some(
            tracing_subscriber::fmt::layer()
                .with_writer(LogFiles::open(log_paths)?)
                .with_ansi(false),
        )
    };
    Ok(tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(stderr)
                .with_ansi(stderr_colours),
        )
        .with(files))
}

/// Installs the process's logging: standard error, plus the files of `log_paths`.
/// Fails only if a log file cannot be opened.
pub fn init(log_paths: &[String]) -> Result<(), String> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let subscriber = subscriber(filter, std::io::stderr, stderr_is_coloured(), log_paths)?;
    // Only the first installation counts (tests may call this more than once).
    let _ = tracing::subscriber::set_global_default(subscriber);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    /// Standard error, captured.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn log_through(stderr_colours: bool, log_paths: &[String]) -> Vec<u8> {
        let stderr = Captured::default();
        let writer = stderr.clone();
        let subscriber = subscriber(
            EnvFilter::new("info"),
            move || writer.clone(),
            stderr_colours,
            log_paths,
        )
        .unwrap();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(image = "docker://example/a", "Expanded image");
            tracing::warn!("Registry is slow");
        });
        let bytes = stderr.0.lock().clone();
        bytes
    }

    #[test]
    fn log_files_get_every_event_without_colour_codes() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("a.log");
        std::fs::write(&first, "earlier line\n").unwrap();
        let second = dir.path().join("b.log");
        let paths = [
            first.to_str().unwrap().to_string(),
            second.to_str().unwrap().to_string(),
        ];
        // Even when standard error is coloured, the files are not.
        let stderr = log_through(true, &paths);
        assert!(stderr.contains(&0x1b), "stderr was to be coloured");
        for path in [&first, &second] {
            let text = std::fs::read_to_string(path).unwrap();
            assert!(!text.contains('\x1b'), "{text:?}");
            assert!(text.contains("Expanded image"), "{text:?}");
            assert!(text.contains("image=\"docker://example/a\""), "{text:?}");
            assert!(
                text.contains("WARN") && text.contains("Registry is slow"),
                "{text:?}"
            );
        }
        // Appended to, not truncated.
        assert!(std::fs::read_to_string(&first)
            .unwrap()
            .starts_with("earlier line\n"));
    }

    #[test]
    fn stderr_that_is_not_a_terminal_gets_plain_text() {
        let stderr = log_through(false, &[]);
        let text = String::from_utf8(stderr).unwrap();
        assert!(text.contains("Expanded image"), "{text:?}");
        assert!(!text.contains('\x1b'), "{text:?}");
    }

    #[test]
    fn unwritable_log_path_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing/dir/x.log");
        let err = subscriber(
            EnvFilter::new("info"),
            std::io::sink,
            false,
            &[path.to_str().unwrap().to_string()],
        )
        .err()
        .unwrap();
        assert!(err.starts_with("Failed to open log file "), "{err}");
    }
}
