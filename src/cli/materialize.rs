//! Writes a tree from the CAS to a local directory, as a worker would lay out an input
//! root, so an operator can see exactly what an action gets: directories, files (mode
//! 0755 when executable, else 0644), and symlinks with their targets unchanged.

use crate::blobstore::{get_message, ContentAddressableStorage, Instance};
use crate::proto::reapi;
use futures::StreamExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use tokio::io::AsyncWriteExt;
use tonic::Status;

/// Writes the tree whose root Directory is `root` into `target`, which must be empty or
/// not exist.
pub async fn materialize(
    cas: &dyn ContentAddressableStorage,
    instance: &Instance,
    root: &reapi::Digest,
    target: &Path,
) -> Result<(), Status> {
    let io = |e: std::io::Error, what: &Path| {
        Status::internal(format!("Failed to write {}: {e}", what.display()))
    };
    if target.exists() {
        let mut entries = std::fs::read_dir(target).map_err(|e| io(e, target))?;
        if entries.next().is_some() {
            return Err(Status::failed_precondition(format!(
                "{} is not empty",
                target.display()
            )));
        }
    } else {
        std::fs::create_dir_all(target).map_err(|e| io(e, target))?;
    }
    let mut pending = vec![(root.clone(), target.to_path_buf())];
    while let Some((digest, path)) = pending.pop() {
        let directory: reapi::Directory = get_message(cas, instance, &digest).await?;
        for file in &directory.files {
            let file_path = path.join(&file.name);
            let digest = file.digest.clone().unwrap_or_default();
            let mut out = tokio::fs::File::create(&file_path)
                .await
                .map_err(|e| io(e, &file_path))?;
            if digest.size_bytes > 0 {
                let mut chunks = cas.get_stream(instance, &digest).await?;
                while let Some(chunk) = chunks.next().await {
                    out.write_all(&chunk?)
                        .await
                        .map_err(|e| io(e, &file_path))?;
                }
            }
            out.flush().await.map_err(|e| io(e, &file_path))?;
            let mode = if file.is_executable { 0o755 } else { 0o644 };
            std::fs::set_permissions(&file_path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| io(e, &file_path))?;
        }
        for symlink in &directory.symlinks {
            let link_path = path.join(&symlink.name);
            std::os::unix::fs::symlink(&symlink.target, &link_path)
                .map_err(|e| io(e, &link_path))?;
        }
        for child in &directory.directories {
            let child_path = path.join(&child.name);
            std::fs::create_dir(&child_path).map_err(|e| io(e, &child_path))?;
            pending.push((child.digest.clone().unwrap_or_default(), child_path));
        }
    }
    Ok(())
}
