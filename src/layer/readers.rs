//! The synchronous byte pipeline below the tar parser: the compressed blob as it arrives
//! from the async side ([`BlobReader`]), and the decompressed stream ([`TarStreamReader`]).
//!
//! Both hash what passes through them (blob digest and DiffID, docs/design/layers.md#verification) and enforce
//! the size limits. `std::io::Read` can only carry `io::Error`s, which the decompressors
//! and `tar` may rewrap, so the precise `Status` of the first failure is kept in a shared
//! [`Failure`] slot; the caller reports that one instead of whatever error surfaced.

use super::hashing_thread::OffThreadHasher;
use super::limits;
use super::media_type::Compression;
use super::oci_digest::{OciDigest, OciHasher};
use bytes::Bytes;
use std::cell::{Cell, RefCell};
use std::io::{self, BufRead, Read};
use std::rc::Rc;
use tokio::sync::mpsc;
use tonic::Status;

/// The first failure seen by any reader of one layer.
#[derive(Clone, Default)]
pub(crate) struct Failure(Rc<RefCell<Option<Status>>>);

impl Failure {
    /// Remembers `status` unless a failure was recorded before, and returns an `io::Error`
    /// carrying its message.
    pub(crate) fn record(&self, status: Status) -> io::Error {
        let error = io::Error::other(status.message().to_owned());
        let mut slot = self.0.borrow_mut();
        if slot.is_none() {
            *slot = Some(status);
        }
        error
    }

    pub(crate) fn is_set(&self) -> bool {
        self.0.borrow().is_some()
    }

    /// The recorded failure, if any.
    pub(crate) fn take(&self) -> Option<Status> {
        self.0.borrow_mut().take()
    }

    /// The recorded failure, or `fallback` if there is none.
    pub(crate) fn take_or(&self, fallback: impl FnOnce() -> Status) -> Status {
        self.0.borrow_mut().take().unwrap_or_else(fallback)
    }

    /// An `io::Error` for readers that are asked again after failing.
    fn repeat(&self) -> io::Error {
        match &*self.0.borrow() {
            Some(status) => io::Error::other(status.message().to_owned()),
            None => io::Error::other("Reader failed before"),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum BlobState {
    Reading,
    Eof,
    Failed,
}

/// Reads the compressed blob from a channel fed by the async side, counting and hashing
/// it. At the end of the stream it checks size and digest against the descriptor, so a
/// short download is reported as such and not as a decompression error.
pub(crate) struct BlobReader {
    chunks: mpsc::Receiver<Result<Bytes, Status>>,
    current: Bytes,
    expected_digest: OciDigest,
    expected_size: u64,
    hasher: Option<OffThreadHasher<OciHasher>>,
    received: u64,
    state: BlobState,
    failure: Failure,
}

impl BlobReader {
    pub(crate) fn new(
        chunks: mpsc::Receiver<Result<Bytes, Status>>,
        expected_digest: OciDigest,
        expected_size: u64,
        failure: Failure,
    ) -> Self {
        Self {
            chunks,
            current: Bytes::new(),
            hasher: Some(OffThreadHasher::new(
                expected_digest.hasher(),
                expected_size,
            )),
            expected_digest,
            expected_size,
            received: 0,
            state: BlobState::Reading,
            failure,
        }
    }

    /// Number of blob bytes received so far.
    pub(crate) fn received(&self) -> u64 {
        self.received
    }

    fn fail(&mut self, status: Status) -> io::Error {
        self.state = BlobState::Failed;
        self.failure.record(status)
    }

    /// The next non-empty chunk, or `None` once the blob has ended and was verified.
    fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            match self.state {
                BlobState::Reading => {}
                BlobState::Eof => return Ok(None),
                BlobState::Failed => return Err(self.failure.repeat()),
            }
            match self.chunks.blocking_recv() {
                Some(Ok(chunk)) if chunk.is_empty() => {}
                Some(Ok(chunk)) => {
                    self.received += chunk.len() as u64;
                    if self.received > self.expected_size {
                        return Err(self.fail(Status::invalid_argument(format!(
                            "Blob is larger than the {} bytes the descriptor says",
                            self.expected_size
                        ))));
                    }
                    if let Some(hasher) = &mut self.hasher {
                        hasher.update_shared(&chunk);
                    }
                    return Ok(Some(chunk));
                }
                Some(Err(status)) => return Err(self.fail(status)),
                None => {
                    if self.received != self.expected_size {
                        return Err(self.fail(Status::invalid_argument(format!(
                            "Blob is {} bytes in size, while the descriptor says {} bytes",
                            self.received, self.expected_size
                        ))));
                    }
                    let actual = self.hasher.take().map(OffThreadHasher::finish);
                    if let Some(actual) = actual.filter(|a| *a != self.expected_digest) {
                        // Content that does not match its digest: corrupted in storage or
                        // in transit, as the registry module reports it too.
                        return Err(self.fail(Status::data_loss(format!(
                            "Blob has digest {actual}, while the descriptor says {}",
                            self.expected_digest
                        ))));
                    }
                    self.state = BlobState::Eof;
                    return Ok(None);
                }
            }
        }
    }

    /// The first `n` bytes without consuming them (fewer if the blob is shorter).
    pub(crate) fn peek(&mut self, n: usize) -> io::Result<&[u8]> {
        while self.current.len() < n {
            let Some(chunk) = self.next_chunk()? else {
                break;
            };
            if self.current.is_empty() {
                self.current = chunk;
            } else {
                let mut joined = Vec::with_capacity(self.current.len() + chunk.len());
                joined.extend_from_slice(&self.current);
                joined.extend_from_slice(&chunk);
                self.current = joined.into();
            }
        }
        Ok(&self.current[..n.min(self.current.len())])
    }
}

impl BufRead for BlobReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.current.is_empty() {
            if let Some(chunk) = self.next_chunk()? {
                self.current = chunk;
            }
        }
        Ok(&self.current)
    }

    fn consume(&mut self, amount: usize) {
        let _ = self.current.split_to(amount.min(self.current.len()));
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// What the tar parser may read while it looks for the next entry: headers, padding,
/// and the GNU long name/link and PAX records it buffers in memory. Inactive while entry
/// data is read. Besides the byte budget, the headers of extension records are watched
/// as they stream past, so that a record larger than
/// [`limits::MAXIMUM_EXTENSION_RECORD_BYTES`] is refused before `tar` reads it.
#[derive(Clone, Default)]
pub(crate) struct MetadataBudget(Rc<RefCell<Option<HeaderWatch>>>);

struct HeaderWatch {
    remaining: u64,
    /// Stream offset of the next header block, while headers are still expected.
    next_header: Option<u64>,
    header: Vec<u8>,
}

impl MetadataBudget {
    /// Grants [`METADATA_LIMIT_BYTES`] for finding the next entry, whose first header
    /// block is the first one at or after stream offset `position`.
    pub(crate) fn start(&self, position: u64) {
        *self.0.borrow_mut() = Some(HeaderWatch {
            remaining: METADATA_LIMIT_BYTES,
            next_header: Some(position.div_ceil(512) * 512),
            header: Vec::with_capacity(512),
        });
    }

    pub(crate) fn stop(&self) {
        *self.0.borrow_mut() = None;
    }

    /// Accounts for `data`, read at stream offset `offset`.
    fn observe(&self, offset: u64, data: &[u8]) -> Result<(), Status> {
        let mut slot = self.0.borrow_mut();
        let Some(watch) = slot.as_mut() else {
            return Ok(());
        };
        let n = data.len() as u64;
        if n > watch.remaining {
            return Err(Status::failed_precondition(format!(
                "Limit exceeded: tar headers and extension records of one entry exceed \
                 {METADATA_LIMIT_BYTES} bytes"
            )));
        }
        watch.remaining -= n;
        let end = offset + n;
        while let Some(header_start) = watch.next_header {
            let wanted = header_start + watch.header.len() as u64;
            if wanted >= end {
                break;
            }
            let Some(from) = wanted.checked_sub(offset) else {
                // Not where a header was expected to be: leave it to `tar`.
                watch.next_header = None;
                break;
            };
            let from = from as usize;
            let take = (512 - watch.header.len()).min(data.len() - from);
            watch.header.extend_from_slice(&data[from..from + take]);
            if watch.header.len() < 512 {
                break;
            }
            let typeflag = watch.header[156];
            let size = header_size(&watch.header[124..136]);
            watch.header.clear();
            watch.next_header = None;
            let what = match typeflag {
                b'x' => "PAX extended header",
                b'L' => "GNU long name record",
                b'K' => "GNU long link record",
                _ => break,
            };
            let Some(size) = size else { break };
            if size > limits::MAXIMUM_EXTENSION_RECORD_BYTES {
                return Err(Status::failed_precondition(format!(
                    "Limit exceeded: {what} of {size} bytes, while at most {} bytes are \
                     allowed",
                    limits::MAXIMUM_EXTENSION_RECORD_BYTES
                )));
            }
            watch.next_header = Some(header_start + 512 + size.div_ceil(512) * 512);
        }
        Ok(())
    }
}

/// The size field of a tar header (octal, or base-256 if the high bit is set); `None` if
/// it cannot be read, which `tar` then reports.
fn header_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        if field[0] != 0x80 || field[1..4].iter().any(|&b| b != 0) {
            return None;
        }
        return Some(
            field[4..]
                .iter()
                .fold(0u64, |v, &b| (v << 8) | u64::from(b)),
        );
    }
    let digits = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|b| (b'0'..=b'7').contains(b));
    let mut value = 0u64;
    for digit in digits {
        value = value.checked_mul(8)?.checked_add(u64::from(digit - b'0'))?;
    }
    Some(value)
}

/// The budget granted for finding one entry: up to three extension records (GNU long
/// name, GNU long link, PAX; `tar` refuses a second one of a kind) with their headers and
/// padding, the entry's header, the padding of the previous entry's data, and 64 KiB for
/// the extension blocks of GNU sparse headers.
pub(crate) const METADATA_LIMIT_BYTES: u64 =
    3 * (limits::MAXIMUM_EXTENSION_RECORD_BYTES + 1024) + 1024 + (64 << 10);

/// How far the decompressed stream has been read, and whether its end was seen; shared
/// with the tar parser, which cannot ask the stream itself while `tar` holds it.
pub(crate) type StreamPosition = Rc<Cell<(u64, bool)>>;

/// The decompressed tar stream: hashes everything for the DiffID (including what follows
/// the end-of-archive marker, once drained), enforces the uncompressed size limit and
/// the metadata budget, and turns decompressor errors into INVALID_ARGUMENT.
pub(crate) struct TarStreamReader<R> {
    inner: R,
    compression: Compression,
    hasher: OffThreadHasher<OciHasher>,
    bytes: u64,
    limit: u64,
    metadata_budget: MetadataBudget,
    failure: Failure,
    position: StreamPosition,
}

impl<R: Read> TarStreamReader<R> {
    pub(crate) fn new(
        inner: R,
        compression: Compression,
        hasher: OffThreadHasher<OciHasher>,
        limit: u64,
        metadata_budget: MetadataBudget,
        failure: Failure,
    ) -> Self {
        Self {
            inner,
            compression,
            hasher,
            bytes: 0,
            limit,
            metadata_budget,
            failure,
            position: StreamPosition::default(),
        }
    }

    /// The position of this stream, for the tar parser.
    pub(crate) fn position(&self) -> StreamPosition {
        self.position.clone()
    }

    /// The DiffID and the number of decompressed bytes.
    pub(crate) fn finish(self) -> (OciDigest, u64) {
        (self.hasher.finish(), self.bytes)
    }
}

impl<R: Read> Read for TarStreamReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) if self.failure.is_set() => return Err(e),
            Err(e) => {
                return Err(self.failure.record(Status::invalid_argument(format!(
                    "Corrupt {} stream: {e}",
                    self.compression.name()
                ))))
            }
        };
        self.bytes += n as u64;
        self.position.set((self.bytes, n == 0 && !buf.is_empty()));
        if self.bytes > self.limit {
            return Err(self.failure.record(Status::resource_exhausted(format!(
                "Decompressed layer is larger than the maximum layer size of {} bytes",
                self.limit
            ))));
        }
        if let Err(status) = self
            .metadata_budget
            .observe(self.bytes - n as u64, &buf[..n])
        {
            return Err(self.failure.record(status));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}
