// bb-container-expander in proxy mode on Kubernetes. Every field is documented in
// configs/bb_container_expander.jsonnet of the project.
//
// Environment variables of the container are Jsonnet external variables:
//   POD_NAME           from the pod's metadata.name (fieldRef), names this replica's
//                      log file;
//   POD_IP             from the pod's status.podIP (fieldRef), the address the other
//                      replicas reach this one at (fleet.selfAddress);
//   REGISTRY_USERNAME, REGISTRY_PASSWORD
//                      from the Secret registry-credentials: pull-only credentials
//                      for the private registry.
local common = import 'common.libsonnet';

{
  global: common.global {
    // One log file per replica on the shared log volume, besides standard error.
    logPaths: ['/logs/bb-container-expander-' + std.extVar('POD_NAME') + '.log'],
  },
  maximumMessageSizeBytes: common.maximumMessageSizeBytes,
  grpcServers: [{
    listenAddresses: [':8985'],
    authenticationPolicy: { allow: {} },
  }],
  blobstore: {
    contentAddressableStorage: {
      existenceCaching: {
        backend: common.expanderBlobstore.contentAddressableStorage,
        existenceCache: { cacheSize: 1000 * 1000, cacheDuration: '60s' },
      },
    },
    actionCache: common.expanderBlobstore.actionCache,
  },
  scheduler: {
    address: 'scheduler:8982',
    addMetadataJmespathExpression: common.forwardRequestMetadata,
  },
  // The replicas share each expansion: the headless Service expander-peers resolves
  // to every ready replica, and each image and layer is expanded by one of them.
  fleet: {
    selfAddress: std.extVar('POD_IP') + ':8985',
    peersDnsName: 'expander-peers.buildbarn.svc.cluster.local:8985',
  },
  containerImages: {
    registries: [
      {
        hosts: ['registry.example.com'],
        credentials: {
          basic: {
            username: std.extVar('REGISTRY_USERNAME'),
            password: std.extVar('REGISTRY_PASSWORD'),
          },
        },
      },
      { hosts: ['docker.io', 'ghcr.io'], credentials: { anonymous: {} } },
    ],
    rejectTags: true,
    inputRootDirectory: 'execroot',
    addPlatformProperties: [common.chrootMarker],
    maximumConcurrentLayerIngests: 4,
    spoolDirectory: '/spool',
  },
}
