package v1alpha1_test

import (
	"fmt"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/execgate/execgate/api/v1alpha1"
)

func exe(paths ...string) v1alpha1.ContainerRules {
	return v1alpha1.ContainerRules{Executables: paths}
}

func policy(mode v1alpha1.Mode, rules v1alpha1.RulesByContainer) *v1alpha1.WorkloadPolicy {
	return &v1alpha1.WorkloadPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop"},
		Spec:       v1alpha1.WorkloadPolicySpec{Mode: mode, RulesByContainer: rules},
	}
}

func TestWorkloadPolicyValidate(t *testing.T) {
	fill := func(n int, f func(i int) string) []string {
		s := make([]string, n)
		for i := range s {
			s[i] = f(i)
		}
		return s
	}
	containers := func(n int) v1alpha1.RulesByContainer {
		r := v1alpha1.RulesByContainer{}
		for i := range n {
			r[fmt.Sprintf("c%d", i)] = exe("/bin/sh")
		}
		return r
	}
	tests := []struct {
		name   string
		policy *v1alpha1.WorkloadPolicy
		// want lists substrings of the error, in order; empty means valid.
		want []string
	}{
		{"protect with rules", policy(v1alpha1.ModeProtect, v1alpha1.RulesByContainer{
			"web": exe("/usr/bin/id", "/opt/app/", "/usr/lib/.hidden/..x/..."),
			"*":   exe("/bin/sh"),
		}), nil},
		{"learn without rules", policy(v1alpha1.ModeLearn, nil), nil},
		{"learn with an empty container", policy(v1alpha1.ModeLearn, v1alpha1.RulesByContainer{"web": {}}), nil},
		{"limits reached", policy(v1alpha1.ModeProtect, v1alpha1.RulesByContainer{
			"web":                   exe(fill(1024, func(i int) string { return "/bin/" + strings.Repeat("x", i+1) })...),
			"big":                   exe("/"+strings.Repeat("a", 4094), "/"+strings.Repeat("a", 250)+"/"),
			strings.Repeat("a", 63): exe("/a"),
		}), nil},
		{"64 containers", policy(v1alpha1.ModeLearn, containers(64)), nil},
		{"4096 executables over all containers", policy(v1alpha1.ModeProtect, v1alpha1.RulesByContainer{
			"a": exe(fill(1024, func(i int) string { return fmt.Sprintf("/a/%d", i) })...),
			"b": exe(fill(1024, func(i int) string { return fmt.Sprintf("/b/%d", i) })...),
			"c": exe(fill(1024, func(i int) string { return fmt.Sprintf("/c/%d", i) })...),
			"d": exe(fill(1024, func(i int) string { return fmt.Sprintf("/d/%d", i) })...),
		}), nil},

		{"mode missing", policy("", nil), []string{`spec.mode: required; set one of Learn, Monitor, Protect`}},
		{"mode unknown", policy("Enforce", nil), []string{`spec.mode: "Enforce" is not a mode`}},
		{"protect without rules", policy(v1alpha1.ModeProtect, nil),
			[]string{`spec.rulesByContainer: mode Protect needs rules`}},
		{"monitor with an empty container", policy(v1alpha1.ModeMonitor, v1alpha1.RulesByContainer{"web": exe("/a"), "side": {}}),
			[]string{`spec.rulesByContainer["side"].executables: mode Monitor needs at least one executable`}},
		{"relative path", policy(v1alpha1.ModeProtect, v1alpha1.RulesByContainer{"web": exe("/a", "/b", "/c", "usr/bin/id")}),
			[]string{`spec.rulesByContainer["web"].executables[3]: "usr/bin/id" is not an absolute path`}},
		{"empty path", policy(v1alpha1.ModeLearn, v1alpha1.RulesByContainer{"web": exe("")}),
			[]string{`executables[0]: "" is empty`}},
		{"NUL byte", policy(v1alpha1.ModeLearn, v1alpha1.RulesByContainer{"web": exe("/bin/i\x00d")}),
			[]string{`executables[0]: "/bin/i\x00d" contains a NUL byte`}},
		{"double slash", policy(v1alpha1.ModeLearn, v1alpha1.RulesByContainer{"web": exe("/usr//bin/id")}),
			[]string{`"/usr//bin/id" contains "//"`}},
		{"dot segment", policy(v1alpha1.ModeLearn, v1alpha1.RulesByContainer{"web": exe("/usr/./bin/id")}),
			[]string{`"/usr/./bin/id" contains a "." or ".." segment`}},
		{"dot-dot segment", policy(v1alpha1.ModeLearn, v1alpha1.RulesByContainer{"web": exe("/usr/../bin/id")}),
			[]string{`contains a "." or ".." segment`}},
		{"trailing dot", policy(v1alpha1.ModeLearn, v1alpha1.RulesByContainer{"web": exe("/usr/bin/.")}),
			[]string{`contains a "." or ".." segment`}},
		{"trailing dot-dot", policy(v1alpha1.ModeLearn, v1alpha1.RulesByContainer{"web": exe("/usr/bin/..")}),
			[]string{`contains a "." or ".." segment`}},
		{"path too long", policy(v1alpha1.ModeLearn, v1alpha1.RulesByContainer{"web": exe("/" + strings.Repeat("a", 4095))}),
			[]string{`is 4096 bytes long; the kernel executes paths of at most 4095 bytes`}},
		{"root prefix would allow everything", policy(v1alpha1.ModeMonitor, v1alpha1.RulesByContainer{"debug": exe("/")}),
			[]string{`spec.rulesByContainer["debug"].executables[0]: "/" would allow every file`}},
		{"dynamic loader", policy(v1alpha1.ModeProtect, v1alpha1.RulesByContainer{"web": exe("/usr/bin/id", "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")}),
			[]string{`executables[1]: "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" is a dynamic loader`, "allows everything"}},
		{"directory holding the loader", policy(v1alpha1.ModeProtect, v1alpha1.RulesByContainer{"web": exe("/usr/lib/")}),
			[]string{`executables[0]: "/usr/lib/" is a directory that holds the dynamic loader`}},
		{"invalid UTF-8", policy(v1alpha1.ModeLearn, v1alpha1.RulesByContainer{"web": exe("/bin/\xff")}),
			[]string{`executables[0]: "/bin/\xff" is not valid UTF-8`}},
		{"prefix rule too long", policy(v1alpha1.ModeLearn, v1alpha1.RulesByContainer{"web": exe("/" + strings.Repeat("a", 251) + "/")}),
			[]string{`is a directory prefix rule (ends in "/") of 253 bytes; prefix rules are limited to 252 bytes`}},
		{"duplicate path", policy(v1alpha1.ModeLearn, v1alpha1.RulesByContainer{"web": exe("/a", "/b", "/a")}),
			[]string{`executables[2]: "/a" duplicates entry 0`}},
		{"too many executables", policy(v1alpha1.ModeLearn, v1alpha1.RulesByContainer{
			"web": exe(fill(1025, func(i int) string { return "/bin/" + strings.Repeat("x", i+1) })...),
		}), []string{`spec.rulesByContainer["web"].executables: has 1025 entries; at most 1024 are allowed`}},
		{"too many executables over all containers", policy(v1alpha1.ModeProtect, v1alpha1.RulesByContainer{
			"a": exe(fill(1024, func(i int) string { return fmt.Sprintf("/a/%d", i) })...),
			"b": exe(fill(1024, func(i int) string { return fmt.Sprintf("/b/%d", i) })...),
			"c": exe(fill(1024, func(i int) string { return fmt.Sprintf("/c/%d", i) })...),
			"d": exe(fill(1024, func(i int) string { return fmt.Sprintf("/d/%d", i) })...),
			"e": exe("/e"),
		}), []string{`spec.rulesByContainer: lists 4097 executables over all containers; at most 4096 are allowed`}},
		{"too many containers", policy(v1alpha1.ModeLearn, containers(65)),
			[]string{`spec.rulesByContainer: has 65 containers; at most 64 are allowed`}},
		{"container name not a label", policy(v1alpha1.ModeLearn, v1alpha1.RulesByContainer{"Web_1": exe("/a")}),
			[]string{`spec.rulesByContainer: key "Web_1" is not a container name`}},
		{"container name too long", policy(v1alpha1.ModeLearn, v1alpha1.RulesByContainer{strings.Repeat("a", 64): exe("/a")}),
			[]string{`is not a container name (must be no more than 63 characters)`}},
		{"name too long for the label", &v1alpha1.WorkloadPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: strings.Repeat("p", 64)},
			Spec:       v1alpha1.WorkloadPolicySpec{Mode: v1alpha1.ModeLearn},
		}, []string{`metadata.name: "ppp`, `is 64 characters long`}},
		{"every problem reported, sorted by container", policy(v1alpha1.ModeProtect, v1alpha1.RulesByContainer{
			"web": exe("bin/sh"), "api": exe("/a//b"), "db": {},
		}), []string{
			`spec.rulesByContainer["api"].executables[0]: "/a//b" contains "//"`,
			`spec.rulesByContainer["web"].executables[0]: "bin/sh" is not an absolute path`,
			`spec.rulesByContainer["db"].executables: mode Protect needs at least one executable`,
		}},
		{"report is bounded", policy(v1alpha1.ModeLearn, v1alpha1.RulesByContainer{
			"web": exe(fill(40, func(i int) string { return "rel" + strings.Repeat("x", i) })...),
		}), []string{`executables[15]: "relxxxxxxxxxxxxxxx" is not`, "... and 24 more problems"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkErr(t, tt.policy.Validate(), tt.want)
		})
	}
}

func TestWorkloadPolicyProposalValidate(t *testing.T) {
	proposal := func(apiVersion, kind, name string, rules v1alpha1.RulesByContainer) *v1alpha1.WorkloadPolicyProposal {
		return &v1alpha1.WorkloadPolicyProposal{Spec: v1alpha1.WorkloadPolicyProposalSpec{
			Workload:         v1alpha1.WorkloadReference{APIVersion: apiVersion, Kind: kind, Name: name},
			RulesByContainer: rules,
		}}
	}
	rules := v1alpha1.RulesByContainer{"web": exe("/usr/bin/id")}
	tests := []struct {
		name     string
		proposal *v1alpha1.WorkloadPolicyProposal
		want     []string
	}{
		{"deployment", proposal("apps/v1", "Deployment", "web", rules), nil},
		{"statefulset", proposal("apps/v1", "StatefulSet", "db-0.x", rules), nil},
		{"daemonset", proposal("apps/v1", "DaemonSet", "agent", rules), nil},
		{"cronjob", proposal("batch/v1", "CronJob", "backup", rules), nil},
		{"job", proposal("batch/v1", "Job", "migrate", rules), nil},
		{"bare pod", proposal("v1", "Pod", "debug", rules), nil},
		{"nothing learnt yet", proposal("apps/v1", "Deployment", "web", nil), nil},

		{"kind not a workload", proposal("apps/v1", "ReplicaSet", "web", rules),
			[]string{`spec.workload.kind: "ReplicaSet" is not a workload kind`}},
		{"deployment in batch", proposal("batch/v1", "Deployment", "web", rules),
			[]string{`spec.workload.apiVersion: "batch/v1" does not match kind Deployment; use apps/v1`}},
		{"job in apps", proposal("apps/v1", "Job", "web", rules),
			[]string{`spec.workload.apiVersion: "apps/v1" does not match kind Job; use batch/v1`}},
		{"pod with a group", proposal("apps/v1", "Pod", "web", rules),
			[]string{`spec.workload.apiVersion: "apps/v1" does not match kind Pod; use v1`}},
		{"no name", proposal("apps/v1", "Deployment", "", rules),
			[]string{`spec.workload.name: "" is not a valid object name`}},
		{"bad learnt path", proposal("apps/v1", "Deployment", "web", v1alpha1.RulesByContainer{"web": exe("/x/../y")}),
			[]string{`spec.rulesByContainer["web"].executables[0]: "/x/../y" contains a "." or ".." segment`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkErr(t, tt.proposal.Validate(), tt.want)
		})
	}
}

func TestValidateExecutable(t *testing.T) {
	for path, want := range map[string]string{
		"/usr/bin/id":                 "",
		"/opt/app/":                   "",
		"/":                           `"/" would allow every file`,
		"/lib64/ld-linux-x86-64.so.2": `"/lib64/ld-linux-x86-64.so.2" is a dynamic loader`,
		"/opt/日本/app":                 "",
		"id":                          `"id" is not an absolute path; start it with "/"`,
		"/a/./b":                      `"/a/./b" contains a "." or ".." segment`,
	} {
		err := v1alpha1.ValidateExecutable(path)
		if want == "" {
			checkErr(t, err, nil)
		} else {
			checkErr(t, err, []string{want})
		}
	}
}

func TestRulesByContainerFor(t *testing.T) {
	rules := v1alpha1.RulesByContainer{"web": exe("/web"), "*": exe("/any")}
	tests := []struct {
		rules     v1alpha1.RulesByContainer
		container string
		want      []string
		wantOK    bool
	}{
		{rules, "web", []string{"/web"}, true},
		{rules, "istio-proxy", []string{"/any"}, true},
		{v1alpha1.RulesByContainer{"web": exe("/web")}, "sidecar", nil, false},
		{nil, "web", nil, false},
	}
	for _, tt := range tests {
		got, ok := tt.rules.For(tt.container)
		if ok != tt.wantOK || strings.Join(got.Executables, ",") != strings.Join(tt.want, ",") {
			t.Errorf("For(%q) = %v, %v; want %v, %v", tt.container, got.Executables, ok, tt.want, tt.wantOK)
		}
	}
}

func TestProposalPolicySpecCopiesRules(t *testing.T) {
	p := &v1alpha1.WorkloadPolicyProposal{Spec: v1alpha1.WorkloadPolicyProposalSpec{
		RulesByContainer: v1alpha1.RulesByContainer{"web": exe("/usr/bin/id")},
	}}
	spec := p.PolicySpec(v1alpha1.ModeMonitor)
	spec.RulesByContainer["web"].Executables[0] = "/changed"
	if got := p.Spec.RulesByContainer["web"].Executables[0]; got != "/usr/bin/id" {
		t.Fatalf("promoting changed the proposal: %q", got)
	}
	if err := (&v1alpha1.WorkloadPolicy{Spec: spec}).Validate(); err != nil {
		t.Fatalf("promoted policy is invalid: %v", err)
	}
}

// checkErr wants nil for no wants, else an error whose lines contain each want, in order.
func checkErr(t *testing.T, err error, want []string) {
	t.Helper()
	if len(want) == 0 {
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return
	}
	if err == nil {
		t.Fatalf("no error; want %q", want)
	}
	rest := err.Error()
	for _, w := range want {
		i := strings.Index(rest, w)
		if i < 0 {
			t.Fatalf("error does not contain %q (in order):\n%v", w, err)
		}
		rest = rest[i+len(w):]
	}
}
