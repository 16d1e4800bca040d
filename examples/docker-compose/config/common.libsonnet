// Settings shared by every process of this deployment. Each config/<process>.jsonnet
// imports this file, so that what must agree is written once.
{
  // Largest protobuf message read from the CAS and Action Cache by every process.
  // The expander never writes a Directory larger than this, and the workers refuse
  // to read one, so the two must agree.
  maximumMessageSizeBytes: 2 * 1024 * 1024,

  // Diagnostics HTTP server of every process: /-/healthy, /metrics, and for the Go
  // binaries /debug/pprof and /active_spans (the expander ignores those two).
  global: {
    diagnosticsHttpServer: {
      httpServers: [{
        listenAddresses: [':9980'],
        authenticationPolicy: { allow: {} },
      }],
      enablePrometheus: true,
      enablePprof: true,
      enableActiveSpans: true,
    },
  },

  // Where bb_browser is reachable from the machine running Bazel; the scheduler and
  // workers put links to it in their messages.
  browserUrl: 'http://localhost:7984',

  // The storage of the Buildbarn processes: two bb_storage shards. The Action Cache
  // checks, before it returns an ActionResult, that every blob it refers to is still
  // in the CAS (completenessChecking), so clients never get a result whose outputs
  // were evicted.
  local shards = {
    '0': { backend: { grpc: { client: { address: 'storage-0:8981' } } }, weight: 1 },
    '1': { backend: { grpc: { client: { address: 'storage-1:8981' } } }, weight: 1 },
  },
  blobstore: {
    contentAddressableStorage: { sharding: { shards: shards } },
    actionCache: {
      completenessChecking: {
        backend: { sharding: { shards: shards } },
        maximumTotalTreeSizeBytes: 64 * 1024 * 1024,
      },
    },
  },

  // The largest blob this deployment promises to hold: the largest file of any image
  // the expander may put in the CAS, and the largest output file an action may write
  // (the runners' maximumFilePoolSizeBytes). 1 GiB covers the big shared libraries of
  // toolchain and CUDA images. Every 'local' CAS below (the storage shards and the
  // worker's cache) is sized so that one block holds a blob this large;
  // tests/buildbarn_configs.rs checks it. Raise it and the block files together.
  largestBlobSizeBytes: 1024 * 1024 * 1024,

  // Block layouts of the 'local' stores. bb_storage cuts its blocks file into
  // spareBlocks + oldBlocks + currentBlocks + newBlocks blocks of equal size and
  // refuses (INVALID_ARGUMENT) any blob larger than one block. A block is
  //   sector * floor(ceil(sizeBytes / sector) / blocks)   bytes,
  // where sector is the larger of the file system's block size and the page size
  // (4 KiB on most Linux hosts): just under sizeBytes / blocks. Few, large blocks let
  // the CAS hold large image files without huge block files; an eviction then drops
  // one of the 13 data blocks at once. An Action Cache must have exactly one new
  // block (bb_storage refuses to start otherwise), and its blocks only need to hold
  // one ActionResult (at most maximumMessageSizeBytes), so it keeps the usual 36
  // small blocks.
  casBlocks: { oldBlocks: 4, currentBlocks: 8, newBlocks: 1, spareBlocks: 2 },
  actionCacheBlocks: { oldBlocks: 8, currentBlocks: 24, newBlocks: 1, spareBlocks: 3 },

  // A bb_storage 'local' backend in files under `directory`: a key-location map of
  // keyLocationMapSizeBytes (66 bytes per entry; give it several entries per blob
  // stored) and blocksSizeBytes of data cut into blocks as `layout` says. The files
  // are created sparse and fill up as data is written. With `persistent`, the
  // contents survive a restart. With `dataIntegrityValidationCache`, a blob whose
  // checksum was verified is not verified again on every read for a while, which a
  // worker with a virtual build directory needs (it reads files piecemeal).
  localBlobAccess(directory, blocksSizeBytes, keyLocationMapSizeBytes, layout, persistent=false, dataIntegrityValidationCache=null):: {
    'local': {
      keyLocationMapOnBlockDevice: {
        file: {
          path: directory + '/key_location_map',
          sizeBytes: keyLocationMapSizeBytes,
        },
      },
      keyLocationMapMaximumGetAttempts: 16,
      keyLocationMapMaximumPutAttempts: 64,
      oldBlocks: layout.oldBlocks,
      currentBlocks: layout.currentBlocks,
      newBlocks: layout.newBlocks,
      blocksOnBlockDevice: {
        source: {
          file: {
            path: directory + '/blocks',
            sizeBytes: blocksSizeBytes,
          },
        },
        spareBlocks: layout.spareBlocks,
      } + (if dataIntegrityValidationCache != null then {
             dataIntegrityValidationCache: dataIntegrityValidationCache,
           } else {}),
    } + (if persistent then {
           persistent: {
             stateDirectoryPath: directory + '/persistent_state',
             minimumEpochInterval: '300s',
           },
         } else {}),
  },

  // The same storage as the expander sees it: through the frontend. The expander has
  // no sharding backend of its own; the frontend shards exactly as above, so blobs
  // the expander writes land where the scheduler and workers look for them.
  expanderBlobstore: {
    contentAddressableStorage: { grpc: { client: { address: 'frontend:8980' } } },
    actionCache: { grpc: { client: { address: 'frontend:8980' } } },
  },

  // Forwards the client's RequestMetadata on every hop from the frontend to the
  // scheduler, which derives invocation keys (fair scheduling per build) from it.
  forwardRequestMetadata: {
    expression: |||
      {
        "build.bazel.remote.execution.v2.requestmetadata-bin": incomingGRPCMetadata."build.bazel.remote.execution.v2.requestmetadata-bin"
      }
    |||,
  },

  // What the expander adds to every action it rewrites, in place of container-image:
  // a marker that only chroot workers advertise, so that expanded actions never land
  // on a worker that would not chroot into them.
  chrootMarker: { name: 'runner', value: 'chroot' },

  // The platform the chroot workers advertise: what clients send without
  // container-image (here OSFamily=linux), plus the marker. bb_scheduler matches it
  // exactly and requires it sorted by name, then value, in byte order (upper case
  // before lower case: OSFamily < runner).
  chrootPlatform: {
    properties: [
      { name: 'OSFamily', value: 'linux' },
      $.chrootMarker,
    ],
  },
}
