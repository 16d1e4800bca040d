//! Checks over a merged tree in the CAS, loading only the directories on the paths
//! checked (docs/design/directories.md#working-directory, #output-paths,
//! #running-in-a-chroot). Whether a check is enforced is the caller's decision.
//!
//! - [`check_working_directory`]: the (mount-adjusted) working directory names a real
//!   directory; it is never created implicitly.
//! - [`check_output_paths`]: the worker can create every output path's parents, and no
//!   output path is already image content.
//! - [`check_usr_bin_env`]: `usr/bin/env` resolves to an executable file, as
//!   bb_runner's `chroot_into_input_root` needs;
//! - [`check_program`]: the program a Command runs (`arguments[0]`) resolves to an
//!   executable file: an absolute path from the root, a relative path with a `/` from
//!   the working directory, a bare name through the directories of `PATH`.
//!
//! The directories a merge wrote must be readable through the source given here
//! (uploaded to the CAS, or held by a caching source) before these checks run.

use super::directory_source::DirectorySource;
use super::remote_directory::{client_path_parts, directory_digest, find, Entry};
use crate::proto::reapi;
use crate::tree::tree_error;
use crate::tree::NodeKind;
use std::collections::HashMap;
use std::sync::Arc;
use tonic::Status;

/// Linux's limit on symlinks in one path resolution (`MAXSYMLINKS`), which applies when
/// the runner executes `/usr/bin/env` inside the chroot.
const EXEC_MAX_SYMLINKS: usize = 40;

/// Reads directories once per check.
struct Loader<'a> {
    source: &'a dyn DirectorySource,
    cache: HashMap<reapi::Digest, Arc<reapi::Directory>>,
}

impl<'a> Loader<'a> {
    fn new(source: &'a dyn DirectorySource) -> Self {
        Self {
            source,
            cache: HashMap::new(),
        }
    }

    async fn get(&mut self, digest: &reapi::Digest) -> Result<Arc<reapi::Directory>, Status> {
        if let Some(d) = self.cache.get(digest) {
            return Ok(d.clone());
        }
        let d = self.source.get_directory(digest).await?;
        self.cache.insert(digest.clone(), d.clone());
        Ok(d)
    }
}

/// The outcome of walking a path without following symlinks.
enum Walk {
    /// The path exists (`None`: it is the root).
    Found(Option<Entry>),
    /// Part `at` does not exist.
    Missing { at: usize },
    /// Part `at` is a file or symlink, with more parts below it.
    Blocked { at: usize, kind: NodeKind },
}

async fn walk(
    loader: &mut Loader<'_>,
    root: &reapi::Digest,
    parts: &[&str],
) -> Result<Walk, Status> {
    let mut directory = root.clone();
    for (at, part) in parts.iter().enumerate() {
        let message = loader.get(&directory).await?;
        let last = at + 1 == parts.len();
        match find(&message, part) {
            None => return Ok(Walk::Missing { at }),
            Some(entry) if last => return Ok(Walk::Found(Some(entry))),
            Some(Entry::Directory(d)) => {
                directory = directory_digest(&d, &parts[..=at].join("/"))?.clone();
            }
            Some(other) => {
                return Ok(Walk::Blocked {
                    at,
                    kind: other.kind(),
                })
            }
        }
    }
    Ok(Walk::Found(None))
}

/// `working_directory` (relative to the merged root, already joined with the mount
/// path) must be a directory of the merged tree, reached through directories only. Errors: `WorkingDirectoryNotFound`, `WorkingDirectoryNotADirectory`.
pub async fn check_working_directory(
    source: &dyn DirectorySource,
    merged_root: &reapi::Digest,
    working_directory: &str,
) -> Result<(), Status> {
    let parts = client_path_parts(working_directory, "working directory")?;
    let mut loader = Loader::new(source);
    let not_a_directory = |at: usize, kind: NodeKind| {
        tree_error(
            "WorkingDirectoryNotADirectory",
            format!(
                "working directory {working_directory:?}: {:?} is a {kind} in the input root",
                parts[..=at].join("/")
            ),
        )
    };
    match walk(&mut loader, merged_root, &parts).await? {
        Walk::Found(None | Some(Entry::Directory(_))) => Ok(()),
        Walk::Found(Some(other)) => Err(not_a_directory(parts.len() - 1, other.kind())),
        Walk::Blocked { at, kind } => Err(not_a_directory(at, kind)),
        Walk::Missing { at } => Err(tree_error(
            "WorkingDirectoryNotFound",
            format!(
                "working directory {working_directory:?}: {:?} does not exist in the input root",
                parts[..=at].join("/")
            ),
        )),
    }
}

/// For each output path (relative to `working_directory`, which is relative to the
/// merged root):
/// - a parent that is a symlink or file in the merged tree, or the path itself being a
///   symlink or file of the image → `OutputPathBlockedByImage` (the worker creates the
///   parents with `Mkdir` and cannot go through a symlink);
/// - the path being a directory of the image → `OutputPathExistsInImage` (a decision:
///   the worker would otherwise report image content as the action's output).
///
/// Content of the input root at an output path is not the image's business and is
/// accepted.
pub async fn check_output_paths(
    source: &dyn DirectorySource,
    image_root: &reapi::Digest,
    merged_root: &reapi::Digest,
    working_directory: &str,
    output_paths: &[String],
) -> Result<(), Status> {
    let mut loader = Loader::new(source);
    for output_path in output_paths {
        let full = format!("{working_directory}/{output_path}");
        let parts = client_path_parts(&full, "output path")?;
        let blocked = |path: &[&str], kind: NodeKind, tree: &str| {
            tree_error(
                "OutputPathBlockedByImage",
                format!(
                    "output path {output_path:?}: {:?} is a {kind} in the {tree}, so the worker cannot create the output there",
                    path.join("/")
                ),
            )
        };
        if let Some((_, parents)) = parts.split_last() {
            match walk(&mut loader, merged_root, parents).await? {
                Walk::Found(Some(entry)) if entry.kind() != NodeKind::Directory => {
                    return Err(blocked(parents, entry.kind(), "merged input root"))
                }
                Walk::Blocked { at, kind } => {
                    return Err(blocked(&parents[..=at], kind, "merged input root"))
                }
                _ => {}
            }
        }
        match walk(&mut loader, image_root, &parts).await? {
            Walk::Found(entry) => {
                let kind = entry.map_or(NodeKind::Directory, |e| e.kind());
                if kind != NodeKind::Directory {
                    return Err(blocked(&parts, kind, "image"));
                }
                return Err(tree_error(
                    "OutputPathExistsInImage",
                    format!(
                        "output path {output_path:?}: {:?} is already a directory of the image",
                        if parts.is_empty() {
                            ".".to_owned()
                        } else {
                            parts.join("/")
                        }
                    ),
                ));
            }
            Walk::Missing { .. } | Walk::Blocked { .. } => {}
        }
    }
    Ok(())
}

/// `usr/bin/env` must resolve, following symlinks inside the root (e.g.
/// usrmerge `bin -> usr/bin`, absolute targets), to an executable regular file. Else
/// FAILED_PRECONDITION `MissingUsrBinEnv`.
pub async fn check_usr_bin_env(
    source: &dyn DirectorySource,
    root: &reapi::Digest,
) -> Result<(), Status> {
    let problem = match resolve_following(&mut Loader::new(source), root, "usr/bin/env").await? {
        Resolved::File(f) if f.is_executable => return Ok(()),
        Resolved::File(_) => "is a file that is not executable",
        Resolved::Directory => "is a directory",
        Resolved::Missing => "does not exist",
        Resolved::Loop => "resolves through too many symlinks",
    };
    Err(Status::failed_precondition(format!(
        "MissingUsrBinEnv: \"usr/bin/env\" {problem} in the merged input root; bb_runner with \
         chroot_into_input_root runs every command through /usr/bin/env (docs/design/directories.md#running-in-a-chroot)"
    )))
}

/// `PATH` when the environment has none: what `execvp` (and so `env`) searches then
/// (glibc's `confstr(_CS_PATH)`).
pub const DEFAULT_SEARCH_PATH: &str = "/bin:/usr/bin";

/// `program` (a Command's `arguments[0]`) must resolve to an executable file of the
/// merged tree `root`, following symlinks inside it, the way `execvp` inside a chroot
/// at `root` with working directory `working_directory` (relative to the root) and the
/// given `PATH` (`None`: [`DEFAULT_SEARCH_PATH`]) finds it:
/// - `/usr/bin/tool`: from the root;
/// - `bazel-out/k8/bin/tool`, `./tool`: from the working directory;
/// - `tool`: the first directory of `PATH` holding an executable `tool`; empty and
///   relative entries are taken from the working directory.
///
/// Else FAILED_PRECONDITION `ProgramNotFound` naming the path (and `PATH`). An empty
/// program is left to the worker to refuse.
pub async fn check_program(
    source: &dyn DirectorySource,
    root: &reapi::Digest,
    working_directory: &str,
    program: &str,
    path_variable: Option<&str>,
) -> Result<(), Status> {
    if program.is_empty() {
        return Ok(());
    }
    let mut loader = Loader::new(source);
    let from_working_directory = |path: &str| {
        if working_directory.is_empty() {
            path.to_owned()
        } else {
            format!("{working_directory}/{path}")
        }
    };
    let not_found = |detail: String| {
        Status::failed_precondition(format!(
            "ProgramNotFound: {detail} in the merged input root"
        ))
    };
    if program.contains('/') {
        let (path, shown) = match program.strip_prefix('/') {
            Some(absolute) => (absolute.to_owned(), format!("{program:?}")),
            None => (
                from_working_directory(program),
                format!("{program:?} (from working directory {working_directory:?})"),
            ),
        };
        let problem = match resolve_following(&mut loader, root, &path).await? {
            Resolved::File(f) if f.is_executable => return Ok(()),
            Resolved::File(_) => "is a file that is not executable",
            Resolved::Directory => "is a directory",
            Resolved::Missing => "does not exist",
            Resolved::Loop => "resolves through too many symlinks",
        };
        return Err(not_found(format!("program {shown} {problem}")));
    }
    let search = path_variable.unwrap_or(DEFAULT_SEARCH_PATH);
    for directory in search.split(':') {
        let path = match directory.strip_prefix('/') {
            Some(absolute) => format!("{absolute}/{program}"),
            None => from_working_directory(&format!("{directory}/{program}")),
        };
        if let Resolved::File(f) = resolve_following(&mut loader, root, &path).await? {
            if f.is_executable {
                return Ok(());
            }
        }
    }
    let origin = if path_variable.is_some() {
        "PATH"
    } else {
        "the default PATH (the action sets none)"
    };
    Err(not_found(format!(
        "program {program:?} is not an executable file in any directory of {origin} {search:?}"
    )))
}

/// What a path of a tree is, following symlinks as [`check_program`] does.
pub(crate) enum DirectoryLookup {
    Directory,
    Missing,
    /// Something else: what it is, for messages ("is a regular file", …).
    Other(&'static str),
}

/// Whether `path` (relative to `root`) resolves to a directory.
pub(crate) async fn is_directory_following(
    source: &dyn DirectorySource,
    root: &reapi::Digest,
    path: &str,
) -> Result<DirectoryLookup, Status> {
    Ok(
        match resolve_following(&mut Loader::new(source), root, path).await? {
            Resolved::Directory => DirectoryLookup::Directory,
            Resolved::Missing => DirectoryLookup::Missing,
            Resolved::File(_) => DirectoryLookup::Other("is a regular file"),
            Resolved::Loop => DirectoryLookup::Other("resolves through too many symlinks"),
        },
    )
}

enum Resolved {
    File(reapi::FileNode),
    Directory,
    Missing,
    Loop,
}

/// Resolves `path` from the root the way `execve` inside a chroot would: every
/// symlink, the last part's included, is followed; absolute targets restart at the
/// root and `..` at the root stays there.
async fn resolve_following(
    loader: &mut Loader<'_>,
    root: &reapi::Digest,
    path: &str,
) -> Result<Resolved, Status> {
    let mut directories = vec![loader.get(root).await?];
    let mut pending: Vec<String> = path.rsplit('/').map(str::to_owned).collect();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "" | "." => {}
            ".." => {
                if directories.len() > 1 {
                    directories.pop();
                }
            }
            name => {
                let current = directories.last().expect("the root stays");
                match find(current, name) {
                    None => return Ok(Resolved::Missing),
                    Some(Entry::Directory(d)) => {
                        let digest = directory_digest(&d, name)?.clone();
                        directories.push(loader.get(&digest).await?);
                    }
                    Some(Entry::Symlink(s)) => {
                        hops += 1;
                        if hops > EXEC_MAX_SYMLINKS {
                            return Ok(Resolved::Loop);
                        }
                        if s.target.starts_with('/') {
                            directories.truncate(1);
                        }
                        pending.extend(s.target.rsplit('/').map(str::to_owned));
                    }
                    Some(Entry::File(f)) => {
                        return Ok(if pending.is_empty() {
                            Resolved::File(f)
                        } else {
                            Resolved::Missing // ENOTDIR
                        });
                    }
                }
            }
        }
    }
    Ok(Resolved::Directory)
}
