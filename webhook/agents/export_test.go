package agents

// What the external tests (package agents_test, which shares webhooktest with the other
// rooms) reach inside the package for.

var PodQOSClass = podQOSClass

// SetAgent records agent pod name on node at addr, as a ready pod's update would.
func (d *AgentDirectory) SetAgent(name, node, addr string) { d.set(name, node, addr) }

// OnChange replaces the hook NewAgentPool installs.
func (d *AgentDirectory) OnChange(f func(node string)) { d.onChange = f }
