// Package agent is execgate's node agent: it turns pod policies (pushed by the
// webhook over gRPC, or read from the API server by the backstop watch) into
// enforcer bindings on the cgroups of the pods running on this node.
//
// It owns: the table of pods the node enforces (pod -> policy key, container
// names, bound cgroup ids), the bounded set of pods whose cgroup has not
// appeared yet, the tombstones of pods the API server deleted (a bounded set
// of UIDs: a push that arrives after the deletion is refused, not re-added),
// the rule that a bound pod's policy is fixed until the pod is deleted (a removed
// or changed execgate.io/policy label is reported once, never followed), the
// reaction to cgroup events, the start-up adoption of what the kernel
// already enforces, the garbage-collection sweep, the fan-out of exec events
// to subscribers, the agent's metrics and health endpoints, and:
//   - the violation log (violations.go): the first violation of a (pod,
//     container, executable, action) is logged, its repeats in the window
//     become one summary line, and first lines per window are bounded.
//   - Learn on the node (learn.go): each (pod, container, executable) is
//     published once (bounded LRU), held until it can be attributed to a
//     container, found by scanning the processes of a Learn pod's cgroups
//     when they are bound or adopted, and replayed every learnResync for the
//     controller. A file without a trustworthy path is never published.
//   - NodeStatusWriter (nodestatus.go): this node's ExecgateNode status,
//     written only when it changed. It writes no other object, and a failed
//     write is retried, never fatal to the agent.
//
// It must not touch BPF maps (it goes through nodeagent/enforcer), parse
// cgroup paths itself (nodeagent/cgroups does), or validate wire requests
// (nodeagent/server does, before they reach the Agent).
//
// Concurrency: one mutex (Agent.mu) guards the pod table, the tombstones and
// the Learn state; every writer of kernel state holds it, so the table and the
// enforcer never disagree for longer than one call. The violation log belongs
// to the fan-out goroutine, a NodeStatusWriter to the goroutine that calls its
// Run. Run starts every goroutine of the Agent under one errgroup; all of them
// return when its context ends.
package agent
