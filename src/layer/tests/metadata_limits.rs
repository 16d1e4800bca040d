//! Each metadata limit of `limits.rs`, just under (accepted) and just over (refused with
//! FAILED_PRECONDITION naming the entry and the limit), on every encoding of a name.

use super::*;
use crate::layer::limits::{
    MAXIMUM_COMPONENT_BYTES, MAXIMUM_EXTENSION_RECORD_BYTES, MAXIMUM_PATH_BYTES,
};

/// Ingests with `options` (gzip, to exercise the decompressed stream too) and returns
/// the message of the FAILED_PRECONDITION error, without the layer prefix.
async fn refused_with(options: IngestOptions, tar: &[u8]) -> String {
    let blob = gzip(tar);
    let layer = descriptor(GZIP, &blob, tar);
    let err = ingest_with(
        Arc::new(RecordingCas::new()),
        options,
        &layer,
        chunks(&blob, 4096),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    let prefix = format!("Failed to ingest layer {}: ", layer.digest);
    err.message()
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("no layer prefix: {}", err.message()))
        .to_owned()
}

async fn refused(tar: &[u8]) -> String {
    refused_with(IngestOptions::default(), tar).await
}

/// A path of exactly `length` bytes made of components of at most 255 bytes.
fn path_of(length: usize) -> String {
    let mut path = String::new();
    while path.len() < length {
        if !path.is_empty() {
            path.push('/');
            if path.len() == length {
                path.pop();
                path.push('p');
                break;
            }
        }
        let part = (length - path.len()).min(200);
        path.push_str(&"p".repeat(part));
    }
    assert_eq!(path.len(), length);
    path
}

fn symlink(path: &str, target: &str) -> LayerEntry {
    entry(
        path,
        Kind::Symlink(crate::proto::cache::Symlink {
            target: target.into(),
        }),
    )
}

#[tokio::test]
async fn path_length_in_pax_and_gnu_long_names() {
    let longest = path_of(MAXIMUM_PATH_BYTES);
    let tar = RawTar::default()
        .pax(b'x', &[("path", longest.as_bytes())])
        .file("ignored", b"1")
        .gnu_long(b'L', longest.as_bytes())
        .dir("ignored")
        .finish();
    assert_eq!(
        ingest_ok(&tar).await,
        vec![file_entry(&longest, b"1", false), dir_entry(&longest)]
    );

    let over = path_of(MAXIMUM_PATH_BYTES + 1);
    let shown = format!("{}… (4097 bytes)", &over[..256]);
    let expected = format!(
        "Entry {shown:?}: Limit exceeded: path is 4097 bytes long, while at most 4096 bytes \
         are allowed"
    );
    let pax = RawTar::default()
        .file("first", b"")
        .pax(b'x', &[("path", over.as_bytes())])
        .file("ignored", b"1")
        .finish();
    assert_eq!(refused(&pax).await, expected);
    let gnu = RawTar::default()
        .gnu_long(b'L', over.as_bytes())
        .file("ignored", b"1")
        .finish();
    assert_eq!(refused(&gnu).await, expected);
}

#[tokio::test]
async fn component_length() {
    let longest = "c".repeat(MAXIMUM_COMPONENT_BYTES);
    let tar = RawTar::default()
        .pax(b'x', &[("path", format!("d/{longest}").as_bytes())])
        .file("ignored", b"")
        .finish();
    assert_eq!(
        ingest_ok(&tar).await,
        vec![file_entry(&format!("d/{longest}"), b"", false)]
    );
    let tar = RawTar::default()
        .pax(b'x', &[("path", format!("d/{longest}c").as_bytes())])
        .file("ignored", b"")
        .finish();
    assert_eq!(
        refused(&tar).await,
        format!(
            "Entry {:?}: Limit exceeded: a component of the path is 256 bytes long, while \
             at most 255 bytes are allowed",
            limits::shown(format!("d/{longest}c").as_bytes())
        )
    );
}

#[tokio::test]
async fn link_target_length() {
    let longest = path_of(MAXIMUM_PATH_BYTES);
    let tar = RawTar::default()
        .pax(b'x', &[("linkpath", longest.as_bytes())])
        .entry("pax", b'2', 0o777, "", b"")
        .gnu_long(b'K', longest.as_bytes())
        .entry("gnu", b'2', 0o777, "", b"")
        .file("target", b"")
        .gnu_long(b'K', format!("/{}", &longest[..4095 - 7]).as_bytes())
        .entry("hard", b'1', 0o644, "", b"")
        .finish();
    let entries = ingest_ok(&tar).await;
    assert_eq!(entries[0], symlink("pax", &longest));
    assert_eq!(entries[1], symlink("gnu", &longest));
    assert_eq!(entries.len(), 4);

    let over = "t".repeat(MAXIMUM_PATH_BYTES + 1);
    let message = |what: &str| {
        format!(
            "Entry \"l\": Limit exceeded: {what} is 4097 bytes long, while at most 4096 \
             bytes are allowed"
        )
    };
    let tar = RawTar::default()
        .pax(b'x', &[("linkpath", over.as_bytes())])
        .entry("l", b'2', 0o777, "", b"")
        .finish();
    assert_eq!(refused(&tar).await, message("symlink target"));
    let tar = RawTar::default()
        .gnu_long(b'K', over.as_bytes())
        .entry("l", b'1', 0o644, "", b"")
        .finish();
    assert_eq!(refused(&tar).await, message("hard link target"));
    // A hard link target is a path: its components are limited too.
    let tar = RawTar::default()
        .pax(b'x', &[("linkpath", "c".repeat(256).as_bytes())])
        .entry("l", b'1', 0o644, "", b"")
        .finish();
    assert!(refused(&tar)
        .await
        .ends_with("a component of the hard link target is 256 bytes long, while at most 255 bytes are allowed"));
}

/// A PAX header whose data is exactly `size` bytes: one `comment` record.
fn pax_of_size(tar: &mut RawTar, size: usize) -> &mut RawTar {
    let digits = size.to_string().len();
    let value = "v".repeat(size - digits - " comment=\n".len());
    tar.pax(b'x', &[("comment", value.as_bytes())]);
    let last_header = tar.0.len() - size.div_ceil(512) * 512 - 512;
    assert_eq!(
        tar::Header::from_byte_slice(&tar.0[last_header..last_header + 512])
            .size()
            .unwrap(),
        size as u64
    );
    tar
}

#[tokio::test]
async fn extension_record_size() {
    let limit = MAXIMUM_EXTENSION_RECORD_BYTES as usize;
    let mut tar = RawTar::default();
    pax_of_size(&mut tar, limit).file("big-pax", b"1");
    // All three records of one entry at their limit still fit the per-entry budget.
    let name = path_of(MAXIMUM_PATH_BYTES);
    let mut padded = name.clone().into_bytes();
    padded.resize(limit, 0);
    tar.gnu_long(b'L', &padded).gnu_long(b'K', &padded);
    pax_of_size(&mut tar, limit).entry("ignored", b'2', 0o777, "", b"");
    let entries = ingest_ok(&tar.finish()).await;
    assert_eq!(entries[0], file_entry("big-pax", b"1", false));
    assert_eq!(entries[1], symlink(&name, &name));

    let mut tar = RawTar::default();
    tar.file("first", b"");
    pax_of_size(&mut tar, limit + 1).file("second", b"1");
    assert_eq!(
        refused(&tar.finish()).await,
        "The entry after \"first\": Limit exceeded: PAX extended header of 1048577 bytes, \
         while at most 1048576 bytes are allowed"
    );
    for (typeflag, what) in [(b'L', "GNU long name"), (b'K', "GNU long link")] {
        let tar = RawTar::default()
            .gnu_long(typeflag, &vec![b'n'; limit + 1])
            .file("x", b"1")
            .finish();
        assert_eq!(
            refused(&tar).await,
            format!(
                "The first entry: Limit exceeded: {what} record of 1048577 bytes, while at \
                 most 1048576 bytes are allowed"
            )
        );
    }
}

/// The two layers of issue 12, scaled down: refused at their first entry.
#[tokio::test]
async fn metadata_bombs_are_refused_at_the_first_entry() {
    let huge = "p".repeat(3 << 20);
    let mut tar = RawTar::default();
    for i in 0..3 {
        tar.pax(b'x', &[("path", format!("{i}/{huge}").as_bytes())])
            .file("x", b"");
    }
    assert!(refused(&tar.finish())
        .await
        .starts_with("The first entry: Limit exceeded: PAX extended header of 3145"));
    let mut tar = RawTar::default();
    for i in 0..3 {
        tar.gnu_long(b'K', huge.as_bytes())
            .entry(&format!("l{i}"), b'2', 0o777, "", b"");
    }
    assert!(refused(&tar.finish())
        .await
        .starts_with("The first entry: Limit exceeded: GNU long link record of 3145728 bytes"));
}

#[tokio::test]
async fn layer_totals() {
    let options = |entries: u64, names: u64| IngestOptions {
        metadata_limits: MetadataLimits {
            maximum_layer_entries: entries,
            maximum_layer_name_bytes: names,
            ..Default::default()
        },
        ..Default::default()
    };
    // Three entries, 3 + 5 + (3 + 1) = 12 bytes of names and targets.
    let tar = RawTar::default()
        .dir("dir")
        .file("dir/f", b"x")
        .entry("lnk", b'2', 0o777, "f", b"")
        .finish();
    let layer = descriptor(TAR, &tar, &tar);
    for (entries, names) in [(3, 1 << 20), (1 << 20, 12)] {
        ingest_with(
            Arc::new(RecordingCas::new()),
            options(entries, names),
            &layer,
            chunks(&tar, 1000),
        )
        .await
        .unwrap();
    }
    assert_eq!(
        refused_with(options(2, 1 << 20), &tar).await,
        "Entry \"lnk\": Limit exceeded: the layer has more than 2 entries \
         (containerImages.maximumLayerEntries)"
    );
    assert_eq!(
        refused_with(options(3, 11), &tar).await,
        "Entry \"lnk\": Limit exceeded: the layer has more than 11 bytes of entry names and \
         link targets (containerImages.maximumLayerNameBytes)"
    );
}

#[tokio::test]
async fn sha384_digests() {
    let tar = sample_tar();
    let sha384 = |data: &[u8]| format!("sha384:{}", hex::encode(sha2::Sha384::digest(data)));
    let layer = LayerDescriptor {
        media_type: TAR.into(),
        digest: sha384(&tar),
        size: tar.len() as i64,
        diff_id: sha384(&tar),
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

#[test]
fn image_totals() {
    let changeset = |paths: &[&str]| {
        Arc::new(LayerChangeset {
            entries: paths.iter().map(|p| dir_entry(p)).collect(),
            ..Default::default()
        })
    };
    let changesets = [changeset(&["a", "bb"]), changeset(&["ccc"])];
    let digests = ["sha256:1".to_owned(), "sha256:2".to_owned()];
    let limits = |entries: u64, names: u64| MetadataLimits {
        maximum_image_entries: entries,
        maximum_image_name_bytes: names,
        ..Default::default()
    };
    limits::check_image_totals(&changesets, &digests, &limits(3, 6)).unwrap();
    let err = limits::check_image_totals(&changesets, &digests, &limits(2, 6)).unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        err.message(),
        "Limit exceeded: the image's layers up to layer sha256:2 (position 1) have more \
         than 2 entries (containerImages.maximumImageEntries)"
    );
    let err = limits::check_image_totals(&changesets, &digests, &limits(3, 5)).unwrap_err();
    assert_eq!(
        err.message(),
        "Limit exceeded: the image's layers up to layer sha256:2 (position 1) have more \
         than 5 bytes of entry names and link targets (containerImages.maximumImageNameBytes)"
    );
}
