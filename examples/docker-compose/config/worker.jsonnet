// bb_worker for chroot actions: a FUSE build directory, in which every action's input
// root (the image plus the client's inputs) appears without being copied; files are
// fetched when an action opens them, through a local cache under /worker/cas. A FUSE
// (virtual) build directory is what makes image-sized input roots cheap: a hardlinking
// (native) one would link every file of the image for every action.
local common = import 'common.libsonnet';

{
  global: common.global,
  maximumMessageSizeBytes: common.maximumMessageSizeBytes,
  browserUrl: common.browserUrl,
  scheduler: { address: 'scheduler:8983' },
  blobstore: {
    contentAddressableStorage: {
      readCaching: {
        slow: common.blobstore.contentAddressableStorage,
        fast: common.localBlobAccess('/worker/cas', 4 * 1024 * 1024 * 1024, 32 * 1024 * 1024),
        replicator: { deduplicating: { 'local': {} } },
      },
    },
    actionCache: common.blobstore.actionCache,
  },
  buildDirectories: [{
    virtual: {
      mount: {
        mountPath: '/worker/build',
        fuse: {
          directoryEntryValidity: '300s',
          inodeAttributeValidity: '300s',
          // The runner, another container, must see the files.
          allowOther: true,
          mountMethod: 'DIRECT',
        },
      },
      maximumExecutionTimeoutCompensation: '3600s',
      maximumWritableFileUploadDelay: '60s',
    },
    runners: [{
      endpoint: { address: 'unix:///worker/runner' },
      concurrency: 4,
      // No container-image here: the expander removes it from every action it
      // rewrites and adds runner=chroot instead. Sorted, as bb_scheduler requires.
      platform: common.chrootPlatform,
      workerId: { host: 'worker' },
      // bb_runner does not mount /dev in the chroot; these nodes are created in each
      // input root's /dev instead (the directory may already exist in the image).
      inputRootCharacterDeviceNodes: ['full', 'null', 'random', 'tty', 'urandom', 'zero'],
    }],
  }],
  filePool: {
    blockDevice: {
      file: {
        path: '/worker/filepool',
        sizeBytes: 4 * 1024 * 1024 * 1024,
      },
    },
  },
  directoryCache: {
    maximumCount: 10000,
    maximumSizeBytes: 10000 * 1024,
    cacheReplacementPolicy: 'LEAST_RECENTLY_USED',
  },
  outputUploadConcurrency: 11,
}
