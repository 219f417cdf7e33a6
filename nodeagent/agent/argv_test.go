package agent

import (
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/nodeagent/enforcer"
)

// TestArgvRedaction (issue 14.10): a violation's command line goes into the agent's log and,
// through its event stream, into the controller's pod Events; a policy's spec.argv says
// whether it is captured and what is masked first, on the node. The policy comes as the
// backstop's watch delivers it (unstructured), the event is named and logged as the agent
// does (execEvent, violationFields). Before: every command line below was reported
// verbatim, secrets included.
func TestArgvRedaction(t *testing.T) {
	argv := []string{"/usr/bin/curl", "--password=hunter2", "-H", "Authorization: Bearer eyJhbGciOi.secret", "https://db.example/x?token=s3cr3t&q=1"}
	secrets := []string{"hunter2", "eyJhbGciOi.secret", "s3cr3t"}
	tests := []struct {
		name     string
		argvSpec map[string]any // spec.argv; nil: absent
		want     []string       // reported argv; nil: none
	}{
		{"no option: captured in full (the default)", nil, argv},
		{"capture None: no command line", map[string]any{"capture": "None"}, nil},
		{"redact with capture groups: only the values", map[string]any{"redact": []any{`--password=(\S+)`, `Bearer (\S+)`, `token=([^&]+)`}},
			[]string{"/usr/bin/curl", "--password=***", "-H", "Authorization: Bearer ***", "https://db.example/x?token=***&q=1"}},
		{"redact without groups: the whole match", map[string]any{"capture": "Full", "redact": []any{`hunter\d`, `Bearer \S+`, `s3cr3t`}},
			[]string{"/usr/bin/curl", "--password=***", "-H", "Authorization: ***", "https://db.example/x?token=***&q=1"}},
		{"a pattern that does not compile: no command line", map[string]any{"redact": []any{`--password=(\S+)`, `(unclosed`}}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			core, logs := observer.New(zap.InfoLevel)
			a := &Agent{opts: Options{NodeName: testNode}, log: zap.New(core), argv: map[enforcer.PolicyKey]argvPolicy{}}
			spec := map[string]any{"mode": "Protect", "rulesByContainer": map[string]any{"app": map[string]any{"executables": []any{"/usr/bin/app"}}}}
			if tc.argvSpec != nil {
				spec["argv"] = tc.argvSpec
			}
			policy := &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": "execgate.io/v1alpha1", "kind": "WorkloadPolicy",
				"metadata": map[string]any{"namespace": "shop", "name": "web", "generation": int64(1)}, "spec": spec,
			}}
			a.setArgvPolicy("shop/web", argvSpec(policy), true)

			in := append([]string(nil), argv...)
			out := a.execEvent(enforcer.Event{Time: time.Now(), Policy: "shop/web", Path: "/usr/bin/curl", Argv: in,
				Mode: enforcer.ModeProtect, Action: enforcer.ActionDenied})
			a.log.Warn("exec violation", violationFields(out)...)

			if !equalStrings(out.GetArgv(), tc.want) {
				t.Errorf("reported argv %q, want %q", out.GetArgv(), tc.want)
			}
			if !equalStrings(in, argv) {
				t.Errorf("the enforcer's event was modified: %q", in)
			}
			line := logs.All()[0]
			cmdline, _ := line.ContextMap()["cmdline"].(string)
			if cmdline != strings.Join(tc.want, " ") {
				t.Errorf("logged cmdline %q, want %q", cmdline, strings.Join(tc.want, " "))
			}
			if tc.argvSpec == nil {
				return
			}
			for _, s := range secrets {
				if strings.Contains(cmdline, s) || strings.Contains(strings.Join(out.GetArgv(), " "), s) {
					t.Errorf("secret %q reported", s)
				}
			}
		})
	}

	t.Run("a deleted policy's option is forgotten", func(t *testing.T) {
		a := &Agent{opts: Options{NodeName: testNode}, argv: map[enforcer.PolicyKey]argvPolicy{}}
		a.setArgvPolicy("shop/web", &v1alpha1.ArgvCapture{Capture: v1alpha1.ArgvCaptureNone}, true)
		a.setArgvPolicy("shop/web", nil, false)
		if _, ok := a.argv["shop/web"]; ok {
			t.Fatal("option kept")
		}
	})
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
