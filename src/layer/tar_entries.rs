//! Reading the tar stream of one layer into changeset entries (docs/design/layers.md#tar-parsing, #names,
//! docs/design/layers.md#whiteouts, #opaque-directories, #hard-links, #executable-bit, #devices-and-fifos), hashing file contents as they stream past and handing
//! them to the uploader.
//!
//! Only `tar`'s entry iterator is used, with `path_bytes()`/`link_name_bytes()`. On top
//! of it this file enforces what `tar` lets through: GNU long names cut at the first NUL,
//! NUL in PAX `path`/`linkpath` rejected, malformed or duplicate PAX records rejected,
//! PAX sparse rejected, `g` headers ignored, regA + trailing `/` read as a directory,
//! header-only types with data rejected, contiguous and unknown types rejected, base-256
//! sizes above 2^63-1 rejected, and every entry's data read to its declared end (a
//! truncated stream is an error). Zero blocks end the archive (`set_ignore_zeros(false)`).

use super::hashing_thread::OffThreadHasher;
use super::limits::{self, LayerTotals, MetadataLimits};
use super::names::{self, EntryName};
use super::readers::{Failure, MetadataBudget, StreamPosition};
use super::small_file_hashing::SmallFileHashing;
use super::uploader::{FileContent, FileUpload};
use crate::digest::DigestFunction;
use crate::proto::cache::{self, layer_entry::Kind, LayerEntry, LayerStatistics};
use crate::proto::reapi;
use bytes::Bytes;
use std::collections::HashSet;
use std::io::{self, Read, Seek, Write};
use std::path::PathBuf;
use tokio::sync::mpsc;
use tonic::Status;

/// Why reading the entries stopped.
pub(crate) enum ReadError {
    /// The layer is bad, or a reader below failed.
    Failed(Status),
    /// The uploader stopped (it failed); its error is the one to report.
    UploaderGone,
}

/// What can go wrong with one entry.
enum EntryError {
    /// The entry is invalid; the message gets the entry name as context.
    Invalid(String),
    /// The entry exceeds a metadata limit (FAILED_PRECONDITION); the message gets the
    /// entry name as context.
    Limit(String),
    /// Reading failed; the [`Failure`] slot usually knows why.
    Io(io::Error),
    /// A local fault (spool file).
    Internal(Status),
    UploaderGone,
}

impl From<io::Error> for EntryError {
    fn from(e: io::Error) -> Self {
        EntryError::Io(e)
    }
}

/// Settings of the entry reader.
pub(crate) struct EntryReaderOptions {
    pub(crate) digest_function: DigestFunction,
    pub(crate) small_file_threshold_bytes: u64,
    pub(crate) spool_directory: Option<PathBuf>,
    pub(crate) metadata_limits: MetadataLimits,
}

/// Collects the changeset entries and statistics of one layer.
pub(crate) struct EntryReader {
    options: EntryReaderOptions,
    uploads: mpsc::Sender<FileUpload>,
    failure: Failure,
    /// Large files handed to the uploader (small ones are deduplicated by
    /// `small_files`; the two cannot share a digest, as their sizes differ).
    uploaded: HashSet<(String, i64)>,
    small_files: Option<SmallFileHashing>,
    /// Entries whose digest `small_files` computes: (entry index, queue position).
    pending_digests: Vec<(usize, usize)>,
    totals: LayerTotals,
    pub(crate) entries: Vec<LayerEntry>,
    pub(crate) statistics: LayerStatistics,
}

/// Size of the buffer large files are copied with.
const COPY_BUFFER_BYTES: usize = 64 * 1024;

impl EntryReader {
    pub(crate) fn new(
        options: EntryReaderOptions,
        uploads: mpsc::Sender<FileUpload>,
        failure: Failure,
    ) -> Self {
        Self {
            small_files: Some(SmallFileHashing::start(
                options.digest_function,
                uploads.clone(),
            )),
            pending_digests: Vec::new(),
            options,
            uploads,
            failure,
            uploaded: HashSet::new(),
            totals: LayerTotals::default(),
            entries: Vec::new(),
            statistics: LayerStatistics::default(),
        }
    }

    /// Reads all entries up to the end-of-archive marker (or the end of the stream, if it
    /// ends on a header boundary). The stream after the marker is left to the caller.
    /// Reads every entry of the archive. `position` tells where the decompressed stream
    /// is, so that an archive that ends right after the last entry's data, without
    /// padding or end-of-archive blocks (as `umoci insert` 0.4.7 writes them), ends
    /// normally, as in Go's archive/tar which docker, containerd and umoci use; a
    /// stream that ends inside a header, inside data or inside the padding is an error.
    pub(crate) fn read_archive<R: Read>(
        &mut self,
        stream: R,
        budget: &MetadataBudget,
        position: &StreamPosition,
    ) -> Result<(), ReadError> {
        let mut archive = tar::Archive::new(stream);
        archive.set_ignore_zeros(false);
        let mut entries = archive
            .entries()
            .map_err(|e| ReadError::Failed(Status::internal(format!("Tar reader: {e}"))))?;
        let mut previous: Option<String> = None;
        // Where the data of the previous entry ended, if the stream was read that far.
        let mut data_end: Option<u64> = None;
        loop {
            budget.start(position.get().0);
            let next = entries.next();
            budget.stop();
            let mut entry = match next {
                None => return Ok(()),
                Some(Ok(entry)) => entry,
                Some(Err(_))
                    if !self.failure.is_set()
                        && data_end.is_some_and(|end| position.get() == (end, true)) =>
                {
                    return Ok(());
                }
                Some(Err(e)) => {
                    let location = match &previous {
                        Some(name) => format!(" after entry {name:?}"),
                        None => String::new(),
                    };
                    let status = self.failure.take_or(|| {
                        Status::invalid_argument(format!("Invalid tar stream{location}: {e}"))
                    });
                    if status.code() != tonic::Code::FailedPrecondition {
                        return Err(ReadError::Failed(status));
                    }
                    // A limit crossed in the headers of an entry not read yet.
                    let entry = match &previous {
                        Some(name) => format!("The entry after {name:?}"),
                        None => "The first entry".to_owned(),
                    };
                    return Err(ReadError::Failed(Status::failed_precondition(format!(
                        "{entry}: {}",
                        status.message()
                    ))));
                }
            };
            // The name is checked before it is copied; `tar` holds at most one record.
            let path_bytes = entry.path_bytes();
            let raw_path = names::cut_at_nul(&path_bytes);
            let shown = limits::shown(raw_path);
            let checked = self
                .totals
                .add_entry(&self.options.metadata_limits)
                .and_then(|()| limits::check_name(raw_path, "path", true));
            if let Err(message) = checked {
                return Err(self.entry_failure(&shown, EntryError::Limit(message)));
            }
            let raw_path = raw_path.to_vec();
            drop(path_bytes);
            let result = self.read_entry(&mut entry, &raw_path).and_then(|consumed| {
                // Read whatever the entry handler did not, so that the next header is
                // found without the metadata budget paying for it, and truncation shows.
                let rest = io::copy(&mut entry, &mut io::sink())?;
                if consumed + rest != entry.size() {
                    return Err(EntryError::Invalid(
                        "Tar stream ends inside the data of the entry".to_owned(),
                    ));
                }
                Ok(())
            });
            if let Err(e) = result {
                return Err(self.entry_failure(&shown, e));
            }
            data_end = (entry.size() > 0).then(|| position.get().0);
            previous = Some(shown);
        }
    }

    fn entry_failure(&self, shown: &str, error: EntryError) -> ReadError {
        let status = match error {
            EntryError::Invalid(message) => {
                Status::invalid_argument(format!("Entry {shown:?}: {message}"))
            }
            EntryError::Limit(message) => {
                Status::failed_precondition(format!("Entry {shown:?}: {message}"))
            }
            EntryError::Io(e) => self.failure.take_or(|| {
                Status::invalid_argument(format!("Entry {shown:?}: Failed to read data: {e}"))
            }),
            EntryError::Internal(status) => crate::status::wrap(status, format!("Entry {shown:?}")),
            EntryError::UploaderGone => return ReadError::UploaderGone,
        };
        ReadError::Failed(status)
    }

    /// Handles one entry and returns the number of data bytes it read.
    fn read_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw_path: &[u8],
    ) -> Result<u64, EntryError> {
        let typeflag = entry.header().as_bytes()[156];
        let kind = match typeflag {
            // PAX global headers are ignored entirely (docs/design/layers.md#tar-parsing).
            b'g' => return Ok(0),
            b'0' | b'S' => TarKind::Regular,
            0 if raw_path.ends_with(b"/") => TarKind::Directory,
            0 => TarKind::Regular,
            b'1' => TarKind::HardLink,
            b'2' => TarKind::Symlink,
            b'3' | b'4' | b'6' => TarKind::Special,
            b'5' => TarKind::Directory,
            b'7' => {
                return Err(EntryError::Invalid(
                    "Unsupported entry type '7' (contiguous file)".to_owned(),
                ))
            }
            other => {
                return Err(EntryError::Invalid(format!(
                    "Unsupported entry type {}",
                    describe_typeflag(other)
                )))
            }
        };
        check_size_field(entry.header())?;
        check_pax_records(entry)?;
        if kind != TarKind::Regular && entry.size() != 0 {
            return Err(EntryError::Invalid(format!(
                "Invalid layer: entry of type {} has {} bytes of data, while it can have none",
                describe_typeflag(typeflag),
                entry.size()
            )));
        }

        let path = names::to_utf8(raw_path, "path").map_err(EntryError::Invalid)?;
        let parts = names::normalize(path).map_err(EntryError::Invalid)?;
        let path = match names::classify(&parts).map_err(EntryError::Invalid)? {
            EntryName::Root | EntryName::Ignored => return Ok(0),
            EntryName::Whiteout(path) => {
                self.statistics.whiteouts += 1;
                self.push(path, Kind::Whiteout(cache::Whiteout {}))?;
                return Ok(0);
            }
            EntryName::Opaque(path) => {
                self.statistics.opaque_directories += 1;
                self.push(path, Kind::Opaque(cache::OpaqueDirectory {}))?;
                return Ok(0);
            }
            EntryName::Path(path) => path,
        };

        match kind {
            TarKind::Regular => {
                let is_executable = is_executable(entry.header())?;
                let size = entry.size();
                let digest = match self.read_file(entry, size)? {
                    FileDigest::Known(digest) => Some(digest),
                    FileDigest::Queued(position) => {
                        self.pending_digests.push((self.entries.len(), position));
                        None
                    }
                };
                self.statistics.regular_files += 1;
                self.statistics.file_bytes += size;
                self.push(
                    path,
                    Kind::File(cache::RegularFile {
                        digest,
                        is_executable,
                    }),
                )?;
                return Ok(size);
            }
            TarKind::Directory => {
                self.statistics.directories += 1;
                self.push(path, Kind::Directory(cache::ExplicitDirectory {}))?;
            }
            TarKind::Symlink => {
                let target = link_name(entry);
                limits::check_name(&target, "symlink target", false).map_err(EntryError::Limit)?;
                if target.is_empty() {
                    return Err(EntryError::Invalid(
                        "Symlink has an empty target".to_owned(),
                    ));
                }
                let target =
                    names::to_utf8(&target, "symlink target").map_err(EntryError::Invalid)?;
                self.statistics.symlinks += 1;
                self.push(
                    path,
                    Kind::Symlink(cache::Symlink {
                        target: target.to_owned(),
                    }),
                )?;
            }
            TarKind::HardLink => {
                let is_executable = is_executable(entry.header())?;
                let target = link_name(entry);
                limits::check_name(&target, "hard link target", true).map_err(EntryError::Limit)?;
                let target =
                    names::to_utf8(&target, "hard link target").map_err(EntryError::Invalid)?;
                let target = names::normalize_link_target(target).map_err(EntryError::Invalid)?;
                self.statistics.hard_links += 1;
                self.push(
                    path,
                    Kind::HardLink(cache::HardLink {
                        target,
                        is_executable,
                    }),
                )?;
            }
            TarKind::Special => {
                self.statistics.skipped_special_files += 1;
                self.push(path, Kind::Special(cache::SpecialFile {}))?;
            }
        }
        Ok(0)
    }

    fn push(&mut self, path: String, kind: Kind) -> Result<(), EntryError> {
        let entry = LayerEntry {
            path,
            kind: Some(kind),
        };
        self.totals
            .add_names(&entry, &self.options.metadata_limits)
            .map_err(EntryError::Limit)?;
        self.entries.push(entry);
        Ok(())
    }

    /// Hashes a regular file's content and sends it to the uploader (once per content).
    /// Small files stay in memory and are hashed by `small_files`; larger ones are
    /// spooled to an anonymous temporary file.
    fn read_file<R: Read>(&mut self, entry: &mut R, size: u64) -> Result<FileDigest, EntryError> {
        if size <= self.options.small_file_threshold_bytes {
            let mut data = Vec::with_capacity(size as usize);
            entry.read_to_end(&mut data)?;
            if data.len() as u64 != size {
                return Err(truncated());
            }
            let hashing = self.small_files.as_mut().ok_or_else(|| {
                EntryError::Internal(Status::internal("Small files were read after the end"))
            })?;
            let position = hashing
                .add(Bytes::from(data))
                .map_err(|_| EntryError::UploaderGone)?;
            return Ok(FileDigest::Queued(position));
        }
        let spool_error = |e: io::Error| {
            EntryError::Internal(crate::status::from_io(e, "Failed to spool file contents"))
        };
        let mut file = match &self.options.spool_directory {
            Some(directory) => tempfile::tempfile_in(directory),
            None => tempfile::tempfile(),
        }
        .map_err(spool_error)?;
        // Hashed on a thread of its own while this one inflates, parses and spools.
        let mut hasher = OffThreadHasher::new(self.options.digest_function.hasher(), size);
        let mut buffer = vec![0u8; COPY_BUFFER_BYTES];
        let mut read = 0u64;
        loop {
            let n = match entry.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            hasher.update(&buffer[..n]);
            file.write_all(&buffer[..n]).map_err(spool_error)?;
            read += n as u64;
        }
        if read != size {
            return Err(truncated());
        }
        file.rewind().map_err(spool_error)?;
        let digest = hasher.finish();
        if self
            .uploaded
            .insert((digest.hash.clone(), digest.size_bytes))
        {
            self.uploads
                .blocking_send(FileUpload {
                    digest: digest.clone(),
                    content: FileContent::Spooled(file),
                })
                .map_err(|_| EntryError::UploaderGone)?;
        }
        Ok(FileDigest::Known(digest))
    }

    /// Fills in the digests of the small files once the archive has been read; every
    /// file has then been handed to the uploader.
    pub(crate) fn finish(&mut self) -> Result<(), ReadError> {
        let Some(hashing) = self.small_files.take() else {
            return Ok(());
        };
        let digests = hashing.finish().map_err(|_| ReadError::UploaderGone)?;
        for (index, position) in self.pending_digests.drain(..) {
            if let Some(Kind::File(file)) = &mut self.entries[index].kind {
                file.digest = Some(digests[position].clone());
            }
        }
        Ok(())
    }
}

/// A regular file's digest, or where it waits in the small-file queue.
enum FileDigest {
    Known(reapi::Digest),
    Queued(usize),
}

fn truncated() -> EntryError {
    EntryError::Invalid("Tar stream ends inside the data of the entry".to_owned())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum TarKind {
    Regular,
    Directory,
    Symlink,
    HardLink,
    Special,
}

fn describe_typeflag(typeflag: u8) -> String {
    if typeflag.is_ascii_graphic() {
        format!("'{}'", typeflag as char)
    } else {
        format!("0x{typeflag:02x}")
    }
}

/// The link target (GNU long link, else PAX `linkpath`, else the header), cut at the
/// first NUL (docs/design/layers.md#tar-parsing, #names). Empty if there is none.
fn link_name<R: Read>(entry: &tar::Entry<'_, R>) -> Vec<u8> {
    entry
        .link_name_bytes()
        .map(|name| names::cut_at_nul(&name).to_vec())
        .unwrap_or_default()
}

/// The executable bit (docs/design/layers.md#executable-bit).
fn is_executable(header: &tar::Header) -> Result<bool, EntryError> {
    let mode = header
        .mode()
        .map_err(|e| EntryError::Invalid(format!("Invalid mode field: {e}")))?;
    Ok(mode & 0o7777 & 0o111 != 0)
}

/// Rejects base-256 size fields that are negative or above 2^63-1, which `tar` would
/// silently truncate (docs/design/layers.md#tar-parsing).
fn check_size_field(header: &tar::Header) -> Result<(), EntryError> {
    let field = &header.as_bytes()[124..136];
    if field[0] & 0x80 == 0 {
        return Ok(());
    }
    if field[0] != 0x80 || field[1..4].iter().any(|&b| b != 0) || field[4] & 0x80 != 0 {
        return Err(EntryError::Invalid(
            "Size field is negative or larger than 2^63-1".to_owned(),
        ));
    }
    Ok(())
}

/// Checks the PAX records that apply to the entry (docs/design/layers.md#names, #tar-parsing): well-formed, no
/// duplicate `path`/`linkpath`/`size` (parsers disagree on which one wins), no NUL in
/// names, a decimal `size` of at most 2^63-1, and no GNU sparse records.
fn check_pax_records<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<(), EntryError> {
    let Some(records) = entry.pax_extensions()? else {
        return Ok(());
    };
    let mut seen: Vec<&[u8]> = Vec::new();
    for record in records {
        let record =
            record.map_err(|_| EntryError::Invalid("Malformed PAX extended header".to_owned()))?;
        let (key, value) = (record.key_bytes(), record.value_bytes());
        if key.starts_with(b"GNU.sparse.") {
            return Err(EntryError::Invalid(
                "Unsupported sparse file: PAX sparse formats are not supported".to_owned(),
            ));
        }
        let key_name = String::from_utf8_lossy(key);
        if matches!(key, b"path" | b"linkpath" | b"size") {
            if seen.contains(&key) {
                return Err(EntryError::Invalid(format!(
                    "Duplicate PAX {key_name} record"
                )));
            }
            seen.push(key);
        }
        match key {
            b"path" | b"linkpath" if value.contains(&0) => {
                return Err(EntryError::Invalid(format!(
                    "NUL byte in PAX {key_name} record"
                )));
            }
            b"size" => {
                let valid = std::str::from_utf8(value)
                    .ok()
                    .filter(|v| !v.is_empty() && v.bytes().all(|c| c.is_ascii_digit()))
                    .and_then(|v| v.parse::<u64>().ok())
                    .is_some_and(|v| v <= i64::MAX as u64);
                if !valid {
                    return Err(EntryError::Invalid(format!(
                        "Invalid PAX size record {:?}",
                        String::from_utf8_lossy(value)
                    )));
                }
            }
            _ => {}
        }
    }
    Ok(())
}
