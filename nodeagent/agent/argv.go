package agent

import (
	"regexp"

	"github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/nodeagent/enforcer"
)

// setArgvPolicy records the spec.argv of policy key (ns/name); nil spec forgets it.
func (a *Agent) setArgvPolicy(key enforcer.PolicyKey, spec *v1alpha1.ArgvCapture, known bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !known {
		delete(a.argv, key)
		return
	}
	a.argv[key] = newArgvPolicy(spec)
}

// argvPolicy is what a WorkloadPolicy's spec.argv makes of a command line before the agent
// logs it or sends it to the controller (issue 14.10). The zero value reports it in full.
type argvPolicy struct {
	drop     bool
	patterns []*regexp.Regexp
}

// newArgvPolicy compiles spec. A pattern that does not compile (the API server refuses them,
// so only an object that bypassed its validation has one) drops the command line: the
// secret it was meant to mask must not leak because the mask is broken.
func newArgvPolicy(spec *v1alpha1.ArgvCapture) argvPolicy {
	if spec == nil {
		return argvPolicy{}
	}
	if spec.Capture == v1alpha1.ArgvCaptureNone {
		return argvPolicy{drop: true}
	}
	var p argvPolicy
	for _, pat := range spec.Redact {
		re, err := regexp.Compile(pat)
		if err != nil {
			return argvPolicy{drop: true}
		}
		p.patterns = append(p.patterns, re)
	}
	return p
}

// apply returns argv as the policy lets it be reported; argv itself is not modified.
func (p argvPolicy) apply(argv []string) []string {
	if p.drop {
		return nil
	}
	if len(p.patterns) == 0 {
		return argv
	}
	out := make([]string, len(argv))
	for i, arg := range argv {
		for _, re := range p.patterns {
			arg = redact(re, arg)
		}
		out[i] = arg
	}
	return out
}

// redact replaces every match of re in s by the redaction mark, or, when re has capture
// groups, only what the groups matched.
func redact(re *regexp.Regexp, s string) string {
	matches := re.FindAllStringSubmatchIndex(s, -1)
	if matches == nil {
		return s
	}
	var out []byte
	last := 0
	for _, m := range matches {
		spans := [][2]int{{m[0], m[1]}}
		if len(m) > 2 {
			spans = spans[:0]
			for g := 2; g+1 < len(m); g += 2 {
				if m[g] >= 0 && m[g] >= last {
					spans = append(spans, [2]int{m[g], m[g+1]})
				}
			}
		}
		for _, sp := range spans {
			if sp[0] < last {
				continue // nested group inside one already masked
			}
			out = append(out, s[last:sp[0]]...)
			out = append(out, v1alpha1.ArgvRedaction...)
			last = sp[1]
		}
	}
	return string(append(out, s[last:]...))
}
