package enforcer

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"github.com/execgate/execgate/bpf"
	"github.com/execgate/execgate/internal/execpath"
)

// The fuzz targets here need no BPF: they exercise what the enforcer does with input
// before (policies) and after (ring buffer records) the kernel.

// encodeEvent writes a ring buffer record the way the kernel program does, reading field
// offsets from the generated struct rather than from DecodeEvent's code.
func encodeEvent(ev RawEvent, comm string, data []byte, pathLen, argvLen uint16) []byte {
	var h bpf.ExecgateEvent
	raw := make([]byte, eventHeaderSize+len(data))
	le := binary.LittleEndian
	le.PutUint64(raw[unsafe.Offsetof(h.BootNs):], ev.BootNS)
	le.PutUint64(raw[unsafe.Offsetof(h.CgroupId):], ev.CgroupID)
	le.PutUint64(raw[unsafe.Offsetof(h.BoundCgroupId):], ev.BoundCgroupID)
	le.PutUint32(raw[unsafe.Offsetof(h.Slot):], ev.Slot)
	le.PutUint32(raw[unsafe.Offsetof(h.Pid):], ev.PID)
	le.PutUint32(raw[unsafe.Offsetof(h.Tid):], ev.TID)
	le.PutUint32(raw[unsafe.Offsetof(h.Ppid):], ev.PPID)
	le.PutUint32(raw[unsafe.Offsetof(h.Uid):], ev.UID)
	le.PutUint32(raw[unsafe.Offsetof(h.Argc):], ev.Argc)
	raw[unsafe.Offsetof(h.Mode)] = byte(ev.Mode)
	raw[unsafe.Offsetof(h.Action)] = byte(ev.Action)
	le.PutUint16(raw[unsafe.Offsetof(h.Flags):], uint16(ev.Flags))
	le.PutUint16(raw[unsafe.Offsetof(h.PathLen):], pathLen)
	le.PutUint16(raw[unsafe.Offsetof(h.ArgvLen):], argvLen)
	copy(raw[unsafe.Offsetof(h.ParentComm):unsafe.Offsetof(h.ParentComm)+uintptr(len(h.ParentComm))], comm)
	copy(raw[eventHeaderSize:], data)
	return raw
}

// FuzzDecodeEvent builds records from arbitrary header values, comm, data and lengths
// (lengths that lie included) and also decodes arbitrary bytes. A record is decoded
// exactly when its lengths fit; then every field is what was written, argv splits on
// NUL, comm stops at its NUL, and the event does not alias the record (the reader
// reuses its buffer).
func FuzzDecodeEvent(f *testing.F) {
	f.Add(uint64(1), uint64(2), uint32(3), uint32(4), uint8(3), uint16(0x80), "sh", []byte("/usr/bin/id-u\x00"), uint16(11), uint16(3), []byte(nil))
	f.Add(uint64(0), uint64(0), uint32(0), uint32(0), uint8(9), uint16(0xffff), "a-comm-longer-than-16", []byte("/x"), uint16(2), uint16(0), []byte{1, 2, 3})
	f.Add(uint64(7), uint64(7), uint32(1), uint32(1), uint8(1), uint16(0), "", []byte("/p\x00\x00a\x00"), uint16(2), uint16(4), make([]byte, eventHeaderSize))
	f.Add(uint64(7), uint64(7), uint32(1), uint32(1), uint8(1), uint16(0), "c\x00junk", []byte("/p"), uint16(60000), uint16(60000), []byte(nil))
	f.Fuzz(func(t *testing.T, cg, bound uint64, slot, pid uint32, mode uint8, flags uint16, comm string, data []byte, pathLen, argvLen uint16, arbitrary []byte) {
		// Arbitrary bytes: decoded or refused, never a panic; always refused when short.
		if _, err := DecodeEvent(arbitrary); err == nil && len(arbitrary) < eventHeaderSize {
			t.Fatalf("record of %d bytes decoded", len(arbitrary))
		}

		want := RawEvent{BootNS: cg ^ bound, CgroupID: cg, BoundCgroupID: bound, Slot: slot, PID: pid, TID: pid + 1, PPID: slot, UID: pid ^ slot,
			Argc: uint32(argvLen), Mode: Mode(mode), Action: Action(mode >> 4), Flags: EventFlags(flags)}
		raw := encodeEvent(want, comm, data, pathLen, argvLen)
		ev, err := DecodeEvent(raw)
		if fits := int(pathLen)+int(argvLen) <= len(data); fits != (err == nil) {
			t.Fatalf("path_len %d + argv_len %d with %d data bytes: err = %v", pathLen, argvLen, len(data), err)
		}
		if err != nil {
			if !strings.Contains(err.Error(), "exceed") {
				t.Fatalf("unclear error: %v", err)
			}
			return
		}
		want.Path = string(data[:pathLen])
		if argvLen > 0 {
			args := bytes.TrimSuffix(data[pathLen:int(pathLen)+int(argvLen)], []byte{0})
			want.Argv = strings.Split(string(args), "\x00")
		}
		want.ParentComm, _, _ = strings.Cut(comm[:min(len(comm), 16)], "\x00")
		if !reflect.DeepEqual(ev, want) {
			t.Fatalf("decoded %+v\nwant    %+v", ev, want)
		}
		if strings.IndexByte(ev.ParentComm, 0) >= 0 || len(ev.ParentComm) > 16 || len(ev.Path) != int(pathLen) {
			t.Fatalf("comm %q or path length %d wrong", ev.ParentComm, len(ev.Path))
		}
		for i := range raw {
			raw[i] ^= 0xff
		}
		if !reflect.DeepEqual(ev, want) {
			t.Fatal("the event changed with the record's buffer: it aliases the ring buffer")
		}
	})
}

// FuzzPolicyVersion validates and compiles policies with arbitrary keys, modes,
// container names and paths (lists past the limits included). Validation never changes
// the policy; an accepted policy's entries are all valid execpath entries, and compiling
// sorts them into exact and prefix rules per slot, the union slot holding them all.
func FuzzPolicyVersion(f *testing.F) {
	f.Add("ns/p", uint8(3), "app", "/usr/bin/id\n/opt/app/\n/usr/bin/id", uint16(0))
	f.Add("", uint8(0), "", "", uint16(0))
	f.Add("ns/p", uint8(1), "*", "/\n/a/../b\n/日本/実行\n/lib64/ld-linux-x86-64.so.2", uint16(0))
	f.Add("ns/p\x00", uint8(2), strings.Repeat("c", 300), "rel", uint16(1030))
	f.Add(strings.Repeat("k", 257), uint8(3), "app", "/x/", uint16(3))
	f.Fuzz(func(t *testing.T, key string, mode uint8, containers, paths string, extra uint16) {
		pv := PolicyVersion{Key: PolicyKey(key), Version: 1, Mode: Mode(mode), Containers: map[string]Rules{}}
		for i, name := range strings.Split(containers, ",") {
			var list []string
			if paths != "" {
				list = strings.Split(paths, "\n")
			}
			if i == 0 {
				for j := range int(extra % 1100) {
					list = append(list, fmt.Sprintf("/opt/bin/x%d", j))
				}
			}
			pv.Containers[name] = Rules{Paths: list}
		}
		before := clonePolicy(pv)
		err := pv.Validate()
		if !reflect.DeepEqual(pv, before) {
			t.Fatal("Validate changed the policy")
		}
		if err != nil {
			if again := pv.Validate(); again == nil || again.Error() != err.Error() {
				t.Fatalf("validation is not deterministic: %v / %v", err, again)
			}
			if len(err.Error()) > 1200 {
				t.Fatalf("error of %d bytes: %.200s", len(err.Error()), err)
			}
			return
		}
		all := map[string]bool{}
		for name, r := range pv.Containers {
			if name == UnionContainer || len(name) > MaxContainerName || len(r.Paths) > MaxPathsPerRules {
				t.Fatalf("accepted container %q with %d paths", name, len(r.Paths))
			}
			for _, p := range r.Paths {
				if err := execpath.Check(p); err != nil {
					t.Fatalf("accepted an entry execpath refuses: %v", err)
				}
				all[p] = true
			}
		}
		slots := compileSlots(pv, nil)
		for name, c := range slots {
			if !slices.IsSorted(c.exact) || !slices.IsSorted(c.prefixes) ||
				slices.ContainsFunc(c.exact, execpath.IsPrefix) || slices.ContainsFunc(c.prefixes, func(p string) bool { return !execpath.IsPrefix(p) }) {
				t.Fatalf("slot %q: exact %q prefixes %q", name, c.exact, c.prefixes)
			}
		}
		union := slots[UnionContainer]
		if got := len(union.exact) + len(union.prefixes); got != len(all) {
			t.Fatalf("union slot holds %d entries, the policy %d distinct ones", got, len(all))
		}
		if !reflect.DeepEqual(pv, before) {
			t.Fatal("compiling changed the policy")
		}
	})
}

func clonePolicy(p PolicyVersion) PolicyVersion {
	c := p
	c.Containers = make(map[string]Rules, len(p.Containers))
	for k, r := range p.Containers {
		c.Containers[k] = Rules{Paths: slices.Clone(r.Paths)}
	}
	return c
}
