//! An in-process REAPI storage server for tests: `ContentAddressableStorage`,
//! `ActionCache`, `google.bytestream.ByteStream` and `Capabilities` on 127.0.0.1, on
//! top of any [`ContentAddressableStorage`] and [`ActionCache`].
//!
//! It stands in for bb_storage in tests of the gRPC clients, the Execution proxy and
//! end-to-end flows. Requests are decoded as a REAPI server would: the instance name and
//! digest function of each request reach the stores (the function is inferred from the
//! hash length when a request leaves it unset), digests are validated, and ByteStream
//! resource names are parsed with or without the `{digest_function/}` segment. Like a
//! real server, it serves a fixed set of instance names (only `""` unless the builder
//! says otherwise) and refuses any other with INVALID_ARGUMENT. Every
//! call is recorded so tests can assert which RPCs were used, and errors can be injected
//! per method. Further services (say a fake `Execution`) can share the port through
//! [`BlobstoreServerBuilder::with_routes`].

use super::call_delay::CallDelayLayer;
use crate::blobstore::{
    get_message, verify_blob, ActionCache, ChunkStream, ContentAddressableStorage, Instance,
    MemoryActionCache, MemoryContentAddressableStorage,
};
use crate::digest::DigestFunction;
use crate::grpc::GrpcChannel;
use crate::proto::bytestream::{
    byte_stream_server::{ByteStream, ByteStreamServer},
    QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest, ReadResponse, WriteRequest,
    WriteResponse,
};
use crate::proto::reapi::{
    self, action_cache_server::ActionCacheServer, capabilities_server::CapabilitiesServer,
    content_addressable_storage_server::ContentAddressableStorageServer,
};
use crate::proto::rpc;
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use tonic::service::Routes;
use tonic::{Code, Request, Response, Status, Streaming};

/// Size of the `ReadResponse` chunks the server sends.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// One RPC as the server received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedCall {
    /// The REAPI/ByteStream method name, e.g. `"BatchUpdateBlobs"` or `"Write"`.
    pub method: &'static str,
    pub instance_name: String,
    /// The digest function the request was served with (explicit or inferred); `None`
    /// when the request was rejected before it could be determined, and for
    /// `GetCapabilities`.
    pub digest_function: Option<DigestFunction>,
}

struct State {
    cas: Arc<dyn ContentAddressableStorage>,
    ac: Arc<dyn ActionCache>,
    maximum_received_message_size_bytes: usize,
    instance_names: HashSet<String>,
    calls: Mutex<Vec<RecordedCall>>,
    injected_errors: Mutex<HashMap<String, VecDeque<Status>>>,
}

impl State {
    /// Records a call; returns an injected error if one is pending for the method.
    fn record(
        &self,
        method: &'static str,
        instance_name: &str,
        digest_function: Option<DigestFunction>,
    ) -> Result<(), Status> {
        self.calls.lock().push(RecordedCall {
            method,
            instance_name: instance_name.to_string(),
            digest_function,
        });
        match self
            .injected_errors
            .lock()
            .get_mut(method)
            .and_then(VecDeque::pop_front)
        {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Refuses instance names the server does not serve, as a real one does.
    fn check_instance_name(&self, instance_name: &str) -> Result<(), Status> {
        if self.instance_names.contains(instance_name) {
            Ok(())
        } else {
            Err(Status::invalid_argument(format!(
                "Invalid instance name: {instance_name:?} (this server serves {:?})",
                self.served_instance_names()
            )))
        }
    }

    fn served_instance_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.instance_names.iter().map(String::as_str).collect();
        names.sort();
        names
    }

    /// Resolves the instance of a request, records the call and validates `digests`.
    fn begin(
        &self,
        method: &'static str,
        instance_name: &str,
        digest_function: i32,
        digests: &[&reapi::Digest],
    ) -> Result<Instance, Status> {
        let function = if digest_function == 0 && digests.is_empty() {
            Ok(DigestFunction::Sha256)
        } else {
            DigestFunction::from_request(
                digest_function,
                digests.first().map(|d| d.hash.as_str()).unwrap_or(""),
            )
        };
        let function = match function {
            Ok(function) => function,
            Err(e) => {
                self.record(method, instance_name, None)?;
                return Err(e);
            }
        };
        self.record(method, instance_name, Some(function))?;
        self.check_instance_name(instance_name)?;
        for digest in digests {
            function.validate(digest)?;
        }
        Ok(Instance::new(instance_name, function))
    }
}

/// A running server. It stops when dropped.
pub struct BlobstoreServer {
    address: SocketAddr,
    state: Arc<State>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

/// Options of a [`BlobstoreServer`] before it starts.
pub struct BlobstoreServerBuilder {
    cas: Arc<dyn ContentAddressableStorage>,
    ac: Arc<dyn ActionCache>,
    maximum_received_message_size_bytes: usize,
    instance_names: HashSet<String>,
    routes: Routes,
    call_delay: CallDelayLayer,
}

impl BlobstoreServerBuilder {
    /// Makes every call (routes added with [`Self::with_routes`] included) wait for
    /// `layer`'s delay first. Default: no delay.
    pub fn call_delay(mut self, layer: CallDelayLayer) -> Self {
        self.call_delay = layer;
        self
    }

    /// The largest request message the server accepts, and the
    /// `max_batch_total_size_bytes` it advertises. Defaults to 4 MiB, the limit of
    /// grpc-go and thus of a bb_storage without `maximumReceivedMessageSizeBytes`.
    pub fn maximum_received_message_size_bytes(mut self, bytes: usize) -> Self {
        self.maximum_received_message_size_bytes = bytes;
        self
    }

    /// The instance names served (replacing the default, which is only `""`); requests
    /// for any other are refused with INVALID_ARGUMENT.
    pub fn instance_names<'a>(mut self, names: impl IntoIterator<Item = &'a str>) -> Self {
        self.instance_names = names.into_iter().map(str::to_string).collect();
        self
    }

    /// Serves `routes` (e.g. `Routes::new(ExecutionServer::new(fake))`) on the same port.
    pub fn with_routes(mut self, routes: Routes) -> Self {
        self.routes = routes;
        self
    }

    /// Binds 127.0.0.1 on a free port and starts serving. Panics if binding fails.
    pub async fn start(self) -> BlobstoreServer {
        let limit = self.maximum_received_message_size_bytes;
        let state = Arc::new(State {
            cas: self.cas,
            ac: self.ac,
            maximum_received_message_size_bytes: limit,
            instance_names: self.instance_names,
            calls: Mutex::new(Vec::new()),
            injected_errors: Mutex::new(HashMap::new()),
        });
        let handler = Arc::new(Handler(state.clone()));
        let routes = self
            .routes
            .add_service(
                ContentAddressableStorageServer::from_arc(handler.clone())
                    .max_decoding_message_size(limit),
            )
            .add_service(
                ActionCacheServer::from_arc(handler.clone()).max_decoding_message_size(limit),
            )
            .add_service(
                ByteStreamServer::from_arc(handler.clone()).max_decoding_message_size(limit),
            )
            .add_service(CapabilitiesServer::from_arc(handler).max_decoding_message_size(limit));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("Failed to bind 127.0.0.1:0");
        let address = listener
            .local_addr()
            .expect("Failed to obtain local address");
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let (shutdown, shutdown_signal) = tokio::sync::oneshot::channel::<()>();
        let call_delay = self.call_delay;
        let task = tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .layer(call_delay)
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = shutdown_signal.await;
                })
                .await;
            if let Err(e) = result {
                tracing::warn!("Test blobstore server failed: {e}");
            }
        });
        BlobstoreServer {
            address,
            state,
            shutdown: Some(shutdown),
            task,
        }
    }
}

impl BlobstoreServer {
    /// A server over the given stores, with default options.
    pub async fn start(
        cas: Arc<dyn ContentAddressableStorage>,
        ac: Arc<dyn ActionCache>,
    ) -> BlobstoreServer {
        Self::builder(cas, ac).start().await
    }

    /// A server over fresh in-memory stores of 1 GiB each, serving the instance name `""`.
    pub async fn start_in_memory() -> BlobstoreServer {
        Self::start_in_memory_serving(&[""]).await
    }

    /// A server over fresh in-memory stores of 1 GiB each, serving `instance_names`.
    pub async fn start_in_memory_serving(instance_names: &[&str]) -> BlobstoreServer {
        Self::builder(
            Arc::new(MemoryContentAddressableStorage::new(1 << 30)),
            Arc::new(MemoryActionCache::new(1 << 30)),
        )
        .instance_names(instance_names.iter().copied())
        .start()
        .await
    }

    pub fn builder(
        cas: Arc<dyn ContentAddressableStorage>,
        ac: Arc<dyn ActionCache>,
    ) -> BlobstoreServerBuilder {
        BlobstoreServerBuilder {
            cas,
            ac,
            maximum_received_message_size_bytes: 4 << 20,
            instance_names: HashSet::from([String::new()]),
            routes: Routes::default(),
            call_delay: CallDelayLayer::new(std::time::Duration::ZERO),
        }
    }

    /// The address the server listens on (127.0.0.1:port).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http://127.0.0.1:port`, for clients that take a URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// A new (lazily connecting) channel to the server. Must be called within a Tokio
    /// runtime.
    pub fn channel(&self) -> GrpcChannel {
        crate::grpc::boxed(
            tonic::transport::Channel::from_shared(self.url())
                .expect("Loopback URL is valid")
                .connect_lazy(),
        )
    }

    /// The CAS behind the server.
    pub fn cas(&self) -> Arc<dyn ContentAddressableStorage> {
        self.state.cas.clone()
    }

    /// The AC behind the server.
    pub fn ac(&self) -> Arc<dyn ActionCache> {
        self.state.ac.clone()
    }

    /// How many times `method` (e.g. `"FindMissingBlobs"`, `"Read"`) was called,
    /// including calls that failed.
    pub fn calls(&self, method: &str) -> usize {
        self.state
            .calls
            .lock()
            .iter()
            .filter(|c| c.method == method)
            .count()
    }

    /// Every call so far, in arrival order.
    pub fn call_log(&self) -> Vec<RecordedCall> {
        self.state.calls.lock().clone()
    }

    /// Forgets the calls recorded so far.
    pub fn reset_calls(&self) {
        self.state.calls.lock().clear();
    }

    /// Makes the next call of `method` fail with `error` (queued: calling this twice
    /// fails the next two calls). The call is still recorded.
    pub fn fail_next(&self, method: &str, error: Status) {
        self.state
            .injected_errors
            .lock()
            .entry(method.to_string())
            .or_default()
            .push_back(error);
    }
}

impl Drop for BlobstoreServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        // Graceful shutdown would wait for clients to hang up; tests must not.
        self.task.abort();
    }
}

struct Handler(Arc<State>);

fn status_to_proto(result: Result<(), Status>) -> rpc::Status {
    match result {
        Ok(()) => rpc::Status {
            code: Code::Ok as i32,
            ..Default::default()
        },
        Err(s) => rpc::Status {
            code: s.code() as i32,
            message: s.message().to_string(),
            details: vec![],
        },
    }
}

#[async_trait]
impl reapi::content_addressable_storage_server::ContentAddressableStorage for Handler {
    async fn find_missing_blobs(
        &self,
        request: Request<reapi::FindMissingBlobsRequest>,
    ) -> Result<Response<reapi::FindMissingBlobsResponse>, Status> {
        let request = request.into_inner();
        let digests = request.blob_digests.iter().collect::<Vec<_>>();
        let instance = self.0.begin(
            "FindMissingBlobs",
            &request.instance_name,
            request.digest_function,
            &digests,
        )?;
        let missing = self
            .0
            .cas
            .find_missing(&instance, request.blob_digests)
            .await?;
        Ok(Response::new(reapi::FindMissingBlobsResponse {
            missing_blob_digests: missing,
        }))
    }

    async fn batch_update_blobs(
        &self,
        request: Request<reapi::BatchUpdateBlobsRequest>,
    ) -> Result<Response<reapi::BatchUpdateBlobsResponse>, Status> {
        let request = request.into_inner();
        let digests = request
            .requests
            .iter()
            .map(|r| {
                r.digest
                    .as_ref()
                    .ok_or_else(|| Status::invalid_argument("Request without a digest"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let instance = self.0.begin(
            "BatchUpdateBlobs",
            &request.instance_name,
            request.digest_function,
            &digests,
        )?;
        let mut responses = Vec::with_capacity(request.requests.len());
        for blob in request.requests {
            let digest = blob.digest.unwrap_or_default();
            let result = if blob.compressor != reapi::compressor::Value::Identity as i32 {
                Err(Status::invalid_argument(format!(
                    "Unsupported compressor: {}",
                    blob.compressor
                )))
            } else {
                // A server checks what clients upload; the stores behind it trust their
                // writers (see MemoryContentAddressableStorage).
                match verify_blob(instance.digest_function, &digest, &blob.data) {
                    Ok(()) => {
                        self.0
                            .cas
                            .put(&instance, &digest, Bytes::from(blob.data))
                            .await
                    }
                    Err(status) => Err(status),
                }
            };
            responses.push(reapi::batch_update_blobs_response::Response {
                digest: Some(digest),
                status: Some(status_to_proto(result)),
            });
        }
        Ok(Response::new(reapi::BatchUpdateBlobsResponse { responses }))
    }

    async fn batch_read_blobs(
        &self,
        request: Request<reapi::BatchReadBlobsRequest>,
    ) -> Result<Response<reapi::BatchReadBlobsResponse>, Status> {
        let request = request.into_inner();
        let digests = request.digests.iter().collect::<Vec<_>>();
        let instance = self.0.begin(
            "BatchReadBlobs",
            &request.instance_name,
            request.digest_function,
            &digests,
        )?;
        let mut responses = Vec::with_capacity(request.digests.len());
        for digest in request.digests {
            let (data, result) = match self.0.cas.get(&instance, &digest).await {
                Ok(data) => (data.to_vec(), Ok(())),
                Err(e) => (vec![], Err(e)),
            };
            responses.push(reapi::batch_read_blobs_response::Response {
                digest: Some(digest),
                data,
                compressor: reapi::compressor::Value::Identity as i32,
                status: Some(status_to_proto(result)),
            });
        }
        Ok(Response::new(reapi::BatchReadBlobsResponse { responses }))
    }

    type GetTreeStream = BoxStream<'static, Result<reapi::GetTreeResponse, Status>>;

    async fn get_tree(
        &self,
        request: Request<reapi::GetTreeRequest>,
    ) -> Result<Response<Self::GetTreeStream>, Status> {
        let request = request.into_inner();
        let root = request
            .root_digest
            .ok_or_else(|| Status::invalid_argument("No root digest provided"))?;
        let instance = self.0.begin(
            "GetTree",
            &request.instance_name,
            request.digest_function,
            &[&root],
        )?;
        let start = if request.page_token.is_empty() {
            0
        } else {
            request
                .page_token
                .parse::<usize>()
                .map_err(|_| Status::invalid_argument("Invalid page token"))?
        };
        // Breadth first; parts of the tree missing from the CAS are left out, as REAPI
        // permits.
        let mut directories = Vec::new();
        let mut queue = VecDeque::from([root]);
        let mut seen = HashSet::new();
        while let Some(digest) = queue.pop_front() {
            if !seen.insert((digest.hash.clone(), digest.size_bytes)) {
                continue;
            }
            match get_message::<reapi::Directory>(self.0.cas.as_ref(), &instance, &digest).await {
                Ok(directory) => {
                    queue.extend(
                        directory
                            .directories
                            .iter()
                            .filter_map(|d| d.digest.clone()),
                    );
                    directories.push(directory);
                }
                Err(e) if e.code() == Code::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let page_size = match request.page_size {
            n if n > 0 => n as usize,
            _ => directories.len().max(1),
        };
        let mut pages = Vec::new();
        let mut offset = start.min(directories.len());
        loop {
            let end = (offset + page_size).min(directories.len());
            pages.push(Ok(reapi::GetTreeResponse {
                directories: directories[offset..end].to_vec(),
                next_page_token: if end < directories.len() {
                    end.to_string()
                } else {
                    String::new()
                },
            }));
            offset = end;
            if offset >= directories.len() {
                break;
            }
        }
        Ok(Response::new(futures::stream::iter(pages).boxed()))
    }

    async fn split_blob(
        &self,
        _request: Request<reapi::SplitBlobRequest>,
    ) -> Result<Response<reapi::SplitBlobResponse>, Status> {
        self.0.record("SplitBlob", "", None)?;
        Err(Status::unimplemented("SplitBlob is not supported"))
    }

    type GetChunkMappingStream = BoxStream<'static, Result<reapi::GetChunkMappingResponse, Status>>;

    async fn get_chunk_mapping(
        &self,
        _request: Request<reapi::GetChunkMappingRequest>,
    ) -> Result<Response<Self::GetChunkMappingStream>, Status> {
        self.0.record("GetChunkMapping", "", None)?;
        Err(Status::unimplemented("GetChunkMapping is not supported"))
    }

    async fn splice_blob(
        &self,
        _request: Request<reapi::SpliceBlobRequest>,
    ) -> Result<Response<reapi::SpliceBlobResponse>, Status> {
        self.0.record("SpliceBlob", "", None)?;
        Err(Status::unimplemented("SpliceBlob is not supported"))
    }

    async fn register_chunk_mapping(
        &self,
        _request: Request<Streaming<reapi::RegisterChunkMappingRequest>>,
    ) -> Result<Response<reapi::RegisterChunkMappingResponse>, Status> {
        self.0.record("RegisterChunkMapping", "", None)?;
        Err(Status::unimplemented(
            "RegisterChunkMapping is not supported",
        ))
    }
}

#[async_trait]
impl reapi::action_cache_server::ActionCache for Handler {
    async fn get_action_result(
        &self,
        request: Request<reapi::GetActionResultRequest>,
    ) -> Result<Response<reapi::ActionResult>, Status> {
        let request = request.into_inner();
        let digest = request
            .action_digest
            .ok_or_else(|| Status::invalid_argument("No action digest provided"))?;
        let instance = self.0.begin(
            "GetActionResult",
            &request.instance_name,
            request.digest_function,
            &[&digest],
        )?;
        Ok(Response::new(
            self.0.ac.get_action_result(&instance, &digest).await?,
        ))
    }

    async fn update_action_result(
        &self,
        request: Request<reapi::UpdateActionResultRequest>,
    ) -> Result<Response<reapi::ActionResult>, Status> {
        let request = request.into_inner();
        let digest = request
            .action_digest
            .ok_or_else(|| Status::invalid_argument("No action digest provided"))?;
        let instance = self.0.begin(
            "UpdateActionResult",
            &request.instance_name,
            request.digest_function,
            &[&digest],
        )?;
        let result = request
            .action_result
            .ok_or_else(|| Status::invalid_argument("No action result provided"))?;
        self.0
            .ac
            .put_action_result(&instance, &digest, result.clone())
            .await?;
        Ok(Response::new(result))
    }
}

#[async_trait]
impl reapi::capabilities_server::Capabilities for Handler {
    async fn get_capabilities(
        &self,
        request: Request<reapi::GetCapabilitiesRequest>,
    ) -> Result<Response<reapi::ServerCapabilities>, Status> {
        let instance_name = &request.get_ref().instance_name;
        self.0.record("GetCapabilities", instance_name, None)?;
        self.0.check_instance_name(instance_name)?;
        let version = |minor| bazel_remote_apis::build::bazel::semver::SemVer {
            major: 2,
            minor,
            patch: 0,
            prerelease: String::new(),
        };
        Ok(Response::new(reapi::ServerCapabilities {
            cache_capabilities: Some(reapi::CacheCapabilities {
                digest_functions: [
                    DigestFunction::Sha256,
                    DigestFunction::Sha384,
                    DigestFunction::Sha512,
                ]
                .iter()
                .map(|f| f.to_proto() as i32)
                .collect(),
                action_cache_update_capabilities: Some(reapi::ActionCacheUpdateCapabilities {
                    update_enabled: true,
                }),
                max_batch_total_size_bytes: self.0.maximum_received_message_size_bytes as i64,
                symlink_absolute_path_strategy:
                    reapi::symlink_absolute_path_strategy::Value::Allowed as i32,
                ..Default::default()
            }),
            execution_capabilities: None,
            deprecated_api_version: Some(version(0)),
            low_api_version: Some(version(0)),
            high_api_version: Some(version(11)),
        }))
    }
}

/// Splits a ByteStream resource name at its `blobs` segment (or `uploads/{uuid}/blobs`
/// for writes) into the instance name and the segments after `blobs`.
fn split_resource_name(name: &str, upload: bool) -> Result<(String, Vec<&str>), Status> {
    let invalid = || Status::invalid_argument(format!("Invalid resource name {name:?}"));
    let segments = name.split('/').collect::<Vec<_>>();
    let keyword = if upload { "uploads" } else { "blobs" };
    let position = segments
        .iter()
        .position(|s| *s == keyword || (!upload && *s == "compressed-blobs"))
        .ok_or_else(invalid)?;
    let instance_name = segments[..position]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("/");
    let mut rest = &segments[position..];
    if upload {
        // uploads/{uuid}/blobs/...
        if rest.len() < 3 {
            return Err(invalid());
        }
        rest = &rest[2..];
    }
    match rest[0] {
        "blobs" => Ok((instance_name, rest[1..].to_vec())),
        "compressed-blobs" => Err(Status::unimplemented(format!(
            "Compressed blobs are not supported: {name:?}"
        ))),
        _ => Err(invalid()),
    }
}

/// Parses `{digest_function/}{hash}/{size}{/metadata}` (metadata only for uploads).
fn parse_blob_segments(
    name: &str,
    instance_name: String,
    segments: &[&str],
    upload: bool,
) -> Result<(Instance, reapi::Digest), Status> {
    let invalid = || Status::invalid_argument(format!("Invalid resource name {name:?}"));
    // The digest function segment is present only for functions that cannot be told
    // apart by hash length; hashes are hexadecimal, so they never parse as a name.
    let explicit = segments.first().and_then(|s| {
        reapi::digest_function::Value::from_str_name(&s.to_ascii_uppercase())
            .filter(|v| *v != reapi::digest_function::Value::Unknown)
    });
    let segments = if explicit.is_some() {
        &segments[1..]
    } else {
        segments
    };
    if segments.len() < 2 || (!upload && segments.len() > 2) {
        return Err(invalid());
    }
    let digest = reapi::Digest {
        hash: segments[0].to_string(),
        size_bytes: segments[1].parse().map_err(|_| invalid())?,
    };
    let function =
        DigestFunction::from_request(explicit.map(|v| v as i32).unwrap_or(0), &digest.hash)?;
    function.validate(&digest)?;
    Ok((Instance::new(instance_name, function), digest))
}

fn parse_read_resource_name(name: &str) -> Result<(Instance, reapi::Digest), Status> {
    let (instance_name, segments) = split_resource_name(name, false)?;
    parse_blob_segments(name, instance_name, &segments, false)
}

fn parse_write_resource_name(name: &str) -> Result<(Instance, reapi::Digest), Status> {
    let (instance_name, segments) = split_resource_name(name, true)?;
    parse_blob_segments(name, instance_name, &segments, true)
}

impl Handler {
    /// Parses a resource name and records the call under the instance it names.
    fn begin_byte_stream(
        &self,
        method: &'static str,
        resource_name: &str,
        upload: bool,
    ) -> Result<(Instance, reapi::Digest), Status> {
        let parsed = if upload {
            parse_write_resource_name(resource_name)
        } else {
            parse_read_resource_name(resource_name)
        };
        match parsed {
            Ok((instance, digest)) => {
                self.0
                    .record(method, &instance.name, Some(instance.digest_function))?;
                self.0.check_instance_name(&instance.name)?;
                Ok((instance, digest))
            }
            Err(e) => {
                self.0.record(method, "", None)?;
                Err(e)
            }
        }
    }
}

#[async_trait]
impl ByteStream for Handler {
    type ReadStream = BoxStream<'static, Result<ReadResponse, Status>>;

    async fn read(
        &self,
        request: Request<ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let request = request.into_inner();
        let (instance, digest) = self.begin_byte_stream("Read", &request.resource_name, false)?;
        if request.read_offset < 0 {
            return Err(Status::invalid_argument("Negative read offset"));
        }
        if request.read_limit < 0 {
            return Err(Status::invalid_argument("Negative read limit"));
        }
        if request.read_offset > digest.size_bytes {
            return Err(Status::out_of_range(format!(
                "Read offset {} exceeds the size of the blob ({} bytes)",
                request.read_offset, digest.size_bytes
            )));
        }
        let chunks = self.0.cas.get_stream(&instance, &digest).await?;
        let mut skip = request.read_offset as usize;
        let mut remaining = match request.read_limit {
            0 => usize::MAX,
            n => n as usize,
        };
        let responses = async_stream::stream! {
            let mut chunks = chunks;
            while let Some(chunk) = chunks.next().await {
                let mut chunk = match chunk {
                    Ok(chunk) => chunk,
                    Err(e) => {
                        yield Err(e);
                        return;
                    }
                };
                let dropped = skip.min(chunk.len());
                let _ = chunk.split_to(dropped);
                skip -= dropped;
                chunk.truncate(remaining);
                remaining -= chunk.len();
                while !chunk.is_empty() {
                    let piece = chunk.split_to(READ_CHUNK_BYTES.min(chunk.len()));
                    yield Ok(ReadResponse { data: piece.to_vec() });
                }
                if remaining == 0 {
                    return;
                }
            }
        };
        Ok(Response::new(responses.boxed()))
    }

    async fn write(
        &self,
        request: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        let mut requests = request.into_inner();
        let first = requests.message().await?.ok_or_else(|| {
            Status::invalid_argument("Client closed stream without sending a request")
        })?;
        let (instance, digest) = self.begin_byte_stream("Write", &first.resource_name, true)?;
        let function = instance.digest_function;
        let expected = digest.clone();
        let chunks: ChunkStream = async_stream::stream! {
            let mut expected_offset = 0i64;
            // The upload is checked against its digest before its last chunk is handed
            // on, so that the store never keeps content that does not match.
            let mut hasher = function.hasher();
            let mut held: Option<Bytes> = None;
            let mut next = Some(first);
            loop {
                let request = match next.take() {
                    Some(request) => request,
                    None => match requests.message().await {
                        Ok(Some(request)) => request,
                        Ok(None) => {
                            yield Err(Status::invalid_argument(
                                "Client closed stream without finishing the write",
                            ));
                            return;
                        }
                        Err(e) => {
                            yield Err(e);
                            return;
                        }
                    },
                };
                if request.write_offset != expected_offset {
                    yield Err(Status::invalid_argument(format!(
                        "Attempted to write at offset {}, while {} was expected",
                        request.write_offset, expected_offset
                    )));
                    return;
                }
                expected_offset += request.data.len() as i64;
                let finished = request.finish_write;
                if !request.data.is_empty() {
                    hasher.update(&request.data);
                    if let Some(previous) = held.replace(Bytes::from(request.data)) {
                        yield Ok(previous);
                    }
                }
                if finished {
                    let actual = std::mem::replace(&mut hasher, function.hasher()).finish();
                    if let Err(status) = crate::blobstore::verify_digest(&expected, &actual) {
                        yield Err(status);
                    } else if let Some(last) = held.take() {
                        yield Ok(last);
                    }
                    return;
                }
            }
        }
        .boxed();
        self.0.cas.put_stream(&instance, &digest, chunks).await?;
        Ok(Response::new(WriteResponse {
            committed_size: digest.size_bytes,
        }))
    }

    async fn query_write_status(
        &self,
        request: Request<QueryWriteStatusRequest>,
    ) -> Result<Response<QueryWriteStatusResponse>, Status> {
        let request = request.into_inner();
        let (instance, digest) =
            self.begin_byte_stream("QueryWriteStatus", &request.resource_name, true)?;
        let missing = self
            .0
            .cas
            .find_missing(&instance, vec![digest.clone()])
            .await?;
        if missing.is_empty() {
            Ok(Response::new(QueryWriteStatusResponse {
                committed_size: digest.size_bytes,
                complete: true,
            }))
        } else {
            Err(Status::not_found(format!(
                "Upload {:?} not found",
                request.resource_name
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::bytestream::byte_stream_client::ByteStreamClient;
    use crate::proto::reapi::capabilities_client::CapabilitiesClient;
    use crate::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;

    fn sha256(data: &[u8]) -> reapi::Digest {
        DigestFunction::Sha256.digest_of(data)
    }

    #[test]
    fn parses_resource_names() {
        let d = sha256(b"hello");
        let (instance, digest) =
            parse_read_resource_name(&format!("foo/bar/blobs/{}/5", d.hash)).unwrap();
        assert_eq!(instance, Instance::new("foo/bar", DigestFunction::Sha256));
        assert_eq!(digest, d);

        let (instance, _) = parse_read_resource_name(&format!("blobs/{}/5", d.hash)).unwrap();
        assert_eq!(instance.name, "");

        // The explicit segment is accepted even where REAPI says to omit it.
        let (instance, _) =
            parse_read_resource_name(&format!("x/blobs/sha256/{}/5", d.hash)).unwrap();
        assert_eq!(instance, Instance::new("x", DigestFunction::Sha256));

        let d512 = DigestFunction::Sha512.digest_of(b"hello");
        let (instance, digest) = parse_write_resource_name(&format!(
            "a/uploads/0f1e/blobs/{}/5/some/metadata",
            d512.hash
        ))
        .unwrap();
        assert_eq!(instance, Instance::new("a", DigestFunction::Sha512));
        assert_eq!(digest, d512);

        let err = parse_read_resource_name(&format!("blobs/{}/5/extra", d.hash)).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let err = parse_read_resource_name(&format!("blobs/blake3/{}/5", d.hash)).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(err.message(), "Unsupported digest function: 9");
        let err =
            parse_read_resource_name(&format!("compressed-blobs/zstd/{}/5", d.hash)).unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented);
        let err = parse_read_resource_name("uploads/x").unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }

    #[tokio::test]
    async fn serves_batches_and_counts_calls() {
        let server = BlobstoreServer::start_in_memory_serving(&["i"]).await;
        let mut client = ContentAddressableStorageClient::new(server.channel());
        let d = sha256(b"hello");
        let response = client
            .batch_update_blobs(reapi::BatchUpdateBlobsRequest {
                instance_name: "i".into(),
                requests: vec![
                    reapi::batch_update_blobs_request::Request {
                        digest: Some(d.clone()),
                        data: b"hello".to_vec(),
                        compressor: 0,
                    },
                    reapi::batch_update_blobs_request::Request {
                        digest: Some(sha256(b"other")),
                        data: b"wrong".to_vec(),
                        compressor: 0,
                    },
                ],
                digest_function: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let codes = response
            .responses
            .iter()
            .map(|r| r.status.as_ref().unwrap().code)
            .collect::<Vec<_>>();
        assert_eq!(codes, vec![Code::Ok as i32, Code::InvalidArgument as i32]);

        let missing = client
            .find_missing_blobs(reapi::FindMissingBlobsRequest {
                instance_name: "i".into(),
                blob_digests: vec![d.clone(), sha256(b"other")],
                digest_function: reapi::digest_function::Value::Sha256 as i32,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(missing.missing_blob_digests, vec![sha256(b"other")]);

        assert_eq!(server.calls("BatchUpdateBlobs"), 1);
        assert_eq!(server.calls("FindMissingBlobs"), 1);
        assert_eq!(server.calls("BatchReadBlobs"), 0);
        assert_eq!(
            server.call_log()[0],
            RecordedCall {
                method: "BatchUpdateBlobs",
                instance_name: "i".into(),
                digest_function: Some(DigestFunction::Sha256),
            }
        );
        server.reset_calls();
        assert_eq!(server.calls("FindMissingBlobs"), 0);
    }

    #[tokio::test]
    async fn refuses_instance_names_it_does_not_serve_on_every_service() {
        let server = BlobstoreServer::start_in_memory_serving(&["main", "a/b"]).await;
        let d = sha256(b"hello");
        for instance_name in ["", "other", "main/x", "a"] {
            let mut cas = ContentAddressableStorageClient::new(server.channel());
            let err = cas
                .find_missing_blobs(reapi::FindMissingBlobsRequest {
                    instance_name: instance_name.into(),
                    blob_digests: vec![d.clone()],
                    digest_function: 0,
                })
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{instance_name:?}");
            assert!(
                err.message().starts_with("Invalid instance name"),
                "{}",
                err.message()
            );
            let err =
                crate::proto::reapi::action_cache_client::ActionCacheClient::new(server.channel())
                    .get_action_result(reapi::GetActionResultRequest {
                        instance_name: instance_name.into(),
                        action_digest: Some(d.clone()),
                        ..Default::default()
                    })
                    .await
                    .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{instance_name:?}");
            let prefix = if instance_name.is_empty() {
                String::new()
            } else {
                format!("{instance_name}/")
            };
            let read = ByteStreamClient::new(server.channel())
                .read(ReadRequest {
                    resource_name: format!("{prefix}blobs/{}/{}", d.hash, d.size_bytes),
                    ..Default::default()
                })
                .await;
            let err = match read {
                Err(err) => err,
                Ok(stream) => stream.into_inner().message().await.unwrap_err(),
            };
            assert_eq!(err.code(), Code::InvalidArgument, "{instance_name:?}");
        }
        for instance_name in ["main", "a/b"] {
            let mut cas = ContentAddressableStorageClient::new(server.channel());
            let missing = cas
                .find_missing_blobs(reapi::FindMissingBlobsRequest {
                    instance_name: instance_name.into(),
                    blob_digests: vec![d.clone()],
                    digest_function: 0,
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(missing.missing_blob_digests, vec![d.clone()]);
        }
    }

    #[tokio::test]
    async fn rejects_malformed_digests() {
        let server = BlobstoreServer::start_in_memory().await;
        let mut client = ContentAddressableStorageClient::new(server.channel());
        let err = client
            .find_missing_blobs(reapi::FindMissingBlobsRequest {
                instance_name: String::new(),
                blob_digests: vec![reapi::Digest {
                    hash: "A".repeat(64),
                    size_bytes: 1,
                }],
                digest_function: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().starts_with("Non-hexadecimal character"));
    }

    #[tokio::test]
    async fn byte_stream_read_honours_offset_and_limit() {
        let server = BlobstoreServer::start_in_memory().await;
        let data = (0..200_000u32).map(|i| i as u8).collect::<Vec<_>>();
        let d = sha256(&data);
        let instance = Instance::new("", DigestFunction::Sha256);
        server
            .cas()
            .put(&instance, &d, Bytes::from(data.clone()))
            .await
            .unwrap();
        let mut client = ByteStreamClient::new(server.channel());
        let mut stream = client
            .read(ReadRequest {
                resource_name: format!("blobs/{}/{}", d.hash, d.size_bytes),
                read_offset: 1000,
                read_limit: 100_000,
            })
            .await
            .unwrap()
            .into_inner();
        let mut received = Vec::new();
        while let Some(response) = stream.message().await.unwrap() {
            assert!(response.data.len() <= READ_CHUNK_BYTES);
            received.extend(response.data);
        }
        assert_eq!(received, data[1000..101_000]);

        let err = client
            .read(ReadRequest {
                resource_name: format!("blobs/{}/{}", d.hash, d.size_bytes),
                read_offset: d.size_bytes + 1,
                read_limit: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::OutOfRange);
    }

    #[tokio::test]
    async fn byte_stream_write_checks_offsets_and_completion() {
        let server = BlobstoreServer::start_in_memory().await;
        let mut client = ByteStreamClient::new(server.channel());
        let d = sha256(b"hello");
        let name = format!("uploads/u/blobs/{}/5", d.hash);
        let unfinished = vec![WriteRequest {
            resource_name: name.clone(),
            write_offset: 0,
            finish_write: false,
            data: b"hel".to_vec(),
        }];
        let err = client
            .write(futures::stream::iter(unfinished))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(
            err.message(),
            "Client closed stream without finishing the write"
        );

        let gap = vec![
            WriteRequest {
                resource_name: name.clone(),
                write_offset: 0,
                finish_write: false,
                data: b"he".to_vec(),
            },
            WriteRequest {
                resource_name: String::new(),
                write_offset: 3,
                finish_write: true,
                data: b"lo".to_vec(),
            },
        ];
        let err = client.write(futures::stream::iter(gap)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(
            err.message(),
            "Attempted to write at offset 3, while 2 was expected"
        );

        let ok = vec![
            WriteRequest {
                resource_name: name.clone(),
                write_offset: 0,
                finish_write: false,
                data: b"he".to_vec(),
            },
            WriteRequest {
                resource_name: String::new(),
                write_offset: 2,
                finish_write: true,
                data: b"llo".to_vec(),
            },
        ];
        let response = client
            .write(futures::stream::iter(ok))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.committed_size, 5);
        let status = client
            .query_write_status(QueryWriteStatusRequest {
                resource_name: name,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(status.complete);
        assert_eq!(server.calls("Write"), 3);
    }

    #[tokio::test]
    async fn injected_errors_fail_the_next_calls() {
        let server = BlobstoreServer::start_in_memory().await;
        server.fail_next("FindMissingBlobs", Status::unavailable("Injected"));
        let mut client = ContentAddressableStorageClient::new(server.channel());
        let request = reapi::FindMissingBlobsRequest {
            instance_name: String::new(),
            blob_digests: vec![sha256(b"x")],
            digest_function: 0,
        };
        let err = client
            .find_missing_blobs(request.clone())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert_eq!(err.message(), "Injected");
        client.find_missing_blobs(request).await.unwrap();
        assert_eq!(server.calls("FindMissingBlobs"), 2);
    }

    #[tokio::test]
    async fn advertises_cache_capabilities() {
        let server = BlobstoreServer::builder(
            Arc::new(MemoryContentAddressableStorage::new(1 << 20)),
            Arc::new(MemoryActionCache::new(1 << 20)),
        )
        .maximum_received_message_size_bytes(1 << 20)
        .instance_names(["x"])
        .start()
        .await;
        let capabilities = CapabilitiesClient::new(server.channel())
            .get_capabilities(reapi::GetCapabilitiesRequest {
                instance_name: "x".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let cache = capabilities.cache_capabilities.unwrap();
        assert_eq!(cache.max_batch_total_size_bytes, 1 << 20);
        assert_eq!(cache.digest_functions, vec![1, 5, 6]);
        assert!(
            cache
                .action_cache_update_capabilities
                .unwrap()
                .update_enabled
        );
        assert_eq!(server.calls("GetCapabilities"), 1);
    }

    #[tokio::test]
    async fn get_tree_walks_directories() {
        let server = BlobstoreServer::start_in_memory().await;
        let instance = Instance::new("", DigestFunction::Sha256);
        let leaf = reapi::Directory::default();
        let leaf_digest = crate::blobstore::put_message(server.cas().as_ref(), &instance, &leaf)
            .await
            .unwrap();
        let root = reapi::Directory {
            directories: vec![reapi::DirectoryNode {
                name: "sub".into(),
                digest: Some(leaf_digest),
            }],
            ..Default::default()
        };
        let root_digest = crate::blobstore::put_message(server.cas().as_ref(), &instance, &root)
            .await
            .unwrap();
        let mut client = ContentAddressableStorageClient::new(server.channel());
        let mut stream = client
            .get_tree(reapi::GetTreeRequest {
                instance_name: String::new(),
                root_digest: Some(root_digest),
                page_size: 1,
                page_token: String::new(),
                digest_function: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let mut pages = Vec::new();
        while let Some(page) = stream.message().await.unwrap() {
            pages.push(page);
        }
        assert_eq!(pages.len(), 2);
        assert_eq!(pages[0].directories, vec![root]);
        assert_eq!(pages[0].next_page_token, "1");
        assert_eq!(pages[1].directories, vec![leaf]);
        assert_eq!(pages[1].next_page_token, "");
    }

    #[tokio::test]
    async fn stops_serving_when_dropped() {
        let server = BlobstoreServer::start_in_memory().await;
        let address = server.address();
        drop(server);
        // The aborted task releases the listener once the runtime gets to it.
        let mut refused = false;
        for _ in 0..1000 {
            tokio::task::yield_now().await;
            if tokio::net::TcpStream::connect(address).await.is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused);
    }
}
