// Package enforcer owns execgate's kernel state on one node: it loads (or
// adopts from bpffs) the shared exec program, attaches it, pins everything,
// and turns policy versions and cgroup bindings into map entries.
//
// Guarantees it keeps:
//   - a policy update is atomic for every bound cgroup: the new allowlist is
//     complete before any binding points at it, and the old one is deleted
//     only after an RCU grace period, so no exec in flight sees a half list;
//   - every input is validated before anything is written; a failed call
//     leaves the kernel maps as they were;
//   - state survives the process: a new Enforcer adopts what is pinned.
//
// It must not know Kubernetes: callers speak in cgroup ids, opaque policy
// keys and container names. One Enforcer per node; its methods are safe for
// concurrent use (a single mutex serialises writers).
package enforcer
