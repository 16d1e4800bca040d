// bb_storage as one storage shard (storage-0 and storage-1 run the same file): a local
// CAS and Action Cache on files under /storage-cas and /storage-ac, kept across
// restarts.
//
// Sizing for the expander: the CAS holds every file of every image used, once per
// distinct content, beside the builds' own blobs. Blobs that keep being read are kept;
// whatever is evicted is ingested again on the next use of its layer (the expander
// checks before it forwards an action). Give the CAS room for the images of a working
// day: 8 GiB per shard suits a few small images. The largest file of any image must
// fit in one block (see common.localBlobAccess).
local common = import 'common.libsonnet';

{
  global: common.global,
  maximumMessageSizeBytes: common.maximumMessageSizeBytes,
  grpcServers: [{
    listenAddresses: [':8981'],
    authenticationPolicy: { allow: {} },
  }],
  contentAddressableStorage: {
    backend: common.localBlobAccess('/storage-cas', 8 * 1024 * 1024 * 1024, 64 * 1024 * 1024, persistent=true),
    getAuthorizer: { allow: {} },
    putAuthorizer: { allow: {} },
    findMissingAuthorizer: { allow: {} },
  },
  actionCache: {
    // The expander's records (resolved tags, layer changesets, image trees) are small
    // ActionResults among the builds' own.
    backend: common.localBlobAccess('/storage-ac', 32 * 1024 * 1024, 4 * 1024 * 1024, persistent=true),
    getAuthorizer: { allow: {} },
    putAuthorizer: { allow: {} },
  },
}
