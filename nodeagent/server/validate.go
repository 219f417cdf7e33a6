package server

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/execgate/execgate/internal/execpath"
	"github.com/execgate/execgate/nodeagent/podpolicy"
	agentv1 "github.com/execgate/execgate/proto/execgate/agent/v1"
)

// Limits on one request. The node-wide total of rules is the backend's to enforce.
const (
	MaxContainers              = 64
	MaxExecutablesPerContainer = 1024
	MaxPathBytes               = execpath.MaxLen       // PATH_MAX without the terminating NUL
	MaxPrefixBytes             = execpath.MaxPrefixLen // the LPM trie key's path[252]
	MaxUIDBytes                = 64
	MaxRequestIDBytes          = 128
	maxReportedViolations      = 10
)

// violations collects what is wrong with a request, by field path, so that
// one round trip tells the caller everything to fix (up to a bound).
type violations struct {
	list  []*errdetails.BadRequest_FieldViolation
	extra int
}

func (v *violations) add(field, format string, args ...any) {
	if len(v.list) >= maxReportedViolations {
		v.extra++
		return
	}
	v.list = append(v.list, &errdetails.BadRequest_FieldViolation{Field: field, Description: fmt.Sprintf(format, args...)})
}

// err returns nil or an InvalidArgument status carrying every violation in
// its message and as a google.rpc.BadRequest detail.
func (v *violations) err(what string) error {
	if len(v.list) == 0 {
		return nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "invalid %s: ", what)
	for i, fv := range v.list {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(fv.Field)
		b.WriteString(": ")
		b.WriteString(fv.Description)
	}
	if v.extra > 0 {
		fmt.Fprintf(&b, "; and %d more", v.extra)
	}
	st := status.New(codes.InvalidArgument, b.String())
	if withDetails, err := st.WithDetails(&errdetails.BadRequest{FieldViolations: v.list}); err == nil {
		st = withDetails
	}
	return st.Err()
}

// validateApplyPodPolicy checks everything in req and converts it. It returns
// an InvalidArgument status listing the problems, and no PodPolicy, if
// anything is wrong: nothing partial reaches the backend.
func validateApplyPodPolicy(req *agentv1.ApplyPodPolicyRequest) (*podpolicy.PodPolicy, error) {
	var v violations
	out := &podpolicy.PodPolicy{RequestID: req.GetRequestId()}
	checkRequestID(&v, "request_id", req.GetRequestId())

	pod := req.GetPod()
	if pod == nil {
		v.add("pod", "is required")
	} else {
		out.Pod = validatePod(&v, pod)
	}
	policy := req.GetPolicy()
	if policy == nil {
		v.add("policy", "is required")
	} else {
		out.Policy = validatePolicy(&v, policy)
	}
	if err := v.err("ApplyPodPolicyRequest"); err != nil {
		return nil, err
	}
	return out, nil
}

func validatePod(v *violations, pod *agentv1.Pod) podpolicy.Pod {
	checkUID(v, "pod.uid", pod.GetUid())
	checkDNSLabel(v, "pod.namespace", pod.GetNamespace())
	checkDNSSubdomain(v, "pod.name", pod.GetName())
	checkDNSSubdomain(v, "pod.node_name", pod.GetNodeName())
	out := podpolicy.Pod{
		UID:       pod.GetUid(),
		Namespace: pod.GetNamespace(),
		Name:      pod.GetName(),
		NodeName:  pod.GetNodeName(),
	}
	switch pod.GetQosClass() {
	case agentv1.QOSClass_QOS_CLASS_GUARANTEED:
		out.QoSClass = podpolicy.QoSGuaranteed
	case agentv1.QOSClass_QOS_CLASS_BURSTABLE:
		out.QoSClass = podpolicy.QoSBurstable
	case agentv1.QOSClass_QOS_CLASS_BEST_EFFORT:
		out.QoSClass = podpolicy.QoSBestEffort
	default:
		v.add("pod.qos_class", "is %s; set the pod's status.qosClass (GUARANTEED, BURSTABLE or BEST_EFFORT)", pod.GetQosClass().String())
	}

	containers := pod.GetContainers()
	if len(containers) == 0 {
		v.add("pod.containers", "is empty; list the pod's containers (init and ephemeral containers included)")
	}
	if len(containers) > MaxContainers {
		v.add("pod.containers", "has %d containers; at most %d are supported", len(containers), MaxContainers)
		return out
	}
	seen := make(map[string]bool, len(containers))
	out.Containers = make([]podpolicy.Container, 0, len(containers))
	for i, c := range containers {
		path := "pod.containers[" + strconv.Itoa(i) + "]"
		checkDNSLabel(v, path+".name", c.GetName())
		if seen[c.GetName()] {
			v.add(path+".name", "%s appears twice; container names are unique in a pod", quote(c.GetName()))
		}
		seen[c.GetName()] = true
		if id := c.GetContainerId(); id != "" {
			checkContainerID(v, path+".container_id", id)
		}
		out.Containers = append(out.Containers, podpolicy.Container{Name: c.GetName(), ContainerID: c.GetContainerId()})
	}
	return out
}

func validatePolicy(v *violations, p *agentv1.Policy) podpolicy.Policy {
	checkUID(v, "policy.uid", p.GetUid())
	checkDNSLabel(v, "policy.namespace", p.GetNamespace())
	checkDNSSubdomain(v, "policy.name", p.GetName())
	if p.GetGeneration() == 0 {
		v.add("policy.generation", "must be at least 1 (the policy's metadata.generation)")
	}
	out := podpolicy.Policy{
		UID:       p.GetUid(),
		Namespace: p.GetNamespace(),
		Name:      p.GetName(),
		Version:   p.GetGeneration(),
	}
	switch p.GetMode() {
	case agentv1.Mode_MODE_LEARN:
		out.Mode = podpolicy.ModeLearn
	case agentv1.Mode_MODE_MONITOR:
		out.Mode = podpolicy.ModeMonitor
	case agentv1.Mode_MODE_PROTECT:
		out.Mode = podpolicy.ModeProtect
	default:
		v.add("policy.mode", "is %s; use MODE_LEARN, MODE_MONITOR or MODE_PROTECT", p.GetMode().String())
	}

	rules := p.GetRulesByContainer()
	if len(rules) > MaxContainers {
		v.add("policy.rules_by_container", "has %d containers; at most %d are supported", len(rules), MaxContainers)
		return out
	}
	// Map order is random: walk keys sorted so that the reported violations are stable.
	names := make([]string, 0, len(rules))
	for name := range rules {
		names = append(names, name)
	}
	slices.Sort(names)
	out.RulesByContainer = make(map[string][]string, len(rules))
	for _, name := range names {
		path := "policy.rules_by_container[" + quote(name) + "]" // cut: a key is not yet known to be short
		if name != podpolicy.AnyContainer {
			checkDNSLabel(v, path, name)
		}
		exes := rules[name].GetExecutables()
		if len(exes) > MaxExecutablesPerContainer {
			v.add(path+".executables", "has %d entries; at most %d per container are supported (use a directory prefix ending in \"/\")", len(exes), MaxExecutablesPerContainer)
			continue
		}
		for i, exe := range exes {
			if problem := execpath.Problem(exe); problem != "" {
				v.add(path+".executables["+strconv.Itoa(i)+"]", "%s %s", execpath.Quote(exe), problem)
			}
		}
		clean := slices.Clone(exes)
		slices.Sort(clean)
		out.RulesByContainer[name] = slices.Compact(clean)
	}
	checkDigest(v, p.GetDigest(), out)
	return out
}

// checkDigest refuses a request whose rules are not the content its sender
// addressed: a cut or altered policy must not load as that version. Empty is
// accepted (the digest is optional on the wire); the agent then uses its own.
func checkDigest(v *violations, digest string, p podpolicy.Policy) {
	if digest == "" || len(v.list) > 0 {
		return // a policy already refused needs no second reason
	}
	if got := p.Digest(); digest != got {
		v.add("policy.digest", "%s does not match the rules and mode sent (%s): the request was cut or altered on the way", quote(digest), got)
	}
}

func validateRemovePod(req *agentv1.RemovePodRequest) error {
	var v violations
	checkUID(&v, "pod_uid", req.GetPodUid())
	checkRequestID(&v, "request_id", req.GetRequestId())
	return v.err("RemovePodRequest")
}

func validateRemovePolicy(req *agentv1.RemovePolicyRequest) (podpolicy.PolicyRef, error) {
	var v violations
	checkDNSLabel(&v, "namespace", req.GetNamespace())
	checkDNSSubdomain(&v, "name", req.GetName())
	if req.GetPolicyUid() != "" {
		checkUID(&v, "policy_uid", req.GetPolicyUid())
	}
	checkRequestID(&v, "request_id", req.GetRequestId())
	return podpolicy.PolicyRef{Namespace: req.GetNamespace(), Name: req.GetName(), UID: req.GetPolicyUid()},
		v.err("RemovePolicyRequest")
}

func validateWatchEvents(req *agentv1.WatchEventsRequest) (podpolicy.EventFilter, error) {
	var v violations
	f := req.GetFilter()
	out := podpolicy.EventFilter{
		Namespace: f.GetNamespace(),
		Pod:       f.GetPod(),
		Container: f.GetContainer(),
		Policy:    f.GetPolicy(),
	}
	if out.Namespace != "" {
		checkDNSLabel(&v, "filter.namespace", out.Namespace)
	}
	if out.Pod != "" {
		checkDNSSubdomain(&v, "filter.pod", out.Pod)
	}
	if out.Container != "" {
		checkDNSLabel(&v, "filter.container", out.Container)
	}
	if out.Policy != "" {
		ns, name, ok := strings.Cut(out.Policy, "/")
		if !ok {
			v.add("filter.policy", "%s must be \"namespace/name\"", quote(out.Policy))
		} else {
			checkDNSLabel(&v, "filter.policy", ns)
			checkDNSSubdomain(&v, "filter.policy", name)
		}
	}
	for i, a := range f.GetActions() {
		switch a {
		case agentv1.Action_ACTION_ALLOWED_LEARN, agentv1.Action_ACTION_REPORTED, agentv1.Action_ACTION_DENIED:
			out.Actions = append(out.Actions, podpolicy.Action(a))
		default:
			v.add("filter.actions["+strconv.Itoa(i)+"]", "is %s; use ACTION_ALLOWED_LEARN, ACTION_REPORTED or ACTION_DENIED", a.String())
		}
	}
	return out, v.err("WatchEventsRequest")
}

// checkUID accepts Kubernetes UIDs: RFC 4122 text form, or any 1..64 of [a-z0-9-].
func checkUID(v *violations, field, uid string) {
	switch {
	case uid == "":
		v.add(field, "is required (the object's metadata.uid)")
	case len(uid) > MaxUIDBytes:
		v.add(field, "is %d bytes long; at most %d", len(uid), MaxUIDBytes)
	case !onlyBytes(uid, isLowerAlnum, '-'):
		v.add(field, "%s must contain only lowercase letters, digits and \"-\" (a metadata.uid)", quote(uid))
	}
}

func checkRequestID(v *violations, field, id string) {
	switch {
	case len(id) > MaxRequestIDBytes:
		v.add(field, "is %d bytes long; at most %d", len(id), MaxRequestIDBytes)
	case !onlyBytes(id, isAlnum, '-', '_', '.', ':'):
		v.add(field, "%s may contain only letters, digits and \"-_.:\"", quote(id))
	}
}

// checkDNSLabel enforces RFC 1123 labels (namespaces, container names).
func checkDNSLabel(v *violations, field, s string) {
	if problem := dnsLabelProblem(s); problem != "" {
		v.add(field, "%s %s", quote(s), problem)
	}
}

// checkDNSSubdomain enforces RFC 1123 subdomains (pod, node and policy names).
func checkDNSSubdomain(v *violations, field, s string) {
	switch {
	case s == "":
		v.add(field, "is required")
		return
	case len(s) > 253:
		v.add(field, "is %d bytes long; a DNS-1123 subdomain has at most 253", len(s))
		return
	}
	for label := range strings.SplitSeq(s, ".") {
		if problem := dnsLabelProblem(label); problem != "" {
			v.add(field, "%s is not a DNS-1123 subdomain: lowercase letters, digits, \"-\" and \".\", starting and ending with a letter or digit", quote(s))
			return
		}
	}
}

func dnsLabelProblem(s string) string {
	switch {
	case s == "":
		return "must not be empty"
	case len(s) > 63:
		return "is longer than 63 bytes (DNS-1123 label)"
	case !onlyBytes(s, isLowerAlnum, '-') || s[0] == '-' || s[len(s)-1] == '-':
		return "is not a DNS-1123 label: lowercase letters, digits and \"-\", starting and ending with a letter or digit"
	}
	return ""
}

// checkContainerID accepts "<runtime>://<id>" as in a pod's containerStatuses.
func checkContainerID(v *violations, field, id string) {
	runtime, rest, ok := strings.Cut(id, "://")
	switch {
	case !ok || runtime == "" || rest == "":
		v.add(field, "%s must be \"<runtime>://<id>\" as in status.containerStatuses[].containerID", quote(id))
	case len(runtime) > 32 || !onlyBytes(runtime, isLowerAlnum, '-', '.', '+'):
		v.add(field, "%s has an invalid runtime name", quote(id))
	case len(rest) > 128 || !onlyBytes(rest, isAlnum, '-', '_', '.'):
		v.add(field, "%s has an invalid id: at most 128 letters, digits, \"-_.\"", quote(id))
	}
}

func onlyBytes(s string, class func(byte) bool, extra ...byte) bool {
	for i := 0; i < len(s); i++ {
		if !class(s[i]) && !slices.Contains(extra, s[i]) {
			return false
		}
	}
	return true
}

func isLowerAlnum(c byte) bool { return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' }
func isAlnum(c byte) bool      { return isLowerAlnum(c) || c >= 'A' && c <= 'Z' }

// quote quotes a user value for an error message, cut so that a 4 KiB path
// does not make a 4 KiB message.
func quote(s string) string {
	const max = 80
	if len(s) > max {
		return strconv.Quote(s[:max]) + "..."
	}
	return strconv.Quote(s)
}
