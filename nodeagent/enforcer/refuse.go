package enforcer

import (
	"errors"
	"fmt"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/execgate/execgate/bpf"
	"github.com/execgate/execgate/internal/execpath"
)

// RefusePaths deletes the given exact paths and prefix rules from every slot of the
// loaded version of key: the node agent calls it for an allowed path whose file it
// found to be a dynamic loader (nodeagent/loaders). Deleting an entry is one atomic map
// update, so no binding has to move: an exec checked after the call is denied (Protect)
// or reported (Monitor). It returns how many entries were deleted; a path the policy
// does not hold is not an error. Later versions are not filtered here: the caller
// removes refused paths before PutPolicy.
func (e *Enforcer) RefusePaths(key PolicyKey, paths []string) (int, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ps := e.policies[key]
	if ps == nil {
		return 0, fmt.Errorf("refuse paths of policy %s: %w", key, ErrNotFound)
	}
	deleted := 0
	var errs []error
	for _, id := range ps.slots {
		s := e.slots[id]
		if s == nil {
			continue
		}
		for _, p := range paths {
			if execpath.IsPrefix(p) {
				k := prefixKey(s.id, p)
				i := slices.Index(s.prefix, k)
				if i < 0 {
					continue
				}
				if err := e.prefix.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
					errs = append(errs, fmt.Errorf("delete prefix entry %q of slot %d: %w", p, s.id, err))
					continue
				}
				s.prefix = slices.Delete(s.prefix, i, i+1)
				e.nPrefix--
				deleted++
				continue
			}
			h := e.hashPath(p)
			i := slices.IndexFunc(s.exact, func(k bpf.ExecgateExactKey) bool { return k.Hash == h })
			if i < 0 {
				continue
			}
			if err := e.exact.Delete(&s.exact[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, fmt.Errorf("delete exact entry %q of slot %d: %w", p, s.id, err))
				continue
			}
			s.exact = slices.Delete(s.exact, i, i+1)
			e.nExact--
			deleted++
		}
	}
	return deleted, errors.Join(errs...)
}
