package cgroups

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// procRoot is a variable so tests can feed sample /proc files.
var procRoot = "/proc"

// pidMax is PID_MAX_LIMIT on 64-bit kernels, the largest pid the kernel hands out.
const pidMax = 1 << 22

// maxProcCgroupSize bounds how much of /proc/<pid>/cgroup is read; a real file is a
// few hundred bytes even on hybrid hosts.
const maxProcCgroupSize = 64 * 1024

// ErrCgroupRemoved is returned for a process whose v2 cgroup has been removed
// (the kernel appends " (deleted)" to the path).
var ErrCgroupRemoved = errors.New("cgroup has been removed")

// PIDs returns the processes in the cgroup at path (its cgroup.procs).
func PIDs(path string) ([]int, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("pids of cgroup %q: path must be absolute", path)
	}
	data, err := os.ReadFile(filepath.Join(path, "cgroup.procs"))
	if err != nil {
		return nil, fmt.Errorf("pids of cgroup %q: %w", path, err)
	}
	pids, err := parsePIDs(data)
	if err != nil {
		return nil, fmt.Errorf("pids of cgroup %q: %w", path, err)
	}
	return pids, nil
}

func parsePIDs(data []byte) ([]int, error) {
	var pids []int
	for line := range bytes.Lines(data) {
		line = bytes.TrimSuffix(line, []byte("\n"))
		pid, err := strconv.Atoi(string(line))
		if err != nil || pid <= 0 || pid > pidMax {
			return nil, fmt.Errorf("bad pid %q in cgroup.procs", line)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// ProcCgroupPath returns the cgroup v2 path of process pid as the kernel reports it in
// /proc/<pid>/cgroup (the "0::" line), relative to the cgroup2 root, e.g.
// "/kubepods.slice/.../cri-containerd-<id>.scope". Join it with the mount point to get
// a directory. ProcCgroupDir does both.
func ProcCgroupPath(pid int) (string, error) {
	if pid <= 0 || pid > pidMax {
		return "", fmt.Errorf("cgroup of pid %d: pid out of range 1..%d", pid, pidMax)
	}
	file := filepath.Join(procRoot, strconv.Itoa(pid), "cgroup")
	f, err := os.Open(file)
	if err != nil {
		return "", fmt.Errorf("cgroup of pid %d: %w", pid, err)
	}
	defer f.Close()
	p, err := parseProcCgroup(io.LimitReader(f, maxProcCgroupSize))
	if err != nil {
		return "", fmt.Errorf("cgroup of pid %d: %s: %w", pid, file, err)
	}
	return p, nil
}

// ProcCgroupDir returns the directory of process pid's v2 cgroup under mount.
func ProcCgroupDir(mount string, pid int) (string, error) {
	p, err := ProcCgroupPath(pid)
	if err != nil {
		return "", err
	}
	return filepath.Join(mount, p), nil
}

// parseProcCgroup finds the v2 entry ("0::<path>") in a /proc/<pid>/cgroup text;
// on hybrid hosts the v1 lines ("4:memory:/...") are skipped.
func parseProcCgroup(r io.Reader) (string, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "0::")
		if !ok {
			continue
		}
		if p, deleted := strings.CutSuffix(rest, " (deleted)"); deleted {
			return "", fmt.Errorf("%q: %w", p, ErrCgroupRemoved)
		}
		// Paths outside our cgroup namespace root show up as "/../..": they cannot be
		// joined with the mount point, and mean the agent runs in a private cgroupns.
		if rest == "/.." || strings.HasPrefix(rest, "/../") {
			return "", fmt.Errorf("v2 cgroup path %q lies outside this cgroup namespace; run the agent in the host cgroup namespace", rest)
		}
		if !strings.HasPrefix(rest, "/") || filepath.Clean(rest) != rest {
			return "", fmt.Errorf("v2 cgroup path %q is not a clean absolute path", rest)
		}
		if len(rest) > maxPathLen || strings.ContainsRune(rest, 0) {
			return "", fmt.Errorf("v2 cgroup path %.64q... is too long or has NUL", rest)
		}
		return rest, nil
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return "", errors.New("no cgroup v2 (\"0::\") entry; is cgroup v2 mounted?")
}
