// Router mode: the expander serves only ActionRouter (and Health) on port 8985, which
// the scheduler's actionRouter.remote.grpcClient points at. Registries, storage and
// expansion settings are those of proxy mode; `scheduler::` hides the scheduler
// endpoint inherited from it, so nothing is forwarded.
(import '../expander.jsonnet') + {
  scheduler:: null,
}
