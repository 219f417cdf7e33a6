package webhook

import (
	"go/build"
	"slices"
	"strings"
	"testing"
)

// TestRoomsImports holds the import directions doc.go states: each room imports only
// the rooms listed for it (agents at most), so the admission path never depends on the
// event sinks and no room reaches back into the wiring.
func TestRoomsImports(t *testing.T) {
	const mod = "github.com/execgate/execgate/webhook"
	allowed := map[string][]string{
		"agents":     nil,
		"binding":    {"agents"},
		"policy":     {"agents"},
		"learn":      {"agents"},
		"violations": nil,
		"promote":    nil,
	}
	for room, may := range allowed {
		pkg, err := build.Import(mod+"/"+room, ".", 0)
		if err != nil {
			t.Fatalf("%s: %v", room, err)
		}
		for _, imp := range pkg.Imports {
			if imp != mod && !strings.HasPrefix(imp, mod+"/") {
				continue
			}
			if other := strings.TrimPrefix(imp, mod+"/"); !slices.Contains(may, other) {
				t.Errorf("webhook/%s imports %s; doc.go allows only %v", room, imp, may)
			}
		}
	}
}
