package mesh

import (
	"context"
	"log/slog"

	"castellan/installer/agent"
)

// The node operations. Each runs on the node, as root, in `castellan agent
// OP`, on the real node (a zero Node); tests serve the same methods on a
// Node rooted in a directory and a network namespace of their own.
var (
	// OpObserve reads the node's mesh (read-only; it travels in the
	// engine's one observation exec per node).
	OpObserve = agent.Op[ObserveRequest, Observation]{Name: "mesh.observe", ReadOnly: true,
		Do: func(ctx context.Context, in ObserveRequest, _ *slog.Logger) (Observation, error) {
			return (&Node{}).Observe(ctx, in)
		}}
	// OpEnsureKey generates the node's WireGuard key on the node when it
	// has none (or rotates it) and returns the public key.
	OpEnsureKey = agent.Op[KeyRequest, KeyResult]{Name: "mesh.ensure-key",
		Do: func(ctx context.Context, in KeyRequest, _ *slog.Logger) (KeyResult, error) {
			return (&Node{}).EnsureKey(ctx, in)
		}}
	// OpConfigure brings the live device to a configuration and persists it.
	OpConfigure = agent.Op[DeviceConfig, ConfigureResult]{Name: "mesh.configure",
		Do: func(ctx context.Context, in DeviceConfig, _ *slog.Logger) (ConfigureResult, error) {
			return (&Node{}).Configure(ctx, in)
		}}
	// OpFirewall applies a ruleset under a revert guard.
	OpFirewall = agent.Op[FirewallRequest, FirewallResult]{Name: "mesh.firewall",
		Do: func(ctx context.Context, in FirewallRequest, _ *slog.Logger) (FirewallResult, error) {
			return (&Node{}).ApplyFirewall(ctx, in)
		}}
	// OpConfirm confirms a guarded apply and persists it for the next boot.
	OpConfirm = agent.Op[ConfirmRequest, ConfirmResult]{Name: "mesh.confirm",
		Do: func(ctx context.Context, in ConfirmRequest, _ *slog.Logger) (ConfirmResult, error) {
			return (&Node{}).Confirm(ctx, in)
		}}
	// OpRevert restores the previous rules of a guarded apply now.
	OpRevert = agent.Op[ConfirmRequest, ConfirmResult]{Name: "mesh.revert",
		Do: func(ctx context.Context, in ConfirmRequest, _ *slog.Logger) (ConfirmResult, error) {
			return (&Node{}).Revert(ctx, in)
		}}
	// OpGuard is the detached revert guard OpFirewall starts (the node runs
	// it on itself; the installer never calls it).
	OpGuard = agent.Op[GuardRequest, GuardState]{Name: "mesh.guard",
		Do: func(ctx context.Context, in GuardRequest, _ *slog.Logger) (GuardState, error) {
			return (&Node{}).RunGuard(ctx, in)
		}}
	// OpProbe pings mesh addresses from the node. It changes nothing.
	OpProbe = agent.Op[ProbeRequest, ProbeResponse]{Name: "mesh.probe", ReadOnly: true,
		Do: func(ctx context.Context, in ProbeRequest, _ *slog.Logger) (ProbeResponse, error) {
			return (&Node{}).Probe(ctx, in)
		}}
)

// Ops lists the node operations, for the agent's registry.
func Ops() []agent.Handler {
	return []agent.Handler{OpObserve, OpEnsureKey, OpConfigure, OpFirewall, OpConfirm, OpRevert, OpGuard, OpProbe}
}

// Handlers returns the node operations served on n (the same names as Ops):
// what a test's agent process serves for a node rooted elsewhere.
func (n *Node) Handlers() []agent.Handler {
	return []agent.Handler{
		agent.Op[ObserveRequest, Observation]{Name: OpObserve.Name, ReadOnly: true, Do: func(ctx context.Context, in ObserveRequest, _ *slog.Logger) (Observation, error) {
			return n.Observe(ctx, in)
		}},
		agent.Op[KeyRequest, KeyResult]{Name: OpEnsureKey.Name, Do: func(ctx context.Context, in KeyRequest, _ *slog.Logger) (KeyResult, error) {
			return n.EnsureKey(ctx, in)
		}},
		agent.Op[DeviceConfig, ConfigureResult]{Name: OpConfigure.Name, Do: func(ctx context.Context, in DeviceConfig, _ *slog.Logger) (ConfigureResult, error) {
			return n.Configure(ctx, in)
		}},
		agent.Op[FirewallRequest, FirewallResult]{Name: OpFirewall.Name, Do: func(ctx context.Context, in FirewallRequest, _ *slog.Logger) (FirewallResult, error) {
			return n.ApplyFirewall(ctx, in)
		}},
		agent.Op[ConfirmRequest, ConfirmResult]{Name: OpConfirm.Name, Do: func(ctx context.Context, in ConfirmRequest, _ *slog.Logger) (ConfirmResult, error) {
			return n.Confirm(ctx, in)
		}},
		agent.Op[ConfirmRequest, ConfirmResult]{Name: OpRevert.Name, Do: func(ctx context.Context, in ConfirmRequest, _ *slog.Logger) (ConfirmResult, error) {
			return n.Revert(ctx, in)
		}},
		agent.Op[GuardRequest, GuardState]{Name: OpGuard.Name, Do: func(ctx context.Context, in GuardRequest, _ *slog.Logger) (GuardState, error) {
			return n.RunGuard(ctx, in)
		}},
		agent.Op[ProbeRequest, ProbeResponse]{Name: OpProbe.Name, ReadOnly: true, Do: func(ctx context.Context, in ProbeRequest, _ *slog.Logger) (ProbeResponse, error) {
			return n.Probe(ctx, in)
		}},
	}
}
