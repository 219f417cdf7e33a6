package kernels

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
)

// Package is one pinned Debian binary package.
type Package struct {
	Name    string
	Version string
	Arch    string // Debian architecture: amd64, arm64
	Suite   string // the suite that holds this version
}

// Spec is what apt-get download takes.
func (p Package) Spec() string { return p.Name + ":" + p.Arch + "=" + p.Version }

// DebName is the file name apt-get download writes (epoch colon escaped).
func (p Package) DebName() string {
	return p.Name + "_" + strings.ReplaceAll(p.Version, ":", "%3a") + "_" + p.Arch + ".deb"
}

// Row is one kernel the suite must pass on.
type Row struct {
	Name      string
	Kernel    Package
	BootFlags []string
	Modes     []string // attach modes that must load; every other one must be refused
	AutoMode  string   // what the automatic choice must pick
	CIRun     string   // -test.run for the enforcer suite in CI; "" = whole suite
	CISkip    string   // -test.skip for both suites in CI (the column's skip:<regexp> form)
	line      int
}

// Matrix is the parsed matrix file.
type Matrix struct {
	Rows     []Row
	Userland map[string][]Package // by architecture
	// Node is what the real node (test/realnode) adds to the userland: the
	// container runtime and its libraries, by architecture.
	Node map[string][]Package
}

// attachModes are the modes the enforcer knows; a row naming another is a typo.
var attachModes = []string{"lsm", "fmod_ret", "fanotify", "exec_kill"}

// Arches maps a Debian architecture to what Go and qemu call it.
var Arches = map[string]struct{ GOARCH, Qemu, Console string }{
	"amd64": {"amd64", "qemu-system-x86_64", "ttyS0"},
	"arm64": {"arm64", "qemu-system-aarch64", "ttyAMA0"},
}

// ReadMatrix parses the matrix file at path.
func ReadMatrix(path string) (*Matrix, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read kernel matrix: %w", err)
	}
	defer f.Close()
	m, err := ParseMatrix(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// ParseMatrix parses matrix rows: "kernel | row | arch | pkg=ver | suite |
// boot flags | modes | auto | ci run", "userland | arches | pkg=ver | suite" and
// "node | arches | pkg=ver | suite".
func ParseMatrix(r io.Reader) (*Matrix, error) {
	m := &Matrix{Userland: map[string][]Package{}, Node: map[string][]Package{}}
	seen := map[string]bool{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Split(line, "|")
		for i := range f {
			f[i] = strings.TrimSpace(f[i])
		}
		switch f[0] {
		case "kernel":
			row, err := parseKernelRow(f, n)
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", n, err)
			}
			if seen[row.Name] {
				return nil, fmt.Errorf("line %d: row %q named twice", n, row.Name)
			}
			seen[row.Name] = true
			m.Rows = append(m.Rows, row)
		case "userland", "node":
			if len(f) != 4 {
				return nil, fmt.Errorf("line %d: %s rows have 4 fields (%[2]s | arches | package=version | suite), got %d", n, f[0], len(f))
			}
			into := m.Userland
			if f[0] == "node" {
				into = m.Node
			}
			for _, arch := range strings.Split(f[1], ",") {
				p, err := parsePackage(f[2], strings.TrimSpace(arch), f[3])
				if err != nil {
					return nil, fmt.Errorf("line %d: %w", n, err)
				}
				into[p.Arch] = append(into[p.Arch], p)
			}
		default:
			return nil, fmt.Errorf("line %d: a row starts with kernel, userland or node, not %q", n, f[0])
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(m.Rows) == 0 {
		return nil, fmt.Errorf("no kernel rows")
	}
	for _, row := range m.Rows {
		if len(m.Userland[row.Kernel.Arch]) == 0 {
			return nil, fmt.Errorf("line %d: row %s is %s, and no userland row names %s", row.line, row.Name, row.Kernel.Arch, row.Kernel.Arch)
		}
	}
	return m, nil
}

func parseKernelRow(f []string, n int) (Row, error) {
	if len(f) != 9 {
		return Row{}, fmt.Errorf("kernel rows have 9 fields (kernel | row | arch | package=version | suite | boot flags | modes | auto mode | CI subset), got %d", len(f))
	}
	row := Row{Name: f[1], AutoMode: f[7], line: n}
	if row.Name == "" || strings.ContainsAny(row.Name, " /") {
		return Row{}, fmt.Errorf("row name %q: want a non-empty name without spaces or slashes", row.Name)
	}
	p, err := parsePackage(f[3], f[2], f[4])
	if err != nil {
		return Row{}, fmt.Errorf("row %s: %w", row.Name, err)
	}
	row.Kernel = p
	if f[5] != "-" {
		row.BootFlags = strings.Fields(f[5])
	}
	for _, mode := range strings.Split(f[6], ",") {
		mode = strings.TrimSpace(mode)
		if !slices.Contains(attachModes, mode) {
			return Row{}, fmt.Errorf("row %s: attach mode %q is none of %v", row.Name, mode, attachModes)
		}
		row.Modes = append(row.Modes, mode)
	}
	if !slices.Contains(row.Modes, row.AutoMode) {
		return Row{}, fmt.Errorf("row %s: auto mode %q is not among the modes that must load (%v)", row.Name, row.AutoMode, row.Modes)
	}
	// The column's separator is |, so a list of tests is written with commas.
	switch ci := f[8]; {
	case ci == "all":
	case strings.HasPrefix(ci, "skip:"):
		row.CISkip = strings.ReplaceAll(strings.TrimPrefix(ci, "skip:"), ",", "|")
		if _, err := regexp.Compile(row.CISkip); err != nil || row.CISkip == "" {
			return Row{}, fmt.Errorf("row %s: CI column %q: want skip:<test>,<test>,... (regexps)", row.Name, ci)
		}
	default:
		row.CIRun = strings.ReplaceAll(ci, ",", "|")
		if _, err := regexp.Compile(row.CIRun); err != nil {
			return Row{}, fmt.Errorf("row %s: CI column %q is no -test.run regexp list: %v", row.Name, ci, err)
		}
	}
	return row, nil
}

func parsePackage(spec, arch, suite string) (Package, error) {
	name, version, ok := strings.Cut(spec, "=")
	if !ok || name == "" || version == "" {
		return Package{}, fmt.Errorf("package %q: want name=version (versions are pinned)", spec)
	}
	if _, ok := Arches[arch]; !ok {
		return Package{}, fmt.Errorf("package %s: architecture %q is not one of amd64, arm64", name, arch)
	}
	if suite == "" {
		return Package{}, fmt.Errorf("package %s: no suite", name)
	}
	return Package{Name: name, Version: version, Arch: arch, Suite: suite}, nil
}

// Suites lists every suite the matrix needs, sorted.
func (m *Matrix) Suites() []string {
	set := map[string]bool{}
	for _, r := range m.Rows {
		set[r.Kernel.Suite] = true
	}
	for _, ps := range m.Userland {
		for _, p := range ps {
			set[p.Suite] = true
		}
	}
	for _, ps := range m.Node {
		for _, p := range ps {
			set[p.Suite] = true
		}
	}
	var out []string
	for s := range set {
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

// Select keeps the rows whose names are in names (all when names is empty).
func (m *Matrix) Select(names []string) ([]Row, error) {
	if len(names) == 0 {
		return m.Rows, nil
	}
	var out []Row
	for _, n := range names {
		i := slices.IndexFunc(m.Rows, func(r Row) bool { return r.Name == n })
		if i < 0 {
			return nil, fmt.Errorf("no matrix row named %q", n)
		}
		out = append(out, m.Rows[i])
	}
	return out, nil
}
