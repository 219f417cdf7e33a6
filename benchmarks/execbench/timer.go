package execbench

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/execgate/execgate/internal/testenv"
)

// TimeExecs runs p.ExecLoop inside cg (started there with CLONE_INTO_CGROUP,
// so its own exec is checked too) and returns the wall time of each of its n
// fork+exec+exit+wait iterations of p.Exit0.
func TimeExecs(cg *testenv.Cgroup, p Programs, n int) ([]time.Duration, error) {
	if n <= 0 {
		return nil, fmt.Errorf("exec count %d must be positive", n)
	}
	cmd, done, err := cg.Command(p.ExecLoop, fmt.Sprint(n), p.Exit0)
	if err != nil {
		return nil, err
	}
	defer done()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("execloop in cgroup %s: %w: %s", cg.Path, err, bytes.TrimSpace(stderr.Bytes()))
	}
	if stdout.Len() != 8*n {
		return nil, fmt.Errorf("execloop wrote %d bytes, want %d", stdout.Len(), 8*n)
	}
	raw := make([]uint64, n)
	if err := binary.Read(&stdout, binary.NativeEndian, raw); err != nil {
		return nil, fmt.Errorf("decode execloop output: %w", err)
	}
	out := make([]time.Duration, n)
	for i, ns := range raw {
		out[i] = time.Duration(ns)
	}
	return out, nil
}

// NewCgroup creates the cgroup v2 directory parent/name (parent "" = the v2
// root), and its missing ancestors. Remove it with testenv.RemoveCgroup.
func NewCgroup(parent, name string) (*testenv.Cgroup, error) {
	if parent == "" {
		root, err := testenv.CgroupRoot()
		if err != nil {
			return nil, err
		}
		parent = root
	}
	p := filepath.Join(parent, name)
	if err := os.MkdirAll(p, 0o755); err != nil {
		return nil, fmt.Errorf("create cgroup: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		return nil, fmt.Errorf("stat cgroup: %w", err)
	}
	return &testenv.Cgroup{Path: p, ID: st.Ino}, nil
}

// Summary describes a sample of durations.
type Summary struct {
	N      int
	Median time.Duration
	P99    time.Duration
	Mean   time.Duration
	Min    time.Duration
}

// Summarize sorts a copy of d and reads its order statistics.
func Summarize(d []time.Duration) Summary {
	if len(d) == 0 {
		return Summary{}
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	var sum float64
	for _, v := range s {
		sum += float64(v)
	}
	return Summary{
		N:      len(s),
		Median: Quantile(s, 0.5),
		P99:    Quantile(s, 0.99),
		Mean:   time.Duration(sum / float64(len(s))),
		Min:    s[0],
	}
}

// Quantile reads the q-quantile of sorted (nearest rank).
func Quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}

// ExecDenied runs p.Denied in cg and says how the exec was refused: "EPERM"
// (lsm, fmod_ret) or "SIGKILL" (exec_kill). An exec that ran is an error:
// the program being measured does not enforce.
func ExecDenied(cg *testenv.Cgroup, p Programs) (string, error) {
	cmd, done, err := cg.Command(p.Denied)
	if err != nil {
		return "", err
	}
	defer done()
	err = cmd.Run()
	var exitErr *exec.ExitError
	switch {
	case err == nil:
		return "", fmt.Errorf("%s ran in cgroup %s: nothing denied it", p.Denied, cg.Path)
	case errors.Is(err, unix.EPERM):
		return "EPERM", nil
	case errors.As(err, &exitErr):
		if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			return "SIGKILL", nil
		}
	}
	return "", fmt.Errorf("run %s: %w, want EPERM or SIGKILL", p.Denied, err)
}
