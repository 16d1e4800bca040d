// A self-contained configuration for trying the expander on one machine: in-memory
// CAS and Action Cache, gRPC on 127.0.0.1:8985, diagnostics on 127.0.0.1:9985, a
// scheduler on 127.0.0.1:8982, and images from a registry on 127.0.0.1:5055 only
// (docs/trying-it-out.md starts one). Every field is documented in
// bb_container_expander.jsonnet.
{
  global: {
    diagnosticsHttpServer: {
      httpServers: [{ listenAddresses: ['127.0.0.1:9985'], authenticationPolicy: { allow: {} } }],
      enablePrometheus: true,
    },
  },
  grpcServers: [{ listenAddresses: ['127.0.0.1:8985'], authenticationPolicy: { allow: {} } }],
  blobstore: {
    // memory: {} holds up to 4 GiB (the default maximumSizeBytes), as `expand`
    // without --config.
    contentAddressableStorage: { memory: {} },
    actionCache: { memory: {} },
  },
  scheduler: { address: '127.0.0.1:8982' },
  containerImages: {
    // Loopback registries speak plain HTTP; no other registry may be contacted.
    registries: [{ hosts: ['127.0.0.1:5055', 'localhost:5055'] }],
  },
}
