// Router mode: for every Execute, bb_scheduler calls
// buildbarn.remoteactionrouter.ActionRouter/RouteAction on the expander, queues the
// Action it returns (image expanded, container-image replaced by runner=chroot) and
// keeps the client's action digest, under which the worker caches the result. The
// expander also returns the invocation keys (correlated invocations ID, then tool
// invocation ID), as the simple router of proxy mode derives them.
(import '../scheduler.jsonnet') + {
  actionRouter: {
    remote: {
      grpcClient: { address: 'expander:8985' },
      initialSizeClassAnalyzer: {
        defaultExecutionTimeout: '1800s',
        maximumExecutionTimeout: '7200s',
      },
    },
  },
}
