package enforcer

import (
	"fmt"
	"testing"

	"github.com/execgate/execgate/bpf"
	"github.com/execgate/execgate/internal/testenv"
)

// TestSubsetSameGenerationOtherContent is the kernel side of issue 14's attack 4: a
// policy generation first loaded with only some of its containers' rules (the webhook
// sent only the first pod's) made every later load of that generation a no-op, so a
// container the first load lacked ran with the empty "*" slot. Now a version is its
// generation and its content digest: the same generation with another digest replaces
// the loaded content atomically for every bound cgroup; the same digest, or an older
// generation, stays a no-op.
func TestSubsetSameGenerationOtherContent(t *testing.T) {
	forEachAttachMode(t, func(t *testing.T, mode AttachMode) {
		e := newTestEnforcer(t, mode)
		cg := testenv.NewCgroup(t, "", fmt.Sprintf("execgate-subset-%s", mode))
		part := PolicyVersion{Key: "ns/shared", Version: 3, Digest: "sha256:part", Mode: ModeProtect, Containers: map[string]Rules{
			"web": {Paths: []string{"/usr/bin/true"}},
		}}
		whole := PolicyVersion{Key: "ns/shared", Version: 3, Digest: "sha256:whole", Mode: ModeProtect, Containers: map[string]Rules{
			"web":    {Paths: []string{"/usr/bin/true"}},
			"worker": {Paths: []string{"/usr/bin/echo"}},
		}}
		if applied, err := e.PutPolicy(part); err != nil || !applied {
			t.Fatalf("PutPolicy(part) = %v, %v", applied, err)
		}
		if err := e.Bind(cg.ID, "ns/shared", "worker"); err != nil {
			t.Fatal(err)
		}
		out, err := cg.Run("/usr/bin/echo", "hello")
		assertDenied(t, mode, out, err) // the part has no rules for worker

		if applied, err := e.PutPolicy(part); err != nil || applied {
			t.Fatalf("the same generation and digest again: applied %v, err %v; want a no-op", applied, err)
		}
		if applied, err := e.PutPolicy(whole); err != nil || !applied {
			t.Fatalf("the same generation with the whole content: applied %v, err %v; want it loaded", applied, err)
		}
		if out, err := cg.Run("/usr/bin/echo", "hello"); err != nil || out != "hello\n" {
			t.Fatalf("worker's own rule after the whole content loaded: %q, %v", out, err)
		}
		out, err = cg.Run("/usr/bin/true")
		assertDenied(t, mode, out, err) // web's rule, not worker's

		older := whole
		older.Version, older.Digest, older.Containers = 2, "sha256:older", part.Containers
		if applied, err := e.PutPolicy(older); err != nil || applied {
			t.Fatalf("an older generation: applied %v, err %v; want a no-op", applied, err)
		}
		loaded := e.Policies()
		if len(loaded) != 1 || loaded[0].Version != 3 || loaded[0].Digest != whole.Digest || loaded[0].Slots != 4 || loaded[0].Entries != 4 {
			t.Fatalf("loaded %+v, want version 3 %s with 4 slots (web, worker, *, union) and 4 entries", loaded, whole.Digest)
		}
		// The replaced content is gone from the kernel maps: only the whole one's entries.
		if n, err := e.CountEntries(bpf.ExecgateMapExactRules); err != nil || n != 4 {
			t.Fatalf("exact rules in the kernel: %d (%v), want 4", n, err)
		}
	})
}
