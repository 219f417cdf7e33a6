package controlplane

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Component names in ThroughputResult.CPU besides the binaries' own
// (etcd, kube-apiserver, kube-scheduler, execgate-controller, execgate-agent).
const cpuBenchmark = "benchmark (creators, watch)"

// userHZ is the unit of utime and stime in /proc/<pid>/stat (USER_HZ, 100 on
// every Linux architecture Go supports).
const userHZ = 100

// cpuTimes is the CPU time (user + system) every process of the environment
// has used so far, summed by component: processes whose working directory is
// inside dir (the framework starts every component there), named by their
// executable, and this process. Processes that exit between two reads drop
// out; a dead agent's is then missing from the difference, as it should be.
func cpuTimes(dir string) (map[string]time.Duration, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("read /proc: %w", err)
	}
	out := map[string]time.Duration{}
	self := os.Getpid()
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		name := cpuBenchmark
		if pid != self {
			cwd, err := os.Readlink(filepath.Join("/proc", e.Name(), "cwd"))
			if err != nil || (cwd != dir && !strings.HasPrefix(cwd, dir+"/")) {
				continue
			}
			exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
			if err != nil {
				continue
			}
			name = filepath.Base(exe)
		}
		d, err := processCPU(pid)
		if err != nil {
			continue // exited meanwhile
		}
		out[name] += d
	}
	return out, nil
}

// processCPU reads utime + stime of one process, threads included.
func processCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name is in parentheses and may hold spaces; fields follow it.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	// f[0] is field 3 (state): utime and stime are fields 14 and 15.
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: utime %q stime %q", pid, f[11], f[12])
	}
	return time.Duration(utime+stime) * time.Second / userHZ, nil
}

// cpuSince is after - before per component, dropping components with none.
func cpuSince(before, after map[string]time.Duration) map[string]time.Duration {
	out := map[string]time.Duration{}
	for k, a := range after {
		if d := a - before[k]; d > 0 {
			out[k] = d
		}
	}
	return out
}
