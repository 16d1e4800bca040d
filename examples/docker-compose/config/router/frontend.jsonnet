// Router mode: the frontend forwards Execute straight to the scheduler, which asks the
// expander to rewrite each action (see scheduler.jsonnet beside this file).
local common = import '../common.libsonnet';

(import '../frontend.jsonnet') + {
  schedulers: {
    '': {
      endpoint: {
        address: 'scheduler:8982',
        addMetadataJmespathExpression: common.forwardRequestMetadata,
      },
    },
  },
}
