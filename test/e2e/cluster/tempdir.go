package cluster

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

const dirPrefix = "execgate-e2e-cluster-"

// makeClusterDir creates the cluster's private directory. Its name carries the pid of
// the test process so that a later run can tell it was abandoned.
func makeClusterDir() (string, error) {
	removeAbandonedDirs()
	dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", dirPrefix, os.Getpid()))
	if err != nil {
		return "", fmt.Errorf("create cluster directory: %w", err)
	}
	return dir, nil
}

// removeAbandonedDirs deletes cluster directories whose test process no longer exists.
// Cleanups do not run when `go test -timeout` kills a test binary; the components die
// with it (Pdeathsig) but their directory, mostly etcd's preallocated WAL, stays.
// Best effort: a directory that cannot be judged or removed is left alone.
func removeAbandonedDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	for _, dir := range dirs {
		pidText, _, ok := strings.Cut(strings.TrimPrefix(filepath.Base(dir), dirPrefix), "-")
		if !ok {
			continue
		}
		pid, err := strconv.Atoi(pidText)
		if err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			_ = os.RemoveAll(dir)
		}
	}
}
