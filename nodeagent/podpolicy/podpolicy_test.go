package podpolicy

import (
	"fmt"
	"testing"
)

// TestSubsetDigestIsContentOnly: equal content has one digest whatever the order of
// keys and paths or repeated paths; any change of mode, key or path changes it.
func TestSubsetDigestIsContentOnly(t *testing.T) {
	base := map[string][]string{"app": {"/usr/bin/b", "/usr/bin/a"}, AnyContainer: {"/bin/"}}
	d := Digest(ModeProtect, base)
	same := []map[string][]string{
		{AnyContainer: {"/bin/"}, "app": {"/usr/bin/a", "/usr/bin/b"}},
		{"app": {"/usr/bin/a", "/usr/bin/b", "/usr/bin/a"}, AnyContainer: {"/bin/", "/bin/"}},
	}
	for i, r := range same {
		if got := Digest(ModeProtect, r); got != d {
			t.Errorf("same content %d: digest %s, want %s", i, got, d)
		}
	}
	other := map[string]struct {
		mode  Mode
		rules map[string][]string
	}{
		"mode":              {ModeMonitor, base},
		"a path less":       {ModeProtect, map[string][]string{"app": {"/usr/bin/a"}, AnyContainer: {"/bin/"}}},
		"a key less":        {ModeProtect, map[string][]string{"app": {"/usr/bin/b", "/usr/bin/a"}}},
		"a path moved":      {ModeProtect, map[string][]string{"app": {"/usr/bin/b"}, AnyContainer: {"/bin/", "/usr/bin/a"}}},
		"an empty key more": {ModeProtect, map[string][]string{"app": {"/usr/bin/b", "/usr/bin/a"}, AnyContainer: {"/bin/"}, "side": {}}},
		"paths joined":      {ModeProtect, map[string][]string{"app": {"/usr/bin/b/usr/bin/a"}, AnyContainer: {"/bin/"}}},
	}
	for name, o := range other {
		if got := Digest(o.mode, o.rules); got == d {
			t.Errorf("%s: the digest did not change", name)
		}
	}
}

// BenchmarkDigest hashes the largest policy the CRD admits, 64 keys of 1,024 paths, in
// the order a user wrote them (here reversed: each list is sorted first).
func BenchmarkDigest(b *testing.B) {
	rules := map[string][]string{}
	for c := range 64 {
		for p := range 1024 {
			rules[fmt.Sprintf("c%d", c)] = append(rules[fmt.Sprintf("c%d", c)], fmt.Sprintf("/usr/lib/app-%02d/bin/tool-%04d", c, 1023-p))
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		Digest(ModeProtect, rules)
	}
}

// BenchmarkDigestSorted is the same policy as the agent hashes it: paths already sorted
// by validation.
func BenchmarkDigestSorted(b *testing.B) {
	rules := map[string][]string{}
	for c := range 64 {
		for p := range 1024 {
			rules[fmt.Sprintf("c%d", c)] = append(rules[fmt.Sprintf("c%d", c)], fmt.Sprintf("/usr/lib/app-%02d/bin/tool-%04d", c, p))
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		Digest(ModeProtect, rules)
	}
}

// BenchmarkDigestTypical is a 3-container policy of 50 paths each.
func BenchmarkDigestTypical(b *testing.B) {
	rules := map[string][]string{}
	for _, c := range []string{"app", "sidecar", AnyContainer} {
		for p := range 50 {
			rules[c] = append(rules[c], fmt.Sprintf("/usr/bin/tool-%02d", 99-p))
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		Digest(ModeProtect, rules)
	}
}
