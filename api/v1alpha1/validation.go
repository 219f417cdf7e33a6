package v1alpha1

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/execgate/execgate/internal/execpath"
)

// These checks repeat the CRD schema's OpenAPI and CEL rules in Go. The API server is the
// first line; the webhook and the node agent call Validate again before acting, because a
// CRD can be older than the code, hand-edited, or bypassed by a direct write to etcd.
// A test keeps both in step (crd_test.go).

// maxReportedProblems bounds the error a bad object produces: a list of 1024 bad paths
// should say what is wrong, not fill an admission response.
const maxReportedProblems = 16

// Validate reports every way p breaks the rules of the WorkloadPolicy schema, one line
// per problem, each naming the field to fix. It returns nil for a valid policy.
func (p *WorkloadPolicy) Validate() error {
	var v problems
	if n := len(p.Name); n > 63 {
		v.addf("metadata.name: %s is %d characters long; pods name the policy in the label %s, whose values are limited to 63 characters", quote(p.Name), n, PolicyLabel)
	}
	spec := field("spec")
	switch p.Spec.Mode {
	case ModeLearn, ModeMonitor, ModeProtect:
	case "":
		v.addf("%s.mode: required; set one of Learn, Monitor, Protect", spec)
	default:
		v.addf("%s.mode: %s is not a mode; set one of Learn, Monitor, Protect", spec, quote(string(p.Spec.Mode)))
	}
	rules := spec + ".rulesByContainer"
	validateRules(&v, rules, p.Spec.RulesByContainer)
	if p.Spec.Mode == ModeMonitor || p.Spec.Mode == ModeProtect {
		if len(p.Spec.RulesByContainer) == 0 {
			v.addf("%s: mode %s needs rules: list at least one container (use mode Learn to record a proposal first)", rules, p.Spec.Mode)
		}
		for _, c := range sortedKeys(p.Spec.RulesByContainer) {
			if len(p.Spec.RulesByContainer[c].Executables) == 0 {
				v.addf("%s[%s].executables: mode %s needs at least one executable; a container that may execute nothing cannot start", rules, quote(c), p.Spec.Mode)
			}
		}
	}
	return v.err()
}

// Validate reports every way p breaks the rules of the WorkloadPolicyProposal schema.
// The node agent calls it before writing a proposal, so that what it learnt can always be
// promoted into a policy.
func (p *WorkloadPolicyProposal) Validate() error {
	var v problems
	w := p.Spec.Workload
	wf := field("spec.workload")
	switch w.Kind {
	case "Deployment", "StatefulSet", "DaemonSet":
		if !strings.HasPrefix(w.APIVersion, "apps/") {
			v.addf("%s.apiVersion: %s does not match kind %s; use apps/v1", wf, quote(w.APIVersion), w.Kind)
		}
	case "CronJob", "Job":
		if !strings.HasPrefix(w.APIVersion, "batch/") {
			v.addf("%s.apiVersion: %s does not match kind %s; use batch/v1", wf, quote(w.APIVersion), w.Kind)
		}
	case "Pod":
		if w.APIVersion == "" || strings.Contains(w.APIVersion, "/") {
			v.addf("%s.apiVersion: %s does not match kind Pod; use v1", wf, quote(w.APIVersion))
		}
	default:
		v.addf("%s.kind: %s is not a workload kind; set one of Deployment, StatefulSet, DaemonSet, CronJob, Job, Pod", wf, quote(w.Kind))
	}
	if len(w.APIVersion) > 64 {
		v.addf("%s.apiVersion: is %d characters long; at most 64 are allowed", wf, len(w.APIVersion))
	}
	for _, msg := range validation.IsDNS1123Subdomain(w.Name) {
		v.addf("%s.name: %s is not a valid object name: %s", wf, quote(w.Name), msg)
	}
	validateRules(&v, "spec.rulesByContainer", p.Spec.RulesByContainer)
	return v.err()
}

// ValidateExecutable checks one entry of ContainerRules.Executables and returns nil or
// the reason it is invalid, without a field path. The rules are internal/execpath's, which
// the node agent's gRPC server and its kernel loader apply too.
func ValidateExecutable(path string) error {
	return execpath.Check(path)
}

func validateRules(v *problems, at field, rules RulesByContainer) {
	if n := len(rules); n > MaxContainers {
		v.addf("%s: has %d containers; at most %d are allowed", at, n, MaxContainers)
	}
	total := 0
	for _, r := range rules {
		total += len(r.Executables)
	}
	if total > MaxExecutablesPerPolicy {
		v.addf("%s: lists %d executables over all containers; at most %d are allowed (use directory prefix rules ending in \"/\", or the \"*\" key for rules many containers share)", at, total, MaxExecutablesPerPolicy)
	}
	for _, c := range sortedKeys(rules) {
		if c != AnyContainer {
			for _, msg := range validation.IsDNS1123Label(c) {
				v.addf("%s: key %s is not a container name (%s); use the container's name, or \"*\" for any container not listed", at, quote(c), msg)
			}
		}
		exe := field(fmt.Sprintf("%s[%s].executables", at, quote(c)))
		paths := rules[c].Executables
		if n := len(paths); n > MaxExecutablesPerContainer {
			v.addf("%s: has %d entries; at most %d are allowed (use a directory prefix rule ending in \"/\" to cover many files)", exe, n, MaxExecutablesPerContainer)
		}
		seen := make(map[string]int, len(paths))
		for i, path := range paths {
			if msg := execpath.Problem(path); msg != "" {
				v.addf("%s[%d]: %s %s", exe, i, quote(path), msg)
			}
			// listType=set: the API server rejects duplicates too.
			if first, dup := seen[path]; dup {
				v.addf("%s[%d]: %s duplicates entry %d; list each path once", exe, i, quote(path), first)
			} else {
				seen[path] = i
			}
		}
	}
}

func sortedKeys(rules RulesByContainer) []string {
	keys := make([]string, 0, len(rules))
	for k := range rules {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// quote quotes a value for a message, cut to 80 bytes: a bad object says what is wrong
// with a 4 KiB path or key without repeating it.
func quote(s string) string { return execpath.Quote(s) }

// field is the JSON path of a field, as the messages print it.
type field string

// problems collects validation failures and joins them into one error.
type problems struct {
	list    []error
	dropped int
}

func (p *problems) addf(format string, args ...any) {
	if len(p.list) >= maxReportedProblems {
		p.dropped++
		return
	}
	p.list = append(p.list, fmt.Errorf(format, args...))
}

func (p *problems) err() error {
	if p.dropped > 0 {
		p.list = append(p.list, fmt.Errorf("... and %d more problems", p.dropped))
	}
	return errors.Join(p.list...)
}
