//! `bb-container-expander expand [--config FILE] [--platform OS/ARCH[/VARIANT]]
//! [--instance-name NAME] [--materialize DIR] IMAGE...`
//!
//! Expands each image into the CAS and prints one JSON object per image and line:
//! `image`, `manifestDigest`, `rootDirectoryDigest` (`{"hash","sizeBytes"}`), statistics
//! and seconds per step, or `error` (`{"code","message"}`). Exits non-zero if any image
//! failed. Without `--config`, the CAS and Action Cache are in memory (`memory: {}`,
//! 4 GiB each) and any registry may be contacted; with it, the configuration's
//! `blobstore` and `containerImages` are used, exactly as the service would. Progress
//! is logged to stderr.

use crate::blobstore::configuration::{
    new_action_cache_from_configuration, new_content_addressable_storage_from_configuration,
};
use crate::blobstore::{
    ActionCache, ContentAddressableStorage, Instance, MemoryActionCache,
    MemoryContentAddressableStorage,
};
use crate::config::blobstore::DEFAULT_MEMORY_MAXIMUM_SIZE_BYTES;
use crate::config::container_images::ContainerImagesConfiguration;
use crate::config::DEFAULT_MAXIMUM_MESSAGE_SIZE_BYTES;
use crate::digest::DigestFunction;
use crate::image::{new_image_expander_from_configuration, ExpandedImage};
use crate::registry::configuration::new_platform_from_configuration;
use crate::registry::Platform;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Parsed command line of `expand`.
#[derive(Debug, Default)]
pub struct ExpandArguments {
    pub config: Option<String>,
    pub platform: Option<String>,
    pub instance_name: String,
    pub materialize: Option<PathBuf>,
    pub images: Vec<String>,
}

pub const USAGE: &str = "bb-container-expander expand [--config FILE] [--platform OS/ARCH[/VARIANT]] [--instance-name NAME] [--materialize DIR] IMAGE...";

impl ExpandArguments {
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut parsed = Self::default();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value\nUsage: {USAGE}"))
            };
            match arg.as_str() {
                "--config" => parsed.config = Some(value("--config")?),
                "--platform" => parsed.platform = Some(value("--platform")?),
                "--instance-name" => parsed.instance_name = value("--instance-name")?,
                "--materialize" => parsed.materialize = Some(value("--materialize")?.into()),
                flag if flag.starts_with("--") => {
                    return Err(format!("Unknown flag {flag}\nUsage: {USAGE}"))
                }
                image => parsed.images.push(image.to_string()),
            }
        }
        if parsed.images.is_empty() {
            return Err(format!("No image given\nUsage: {USAGE}"));
        }
        if parsed.materialize.is_some() && parsed.images.len() != 1 {
            return Err("--materialize takes exactly one image".into());
        }
        Ok(parsed)
    }
}

fn parse_platform(text: &str) -> Result<Platform, String> {
    let parts: Vec<&str> = text.split('/').collect();
    match parts.as_slice() {
        [os, arch] => Ok(Platform::new(os, arch, "")),
        [os, arch, variant] => Ok(Platform::new(os, arch, variant)),
        _ => Err(format!(
            "Invalid platform {text:?}: expected OS/ARCH[/VARIANT]"
        )),
    }
}

/// Runs `expand`; returns whether every image succeeded.
pub async fn run(args: ExpandArguments) -> Result<bool, String> {
    let (cas, ac, images_config, maximum_message_size): (
        Arc<dyn ContentAddressableStorage>,
        Arc<dyn ActionCache>,
        ContainerImagesConfiguration,
        usize,
    ) = match &args.config {
        Some(path) => {
            let config = crate::program::load_configuration(path)?;
            let size = config.maximum_message_size_bytes as usize;
            (
                new_content_addressable_storage_from_configuration(
                    &config.blobstore.content_addressable_storage,
                    size,
                )?,
                new_action_cache_from_configuration(&config.blobstore.action_cache)?,
                config.container_images,
                size,
            )
        }
        None => (
            // `memory: {}`, as configs/local.jsonnet.
            Arc::new(MemoryContentAddressableStorage::new(
                DEFAULT_MEMORY_MAXIMUM_SIZE_BYTES,
            )),
            Arc::new(MemoryActionCache::new(DEFAULT_MEMORY_MAXIMUM_SIZE_BYTES)),
            ContainerImagesConfiguration {
                allow_any_registry: true,
                allow_private_addresses: true,
                ..Default::default()
            },
            DEFAULT_MAXIMUM_MESSAGE_SIZE_BYTES as usize,
        ),
    };
    let platform = match &args.platform {
        Some(p) => parse_platform(p)?,
        None => new_platform_from_configuration(&images_config.default_platform),
    };
    let expander = new_image_expander_from_configuration(
        &images_config,
        cas.clone(),
        ac,
        maximum_message_size,
        None,
    )?;
    let instance = Instance::new(args.instance_name.clone(), DigestFunction::Sha256);
    let mut all_ok = true;
    for image in &args.images {
        let started = Instant::now();
        let mut result = expander.expand(&instance, image, &platform).await;
        if let (Ok(expanded), Some(dir)) = (&result, &args.materialize) {
            // A failure to write the tree is this image's failure: an error line too.
            let written = crate::cli::materialize::materialize(
                &*cas,
                &instance,
                &expanded.root_directory_digest,
                dir,
            )
            .await;
            if let Err(status) = written {
                result = Err(crate::status::wrap(
                    status,
                    format!("Failed to materialize {image} in {}", dir.display()),
                ));
            }
        }
        let line = match result {
            Ok(expanded) => success_json(image, &expanded, started.elapsed().as_secs_f64()),
            Err(status) => {
                all_ok = false;
                json!({
                    "image": image,
                    "error": { "code": format!("{:?}", status.code()), "message": status.message() },
                })
            }
        };
        println!("{line}");
    }
    Ok(all_ok)
}

fn success_json(image: &str, e: &ExpandedImage, total: f64) -> serde_json::Value {
    let s = &e.statistics;
    json!({
        "image": image,
        "reference": e.reference.to_string(),
        "resolvedDigest": e.resolved_digest,
        "manifestDigest": e.manifest_digest,
        "rootDirectoryDigest": {
            "hash": e.root_directory_digest.hash,
            "sizeBytes": e.root_directory_digest.size_bytes,
        },
        "stats": {
            "files": s.files,
            "directories": s.directories,
            "symlinks": s.symlinks,
            "bytes": s.file_bytes,
            "layers": s.layers,
            "skippedSpecialFiles": s.skipped_special_files,
            "layersIngested": e.layers_ingested,
            "fromCache": e.from_cache,
        },
        "seconds": {
            "resolve": e.timings.resolve,
            "fetchMetadata": e.timings.fetch_metadata,
            "ingest": e.timings.ingest,
            "apply": e.timings.apply,
            "upload": e.timings.upload,
            "total": total,
        },
    })
}
