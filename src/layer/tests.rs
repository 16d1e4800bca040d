//! Tests of layer ingestion, on layers synthesised here: tar streams written header by
//! header (so that malformed cases can be expressed), compressed with flate2 or zstd.

use super::*;
use crate::blobstore::MemoryContentAddressableStorage;
use crate::digest::DigestFunction;
use crate::proto::cache::{LayerEntry, LayerStatistics};
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use sha2::Digest as _;
use std::io::Write;
use tonic::Code;

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const DOCKER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

// ---------------------------------------------------------------------------------------
// Building layers.

/// Writes tar streams header by header.
#[derive(Default)]
struct RawTar(Vec<u8>);

fn header(name: &[u8], typeflag: u8, mode: u32, size: u64, link: &[u8]) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    let bytes = h.as_mut_bytes();
    bytes[..name.len()].copy_from_slice(name);
    bytes[156] = typeflag;
    bytes[157..157 + link.len()].copy_from_slice(link);
    h.set_cksum();
    h
}

impl RawTar {
    fn raw(&mut self, header: &tar::Header, data: &[u8]) -> &mut Self {
        self.0.extend_from_slice(header.as_bytes());
        self.0.extend_from_slice(data);
        let padding = (512 - data.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0u8, padding));
        self
    }

    fn entry(&mut self, name: &str, typeflag: u8, mode: u32, link: &str, data: &[u8]) -> &mut Self {
        let h = header(
            name.as_bytes(),
            typeflag,
            mode,
            data.len() as u64,
            link.as_bytes(),
        );
        self.raw(&h, data)
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.entry(name, b'0', 0o644, "", data)
    }

    fn dir(&mut self, name: &str) -> &mut Self {
        self.entry(name, b'5', 0o755, "", b"")
    }

    /// A PAX header of type `typeflag` ('x' or 'g') with these records.
    fn pax(&mut self, typeflag: u8, records: &[(&str, &[u8])]) -> &mut Self {
        let mut data = Vec::new();
        for (key, value) in records {
            let base = key.len() + value.len() + 3;
            let mut length = base + 1;
            while base + length.to_string().len() != length {
                length += 1;
            }
            data.extend_from_slice(format!("{length} {key}=").as_bytes());
            data.extend_from_slice(value);
            data.push(b'\n');
        }
        let h = header(b"PaxHeaders/x", typeflag, 0o644, data.len() as u64, b"");
        self.raw(&h, &data)
    }

    /// A GNU long name (`L`) or long link (`K`) pseudo-entry.
    fn gnu_long(&mut self, typeflag: u8, name: &[u8]) -> &mut Self {
        let mut h = tar::Header::new_gnu();
        h.as_mut_bytes()[..13].copy_from_slice(b"././@LongLink");
        h.set_mode(0o644);
        h.set_size(name.len() as u64);
        h.set_entry_type(tar::EntryType::new(typeflag));
        h.set_cksum();
        self.raw(&h, name)
    }

    fn finish(&self) -> Vec<u8> {
        let mut data = self.0.clone();
        data.extend_from_slice(&[0u8; 1024]);
        data
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(data, 3).unwrap()
}

fn oci_sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

fn descriptor(media_type: &str, blob: &[u8], tar: &[u8]) -> LayerDescriptor {
    LayerDescriptor {
        media_type: media_type.into(),
        digest: oci_sha256(blob),
        size: blob.len() as i64,
        diff_id: oci_sha256(tar),
    }
}

fn chunks(blob: &[u8], chunk_size: usize) -> ChunkStream {
    let chunks: Vec<Result<Bytes, Status>> = blob
        .chunks(chunk_size)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(chunks).boxed()
}

// ---------------------------------------------------------------------------------------
// A CAS that records how blobs were written and can be made to fail.

struct RecordingCas {
    inner: MemoryContentAddressableStorage,
    batches: Mutex<Vec<Vec<Digest>>>,
    streams: Mutex<Vec<Digest>>,
    failure: Option<Status>,
}

impl RecordingCas {
    fn new() -> Self {
        Self {
            inner: MemoryContentAddressableStorage::new(1 << 30),
            batches: Mutex::new(Vec::new()),
            streams: Mutex::new(Vec::new()),
            failure: None,
        }
    }
}

#[async_trait]
impl ContentAddressableStorage for RecordingCas {
    async fn find_missing(
        &self,
        instance: &Instance,
        digests: Vec<Digest>,
    ) -> Result<Vec<Digest>, Status> {
        self.inner.find_missing(instance, digests).await
    }

    async fn get(&self, instance: &Instance, digest: &Digest) -> Result<Bytes, Status> {
        self.inner.get(instance, digest).await
    }

    async fn put(&self, instance: &Instance, digest: &Digest, data: Bytes) -> Result<(), Status> {
        self.inner.put(instance, digest, data).await
    }

    async fn put_batch(
        &self,
        instance: &Instance,
        blobs: Vec<(Digest, Bytes)>,
    ) -> Result<(), Status> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        self.batches
            .lock()
            .push(blobs.iter().map(|(d, _)| d.clone()).collect());
        self.inner.put_batch(instance, blobs).await
    }

    async fn put_stream(
        &self,
        instance: &Instance,
        digest: &Digest,
        chunks: ChunkStream,
    ) -> Result<(), Status> {
        self.streams.lock().push(digest.clone());
        self.inner.put_stream(instance, digest, chunks).await
    }
}

fn instance() -> Instance {
    Instance::new("", DigestFunction::Sha256)
}

async fn ingest_with(
    cas: Arc<RecordingCas>,
    options: IngestOptions,
    layer: &LayerDescriptor,
    blob: ChunkStream,
) -> Result<LayerChangeset, Status> {
    LayerIngester::new(cas, options)
        .ingest(&instance(), layer, blob)
        .await
}

/// Ingests an uncompressed layer.
async fn ingest_tar(tar: &[u8]) -> Result<LayerChangeset, Status> {
    let layer = descriptor(TAR, tar, tar);
    ingest_with(
        Arc::new(RecordingCas::new()),
        IngestOptions::default(),
        &layer,
        chunks(tar, 1000),
    )
    .await
}

async fn ingest_ok(tar: &[u8]) -> Vec<LayerEntry> {
    ingest_tar(tar).await.unwrap().entries
}

/// The message of an error, with the layer prefix checked and removed.
async fn ingest_err(tar: &[u8]) -> String {
    let err = ingest_tar(tar).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    let prefix = format!("Failed to ingest layer {}: ", oci_sha256(tar));
    err.message()
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("no layer prefix: {}", err.message()))
        .to_owned()
}

fn file_entry(path: &str, content: &[u8], is_executable: bool) -> LayerEntry {
    LayerEntry {
        path: path.into(),
        kind: Some(Kind::File(crate::proto::cache::RegularFile {
            digest: Some(DigestFunction::Sha256.digest_of(content)),
            is_executable,
        })),
    }
}

fn entry(path: &str, kind: Kind) -> LayerEntry {
    LayerEntry {
        path: path.into(),
        kind: Some(kind),
    }
}

fn dir_entry(path: &str) -> LayerEntry {
    entry(
        path,
        Kind::Directory(crate::proto::cache::ExplicitDirectory {}),
    )
}

fn sample_tar() -> Vec<u8> {
    RawTar::default()
        .dir("etc/")
        .file("etc/hostname", b"box\n")
        .entry("bin/sh", b'0', 0o755, "", b"#!shell")
        .entry(
            "etc/localtime",
            b'2',
            0o777,
            "../usr/share/zoneinfo/UTC",
            b"",
        )
        .finish()
}

fn sample_entries() -> Vec<LayerEntry> {
    vec![
        dir_entry("etc"),
        file_entry("etc/hostname", b"box\n", false),
        file_entry("bin/sh", b"#!shell", true),
        entry(
            "etc/localtime",
            Kind::Symlink(crate::proto::cache::Symlink {
                target: "../usr/share/zoneinfo/UTC".into(),
            }),
        ),
    ]
}

// ---------------------------------------------------------------------------------------
// Compression and verification (docs/design/layers.md#verification, #compression).

#[tokio::test]
async fn uncompressed_layer_and_contents_in_cas() {
    let tar = sample_tar();
    let cas = Arc::new(RecordingCas::new());
    let layer = descriptor(TAR, &tar, &tar);
    let changeset = ingest_with(
        cas.clone(),
        IngestOptions::default(),
        &layer,
        chunks(&tar, 100),
    )
    .await
    .unwrap();
    assert_eq!(changeset.entries, sample_entries());
    assert_eq!(changeset.diff_id, oci_sha256(&tar));
    assert_eq!(
        changeset.statistics.unwrap(),
        LayerStatistics {
            regular_files: 2,
            directories: 1,
            symlinks: 1,
            file_bytes: 11,
            compressed_bytes: tar.len() as u64,
            uncompressed_bytes: tar.len() as u64,
            ..Default::default()
        }
    );
    for content in [&b"box\n"[..], b"#!shell"] {
        let digest = DigestFunction::Sha256.digest_of(content);
        assert_eq!(&cas.get(&instance(), &digest).await.unwrap()[..], content);
    }
    assert!(cas.streams.lock().is_empty());
    assert_eq!(referenced_digests(&changeset).len(), 2);
}

#[tokio::test]
async fn gzip_with_several_members() {
    let tar = sample_tar();
    let (a, b) = tar.split_at(700);
    let blob = [gzip(a), gzip(b), gzip(b"")].concat();
    let layer = descriptor(GZIP, &blob, &tar);
    let changeset = ingest_with(
        Arc::new(RecordingCas::new()),
        IngestOptions::default(),
        &layer,
        chunks(&blob, 1),
    )
    .await
    .unwrap();
    assert_eq!(changeset.entries, sample_entries());
    assert_eq!(
        changeset.statistics.unwrap().compressed_bytes,
        blob.len() as u64
    );
}

#[tokio::test]
async fn zstd_with_several_frames_and_skippable_frames() {
    let tar = sample_tar();
    let (a, b) = tar.split_at(1000);
    let skippable = [&[0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0][..], b"TOC"].concat();
    // The blob starts with a skippable frame, which sniffing must recognise as zstd.
    let blob = [skippable.clone(), zstd(a), skippable, zstd(b)].concat();
    let layer = descriptor(ZSTD, &blob, &tar);
    let changeset = ingest_with(
        Arc::new(RecordingCas::new()),
        IngestOptions::default(),
        &layer,
        chunks(&blob, 3),
    )
    .await
    .unwrap();
    assert_eq!(changeset.entries, sample_entries());
}

#[tokio::test]
async fn compression_is_sniffed_for_docker_types_but_not_for_oci_tar() {
    let tar = sample_tar();
    let blob = gzip(&tar);
    let layer = descriptor(DOCKER_TAR, &blob, &tar);
    let changeset = ingest_with(
        Arc::new(RecordingCas::new()),
        IngestOptions::default(),
        &layer,
        chunks(&blob, 64),
    )
    .await
    .unwrap();
    assert_eq!(changeset.entries, sample_entries());

    // An uncompressed layer labelled +gzip is read as it is.
    let layer = descriptor(GZIP, &tar, &tar);
    assert!(ingest_with(
        Arc::new(RecordingCas::new()),
        IngestOptions::default(),
        &layer,
        chunks(&tar, 64)
    )
    .await
    .is_ok());

    // A gzip blob labelled as OCI tar is not decompressed, so it is not a tar stream.
    let layer = descriptor(TAR, &blob, &tar);
    let err = ingest_with(
        Arc::new(RecordingCas::new()),
        IngestOptions::default(),
        &layer,
        chunks(&blob, 64),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("Invalid tar stream: "),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn zero_byte_blob_is_an_empty_layer() {
    let layer = descriptor(GZIP, b"", b"");
    assert_eq!(
        layer.diff_id,
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    let changeset = ingest_with(
        Arc::new(RecordingCas::new()),
        IngestOptions::default(),
        &layer,
        chunks(b"", 1),
    )
    .await
    .unwrap();
    assert!(changeset.entries.is_empty());
    assert_eq!(changeset.diff_id, layer.diff_id);
}

async fn ingest_error(layer: &LayerDescriptor, blob: &[u8]) -> Status {
    ingest_with(
        Arc::new(RecordingCas::new()),
        IngestOptions::default(),
        layer,
        chunks(blob, 100),
    )
    .await
    .unwrap_err()
}

#[tokio::test]
async fn size_digest_and_diff_id_mismatches() {
    let tar = sample_tar();
    let blob = gzip(&tar);
    let good = descriptor(GZIP, &blob, &tar);
    let prefix = format!("Failed to ingest layer {}: ", good.digest);

    let err = ingest_error(&good, &blob[..blob.len() - 1]).await;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.message(),
        format!(
            "{prefix}Blob is {} bytes in size, while the descriptor says {} bytes",
            blob.len() - 1,
            blob.len()
        )
    );

    let longer = [blob.clone(), vec![0]].concat();
    let err = ingest_error(&good, &longer).await;
    assert_eq!(
        err.message(),
        format!(
            "{prefix}Blob is larger than the {} bytes the descriptor says",
            blob.len()
        )
    );

    let wrong_digest = LayerDescriptor {
        digest: oci_sha256(b"other"),
        ..good.clone()
    };
    let err = ingest_error(&wrong_digest, &blob).await;
    assert_eq!(err.code(), Code::DataLoss);
    assert_eq!(
        err.message(),
        format!(
            "Failed to ingest layer {0}: Blob has digest {1}, while the descriptor says {0}",
            wrong_digest.digest, good.digest
        )
    );

    let wrong_diff_id = LayerDescriptor {
        diff_id: oci_sha256(b"other"),
        ..good.clone()
    };
    let err = ingest_error(&wrong_diff_id, &blob).await;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.message(),
        format!(
            "{prefix}Layer has DiffID {}, while the image config says {}",
            good.diff_id, wrong_diff_id.diff_id
        )
    );
}

#[tokio::test]
async fn diff_id_covers_data_after_the_end_of_archive() {
    let mut tar = sample_tar();
    tar.extend_from_slice(&[0u8; 4096]);
    tar.extend_from_slice(b"junk after the end marker");
    let blob = gzip(&tar);
    let layer = descriptor(GZIP, &blob, &tar);
    let changeset = ingest_with(
        Arc::new(RecordingCas::new()),
        IngestOptions::default(),
        &layer,
        chunks(&blob, 100),
    )
    .await
    .unwrap();
    assert_eq!(changeset.entries, sample_entries());
    assert_eq!(
        changeset.statistics.unwrap().uncompressed_bytes,
        tar.len() as u64
    );

    // The DiffID of the tar without the trailing data does not match.
    let layer = LayerDescriptor {
        diff_id: oci_sha256(&sample_tar()),
        ..layer
    };
    let err = ingest_error(&layer, &blob).await;
    assert!(
        err.message().contains("Layer has DiffID"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn sha512_digests() {
    let tar = sample_tar();
    let sha512 = |data: &[u8]| format!("sha512:{}", hex::encode(sha2::Sha512::digest(data)));
    let layer = LayerDescriptor {
        media_type: TAR.into(),
        digest: sha512(&tar),
        size: tar.len() as i64,
        diff_id: sha512(&tar),
    };
    let changeset = ingest_with(
        Arc::new(RecordingCas::new()),
        IngestOptions::default(),
        &layer,
        chunks(&tar, 100),
    )
    .await
    .unwrap();
    assert_eq!(changeset.diff_id, layer.diff_id);
}

#[tokio::test]
async fn unsupported_media_type_and_digest_algorithm() {
    let tar = sample_tar();
    let layer = descriptor(
        "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
        &tar,
        &tar,
    );
    let err = ingest_error(&layer, &tar).await;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.message(),
        format!(
            "Failed to ingest layer {}: Unsupported layer media type \
             \"application/vnd.oci.image.layer.v1.tar+gzip+encrypted\"",
            layer.digest
        )
    );

    let layer = LayerDescriptor {
        digest: "md5:d41d8cd98f00b204e9800998ecf8427e".into(),
        ..descriptor(TAR, &tar, &tar)
    };
    let err = ingest_error(&layer, &tar).await;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err
        .message()
        .ends_with("uses unsupported digest algorithm \"md5\""));
}

#[tokio::test]
async fn truncated_gzip_and_zstd() {
    let tar = sample_tar();
    for (media_type, compressed) in [(GZIP, gzip(&tar)), (ZSTD, zstd(&tar))] {
        let cut = &compressed[..compressed.len() - 6];
        // The descriptor matches the truncated blob: only the decompressor can tell.
        let layer = descriptor(media_type, cut, &tar);
        let err = ingest_error(&layer, cut).await;
        assert_eq!(err.code(), Code::InvalidArgument);
        let name = if media_type == GZIP { "gzip" } else { "zstd" };
        assert!(
            err.message().contains(&format!("Corrupt {name} stream: ")),
            "{}",
            err.message()
        );
    }
}

#[tokio::test]
async fn garbage_after_gzip_or_zstd_is_an_error() {
    let tar = sample_tar();
    for (media_type, compressed) in [(GZIP, gzip(&tar)), (ZSTD, zstd(&tar))] {
        let blob = [compressed, b"garbage!".to_vec()].concat();
        let layer = descriptor(media_type, &blob, &tar);
        let err = ingest_error(&layer, &blob).await;
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("Corrupt "), "{}", err.message());
    }
}

#[tokio::test]
async fn truncated_tar_streams() {
    let tar = RawTar::default()
        .file("a", &[b'a'; 600])
        .file("b", b"bb")
        .finish();
    // Inside file data.
    assert_eq!(
        ingest_err(&tar[..512 + 300]).await,
        "Entry \"a\": Tar stream ends inside the data of the entry"
    );
    // Inside the padding after the data.
    assert!(ingest_err(&tar[..512 + 700])
        .await
        .starts_with("Invalid tar stream after entry \"a\": "));
    // Inside a header.
    assert!(ingest_err(&tar[..512 + 1024 + 100])
        .await
        .starts_with("Invalid tar stream after entry \"a\": "));
    // On a header boundary, without end-of-archive blocks: a normal end.
    let entries = ingest_ok(&tar[..512 * 5]).await;
    assert_eq!(entries.len(), 2);
}

#[tokio::test]
async fn errors_of_the_blob_stream_keep_their_code() {
    let tar = sample_tar();
    let layer = descriptor(TAR, &tar, &tar);
    let stream = futures::stream::iter(vec![
        Ok(Bytes::copy_from_slice(&tar[..600])),
        Err(Status::unavailable("Connection reset")),
    ])
    .boxed();
    let err = ingest_with(
        Arc::new(RecordingCas::new()),
        IngestOptions::default(),
        &layer,
        stream,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(
        err.message(),
        format!("Failed to ingest layer {}: Connection reset", layer.digest)
    );
}

#[tokio::test]
async fn size_limits() {
    let tar = RawTar::default()
        .file("zeros", &vec![0u8; 100_000])
        .finish();
    let blob = gzip(&tar);
    assert!(blob.len() > 100 && blob.len() < 10_000);
    let layer = descriptor(GZIP, &blob, &tar);
    let options = IngestOptions {
        maximum_layer_size_bytes: 50_000,
        ..Default::default()
    };
    let err = ingest_with(
        Arc::new(RecordingCas::new()),
        options,
        &layer,
        chunks(&blob, 1000),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err
        .message()
        .ends_with("Decompressed layer is larger than the maximum layer size of 50000 bytes"));

    let options = IngestOptions {
        maximum_layer_size_bytes: 100,
        ..Default::default()
    };
    let err = ingest_with(
        Arc::new(RecordingCas::new()),
        options,
        &layer,
        chunks(&blob, 1000),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().ends_with(&format!(
        "Layer blob is {} bytes in size, which exceeds the maximum layer size of 100 bytes",
        blob.len()
    )));
}

// ---------------------------------------------------------------------------------------
// Tar parsing (docs/design/layers.md#tar-parsing, #names).

#[tokio::test]
async fn regular_file_with_trailing_slash_and_rega() {
    let tar = RawTar::default()
        .entry("olddir/", 0, 0o755, "", b"")
        .entry("oldfile", 0, 0o644, "", b"x")
        .finish();
    assert_eq!(
        ingest_ok(&tar).await,
        vec![dir_entry("olddir"), file_entry("oldfile", b"x", false)]
    );
}

#[tokio::test]
async fn header_only_types_with_data_are_rejected() {
    let tar = RawTar::default()
        .entry("l", b'2', 0o777, "t", b"data")
        .finish();
    assert_eq!(
        ingest_err(&tar).await,
        "Entry \"l\": Invalid layer: entry of type '2' has 4 bytes of data, while it can have none"
    );
    let tar = RawTar::default()
        .entry("d/", 0, 0o755, "", b"data")
        .finish();
    assert!(ingest_err(&tar)
        .await
        .starts_with("Entry \"d/\": Invalid layer: entry of type 0x00"));
    // A PAX size record counts too.
    let tar = RawTar::default()
        .pax(b'x', &[("size", b"512")])
        .entry("d", b'5', 0o755, "", &[0u8; 512])
        .finish();
    assert!(ingest_err(&tar).await.contains("has 512 bytes of data"));
}

#[tokio::test]
async fn contiguous_and_unknown_types_are_rejected() {
    let tar = RawTar::default().entry("c", b'7', 0o644, "", b"x").finish();
    assert_eq!(
        ingest_err(&tar).await,
        "Entry \"c\": Unsupported entry type '7' (contiguous file)"
    );
    let tar = RawTar::default().entry("v", b'V', 0o644, "", b"").finish();
    assert_eq!(
        ingest_err(&tar).await,
        "Entry \"v\": Unsupported entry type 'V'"
    );
}

#[tokio::test]
async fn pax_global_headers_are_ignored() {
    let tar = RawTar::default()
        .pax(b'g', &[("comment", b"git archive"), ("path", b"global")])
        .file("a", b"1")
        .finish();
    assert_eq!(ingest_ok(&tar).await, vec![file_entry("a", b"1", false)]);
}

#[tokio::test]
async fn pax_path_and_linkpath() {
    let long = format!("{}/file", "d".repeat(200));
    let tar = RawTar::default()
        .pax(b'x', &[("path", long.as_bytes()), ("mtime", b"1.5")])
        .file("short", b"1")
        .pax(b'x', &[("linkpath", b"/target/of/link")])
        .entry("l", b'2', 0o777, "", b"")
        .finish();
    let entries = ingest_ok(&tar).await;
    assert_eq!(entries[0], file_entry(&long, b"1", false));
    assert_eq!(
        entries[1],
        entry(
            "l",
            Kind::Symlink(crate::proto::cache::Symlink {
                target: "/target/of/link".into()
            })
        )
    );

    let tar = RawTar::default()
        .pax(b'x', &[("path", b"a\0b")])
        .file("short", b"1")
        .finish();
    assert_eq!(
        ingest_err(&tar).await,
        "Entry \"a\": NUL byte in PAX path record"
    );

    let tar = RawTar::default()
        .pax(b'x', &[("path", b"a"), ("path", b"b")])
        .file("short", b"1")
        .finish();
    assert_eq!(
        ingest_err(&tar).await,
        "Entry \"a\": Duplicate PAX path record"
    );

    let tar = RawTar::default()
        .pax(b'x', &[("size", b"-1")])
        .file("short", b"1")
        .finish();
    assert!(ingest_err(&tar)
        .await
        .contains("Invalid PAX size record \"-1\""));
}

#[tokio::test]
async fn gnu_long_names_are_cut_at_the_first_nul() {
    let long = "x".repeat(150);
    let name = [long.as_bytes(), b"\0garbage\0"].concat();
    let target = [b"/usr/".as_slice(), "y".repeat(150).as_bytes(), b"\0junk"].concat();
    let tar = RawTar::default()
        .gnu_long(b'L', &name)
        .file("ignored", b"1")
        .gnu_long(b'L', b"link\0")
        .gnu_long(b'K', &target)
        .entry("ignored2", b'1', 0o755, "", b"")
        .finish();
    assert_eq!(
        ingest_ok(&tar).await,
        vec![
            file_entry(&long, b"1", false),
            entry(
                "link",
                Kind::HardLink(crate::proto::cache::HardLink {
                    target: format!("usr/{}", "y".repeat(150)),
                    is_executable: true
                })
            ),
        ]
    );
}

#[tokio::test]
async fn non_utf8_names_are_rejected() {
    let tar = RawTar::default().file("caf\u{e9}", b"").finish();
    assert_eq!(ingest_ok(&tar).await.len(), 1);
    let mut raw = RawTar::default();
    raw.raw(&header(b"caf\xe9", b'0', 0o644, 0, b""), b"");
    assert_eq!(
        ingest_err(&raw.finish()).await,
        "Entry \"caf\u{fffd}\": Unrepresentable name: path is not valid UTF-8"
    );
    let mut raw = RawTar::default();
    raw.raw(&header(b"l", b'2', 0o777, 0, b"\xff"), b"");
    assert_eq!(
        ingest_err(&raw.finish()).await,
        "Entry \"l\": Unrepresentable name: symlink target is not valid UTF-8"
    );
}

#[tokio::test]
async fn sparse_files() {
    // PAX sparse formats are rejected.
    let tar = RawTar::default()
        .pax(
            b'x',
            &[("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0")],
        )
        .file("GNUSparseFile.0/s", b"")
        .finish();
    assert!(ingest_err(&tar).await.contains("Unsupported sparse file"));

    // Old GNU sparse entries are expanded.
    let mut h = tar::Header::new_gnu();
    h.as_mut_bytes()[..6].copy_from_slice(b"sparse");
    h.set_mode(0o644);
    h.set_size(512);
    h.set_entry_type(tar::EntryType::GNUSparse);
    let gnu = h.as_gnu_mut().unwrap();
    gnu.sparse[0].set_offset(1024);
    gnu.sparse[0].set_length(512);
    gnu.sparse[1].set_offset(2048);
    gnu.sparse[1].set_length(0);
    gnu.set_real_size(2048);
    h.set_cksum();
    let mut raw = RawTar::default();
    raw.raw(&h, &[b'A'; 512]);
    let tar = raw.finish();
    let expected = [vec![0u8; 1024], vec![b'A'; 512], vec![0u8; 512]].concat();
    assert_eq!(
        ingest_ok(&tar).await,
        vec![file_entry("sparse", &expected, false)]
    );
}

#[tokio::test]
async fn ustar_prefix_and_base256_sizes() {
    let mut h = header(b"file", b'0', 0o644, 2, b"");
    h.as_mut_bytes()[345..354].copy_from_slice(b"usr/share");
    h.set_cksum();
    let mut raw = RawTar::default();
    raw.raw(&h, b"hi");
    assert_eq!(
        ingest_ok(&raw.finish()).await,
        vec![file_entry("usr/share/file", b"hi", false)]
    );

    // A base-256 size that fits is read.
    let mut h = header(b"b256", b'0', 0o644, 0, b"");
    h.as_mut_bytes()[124..136].copy_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3]);
    h.set_cksum();
    let mut raw = RawTar::default();
    raw.raw(&h, b"abc");
    assert_eq!(
        ingest_ok(&raw.finish()).await,
        vec![file_entry("b256", b"abc", false)]
    );

    // One above 2^63-1 is rejected rather than truncated.
    let mut h = header(b"huge", b'0', 0o644, 0, b"");
    h.as_mut_bytes()[124..136].copy_from_slice(&[0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 3]);
    h.set_cksum();
    let mut raw = RawTar::default();
    raw.raw(&h, b"abc");
    assert_eq!(
        ingest_err(&raw.finish()).await,
        "Entry \"huge\": Size field is negative or larger than 2^63-1"
    );
}

#[tokio::test]
async fn symlink_with_empty_target_is_rejected() {
    let tar = RawTar::default().entry("l", b'2', 0o777, "", b"").finish();
    assert_eq!(
        ingest_err(&tar).await,
        "Entry \"l\": Symlink has an empty target"
    );
}

#[tokio::test]
async fn checksum_mismatch_is_rejected() {
    let mut tar = sample_tar();
    tar[0] = b'X';
    assert_eq!(
        ingest_err(&tar).await,
        "Invalid tar stream: archive header checksum mismatch"
    );
}

// ---------------------------------------------------------------------------------------
// Names and whiteouts (docs/design/layers.md#path-normalisation, #symlink-targets, #whiteouts, #opaque-directories).

#[tokio::test]
async fn path_traversal_is_rejected() {
    let tar = RawTar::default().file("etc/../../x", b"").finish();
    assert_eq!(
        ingest_err(&tar).await,
        "Entry \"etc/../../x\": Path traversal"
    );
    let tar = RawTar::default().file("../x", b"").finish();
    assert_eq!(ingest_err(&tar).await, "Entry \"../x\": Path traversal");
}

#[tokio::test]
async fn paths_are_normalised_and_the_root_is_skipped() {
    let tar = RawTar::default()
        .dir("./")
        .dir("/")
        .entry(".", b'2', 0o777, "x", b"")
        .file("/abs//./file", b"1")
        .file("a/../b", b"2")
        .finish();
    assert_eq!(
        ingest_ok(&tar).await,
        vec![
            file_entry("abs/file", b"1", false),
            file_entry("b", b"2", false)
        ]
    );
}

#[tokio::test]
async fn whiteouts_and_opaque_markers() {
    let tar = RawTar::default()
        .file("dne/../.wh.etc", b"")
        .file("usr/.wh.lib", b"")
        .entry("a/b/.wh..wh..opq", b'0', 0o000, "", b"")
        .file("./.wh..wh..opq", b"")
        .finish();
    let changeset = ingest_tar(&tar).await.unwrap();
    assert_eq!(
        changeset.entries,
        vec![
            entry("etc", Kind::Whiteout(crate::proto::cache::Whiteout {})),
            entry("usr/lib", Kind::Whiteout(crate::proto::cache::Whiteout {})),
            entry("a/b", Kind::Opaque(crate::proto::cache::OpaqueDirectory {})),
            // The root's opaque marker has the empty path, which crate::tree accepts.
            entry("", Kind::Opaque(crate::proto::cache::OpaqueDirectory {})),
        ]
    );
    let statistics = changeset.statistics.unwrap();
    assert_eq!(
        (statistics.whiteouts, statistics.opaque_directories),
        (2, 2)
    );
}

#[tokio::test]
async fn invalid_whiteouts() {
    let tar = RawTar::default().file("a/.wh.", b"").finish();
    assert_eq!(
        ingest_err(&tar).await,
        "Entry \"a/.wh.\": Invalid whiteout \".wh.\": it names nothing to remove"
    );
    let tar = RawTar::default().file(".wh.dir/child", b"").finish();
    assert_eq!(
        ingest_err(&tar).await,
        "Entry \".wh.dir/child\": Invalid layer: whiteout name \".wh.dir\" is used as a parent directory"
    );
    let tar = RawTar::default().file("../.wh.x", b"").finish();
    assert_eq!(ingest_err(&tar).await, "Entry \"../.wh.x\": Path traversal");
}

#[tokio::test]
async fn aufs_metadata_is_ignored() {
    let tar = RawTar::default()
        .dir(".wh..wh.plnk/")
        .file(".wh..wh.plnk/123.456", b"hidden")
        .file(".wh..wh.aufs", b"")
        .dir(".wh..wh.orph/")
        .file("kept", b"k")
        .finish();
    assert_eq!(ingest_ok(&tar).await, vec![file_entry("kept", b"k", false)]);
}

// ---------------------------------------------------------------------------------------
// Kinds of entries (docs/design/layers.md#hard-links, #executable-bit, #devices-and-fifos).

#[tokio::test]
async fn hard_links() {
    let tar = RawTar::default()
        .file("a", b"content")
        .entry("b", b'1', 0o755, "/a", b"")
        .entry("c", b'1', 0o644, "./x/../a", b"")
        .finish();
    let changeset = ingest_tar(&tar).await.unwrap();
    let link = |target: &str, is_executable| {
        Kind::HardLink(crate::proto::cache::HardLink {
            target: target.into(),
            is_executable,
        })
    };
    assert_eq!(
        changeset.entries,
        vec![
            file_entry("a", b"content", false),
            entry("b", link("a", true)),
            entry("c", link("a", false)),
        ]
    );
    assert_eq!(changeset.statistics.unwrap().hard_links, 2);

    let tar = RawTar::default()
        .entry("b", b'1', 0o644, "../a", b"")
        .finish();
    assert_eq!(
        ingest_err(&tar).await,
        "Entry \"b\": Hard link target \"../a\": Path traversal"
    );
    let tar = RawTar::default().entry("b", b'1', 0o644, "/", b"").finish();
    assert_eq!(
        ingest_err(&tar).await,
        "Entry \"b\": Hard link target \"/\" is empty or the image root"
    );
}

#[tokio::test]
async fn executable_bits() {
    let tar = RawTar::default()
        .entry("m0644", b'0', 0o644, "", b"x")
        .entry("m0744", b'0', 0o744, "", b"x")
        .entry("m0010", b'0', 0o010, "", b"x")
        .entry("m4755", b'0', 0o4755, "", b"x")
        .entry("m100644", b'0', 0o100644, "", b"x")
        .finish();
    let flags: Vec<bool> = ingest_ok(&tar)
        .await
        .into_iter()
        .map(|e| match e.kind {
            Some(Kind::File(f)) => f.is_executable,
            _ => panic!("not a file"),
        })
        .collect();
    assert_eq!(flags, [false, true, true, true, false]);
}

#[tokio::test]
async fn devices_and_fifos_are_special_files() {
    let tar = RawTar::default()
        .entry("dev/null", b'3', 0o666, "", b"")
        .entry("dev/sda", b'4', 0o660, "", b"")
        .entry("run/fifo", b'6', 0o600, "", b"")
        .finish();
    let changeset = ingest_tar(&tar).await.unwrap();
    let special = |path| entry(path, Kind::Special(crate::proto::cache::SpecialFile {}));
    assert_eq!(
        changeset.entries,
        vec![special("dev/null"), special("dev/sda"), special("run/fifo")]
    );
    assert_eq!(changeset.statistics.unwrap().skipped_special_files, 3);
}

// ---------------------------------------------------------------------------------------
// Uploads.

#[tokio::test]
async fn large_files_are_streamed_and_small_files_batched() {
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let tar = RawTar::default()
        .file("big", &big)
        .file("big-copy", &big)
        .file("small1", b"one")
        .file("small2", b"two")
        .file("small1-copy", b"one")
        .file("empty", b"")
        .finish();
    let blob = zstd(&tar);
    let layer = descriptor(ZSTD, &blob, &tar);
    let cas = Arc::new(RecordingCas::new());
    let spool = tempfile::tempdir().unwrap();
    let options = IngestOptions {
        small_file_threshold_bytes: 1000,
        batch_size_bytes: 4,
        spool_directory: Some(spool.path().to_owned()),
        ..Default::default()
    };
    let changeset = ingest_with(cas.clone(), options, &layer, chunks(&blob, 4096))
        .await
        .unwrap();
    let big_digest = DigestFunction::Sha256.digest_of(&big);
    assert_eq!(*cas.streams.lock(), vec![big_digest.clone()]);
    let f = DigestFunction::Sha256;
    assert_eq!(
        *cas.batches.lock(),
        vec![vec![f.digest_of(b"one")], vec![f.digest_of(b"two")]]
    );
    assert_eq!(
        &cas.get(&instance(), &big_digest).await.unwrap()[..],
        &big[..]
    );
    assert_eq!(
        referenced_digests(&changeset),
        vec![big_digest, f.digest_of(b"one"), f.digest_of(b"two")]
    );
    assert_eq!(changeset.entries.len(), 6);
    assert_eq!(changeset.statistics.unwrap().file_bytes, 400_009);

    // A second ingestion finds everything present and uploads nothing.
    let options = IngestOptions {
        small_file_threshold_bytes: 1000,
        ..Default::default()
    };
    ingest_with(cas.clone(), options, &layer, chunks(&blob, 4096))
        .await
        .unwrap();
    assert_eq!(cas.streams.lock().len(), 1);
    assert_eq!(cas.batches.lock().len(), 2);
}

#[tokio::test]
async fn cas_errors_keep_their_code() {
    let tar = sample_tar();
    let layer = descriptor(TAR, &tar, &tar);
    let cas = Arc::new(RecordingCas {
        failure: Some(Status::unavailable("CAS is down")),
        ..RecordingCas::new()
    });
    let err = ingest_with(cas, IngestOptions::default(), &layer, chunks(&tar, 100))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(
        err.message(),
        format!(
            "Failed to ingest layer {}: Failed to store a batch of 2 files: CAS is down",
            layer.digest
        )
    );
}

#[tokio::test]
async fn many_files_pass_through_the_bounded_channels() {
    let mut raw = RawTar::default();
    for i in 0..500 {
        raw.file(&format!("f/{i}"), format!("content {i}").as_bytes());
    }
    let tar = raw.finish();
    let blob = gzip(&tar);
    let layer = descriptor(GZIP, &blob, &tar);
    let cas = Arc::new(RecordingCas::new());
    let options = IngestOptions {
        batch_size_bytes: 100,
        maximum_concurrent_uploads: 2,
        ..Default::default()
    };
    let changeset = ingest_with(cas.clone(), options, &layer, chunks(&blob, 512))
        .await
        .unwrap();
    assert_eq!(referenced_digests(&changeset).len(), 500);
    let uploaded: usize = cas.batches.lock().iter().map(Vec::len).sum();
    assert_eq!(uploaded, 500);
}

// ---------------------------------------------------------------------------------------
// Metadata limits (limits.rs): just under is accepted, just over is FAILED_PRECONDITION.

mod metadata_limits;
