//! Checks of records read back from the Action Cache against what they claim to be.
//!
//! The Action Cache and the CAS are shared, evicting and sometimes wrong: another
//! program may write under a colliding key, a disk may corrupt an entry, an operator may
//! restore an old backup. A record is therefore never trusted: before use it must
//! describe the very thing it was looked up for. A record that fails a check is treated
//! as a cache miss by `action_caching_source.rs` — rebuilt and overwritten — and never
//! reaches a client as an error or as a wrong tree.
//!
//! What is checked (see docs/design/cache-records.md):
//! - every record of a tree (image or chain of layers): the root Directory digest is
//!   present and well formed for the instance's digest function, every referenced blob
//!   is well formed, and the root is among them (unless it is the empty Directory);
//! - an image record: it was made for the digest the reference resolved to, names a
//!   manifest, and carries the config's runtime settings (a record written before they
//!   were kept lacks them and is rebuilt);
//! - a chain record: it applied exactly the requested layers, in order;
//! - a layer changeset: its DiffID and compressed digest are the layer's, and every file
//!   digest in it is well formed.

use super::chain_source::LayerChain;
use super::image_source::PinnedImage;
use super::layer_source::LayerBlob;
use crate::blobstore::Instance;
use crate::layer::referenced_digests;
use crate::proto::cache::{ImageRecord, LayerChangeset};
use crate::proto::reapi;

/// A request payload that can tell whether a record read back answers it.
pub(crate) trait ValidatesRecord<R> {
    /// `Err` with the reason when `record` does not answer this request.
    fn validate(&self, instance: &Instance, record: &R) -> Result<(), String>;
}

impl ValidatesRecord<ImageRecord> for PinnedImage {
    fn validate(&self, instance: &Instance, record: &ImageRecord) -> Result<(), String> {
        validate_tree(instance, record)?;
        let resolved = self.pinned.digest().unwrap_or_default();
        if record.resolved_digest != resolved {
            return Err(format!(
                "it was made for image digest {:?}, not {resolved:?}",
                record.resolved_digest
            ));
        }
        if record.manifest_digest.is_empty() {
            return Err("it names no manifest".into());
        }
        if record.runtime_config.is_none() {
            return Err(
                "it has no runtime config (Env, WorkingDir, User): it was written by an \
                 older version"
                    .into(),
            );
        }
        Ok(())
    }
}

impl ValidatesRecord<ImageRecord> for LayerChain {
    fn validate(&self, instance: &Instance, record: &ImageRecord) -> Result<(), String> {
        validate_tree(instance, record)?;
        let expected: Vec<&str> = self.layers.iter().map(|l| l.digest.as_str()).collect();
        if record.layer_digests != expected {
            return Err(format!(
                "it applied layers {:?}, not {expected:?}",
                record.layer_digests
            ));
        }
        Ok(())
    }
}

impl ValidatesRecord<LayerChangeset> for LayerBlob {
    fn validate(&self, instance: &Instance, record: &LayerChangeset) -> Result<(), String> {
        if record.diff_id != self.layer.diff_id {
            return Err(format!(
                "its DiffID is {:?}, not the layer's {:?}",
                record.diff_id, self.layer.diff_id
            ));
        }
        if record.compressed_digest != self.layer.digest {
            return Err(format!(
                "it was made from blob {:?}, not {:?}",
                record.compressed_digest, self.layer.digest
            ));
        }
        for digest in referenced_digests(record) {
            well_formed(instance, &digest, "a file digest")?;
        }
        Ok(())
    }
}

/// The checks every tree record passes.
fn validate_tree(instance: &Instance, record: &ImageRecord) -> Result<(), String> {
    let root = record
        .root_directory_digest
        .as_ref()
        .ok_or("it has no root Directory digest")?;
    well_formed(instance, root, "its root Directory digest")?;
    for digest in &record.referenced_blobs {
        well_formed(instance, digest, "a referenced blob")?;
    }
    if root.size_bytes != 0 && !record.referenced_blobs.contains(root) {
        return Err("its root Directory is not among the blobs it refers to".into());
    }
    Ok(())
}

fn well_formed(instance: &Instance, digest: &reapi::Digest, what: &str) -> Result<(), String> {
    instance
        .digest_function
        .validate(digest)
        .map_err(|s| format!("{what} is malformed: {}", s.message()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;
    use crate::layer::LayerDescriptor;
    use crate::proto::cache::{layer_entry, LayerEntry, RegularFile};
    use crate::registry::{Platform, Reference};

    const IMAGE: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const LAYER: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    const DIFF_ID: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";

    fn instance() -> Instance {
        Instance::new("main", DigestFunction::Sha256)
    }

    fn digest(content: &str) -> reapi::Digest {
        DigestFunction::Sha256.digest_of(content.as_bytes())
    }

    fn pinned() -> Reference {
        Reference::parse(&format!("registry.example/app:v1@{IMAGE}")).unwrap()
    }

    fn layer() -> LayerDescriptor {
        LayerDescriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: LAYER.into(),
            size: 10,
            diff_id: DIFF_ID.into(),
        }
    }

    fn image_record() -> ImageRecord {
        let root = digest("root");
        ImageRecord {
            manifest_digest: IMAGE.into(),
            root_directory_digest: Some(root.clone()),
            referenced_blobs: vec![root, digest("file")],
            statistics: None,
            resolved_digest: IMAGE.into(),
            layer_digests: vec![LAYER.into()],
            runtime_config: Some(Default::default()),
        }
    }

    fn changeset() -> LayerChangeset {
        LayerChangeset {
            entries: vec![LayerEntry {
                path: "etc/os-release".into(),
                kind: Some(layer_entry::Kind::File(RegularFile {
                    digest: Some(digest("file")),
                    is_executable: false,
                })),
            }],
            diff_id: DIFF_ID.into(),
            statistics: None,
            compressed_digest: LAYER.into(),
        }
    }

    fn image() -> PinnedImage {
        PinnedImage {
            pinned: pinned(),
            platform: Platform::new("linux", "amd64", ""),
        }
    }

    fn chain() -> LayerChain {
        LayerChain {
            pinned: pinned(),
            layers: vec![layer()],
        }
    }

    fn blob() -> LayerBlob {
        LayerBlob {
            pinned: pinned(),
            layer: layer(),
        }
    }

    #[test]
    fn records_that_answer_their_request_pass() {
        image().validate(&instance(), &image_record()).unwrap();
        chain().validate(&instance(), &image_record()).unwrap();
        blob().validate(&instance(), &changeset()).unwrap();
        // An image whose root is the empty Directory need not list it.
        let empty = ImageRecord {
            root_directory_digest: Some(DigestFunction::Sha256.empty_digest()),
            referenced_blobs: vec![],
            ..image_record()
        };
        image().validate(&instance(), &empty).unwrap();
    }

    #[test]
    fn tree_records_that_do_not_answer_their_request_are_refused() {
        let cases: Vec<(&str, ImageRecord, &str)> = vec![
            ("empty record", ImageRecord::default(), "no root"),
            (
                "malformed root",
                ImageRecord {
                    root_directory_digest: Some(reapi::Digest {
                        hash: "xyz".into(),
                        size_bytes: 3,
                    }),
                    ..image_record()
                },
                "root Directory digest is malformed",
            ),
            (
                "root not referenced",
                ImageRecord {
                    referenced_blobs: vec![digest("file")],
                    ..image_record()
                },
                "not among the blobs",
            ),
            (
                "malformed referenced blob",
                ImageRecord {
                    referenced_blobs: vec![
                        digest("root"),
                        reapi::Digest {
                            hash: "0".repeat(63),
                            size_bytes: 1,
                        },
                    ],
                    ..image_record()
                },
                "referenced blob is malformed",
            ),
        ];
        for (name, record, reason) in cases {
            for error in [
                image().validate(&instance(), &record).unwrap_err(),
                chain().validate(&instance(), &record).unwrap_err(),
            ] {
                assert!(error.contains(reason), "{name}: {error}");
            }
        }
    }

    #[test]
    fn an_image_record_of_another_image_is_refused() {
        let other = ImageRecord {
            resolved_digest: LAYER.into(),
            ..image_record()
        };
        let error = image().validate(&instance(), &other).unwrap_err();
        assert!(error.contains("made for image digest"), "{error}");
        // A chain record (no manifest, no resolved digest) read as an image record.
        let chain_record = ImageRecord {
            manifest_digest: String::new(),
            resolved_digest: String::new(),
            ..image_record()
        };
        assert!(image().validate(&instance(), &chain_record).is_err());
        let no_manifest = ImageRecord {
            manifest_digest: String::new(),
            ..image_record()
        };
        let error = image().validate(&instance(), &no_manifest).unwrap_err();
        assert!(error.contains("no manifest"), "{error}");
    }

    #[test]
    fn an_image_record_without_runtime_config_is_rebuilt() {
        let old = ImageRecord {
            runtime_config: None,
            ..image_record()
        };
        let error = image().validate(&instance(), &old).unwrap_err();
        assert!(error.contains("no runtime config"), "{error}");
        // Chain records never carry one.
        chain().validate(&instance(), &old).unwrap();
    }

    #[test]
    fn a_chain_record_of_other_layers_is_refused() {
        for layers in [vec![], vec![DIFF_ID.to_string()], vec![LAYER.into(); 2]] {
            let record = ImageRecord {
                layer_digests: layers,
                ..image_record()
            };
            let error = chain().validate(&instance(), &record).unwrap_err();
            assert!(error.contains("applied layers"), "{error}");
        }
    }

    #[test]
    fn a_changeset_of_another_layer_is_refused() {
        let cases: Vec<(LayerChangeset, &str)> = vec![
            (LayerChangeset::default(), "DiffID"),
            (
                LayerChangeset {
                    diff_id: LAYER.into(),
                    ..changeset()
                },
                "DiffID",
            ),
            (
                LayerChangeset {
                    compressed_digest: DIFF_ID.into(),
                    ..changeset()
                },
                "made from blob",
            ),
            (
                LayerChangeset {
                    entries: vec![LayerEntry {
                        path: "f".into(),
                        kind: Some(layer_entry::Kind::File(RegularFile {
                            digest: Some(reapi::Digest {
                                hash: "nothex".into(),
                                size_bytes: 1,
                            }),
                            is_executable: false,
                        })),
                    }],
                    ..changeset()
                },
                "file digest is malformed",
            ),
        ];
        for (record, reason) in cases {
            let error = blob().validate(&instance(), &record).unwrap_err();
            assert!(error.contains(reason), "{error}");
        }
    }
}
