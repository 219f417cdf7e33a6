package realnode

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"github.com/execgate/execgate/test/kernels"
)

// Config says where the node's parts come from.
type Config struct {
	Repo     string // repository root
	BuildDir string // the kernel matrix's build directory: the apt cache is shared
	BinDir   string // holds kubelet (make tools)
	Row      string // the matrix row whose kernel the node boots
	Agent    bool   // also build execgate-agent into the image (/usr/bin)
	Log      func(format string, args ...any)
}

// Built is a node image: a kernel and an initramfs base every boot extends
// with its own /init and configuration.
type Built struct {
	Kernel  string
	Base    string // initramfs without /init
	Dir     string // scratch space for boots
	Release string // the kernel's uname -r
	Modules []string
}

// nodeModules are the kernel modules a node needs that Debian builds as
// modules: overlayfs for containerd's snapshotter, the bridge and veth for the
// CNI plugins, virtio_net for the VM's own link. Their dependencies are
// resolved from modules.dep.
var nodeModules = []string{"overlay", "bridge", "veth", "virtio_net"}

// Build fetches the packages and writes the kernel and initramfs base under
// BuildDir/realnode.
func Build(cfg Config) (*Built, error) {
	if cfg.Log == nil {
		cfg.Log = func(string, ...any) {}
	}
	m, err := kernels.ReadMatrix(filepath.Join(cfg.Repo, "test/kernels/matrix"))
	if err != nil {
		return nil, err
	}
	rows, err := m.Select([]string{cfg.Row})
	if err != nil {
		return nil, err
	}
	row := rows[0]
	arch := row.Kernel.Arch
	if kernels.Arches[arch].GOARCH != runtime.GOARCH {
		return nil, fmt.Errorf("real node: row %s is %s; the node's binaries are built for this host (%s) only", row.Name, arch, runtime.GOARCH)
	}
	if len(m.Node[arch]) == 0 {
		return nil, fmt.Errorf("real node: the matrix has no node packages for %s", arch)
	}
	kubelet := filepath.Join(cfg.BinDir, "kubelet")
	if _, err := os.Stat(kubelet); err != nil {
		return nil, fmt.Errorf("real node: %w (build it with make tools)", err)
	}
	apt := kernels.NewApt(cfg.BuildDir, cfg.Log)
	pkgs := append(append([]kernels.Package{row.Kernel}, m.Userland[arch]...), m.Node[arch]...)
	if err := apt.Fetch(m.Suites(), pkgs); err != nil {
		return nil, err
	}
	kdir, err := apt.Unpack(row.Kernel)
	if err != nil {
		return nil, err
	}
	kernel, err := kernels.KernelImage(kdir)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(cfg.BuildDir, "realnode")
	extra := filepath.Join(dir, "extra")
	if err := os.RemoveAll(extra); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(extra, 0o755); err != nil {
		return nil, err
	}
	release, mods, err := copyModules(kdir, extra, nodeModules)
	if err != nil {
		return nil, err
	}
	pause := filepath.Join(dir, "pause")
	agent := filepath.Join(extra, "usr/bin/execgate-agent")
	progs := map[string]string{pause: "./test/realnode/pause"}
	if cfg.Agent {
		progs[agent] = "./cmd/execgate-agent"
	}
	for out, pkg := range progs {
		build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
		build.Dir = cfg.Repo
		build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
		if msg, err := build.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("build %s: %w\n%s", pkg, err, msg)
		}
	}
	i := slices.IndexFunc(m.Userland[arch], func(p kernels.Package) bool { return p.Name == "busybox-static" })
	if i < 0 {
		return nil, fmt.Errorf("real node: the matrix's %s userland has no busybox-static (the test image's shell)", arch)
	}
	busyboxDir, err := apt.Unpack(m.Userland[arch][i])
	if err != nil {
		return nil, err
	}
	images := filepath.Join(extra, "images")
	if err := os.MkdirAll(images, 0o755); err != nil {
		return nil, err
	}
	if err := writeImage(filepath.Join(images, "pause.tar"), PauseImage,
		[]imageFile{{Path: "pause", Src: pause, Mode: 0o755}}, []string{"/pause"}); err != nil {
		return nil, err
	}
	if err := writeImage(filepath.Join(images, "test.tar"), TestImage,
		testImageFiles(filepath.Join(busyboxDir, "bin/busybox")), []string{"/bin/sleep", "3600"}); err != nil {
		return nil, err
	}
	if err := copyTo(kubelet, filepath.Join(extra, "usr/bin/kubelet")); err != nil {
		return nil, err
	}
	stage := filepath.Join(dir, "stage")
	base := filepath.Join(dir, "base.cpio")
	if err := kernels.BuildBase(apt, append(append([]kernels.Package{}, m.Userland[arch]...), m.Node[arch]...), nil, stage, base); err != nil {
		return nil, fmt.Errorf("real node initramfs: %w", err)
	}
	if err := kernels.AppendTree(base, extra); err != nil {
		return nil, err
	}
	return &Built{Kernel: kernel, Base: base, Dir: dir, Release: release, Modules: mods}, nil
}

func copyTo(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	if out, err := exec.Command("cp", "-a", src, dst).CombinedOutput(); err != nil {
		return fmt.Errorf("copy %s: %w: %s", src, err, out)
	}
	return nil
}

// copyModules copies the named modules and what they depend on, decompressed,
// into dst/usr/lib/modules/<release>/ (merged /usr: a lib directory in a later
// archive would replace the /lib symlink, and the dynamic loader with it) and returns them in load order (dependencies
// first) as paths inside the VM. An unconfigured kernel package has no
// modules.dep (depmod runs in its postinst), so each module's dependencies are
// read from its own .modinfo ("depends=a,b"); modules.order maps names to files.
func copyModules(kdir, dst string, names []string) (release string, order []string, err error) {
	orders, err := filepath.Glob(filepath.Join(kdir, "usr/lib/modules/*/modules.order"))
	if err != nil || len(orders) != 1 {
		return "", nil, fmt.Errorf("kernel package %s: want one modules.order, found %v", kdir, orders)
	}
	modDir := filepath.Dir(orders[0])
	release = filepath.Base(modDir)
	list, err := os.ReadFile(orders[0])
	if err != nil {
		return "", nil, err
	}
	files := map[string]string{} // module name -> file under modDir
	for _, line := range strings.Fields(string(list)) {
		f := line
		if _, err := os.Stat(filepath.Join(modDir, f+".xz")); err == nil {
			f += ".xz"
		}
		files[moduleName(line)] = f
	}
	seen := map[string]bool{}
	var visit func(name string) error
	visit = func(name string) error {
		if seen[name] {
			return nil
		}
		seen[name] = true
		file, ok := files[name]
		if !ok {
			return fmt.Errorf("kernel %s has no module %s (built in? then drop it from nodeModules)", release, name)
		}
		out := filepath.Join(dst, "usr/lib/modules", release, strings.TrimSuffix(filepath.Base(file), ".xz"))
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			return err
		}
		if err := decompress(filepath.Join(modDir, file), out); err != nil {
			return err
		}
		deps, err := moduleDepends(out)
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d); err != nil {
				return fmt.Errorf("%s needs %w", name, err)
			}
		}
		order = append(order, strings.TrimPrefix(out, dst))
		return nil
	}
	for _, n := range names {
		if err := visit(n); err != nil {
			return "", nil, err
		}
	}
	return release, order, nil
}

// moduleDepends reads "depends=" from a decompressed module's .modinfo strings.
func moduleDepends(ko string) ([]string, error) {
	data, err := os.ReadFile(ko)
	if err != nil {
		return nil, err
	}
	i := bytes.Index(data, []byte("\x00depends="))
	if i < 0 {
		return nil, fmt.Errorf("module %s has no depends= in its modinfo", ko)
	}
	rest := data[i+len("\x00depends="):]
	val, _, _ := bytes.Cut(rest, []byte{0})
	var deps []string
	for d := range strings.SplitSeq(string(val), ",") {
		if d != "" {
			deps = append(deps, moduleName(d))
		}
	}
	return deps, nil
}

// moduleName is the module's name from its file: kernel/fs/overlayfs/overlay.ko.xz -> overlay.
func moduleName(file string) string {
	base := filepath.Base(file)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

func decompress(src, dst string) error {
	if !strings.HasSuffix(src, ".xz") {
		return copyTo(src, dst)
	}
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	var stderr strings.Builder
	cmd := exec.Command("xz", "-dc", src)
	cmd.Stdout, cmd.Stderr = out, &stderr
	if err := cmd.Run(); err != nil {
		out.Close()
		return fmt.Errorf("xz -dc %s: %w: %s", src, err, stderr.String())
	}
	return out.Close()
}
