package cluster

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/execgate/execgate/internal/testenv"
)

const (
	// BinDirEnv overrides where the control-plane binaries are looked up.
	BinDirEnv = "EXECGATE_BIN"
	// RequireE2EEnv, when "1", turns a missing-binaries skip into a failure (CI sets it).
	RequireE2EEnv = "EXECGATE_REQUIRE_E2E"

	rootModule = "module github.com/execgate/execgate"
)

// controlPlaneBinaries are the executables Start needs in the bin directory.
var controlPlaneBinaries = []string{"etcd", "kube-apiserver", "kube-scheduler"}

// BinDir returns $EXECGATE_BIN if set, else the bin/ directory of the execgate
// repository that contains the working directory.
func BinDir() (string, error) {
	if dir := os.Getenv(BinDirEnv); dir != "" {
		return dir, nil
	}
	root, err := repoRoot()
	if err != nil {
		return "", fmt.Errorf("find bin directory (set %s to override): %w", BinDirEnv, err)
	}
	return filepath.Join(root, "bin"), nil
}

// repoRoot walks up from the working directory to the go.mod of the root module.
// Nested modules (test/tools/...) have their own go.mod and are skipped over.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("get working directory: %w", err)
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && isRootModule(string(data)) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod of github.com/execgate/execgate above the working directory")
		}
		dir = parent
	}
}

func isRootModule(goMod string) bool {
	for _, line := range strings.Split(goMod, "\n") {
		if strings.TrimSpace(line) == rootModule {
			return true
		}
	}
	return false
}

// missingBinaries returns the control-plane binaries that are not executable files in dir.
func missingBinaries(dir string) []string {
	var missing []string
	for _, name := range controlPlaneBinaries {
		info, err := os.Stat(filepath.Join(dir, name))
		if err != nil || info.IsDir() || info.Mode().Perm()&0o111 == 0 {
			missing = append(missing, name)
		}
	}
	return missing
}

// RequireE2E skips t unless the control-plane binaries are present. With
// EXECGATE_REQUIRE_E2E=1 it fails t instead, so CI cannot pass by skipping.
func RequireE2E(t testing.TB) {
	t.Helper()
	dir, err := BinDir()
	if err != nil {
		testenv.Need(t, RequireE2EEnv, err.Error())
		return
	}
	if missing := missingBinaries(dir); len(missing) > 0 {
		testenv.Need(t, RequireE2EEnv, fmt.Sprintf("e2e control plane binaries missing in %s: %s; build them with `make tools` (or point %s at a directory holding them)",
			dir, strings.Join(missing, ", "), BinDirEnv))
	}
}

// RepoRoot is the directory of the execgate module's go.mod above the working
// directory.
func RepoRoot() (string, error) { return repoRoot() }
