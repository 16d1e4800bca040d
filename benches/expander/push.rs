//! Pushes the benchmark's images (layers streamed from disk) to the loopback registry.

use crate::layers::{BuiltLayer, GZIP_MEDIA_TYPE};
use futures::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use serde_json::json;
use sha2::Digest;

pub struct Pusher {
    host: String,
    client: Client,
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

impl Pusher {
    pub fn new(host: &str) -> Self {
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            use_monolithic_push: true,
            platform_resolver: None,
            ..ClientConfig::default()
        });
        Self {
            host: host.to_owned(),
            client,
        }
    }

    fn reference(&self, repository: &str, tag: &str) -> Reference {
        Reference::with_tag(self.host.clone(), repository.to_owned(), tag.to_owned())
    }

    async fn push_file(&self, reference: &Reference, layer: &BuiltLayer) {
        if self
            .client
            .blob_exists(reference, &layer.digest)
            .await
            .unwrap_or(false)
        {
            return;
        }
        let file = tokio::fs::File::open(&layer.path)
            .await
            .expect("open layer blob");
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20)
            .map(|chunk| chunk.map_err(OciDistributionError::IoError));
        self.client
            .push_blob_stream(reference, stream, &layer.digest, Some(layer.size))
            .await
            .unwrap_or_else(|e| panic!("push layer {}: {e}", layer.digest));
    }

    /// Pushes a linux/amd64 OCI image of `layers` as `repository:tag`; returns
    /// `host/repository:tag` and the manifest digest.
    pub async fn push_image(
        &self,
        repository: &str,
        tag: &str,
        layers: &[&BuiltLayer],
    ) -> (String, String) {
        let reference = self.reference(repository, tag);
        self.client
            .auth(
                &reference,
                &RegistryAuth::Anonymous,
                RegistryOperation::Push,
            )
            .await
            .expect("authenticate for push");
        for layer in layers {
            self.push_file(&reference, layer).await;
        }
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
            "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        }))
        .unwrap();
        let config_digest = sha256(&config);
        if !self
            .client
            .blob_exists(&reference, &config_digest)
            .await
            .unwrap_or(false)
        {
            self.client
                .push_blob(&reference, config.clone(), &config_digest)
                .await
                .expect("push config");
        }
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": layers.iter().map(|l| json!({"mediaType": GZIP_MEDIA_TYPE, "digest": l.digest, "size": l.size})).collect::<Vec<_>>(),
        }))
        .unwrap();
        let manifest_digest = sha256(&manifest);
        self.client
            .push_manifest_raw(
                &reference,
                manifest,
                "application/vnd.oci.image.manifest.v1+json"
                    .parse()
                    .unwrap(),
            )
            .await
            .expect("push manifest");
        (format!("{}/{repository}:{tag}", self.host), manifest_digest)
    }
}
