package v1alpha1_test

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/validation"

	v1alpha1 "github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/internal/execpath"
)

// FuzzWorkloadPolicyValidate decodes arbitrary JSON as a WorkloadPolicy, as the webhook's
// cache and the agent's backstop watch do, and validates it. Validate must not change
// the object, must give the same answer twice, must report at most 16 problems plus a
// count of the rest, and must accept only policies whose every field is within the
// schema's rules.
func FuzzWorkloadPolicyValidate(f *testing.F) {
	for _, s := range []string{
		`{"metadata":{"name":"web"},"spec":{"mode":"Protect","rulesByContainer":{"app":{"executables":["/usr/bin/id","/opt/app/"]},"*":{"executables":["/bin/sh"]}}}}`,
		`{"spec":{"mode":"Learn"}}`,
		`{"spec":{"mode":"Monitor","rulesByContainer":{"web":{"executables":["/","/a/../b","rel","/a\u0000b","/日本/実行","/lib64/ld-linux-x86-64.so.2","/usr/lib/"]}}}}`,
		`{"spec":{"mode":"Protect","rulesByContainer":{"Web_1":{"executables":["/x","/x"]},"":{}}}}`,
		`{"metadata":{"name":"` + strings.Repeat("p", 70) + `"},"spec":{"mode":"enforce"}}`,
		`{"spec":{"rulesByContainer":{"a":{"executables":["/` + strings.Repeat("a", 4096) + `"]}}}}`,
		`{"metadata":{"name":"` + strings.Repeat("n", 3000) + `"},"spec":{"mode":"Learn","rulesByContainer":{"` + strings.Repeat("K", 3000) + `":{}}}}`,
		`null`, `{"spec":null}`, `[]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		var p v1alpha1.WorkloadPolicy
		if err := json.Unmarshal(raw, &p); err != nil {
			return
		}
		before := p.DeepCopy()
		err := p.Validate()
		if !reflect.DeepEqual(&p, before) {
			t.Fatal("Validate changed the policy")
		}
		if again := p.Validate(); (err == nil) != (again == nil) || (err != nil && err.Error() != again.Error()) {
			t.Fatalf("Validate is not deterministic:\n%v\n%v", err, again)
		}
		if err != nil {
			lines := strings.Split(err.Error(), "\n")
			if len(lines) > 17 || (len(lines) == 17 && !strings.Contains(lines[16], "more problems")) {
				t.Fatalf("%d lines reported:\n%v", len(lines), err)
			}
			for _, l := range lines {
				if len(l) > 1024 || !(strings.HasPrefix(l, "spec.") || strings.HasPrefix(l, "metadata.name") || strings.HasPrefix(l, "... and")) {
					t.Fatalf("line does not name a field, or is unbounded (%d bytes): %.200s", len(l), l)
				}
			}
			return
		}
		if len(p.Name) > 63 || len(p.Spec.RulesByContainer) > v1alpha1.MaxContainers {
			t.Fatalf("accepted name %q with %d containers", p.Name, len(p.Spec.RulesByContainer))
		}
		for c, r := range p.Spec.RulesByContainer {
			if c != v1alpha1.AnyContainer && len(validation.IsDNS1123Label(c)) > 0 {
				t.Fatalf("accepted container key %q", c)
			}
			seen := map[string]bool{}
			for _, e := range r.Executables {
				if err := execpath.Check(e); err != nil || seen[e] {
					t.Fatalf("accepted entry %q (%v, duplicate=%v)", e, err, seen[e])
				}
				seen[e] = true
			}
			if p.Spec.Mode != v1alpha1.ModeLearn && len(r.Executables) == 0 {
				t.Fatalf("accepted an empty allowlist for %q in mode %s", c, p.Spec.Mode)
			}
		}
	})
}
