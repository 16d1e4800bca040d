// bb_worker for the chroot actions the expander produces, on Kubernetes: the same
// worker as examples/docker-compose/config/worker.jsonnet (read its comments), with
// the deployment's storage reached through the frontend Service, as the expander
// reaches it. It runs in the pod of worker-chroot.yaml, beside bb_runner
// (runner-chroot.jsonnet), and mounts its FUSE build directory in the volume they
// share.
//
// Environment variables (Jsonnet external variables):
//   POD_NAME   from the pod's metadata.name, names the worker to the scheduler.
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
        slow: common.expanderBlobstore.contentAddressableStorage,
        // A local cache in files under /worker/cas (an emptyDir, emptied with the
        // pod). One block must hold common.largestBlobSizeBytes: bb_storage cuts
        // the blocks file into 4 + 8 + 1 + 2 = 15 equal blocks, 1.07 GiB each.
        fast: {
          'local': {
            keyLocationMapOnBlockDevice: {
              file: { path: '/worker/cas/key_location_map', sizeBytes: 128 * 1024 * 1024 },
            },
            keyLocationMapMaximumGetAttempts: 16,
            keyLocationMapMaximumPutAttempts: 64,
            oldBlocks: 4,
            currentBlocks: 8,
            newBlocks: 1,
            blocksOnBlockDevice: {
              source: {
                file: { path: '/worker/cas/blocks', sizeBytes: 16 * 1024 * 1024 * 1024 },
              },
              spareBlocks: 2,
              // The FUSE file system reads files piecemeal; do not verify the whole
              // blob again for every piece.
              dataIntegrityValidationCache: {
                cacheSize: 100000,
                cacheDuration: '14400s',
                cacheReplacementPolicy: 'LEAST_RECENTLY_USED',
              },
            },
          },
        },
        replicator: { deduplicating: { 'local': {} } },
      },
    },
    actionCache: common.expanderBlobstore.actionCache,
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
          // The bb-worker image has no fusermount.
          mountMethod: 'DIRECT',
        },
      },
      maximumExecutionTimeoutCompensation: '3600s',
      maximumWritableFileUploadDelay: '60s',
    },
    runners: [{
      endpoint: { address: 'unix:///worker/runner' },
      concurrency: concurrency,
      platform: common.chrootPlatform,
      workerId: { pod: std.extVar('POD_NAME') },
      inputRootCharacterDeviceNodes: ['full', 'null', 'random', 'tty', 'urandom', 'zero'],
      maximumFilePoolFileCount: 100000,
      maximumFilePoolSizeBytes: common.largestBlobSizeBytes,
    }],
  }],
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
  inputDownloadConcurrency: 16,
  outputUploadConcurrency: 11,
}
