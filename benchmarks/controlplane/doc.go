// Package controlplane measures issue 7 items 4-6 through the real control
// plane of test/e2e/framework: etcd, kube-apiserver and kube-scheduler as
// processes, the chart's manifests, the real execgate-controller (binding
// webhook, policy reconciler) and one real execgate-agent per simulated node,
// enforcing in this machine's kernel.
//
//   - Item 4, bind-to-kernel latency: pods, each with its own WorkloadPolicy,
//     bound one at a time with pods/binding calls; from before the call to
//     its return (the webhook's push is acknowledged inside it) and to the
//     agent's applied_at for the pod (its policy is in the maps).
//   - Item 5, scheduling throughput: a burst of pods offered by parallel
//     creators to the real scheduler, until every one is bound; without the
//     webhook, with it and healthy agents, with one agent dead (fail-open).
//   - Item 6, policy update: an allowlist change, from the Update call until
//     every node running the policy's pods reports the new version.
//
// Bench implements harness.ControlPlaneBench. It owns the environments it
// starts and stops them before Run returns, on error and cancellation too.
// It must not be imported by product code, and it measures what runs: it
// changes nothing in the controller or the agents beyond their flags.
package controlplane
