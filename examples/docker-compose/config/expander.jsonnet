// bb-container-expander in proxy mode, between the frontend and the scheduler. Every
// field is documented in configs/bb_container_expander.jsonnet of the project.
local common = import 'common.libsonnet';

{
  global: common.global,
  maximumMessageSizeBytes: common.maximumMessageSizeBytes,
  // The frontend's schedulers[''] points here.
  grpcServers: [{
    listenAddresses: [':8985'],
    authenticationPolicy: { allow: {} },
  }],
  // The deployment's storage, through the frontend.
  blobstore: common.expanderBlobstore,
  // Rewritten and passed-through actions go to the scheduler's client port, with the
  // client's RequestMetadata.
  scheduler: {
    address: 'scheduler:8982',
    addMetadataJmespathExpression: common.forwardRequestMetadata,
  },
  containerImages: {
    registries: [
      // The registry service of this deployment. Push images to it from the host as
      // localhost:5000/NAME; actions name them as registry:5000/NAME.
      { hosts: ['registry:5000'], insecure: true },
      // Public registries, anonymously. Add credentials for private repositories:
      // { basic: { username: ..., password: std.extVar('GHCR_TOKEN') } }.
      { hosts: ['docker.io', 'ghcr.io', 'quay.io'], credentials: { anonymous: {} } },
    ],
    // The client's inputs go to /execroot of the image, so they never clash with
    // the image's own files; the working directory moves with them.
    inputRootDirectory: 'execroot',
    // What the chroot worker advertises instead of container-image.
    addPlatformProperties: [common.chrootMarker],
    maximumConcurrentLayerIngests: 2,
  },
}
