// bb_storage as one storage shard (storage-0 and storage-1 run the same file): a local
// CAS and Action Cache on files under /storage-cas and /storage-ac, kept across
// restarts.
//
// Sizing for the expander: the CAS holds every file of every image used, once per
// distinct content, beside the builds' own blobs. Blobs that keep being read are kept;
// whatever is evicted is ingested again on the next use of its layer (the expander
// checks before it forwards an action). Each shard holds half of the data, but any one
// blob lives whole on one shard, so each shard's blocks must hold
// common.largestBlobSizeBytes (see common.casBlocks): 16 GiB in 15 blocks is 1.07 GiB
// per block. Give the CAS room for the images of a working day; the block files are
// sparse and only take disk space as they fill.
local common = import 'common.libsonnet';

{
  global: common.global,
  maximumMessageSizeBytes: common.maximumMessageSizeBytes,
  grpcServers: [{
    listenAddresses: [':8981'],
    authenticationPolicy: { allow: {} },
  }],
  contentAddressableStorage: {
    backend: common.localBlobAccess(
      '/storage-cas',
      blocksSizeBytes=16 * 1024 * 1024 * 1024,
      keyLocationMapSizeBytes=128 * 1024 * 1024,
      layout=common.casBlocks,
      persistent=true,
    ),
    getAuthorizer: { allow: {} },
    putAuthorizer: { allow: {} },
    findMissingAuthorizer: { allow: {} },
  },
  actionCache: {
    // The expander's records (resolved tags, layer changesets, image trees) are small
    // ActionResults among the builds' own. 128 MiB in 36 blocks is 3.5 MiB per block,
    // above the largest ActionResult (maximumMessageSizeBytes).
    backend: common.localBlobAccess(
      '/storage-ac',
      blocksSizeBytes=128 * 1024 * 1024,
      keyLocationMapSizeBytes=4 * 1024 * 1024,
      layout=common.actionCacheBlocks,
      persistent=true,
    ),
    getAuthorizer: { allow: {} },
    putAuthorizer: { allow: {} },
  },
}
