//! The pass-through proxy end to end: a client → the expander (real configuration,
//! real servers) → an in-process fake scheduler.

use bb_container_expander::blobstore::{put_message, Instance};
use bb_container_expander::config::{self, ApplicationConfiguration};
use bb_container_expander::diagnostics::Readiness;
use bb_container_expander::digest::{encode_message, DigestFunction};
use bb_container_expander::program::Program;
use bb_container_expander::proto::reapi;
use bb_container_expander::testutil::fake_scheduler::{FakeScheduler, Script};
use bb_container_expander::testutil::BlobstoreServer;
use futures::StreamExt;
use reapi::capabilities_client::CapabilitiesClient;
use reapi::execution_client::ExecutionClient;
use std::time::Duration;
use tokio::sync::watch;
use tonic::transport::Channel;

const REQUEST_METADATA: &str = "build.bazel.remote.execution.v2.requestmetadata-bin";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Expander {
    grpc: String,
    http: String,
    storage: BlobstoreServer,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl Expander {
    async fn start(scheduler: &str, extra: &str) -> Self {
        let (grpc_port, http_port) = (free_port(), free_port());
        let storage = BlobstoreServer::start_in_memory_serving(&[INSTANCE]).await;
        let storage_address = storage.address();
        let text = format!(
            r#"{{
              global: {{ diagnosticsHttpServer: {{
                httpServers: [{{ listenAddresses: ['127.0.0.1:{http_port}'], authenticationPolicy: {{ allow: {{}} }} }}],
                enablePrometheus: true,
              }} }},
              grpcServers: [{{ listenAddresses: ['127.0.0.1:{grpc_port}'], authenticationPolicy: {{ allow: {{}} }} }}],
              blobstore: {{
                contentAddressableStorage: {{ grpc: {{ client: {{ address: '{storage_address}' }} }} }},
                actionCache: {{ grpc: {{ client: {{ address: '{storage_address}' }} }} }},
              }},
              scheduler: {{
                address: '{scheduler}',
                addMetadataJmespathExpression: {{
                  expression: '{{"{REQUEST_METADATA}": incomingGRPCMetadata."{REQUEST_METADATA}"}}',
                }},
              }},
            }} + {extra}"#
        );
        let value = config::jsonnet::evaluate_snippet("test.jsonnet", &text).unwrap();
        let configuration: ApplicationConfiguration = config::jsonnet::decode(value).unwrap();
        configuration.validate().unwrap();
        let program = Program::from_configuration(configuration).unwrap();
        let (shutdown, rx) = watch::channel(false);
        let readiness = Readiness::default();
        let task = tokio::spawn(program.serve(readiness.clone(), rx));
        while !readiness.get() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Self {
            grpc: format!("http://127.0.0.1:{grpc_port}"),
            http: format!("127.0.0.1:{http_port}"),
            storage,
            shutdown,
            task,
        }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(self.grpc.clone())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.shutdown.send(true).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

/// An action without `container-image`, stored in the expander's CAS.
fn action() -> reapi::Action {
    reapi::Action {
        command_digest: Some(DigestFunction::Sha256.digest_of(b"command")),
        input_root_digest: Some(DigestFunction::Sha256.empty_digest()),
        platform: Some(reapi::Platform {
            properties: vec![reapi::platform::Property {
                name: "OSFamily".into(),
                value: "linux".into(),
            }],
        }),
        ..Default::default()
    }
}

/// The only instance name the fake storage and scheduler serve.
const INSTANCE: &str = "hello";

/// The fake scheduler's default script, serving [`INSTANCE`].
fn script() -> Script {
    Script {
        instance_names: vec![INSTANCE.into()],
        ..Script::default()
    }
}

fn execute_request() -> reapi::ExecuteRequest {
    let (digest, _) = encode_message(DigestFunction::Sha256, &action());
    reapi::ExecuteRequest {
        instance_name: INSTANCE.into(),
        action_digest: Some(digest),
        skip_cache_lookup: true,
        ..Default::default()
    }
}

impl Expander {
    /// Stores the test action where the expander reads it.
    async fn store_action(&self) {
        let instance = Instance::new(INSTANCE, DigestFunction::Sha256);
        put_message(&*self.storage.cas(), &instance, &action())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn execute_relays_operations_in_order_named_with_the_instance() {
    let scheduler = FakeScheduler::start(script()).await;
    let expander = Expander::start(&scheduler.address().to_string(), "{}").await;
    expander.store_action().await;
    let mut client = ExecutionClient::new(expander.channel().await);
    let mut request = tonic::Request::new(execute_request());
    request.metadata_mut().insert_bin(
        REQUEST_METADATA,
        tonic::metadata::MetadataValue::from_bytes(b"\x0a\x05bazel"),
    );
    request
        .metadata_mut()
        .insert("authorization", "Bearer secret".parse().unwrap());
    let stream = client.execute(request).await.unwrap().into_inner();
    let names: Vec<String> = stream.map(|op| op.unwrap().name).collect().await;
    assert_eq!(
        names,
        vec![
            "hello/operations/operation-1",
            "hello/operations/operation-2",
            "hello/operations/operation-3"
        ]
    );

    {
        let log = scheduler.log();
        assert_eq!(log.execute_requests, vec![execute_request()]);
        let headers = &log.metadata[0];
        assert_eq!(
            headers.get(REQUEST_METADATA).unwrap(),
            // Binary metadata travels base64-encoded without padding.
            "CgViYXplbA"
        );
        assert!(
            headers.get("authorization").is_none(),
            "authorization must not be forwarded"
        );
    }
    expander.stop().await;
}

#[tokio::test]
async fn wait_execution_and_get_capabilities_are_forwarded() {
    let scheduler = FakeScheduler::start(script()).await;
    let expander = Expander::start(&scheduler.address().to_string(), "{}").await;
    expander.store_action().await;
    let channel = expander.channel().await;
    let mut client = ExecutionClient::new(channel.clone());
    let stream = client
        .wait_execution(reapi::WaitExecutionRequest {
            name: "hello/operations/operation-xyz".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<String> = stream.map(|op| op.unwrap().name).collect().await;
    assert_eq!(
        names,
        vec![
            "hello/operations/operation-1",
            "hello/operations/operation-2",
            "hello/operations/operation-3"
        ]
    );
    assert_eq!(
        scheduler.log().wait_execution_requests[0].name,
        "operation-xyz"
    );

    let capabilities = CapabilitiesClient::new(channel)
        .get_capabilities(reapi::GetCapabilitiesRequest {
            instance_name: INSTANCE.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(capabilities.execution_capabilities.unwrap().exec_enabled);
    expander.stop().await;
}

#[tokio::test]
async fn client_cancel_cancels_the_upstream_stream() {
    let scheduler = FakeScheduler::start(Script {
        hold_open: true,
        ..script()
    })
    .await;
    let expander = Expander::start(&scheduler.address().to_string(), "{}").await;
    expander.store_action().await;
    let mut client = ExecutionClient::new(expander.channel().await);
    let mut stream = client
        .execute(execute_request())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        stream.next().await.unwrap().unwrap().name,
        "hello/operations/operation-1"
    );
    drop(stream);
    scheduler
        .wait_until(Duration::from_secs(10), |log| log.cancelled_streams == 1)
        .await;
    expander.stop().await;
}

#[tokio::test]
async fn unreachable_scheduler_yields_unavailable() {
    let address = format!("127.0.0.1:{}", free_port());
    let expander = Expander::start(&address, "{}").await;
    expander.store_action().await;
    let mut client = ExecutionClient::new(expander.channel().await);
    let status = first_error(client.execute(execute_request()).await).await;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("Failed to forward Execute to the scheduler"),
        "{status:?}"
    );
    expander.stop().await;
}

#[tokio::test]
async fn scheduler_dying_mid_stream_yields_unavailable() {
    let mut scheduler = FakeScheduler::start(Script {
        hold_open: true,
        ..script()
    })
    .await;
    let expander = Expander::start(&scheduler.address().to_string(), "{}").await;
    expander.store_action().await;
    let mut client = ExecutionClient::new(expander.channel().await);
    let mut stream = client
        .execute(execute_request())
        .await
        .unwrap()
        .into_inner();
    for _ in 0..3 {
        stream.next().await.unwrap().unwrap();
    }
    scheduler.kill().await;
    let status = stream.next().await.unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    expander.stop().await;
}

#[tokio::test]
async fn deny_policy_refuses_calls() {
    let scheduler = FakeScheduler::start(script()).await;
    let expander = Expander::start(
        &scheduler.address().to_string(),
        "{ grpcServers: [super.grpcServers[0] { authenticationPolicy: { deny: 'Closed for maintenance' } }] }",
    )
    .await;
    expander.store_action().await;
    let mut client = ExecutionClient::new(expander.channel().await);
    let status = client.execute(execute_request()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        status.message(),
        "Authentication failed: Closed for maintenance"
    );
    assert!(scheduler.log().execute_requests.is_empty());
    expander.stop().await;
}

#[tokio::test]
async fn health_and_metrics() {
    let scheduler = FakeScheduler::start(script()).await;
    let expander = Expander::start(&scheduler.address().to_string(), "{}").await;
    expander.store_action().await;
    let channel = expander.channel().await;
    let health = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let stream = ExecutionClient::new(channel)
        .execute(execute_request())
        .await
        .unwrap()
        .into_inner();
    stream.count().await;

    let healthy = http_get(&expander.http, "/-/healthy").await;
    assert!(healthy.starts_with("HTTP/1.1 200"), "{healthy}");
    let metrics = http_get(&expander.http, "/metrics").await;
    assert!(
        metrics.contains(
            "buildbarn_grpc_server_started_total{grpc_method=\"Execute\",grpc_service=\"build.bazel.remote.execution.v2.Execution\"}"
        ),
        "{metrics}"
    );
    expander.stop().await;
}

#[tokio::test]
async fn serves_on_unix_sockets() {
    let scheduler = FakeScheduler::start(script()).await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("expander.sock");
    // A stale socket file from an earlier process must not prevent start-up.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let expander = Expander::start(
        &scheduler.address().to_string(),
        &format!(
            "{{ grpcServers+: [{{ listenPaths: ['{}'], authenticationPolicy: {{ allow: {{}} }} }}] }}",
            socket.display()
        ),
    )
    .await;
    expander.store_action().await;
    // Reach the expander over the socket with our own client factory.
    let client_config = bb_container_expander::config::grpc::ClientConfiguration {
        address: format!("unix://{}", socket.display()),
        ..Default::default()
    };
    let channel =
        bb_container_expander::grpc::client::new_channel_from_configuration(&client_config)
            .unwrap();
    let names: Vec<String> = ExecutionClient::new(channel)
        .execute(execute_request())
        .await
        .unwrap()
        .into_inner()
        .map(|op| op.unwrap().name)
        .collect()
        .await;
    assert_eq!(names.len(), 3);
    expander.stop().await;
}

/// The error of an Execute call, whether it came with the call or as the first
/// message of the stream.
async fn first_error(
    result: Result<
        tonic::Response<tonic::Streaming<bb_container_expander::proto::longrunning::Operation>>,
        tonic::Status,
    >,
) -> tonic::Status {
    match result {
        Err(status) => status,
        Ok(response) => response
            .into_inner()
            .next()
            .await
            .expect("a message")
            .expect_err("an error"),
    }
}

async fn http_get(address: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}
