// Package agent is execgate's node agent: it turns pod policies (pushed by the
// webhook over gRPC, or read from the API server by the backstop watch) into
// enforcer bindings on the cgroups of the pods running on this node.
//
// It owns: the table of pods the node enforces (pod -> policy key, container
// names, bound cgroup ids), the bounded set of pods whose cgroup has not
// appeared yet, the reaction to cgroup events, the start-up adoption of what
// the kernel already enforces, the garbage-collection sweep, the fan-out of
// exec events to subscribers, the agent's metrics and health endpoints.
//
// It must not touch BPF maps (it goes through nodeagent/enforcer), parse
// cgroup paths itself (nodeagent/cgroups does), or validate wire requests
// (nodeagent/server does, before they reach the Agent).
//
// Concurrency: one mutex (Agent.mu) guards the pod table; every writer of
// kernel state holds it, so the table and the enforcer never disagree for
// longer than one call. Run starts every goroutine under one errgroup; all of
// them return when its context ends.
package agent
