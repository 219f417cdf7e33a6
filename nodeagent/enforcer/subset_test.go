package enforcer

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/execgate/execgate/bpf"
	"github.com/execgate/execgate/internal/testenv"
)

// TestSubsetSameGenerationOtherContent is the kernel side of issue 14's attack 4: a
// policy generation first loaded with only some of its containers' rules (the webhook
// sent only the first pod's) made every later load of that generation a no-op, so a
// container the first load lacked ran with the empty "*" slot. Now a version is its
// generation and its content digest: the same generation with another digest replaces
// the loaded content atomically for every bound cgroup; the same digest, or an older
// generation, stays a no-op. After a restart (pins hold no digest) the first push is a
// no-op only if the kernel maps hold exactly its content.
func TestSubsetSameGenerationOtherContent(t *testing.T) {
	forEachAttachMode(t, func(t *testing.T, mode AttachMode) {
		dir := filepath.Join("/sys/fs/bpf", fmt.Sprintf("execgate-subset-%s-%d", mode, time.Now().UnixNano()))
		t.Cleanup(func() {
			if err := Cleanup(dir); err != nil {
				t.Errorf("cleanup %s: %v", dir, err)
			}
		})
		var e *Enforcer
		restart := func() {
			if e != nil {
				e.Close() // the pins stay: the next one adopts them
			}
			var err error
			if e, err = New(Config{PinDir: dir, Attach: mode, Logger: zaptest.NewLogger(t)}); err != nil {
				t.Fatalf("New: %v", err)
			}
		}
		restart()
		t.Cleanup(func() { e.Close() })
		cg := testenv.NewCgroup(t, "", fmt.Sprintf("execgate-subset-%s", mode))
		part := PolicyVersion{Key: "ns/shared", Version: 3, Digest: "sha256:part", Mode: ModeProtect, Containers: map[string]Rules{
			"web": {Paths: []string{"/usr/bin/true"}},
		}}
		whole := PolicyVersion{Key: "ns/shared", Version: 3, Digest: "sha256:whole", Mode: ModeProtect, Containers: map[string]Rules{
			"web":    {Paths: []string{"/usr/bin/true"}},
			"worker": {Paths: []string{"/usr/bin/echo"}},
		}}
		put := func(p PolicyVersion, want bool, what string) {
			t.Helper()
			if applied, err := e.PutPolicy(p); err != nil || applied != want {
				t.Fatalf("%s: applied %v, err %v; want applied %v", what, applied, err, want)
			}
		}
		assertWorker := func(echoRuns bool) {
			t.Helper()
			out, err := cg.Run("/usr/bin/echo", "hello")
			if !echoRuns {
				assertDenied(t, mode, out, err)
				return
			}
			if err != nil || out != "hello\n" {
				t.Fatalf("worker's own rule: %q, %v", out, err)
			}
			out, err = cg.Run("/usr/bin/true")
			assertDenied(t, mode, out, err) // web's rule, not worker's
		}
		assertLoaded := func(digest string, slots, entries int) {
			t.Helper()
			loaded := e.Policies()
			if len(loaded) != 1 || loaded[0].Version != 3 || loaded[0].Digest != digest || loaded[0].Slots != slots || loaded[0].Entries != entries {
				t.Fatalf("loaded %+v, want version 3 %q with %d slots and %d entries", loaded, digest, slots, entries)
			}
			n, err := e.CountEntries(bpf.ExecgateMapExactRules) // the kernel's view: nothing replaced is left
			if err != nil || n != entries {
				t.Fatalf("exact rules in the kernel: %d (%v), want %d", n, err, entries)
			}
		}

		put(part, true, "the part")
		if err := e.Bind(cg.ID, "ns/shared", "worker"); err != nil {
			t.Fatal(err)
		}
		assertWorker(false) // the part has no rules for worker: it gets the empty "*" slot
		put(part, false, "the same generation and digest again")
		put(whole, true, "the same generation with the whole content")
		assertWorker(true)
		older := whole
		older.Version, older.Digest, older.Containers = 2, "sha256:older", part.Containers
		put(older, false, "an older generation")
		assertLoaded(whole.Digest, 4, 4) // web, worker, "*" (empty), union; true, echo, and both in the union

		// Restarted with the whole content pinned: pushing it again swaps nothing.
		restart()
		assertLoaded("", 4, 4)
		put(whole, false, "after a restart, the content the maps hold")
		assertLoaded(whole.Digest, 4, 4)
		assertWorker(true)

		// Restarted with only the part pinned (a controller older than the whole-policy
		// push loaded it): the whole content is not what the maps hold, so it replaces them.
		if err := e.Unbind(cg.ID); err != nil {
			t.Fatal(err)
		}
		if err := e.DeletePolicy("ns/shared"); err != nil {
			t.Fatal(err)
		}
		put(part, true, "the part again")
		if err := e.Bind(cg.ID, "ns/shared", "worker"); err != nil {
			t.Fatal(err)
		}
		restart()
		assertWorker(false)
		put(whole, true, "after a restart, content the maps do not hold")
		assertLoaded(whole.Digest, 4, 4)
		// The pins say which slot a cgroup uses, not its container's name: bound to "*"
		// (the part had no worker rules), it stays on "*" until bound by name, which the
		// agent does when it learns the names from the pod's status.
		assertWorker(false)
		if err := e.Bind(cg.ID, "ns/shared", "worker"); err != nil {
			t.Fatal(err)
		}
		assertWorker(true)
	})
}
