package enforcer

import (
	"os"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/execgate/execgate/internal/testenv"
)

// TestKernelAttachModeChoice checks the automatic choice against the kernel:
// auto picks the first of lsm, fmod_ret, fanotify, exec_kill that loads on
// its own, reports each better mode as refused with a one-line reason and
// logs that reason once per mode. In a kernel matrix row the choice must
// also be the row's EXECGATE_EXPECT_AUTO_MODE.
func TestKernelAttachModeChoice(t *testing.T) {
	testenv.RequireBPF(t)
	var first AttachMode
	loads := map[AttachMode]bool{}
	for _, mode := range candidateModes(AttachAuto) {
		loads[mode] = tryAttachMode(t, mode) == nil
		if loads[mode] && first == "" {
			first = mode
		}
	}
	if first == "" {
		t.Fatal("no attach mode loads on this kernel")
	}
	core, logs := observer.New(zapcore.WarnLevel)
	e, drop, err := loadPinned(t, AttachAuto, zap.New(core))
	t.Cleanup(drop)
	if err != nil {
		t.Fatalf("auto: %v", err)
	}
	if e.AttachMode() != first {
		t.Fatalf("auto chose %s; the first mode that loads alone is %s (loads: %v)", e.AttachMode(), first, loads)
	}
	if want := os.Getenv("EXECGATE_EXPECT_AUTO_MODE"); want != "" && string(first) != want {
		t.Fatalf("auto chose %s; matrix row %s expects %s (refused: %+v)", first, os.Getenv("EXECGATE_KERNEL_ROW"), want, e.AttachRefusals())
	}
	var better []AttachMode
	for _, mode := range candidateModes(AttachAuto) {
		if mode == first {
			break
		}
		better = append(better, mode)
	}
	refused := e.AttachRefusals()
	if len(refused) != len(better) {
		t.Fatalf("refusals %+v, want one for each of %v", refused, better)
	}
	for i, r := range refused {
		if r.Mode != better[i] || r.Reason == "" || strings.Contains(r.Reason, "\n") {
			t.Errorf("refusal %d: %+v, want mode %s with a one-line reason", i, r, better[i])
		}
		if n := logs.FilterField(zap.String("mode", string(r.Mode))).FilterMessage("attach mode refused by this kernel").Len(); n != 1 {
			t.Errorf("%s refusal logged %d times, want once", r.Mode, n)
		}
		t.Logf("%s refused: %s", r.Mode, r.Reason)
	}
	if r, err := os.ReadFile("/sys/kernel/security/lsm"); err == nil && !strings.Contains(","+strings.TrimSpace(string(r))+",", ",bpf,") {
		if len(refused) == 0 || !strings.Contains(refused[0].Reason, "LSM list") {
			t.Errorf("bpf is not an active LSM, but the lsm refusal does not say so: %+v", refused)
		}
	}
}
