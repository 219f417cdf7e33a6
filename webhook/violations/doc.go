// Package violations reports Monitor and Protect violations: ViolationEvents, an
// agents.ExecEventSink (leader only), writes them as Warning Events on the pod, one Event
// per series (pod, container, executable, action) whose count it raises at most once per
// window, with writes rate-limited, and counts them
// (execgate_controller_violations_total). It writes Events and nothing else.
//
// It imports none of the controller's rooms (the sink interface it implements is
// agents.ExecEventSink): never binding, policy, learn or webhook.
package violations
