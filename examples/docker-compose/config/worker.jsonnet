// bb_worker for chroot actions: a FUSE build directory, in which every action's input
// root (the image plus the client's inputs) appears without being copied; files are
// fetched when an action opens them, through a local cache under /worker/cas. A FUSE
// (virtual) build directory is what makes image-sized input roots cheap: a hardlinking
// (native) one would link every file of the image for every action.
//
// bb_worker refuses to start, or fails every action, without several fields below;
// tests/buildbarn_configs.rs checks them (and this file is the template the
// Kubernetes example's worker follows).
local common = import 'common.libsonnet';

local concurrency = 4;

{
  global: common.global,
  maximumMessageSizeBytes: common.maximumMessageSizeBytes,
  browserUrl: common.browserUrl,
  scheduler: { address: 'scheduler:8983' },
  blobstore: {
    contentAddressableStorage: {
      readCaching: {
        slow: common.blobstore.contentAddressableStorage,
        // Every file an action opens passes through this cache, so one block must
        // hold the largest file of any image: 16 GiB in 15 blocks is 1.07 GiB per
        // block (see common.casBlocks). Emptied at every start.
        fast: common.localBlobAccess(
          '/worker/cas',
          blocksSizeBytes=16 * 1024 * 1024 * 1024,
          keyLocationMapSizeBytes=128 * 1024 * 1024,
          layout=common.casBlocks,
          // The FUSE file system reads a file in many small pieces; without this
          // cache each piece would verify the whole blob's checksum again.
          dataIntegrityValidationCache={
            cacheSize: 100000,
            cacheDuration: '14400s',
            cacheReplacementPolicy: 'LEAST_RECENTLY_USED',
          },
        ),
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
          // The bb-worker image has no fusermount: mount with mount(2) itself.
          mountMethod: 'DIRECT',
        },
      },
      // Both are required with a virtual build directory.
      maximumExecutionTimeoutCompensation: '3600s',
      maximumWritableFileUploadDelay: '60s',
    },
    runners: [{
      endpoint: { address: 'unix:///worker/runner' },
      concurrency: concurrency,
      // No container-image here: the expander removes it from every action it
      // rewrites and adds runner=chroot instead. Sorted, as bb_scheduler requires.
      platform: common.chrootPlatform,
      workerId: { host: 'worker' },
      // bb_runner does not mount /dev in the chroot; these nodes are created in each
      // input root's /dev instead (the directory may already exist in the image).
      inputRootCharacterDeviceNodes: ['full', 'null', 'random', 'tty', 'urandom', 'zero'],
      // What one action may keep in the file pool: every file it writes in the
      // build directory, and its stdout and stderr. Both default to 0, with which
      // every action fails at its first file.
      maximumFilePoolFileCount: 100000,
      maximumFilePoolSizeBytes: common.largestBlobSizeBytes,
    }],
  }],
  // Room for every runner thread's quota at once: concurrency * maximumFilePoolSizeBytes.
  filePool: {
    blockDevice: {
      file: {
        path: '/worker/filepool',
        sizeBytes: concurrency * common.largestBlobSizeBytes,
      },
    },
  },
  directoryCache: {
    maximumCount: 10000,
    maximumSizeBytes: 10000 * 1024,
    cacheReplacementPolicy: 'LEAST_RECENTLY_USED',
  },
  // Required (bb_worker exits at start when it is 0): with a virtual build directory
  // it limits the CAS reads of prefetching, with a native one the files fetched at
  // once; for the whole worker.
  inputDownloadConcurrency: 16,
  // Required as well: concurrent CAS writes of outputs, for the whole worker.
  outputUploadConcurrency: 11,
}
