package enforcer

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf/ringbuf"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/execgate/execgate/bpf"
)

// Event is one exec the kernel reported: learned, reported or denied.
type Event struct {
	Time          time.Time
	CgroupID      uint64 // the task's own cgroup
	BoundCgroupID uint64 // the pod or container cgroup whose binding decided
	Policy        PolicyKey
	Version       uint64
	Container     string // the rules' container ("" = pod-level union, "*" = wildcard)
	Mode          Mode
	Action        Action
	PID, TID      uint32
	PPID, UID     uint32
	Path          string // resolved path of the executed file
	Argv          []string
	Argc          uint32
	ParentComm    string // the parent process's comm, from the kernel
	Parent        string // the parent's executable, from /proc/<ppid>/exe ("" once it exited)
	Flags         EventFlags
}

// EventFlags qualifies an event's path and argv.
type EventFlags uint16

const (
	FlagDetached      = EventFlags(bpf.ExecgatePathFlagsPATH_DETACHED)
	FlagDeleted       = EventFlags(bpf.ExecgatePathFlagsPATH_DELETED)
	FlagTooDeep       = EventFlags(bpf.ExecgatePathFlagsPATH_TOO_DEEP)
	FlagTooLong       = EventFlags(bpf.ExecgatePathFlagsPATH_TOO_LONG)
	FlagArgvTruncated = EventFlags(bpf.ExecgatePathFlagsARGV_TRUNCATED)
	FlagArgvMissing   = EventFlags(bpf.ExecgatePathFlagsARGV_MISSING)
	// FlagForeignMountNS: run from a mount namespace other than the first
	// one seen executing in its cgroup (the container's). Untrusted.
	FlagForeignMountNS = EventFlags(bpf.ExecgatePathFlagsFOREIGN_MNTNS)
	FlagKilled         = EventFlags(bpf.ExecgatePathFlagsKILLED) // denied by SIGKILL (exec_kill mode)
	// FlagUntrusted: the file had no trustworthy name, so it was never allowed.
	FlagUntrusted = EventFlags(bpf.ExecgatePathFlagsPATH_UNTRUSTED)
)

func (f EventFlags) String() string {
	names := []string{}
	for _, n := range []struct {
		f EventFlags
		s string
	}{{FlagDetached, "detached"}, {FlagDeleted, "deleted"}, {FlagTooDeep, "too-deep"}, {FlagTooLong, "too-long"},
		{FlagArgvTruncated, "argv-truncated"}, {FlagArgvMissing, "argv-missing"},
		{FlagForeignMountNS, "foreign-mntns"}, {FlagKilled, "killed"}} {
		if f&n.f != 0 {
			names = append(names, n.s)
		}
	}
	return strings.Join(names, ",")
}

// RawEvent is an event as the kernel wrote it, before slot metadata.
type RawEvent struct {
	BootNS        uint64
	CgroupID      uint64
	BoundCgroupID uint64
	Slot          uint32
	PID, TID      uint32
	PPID, UID     uint32
	Argc          uint32
	Mode          Mode
	Action        Action
	Flags         EventFlags
	Path          string
	Argv          []string
	ParentComm    string
}

var eventHeaderSize = int(unsafe.Offsetof(bpf.ExecgateEvent{}.Data))

// DecodeEvent parses one ring buffer record. The record comes from the
// kernel, but its lengths are still checked: a bad record is an error, never
// a panic.
func DecodeEvent(raw []byte) (RawEvent, error) {
	var ev RawEvent
	if len(raw) < eventHeaderSize {
		return ev, fmt.Errorf("event of %d bytes is shorter than its %d-byte header", len(raw), eventHeaderSize)
	}
	var h bpf.ExecgateEvent
	hdr := unsafe.Slice((*byte)(unsafe.Pointer(&h)), eventHeaderSize)
	copy(hdr, raw[:eventHeaderSize])
	data := raw[eventHeaderSize:]
	pl, al := int(h.PathLen), int(h.ArgvLen)
	if pl+al > len(data) {
		return ev, fmt.Errorf("event lengths path=%d argv=%d exceed its %d data bytes", pl, al, len(data))
	}
	comm := unsafe.Slice((*byte)(unsafe.Pointer(&h.ParentComm[0])), len(h.ParentComm))
	ev = RawEvent{
		BootNS: h.BootNs, CgroupID: h.CgroupId, BoundCgroupID: h.BoundCgroupId, Slot: h.Slot,
		PID: h.Pid, TID: h.Tid, PPID: h.Ppid, UID: h.Uid, Argc: h.Argc,
		Mode: Mode(h.Mode), Action: Action(h.Action), Flags: EventFlags(h.Flags),
		Path:       string(data[:pl]),
		ParentComm: cString(comm),
	}
	if al > 0 {
		args := bytes.TrimSuffix(data[pl:pl+al], []byte{0})
		for _, a := range bytes.Split(args, []byte{0}) {
			ev.Argv = append(ev.Argv, string(a))
		}
	}
	return ev, nil
}

// Events delivers decoded events until Close. When the consumer falls
// behind, events are dropped and counted (Stats().UserDrops), never queued
// without bound.
func (e *Enforcer) Events() <-chan Event { return e.events }

func (e *Enforcer) startEvents() error {
	r, err := ringbuf.NewReader(e.coll.Maps[bpf.ExecgateMapEvents])
	if err != nil {
		return fmt.Errorf("open event ring buffer: %w", err)
	}
	var boot, real unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &boot)
	_ = unix.ClockGettime(unix.CLOCK_REALTIME, &real)
	e.bootOffset = time.Duration(real.Nano() - boot.Nano())
	e.reader = r
	e.readerDone = make(chan struct{})
	go e.readEvents()
	return nil
}

func (e *Enforcer) readEvents() {
	defer close(e.readerDone)
	defer e.closeEvents()
	var rec ringbuf.Record
	for {
		if err := e.reader.ReadInto(&rec); err != nil {
			if errors.Is(err, ringbuf.ErrClosed) {
				return
			}
			e.log.Error("read event ring buffer", zap.Error(err))
			continue
		}
		raw, err := DecodeEvent(rec.RawSample)
		if err != nil {
			e.log.Error("decode event", zap.Error(err))
			continue
		}
		e.deliver(raw)
	}
}

// deliver hands an event to Events without ever blocking the kernel's or
// the gate's reader. Close stops the gate's readers before the ring
// buffer's reader, which closes Events.
// closeEvents closes the events channel once no delivery is in flight.
func (e *Enforcer) closeEvents() {
	e.eventsMu.Lock()
	defer e.eventsMu.Unlock()
	e.eventsClosed = true
	close(e.events)
}

func (e *Enforcer) deliver(raw RawEvent) {
	e.eventsMu.RLock()
	defer e.eventsMu.RUnlock()
	if e.eventsClosed {
		return // the enforcer is closing: nobody reads any more
	}
	select {
	case e.events <- e.enrich(raw):
	default:
		atomic.AddUint64(&e.userDrops, 1)
	}
}

func (e *Enforcer) enrich(r RawEvent) Event {
	ev := Event{
		Time: time.Unix(0, int64(r.BootNS)+int64(e.bootOffset)), CgroupID: r.CgroupID, BoundCgroupID: r.BoundCgroupID,
		Mode: r.Mode, Action: r.Action, PID: r.PID, TID: r.TID, PPID: r.PPID, UID: r.UID,
		Path: r.Path, Argv: r.Argv, Argc: r.Argc, ParentComm: r.ParentComm, Flags: r.Flags,
	}
	if r.PPID != 0 {
		ev.Parent, _ = os.Readlink(fmt.Sprintf("/proc/%d/exe", r.PPID))
	}
	e.mu.Lock()
	s := e.slots[r.Slot]
	var meta slotMeta
	if s != nil {
		meta = s.meta
	} else if m, ok := e.retired.Get(r.Slot); ok {
		meta = m
	}
	e.mu.Unlock()
	ev.Policy, ev.Version, ev.Container = meta.key, meta.version, meta.container
	return ev
}
