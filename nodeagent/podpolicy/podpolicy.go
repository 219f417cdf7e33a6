// Package podpolicy defines the validated, proto-free request types that the
// node agent's gRPC server (nodeagent/server) hands to its backend, and the
// errors a backend returns to say why it refused one.
//
// It owns no behaviour but Digest, the content address of a policy version
// that the controller sends and the agent checks, so that both compute it in
// one place. Values of these types have already passed the server's
// validation (names, UIDs, paths, limits), so a backend can trust their
// shape. It must not import the wire API (proto), Kubernetes or BPF
// packages, so that both sides of the server interface stay free of them.
package podpolicy

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"maps"
	"slices"
	"strconv"
)

// Mode is how a policy is enforced. The values equal the kernel program's
// mode byte and the wire enum.
type Mode uint8

const (
	ModeLearn   Mode = 1 // allow, record every executable
	ModeMonitor Mode = 2 // allow, report executables outside the allowlist
	ModeProtect Mode = 3 // deny with EPERM and report
)

func (m Mode) String() string {
	switch m {
	case ModeLearn:
		return "Learn"
	case ModeMonitor:
		return "Monitor"
	case ModeProtect:
		return "Protect"
	}
	return "Mode(" + strconv.Itoa(int(m)) + ")"
}

// QoSClass is the pod's Kubernetes QoS class; the strings equal
// corev1.PodQOSClass values so that cgroup naming code can use them as is.
type QoSClass string

const (
	QoSGuaranteed QoSClass = "Guaranteed"
	QoSBurstable  QoSClass = "Burstable"
	QoSBestEffort QoSClass = "BestEffort"
)

// Action is what the kernel program did with an exec. Values equal the wire enum.
type Action uint8

const (
	ActionAllowedLearn Action = 1
	ActionReported     Action = 2
	ActionDenied       Action = 3
)

// Container is one container of a pod.
type Container struct {
	Name string
	// ContainerID is "<runtime>://<id>", or empty while the container has not
	// been created yet.
	ContainerID string
}

// Pod identifies a pod and what the agent needs to find its cgroups.
type Pod struct {
	UID        string
	Namespace  string
	Name       string
	NodeName   string
	QoSClass   QoSClass
	Containers []Container
}

// AnyContainer is the RulesByContainer key whose rules apply to every
// container the policy does not name (the CRD's "*").
const AnyContainer = "*"

// Policy is one version of a workload policy: the whole policy, allowlists
// per container name and AnyContainer, whatever pod it is applied for (the
// agent picks each container's rules when it binds it).
type Policy struct {
	UID       string
	Namespace string
	Name      string
	// Version is the policy generation; a higher version replaces a lower one,
	// never the other way round.
	Version uint64
	Mode    Mode
	// RulesByContainer maps a container name to its allowlist: absolute paths,
	// deduplicated and sorted; a trailing "/" marks a directory prefix.
	RulesByContainer map[string][]string
}

// Key is the policy's stable identity on a node, "namespace/name".
func (p *Policy) Key() string { return p.Namespace + "/" + p.Name }

// Digest is the content address of the policy version: Digest(p.Mode,
// p.RulesByContainer).
func (p *Policy) Digest() string { return Digest(p.Mode, p.RulesByContainer) }

// Digest names a policy's content: "sha256:" and the hex SHA-256 of the mode
// and, by container key in byte order, the key and its sorted, deduplicated
// paths, each field ended by a NUL (which no validated name or path contains).
// Equal content has one digest whatever the order of keys and paths, so the
// controller's push and the agent's own API-server watch agree on it. A key
// with an empty list and a missing key differ (the first allows nothing, the
// second falls back to AnyContainer), and so do their digests.
func Digest(mode Mode, rules map[string][]string) string {
	h := sha256.New()
	buf := make([]byte, 0, 32<<10) // hashed in chunks: one Write per path costs more than the hash
	field := func(s string) {
		if len(buf)+len(s)+1 > cap(buf) {
			h.Write(buf)
			buf = buf[:0]
		}
		buf = append(append(buf, s...), 0)
	}
	field("execgate.io/policy-digest/v1")
	field(mode.String())
	for _, name := range slices.Sorted(maps.Keys(rules)) {
		paths := rules[name]
		if !sortedUnique(paths) { // what the agent's validation hands over already is
			paths = slices.Compact(slices.Sorted(slices.Values(paths)))
		}
		field("container")
		field(name)
		field(strconv.Itoa(len(paths)))
		for _, p := range paths {
			field(p)
		}
	}
	h.Write(buf)
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

func sortedUnique(s []string) bool {
	for i := 1; i < len(s); i++ {
		if s[i-1] >= s[i] {
			return false
		}
	}
	return true
}

// Entries is the number of rules in the policy, over all containers.
func (p *Policy) Entries() int {
	n := 0
	for _, rules := range p.RulesByContainer {
		n += len(rules)
	}
	return n
}

// PodPolicy asks the backend to enforce Policy on Pod.
type PodPolicy struct {
	Pod    Pod
	Policy Policy
	// RequestID correlates logs with the caller (may be empty).
	RequestID string
}

// PolicyRef names a loaded policy. UID, when set, must match the loaded policy's.
type PolicyRef struct {
	Namespace string
	Name      string
	UID       string
}

// Key is "namespace/name", as Policy.Key.
func (r PolicyRef) Key() string { return r.Namespace + "/" + r.Name }

// EventFilter selects exec events. Empty fields match everything.
type EventFilter struct {
	Namespace string
	Pod       string
	Container string
	// Policy is "namespace/name".
	Policy string
	// Actions matches any of them; empty matches all.
	Actions []Action
}

// Errors a backend wraps (fmt.Errorf("...: %w", ErrX)) so that the server can
// tell the caller what kind of failure it was. Any other error is reported as
// an internal error.
var (
	// ErrLimitExceeded: a node-wide limit (rules, policies, map entries) would
	// be exceeded. Retrying the same request will not help until something is
	// removed.
	ErrLimitExceeded = errors.New("limit exceeded")
	// ErrConflict: the request contradicts the agent's state, e.g. removing a
	// policy that pods still use, or a policy uid that does not match.
	ErrConflict = errors.New("conflicts with the agent's state")
	// ErrNotReady: the agent cannot serve the request yet (enforcer not
	// attached); the caller may retry.
	ErrNotReady = errors.New("agent not ready")
)
