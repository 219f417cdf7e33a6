package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/internal/testchart"
	"github.com/execgate/execgate/test/e2e/cluster"
)

// TestArgvRedactionPatternsCheckedByAPI (issue 14.10): the API server refuses a
// WorkloadPolicy whose spec.argv.redact holds a pattern that is not an RE2 regular
// expression (CEL in the chart's CRD), so a broken mask is reported to whoever writes the
// policy instead of silently dropping command lines on the nodes; valid options are accepted.
func TestArgvRedactionPatternsCheckedByAPI(t *testing.T) {
	c := cluster.Start(t, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	testchart.InstallCRDs(ctx, t, c.RESTConfig)
	const ns = "shop"
	if err := c.CreateNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	admin := adminClient(t, c)
	policy := func(name string, argv *v1alpha1.ArgvCapture) *v1alpha1.WorkloadPolicy {
		return &v1alpha1.WorkloadPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: v1alpha1.WorkloadPolicySpec{Mode: v1alpha1.ModeProtect, Argv: argv,
				RulesByContainer: v1alpha1.RulesByContainer{"app": {Executables: []string{"/usr/bin/app"}}}}}
	}
	tests := []struct {
		name string
		argv *v1alpha1.ArgvCapture
		want string // "" accepted, else a fragment of the refusal
	}{
		{"masks", &v1alpha1.ArgvCapture{Redact: []string{`--password=(\S+)`, `token=([^&]+)`}}, ""},
		{"no capture", &v1alpha1.ArgvCapture{Capture: v1alpha1.ArgvCaptureNone}, ""},
		{"unclosed group", &v1alpha1.ArgvCapture{Redact: []string{`ok`, `(unclosed`}}, "spec.argv.redact"},
		{"Perl lookahead (not RE2)", &v1alpha1.ArgvCapture{Redact: []string{`pass(?=word)`}}, "spec.argv.redact"},
		{"unknown capture mode", &v1alpha1.ArgvCapture{Capture: "Some"}, "spec.argv.capture"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := admin.Create(ctx, policy(fmt.Sprintf("p%d", i), tc.argv))
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && err == nil:
				t.Fatal("accepted")
			case tc.want != "" && !strings.Contains(err.Error(), tc.want):
				t.Fatalf("refused, but not for the field (want %q): %v", tc.want, err)
			}
			if err != nil {
				t.Logf("refused: %v", err)
			}
		})
	}
}
