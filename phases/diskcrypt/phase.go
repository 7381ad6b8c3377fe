package diskcrypt

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"

	"castellan/installer/agent"
	"castellan/installer/engine"
	"castellan/installer/facts"
	"castellan/installer/profile"
)

// Name of the phase.
const Name = "diskcrypt"

// Actions of the phase's changes (Target: the device as the profile names it).
const (
	ActionEncrypt     = "encrypt"          // a disk castellan has not encrypted: the whole sequence
	ActionWriteHeader = "write-header"     // castellan's header half written (a crash): write it again from the escrow
	ActionRotate      = "rotate-recovery"  // move the recovery passphrase to the profile's generation, or finish a rotation
	ActionEnrolTPM    = "enrol-tpm"        // (re-)make the TPM keyslot: none, several, other PCRs, or the TPM refuses
	ActionBackup      = "backup-header"    // escrow the header area again: missing, or not the disk's
	ActionSetup       = "unlock-and-mount" // crypttab, open, mkfs, mount point, fstab, mount: whatever is missing
)

// Steps the phase reports.
const (
	StepPlan  = "disks"
	StepApply = "encrypt disks"
)

// Installer-side step boundaries (crash tests).
const (
	StepEscrowRecovery = "escrow-recovery"
	StepPrepared       = "prepared"
	StepEscrowHeader   = "escrow-header"
	StepWritten        = "written"
)

// The node operations. Each runs DefaultNode's method of the same name.
var (
	OpObserve = agent.Op[ObserveRequest, Observation]{Name: "diskcrypt.observe", ReadOnly: true,
		Do: func(ctx context.Context, in ObserveRequest, _ *slog.Logger) (Observation, error) {
			return DefaultNode().Observe(ctx, in)
		}}
	OpHeader = agent.Op[HeaderRequest, HeaderArea]{Name: "diskcrypt.header", ReadOnly: true,
		Do: func(ctx context.Context, in HeaderRequest, _ *slog.Logger) (HeaderArea, error) {
			return DefaultNode().ReadArea(ctx, in)
		}}
	OpPrepare = agent.Op[PrepareRequest, HeaderArea]{Name: "diskcrypt.prepare",
		Do: func(ctx context.Context, in PrepareRequest, _ *slog.Logger) (HeaderArea, error) {
			return DefaultNode().Prepare(ctx, in)
		}}
	OpWrite = agent.Op[WriteRequest, WriteResult]{Name: "diskcrypt.write",
		Do: func(ctx context.Context, in WriteRequest, _ *slog.Logger) (WriteResult, error) {
			return DefaultNode().Write(ctx, in)
		}}
	OpEnrol = agent.Op[EnrolRequest, HeaderArea]{Name: "diskcrypt.enrol",
		Do: func(ctx context.Context, in EnrolRequest, _ *slog.Logger) (HeaderArea, error) {
			return DefaultNode().Enrol(ctx, in)
		}}
	OpRotate = agent.Op[RotateRequest, HeaderArea]{Name: "diskcrypt.rotate",
		Do: func(ctx context.Context, in RotateRequest, _ *slog.Logger) (HeaderArea, error) {
			return DefaultNode().Rotate(ctx, in)
		}}
	OpSetup = agent.Op[SetupRequest, SetupResult]{Name: "diskcrypt.setup",
		Do: func(ctx context.Context, in SetupRequest, _ *slog.Logger) (SetupResult, error) {
			return DefaultNode().Setup(ctx, in)
		}}
)

// Handlers returns the phase's operations served by n instead of
// DefaultNode (tests run them against images, a test tree and a software
// TPM).
func (n *Node) Handlers() map[string]func(json.RawMessage) (any, error) {
	ctx := context.Background()
	return map[string]func(json.RawMessage) (any, error){
		OpObserve.Name: bind(ctx, n.Observe),
		OpHeader.Name:  bind(ctx, n.ReadArea),
		OpPrepare.Name: bind(ctx, n.Prepare),
		OpWrite.Name:   bind(ctx, n.Write),
		OpEnrol.Name:   bind(ctx, n.Enrol),
		OpRotate.Name:  bind(ctx, n.Rotate),
		OpSetup.Name:   bind(ctx, n.Setup),
	}
}

func bind[In, Out any](ctx context.Context, fn func(context.Context, In) (Out, error)) func(json.RawMessage) (any, error) {
	return func(raw json.RawMessage) (any, error) {
		in, err := agent.Decode[In](raw)
		if err != nil {
			return nil, err
		}
		return fn(ctx, in)
	}
}

// Phase is the disk encryption phase. The zero value is the phase.
type Phase struct {
	// crash, when set (tests only), is called at each installer-side step
	// boundary; an error stops Apply there as a crash of the installer would.
	crash func(node, device, step string) error
}

// Name implements engine.Phase.
func (Phase) Name() string { return Name }

// Ops implements engine.Phase.
func (Phase) Ops() []agent.Handler {
	return []agent.Handler{OpObserve, OpHeader, OpPrepare, OpWrite, OpEnrol, OpRotate, OpSetup}
}

// enabled reports whether the phase has anything to look at on node.
func enabled(p *profile.Profile, n profile.Node) bool {
	return profile.On(p.Spec.DiskEncryption.Enabled) && len(n.DataDisks) > 0
}

func observeRequest(n profile.Node) ObserveRequest {
	var r ObserveRequest
	for _, d := range n.DataDisks {
		r.Disks = append(r.Disks, DiskRequest{Device: d.Device, MountPoint: d.MountPoint})
	}
	return r
}

// Observe implements engine.Observer: the observation of node's data disks.
func (Phase) Observe(v *engine.View, node string) ([]agent.Request, error) {
	n, ok := v.Node(node)
	if !ok || !enabled(v.Profile(), n) {
		return nil, nil
	}
	r, err := OpObserve.Request(observeRequest(n))
	return []agent.Request{r}, err
}

// Secret and data names in the state repo (under the phase's name):
//
//	secrets/diskcrypt/NODE/UUID/recovery-G.age  the recovery passphrase of generation G
//	secrets/diskcrypt/NODE/UUID/header.age      the header area (luksHeaderBackup's format)
//	data/diskcrypt/NODE.json                    Record: which disk is which UUID, generation, PCRs
func recoverySecret(node, uuid string, gen int) string {
	return node + "/" + uuid + "/recovery-" + strconv.Itoa(gen)
}

func headerSecret(node, uuid string) string { return node + "/" + uuid + "/header" }

func recordName(node string) string { return node + ".json" }

// Record is what the state repo keeps, in plain text, about a node's
// encrypted disks (data/diskcrypt/NODE.json): where to find each disk's
// secrets and what castellan last made of it. Nothing in it is secret.
type Record struct {
	Disks []RecordDisk `json:"disks"`
}

// RecordDisk is one encrypted disk.
type RecordDisk struct {
	Device     string     `json:"device"`
	UUID       string     `json:"uuid"`
	Mapping    string     `json:"mapping"`
	MountPoint string     `json:"mountPoint"`
	Filesystem Filesystem `json:"filesystem"`
	Generation int        `json:"generation"`
	PCRs       []int      `json:"pcrs"`
	// HeaderDigest is the SHA-256 of the escrowed header area.
	HeaderDigest string `json:"headerDigest"`
	// RecoverySecret and HeaderSecret name the secrets (under secrets/).
	RecoverySecret string `json:"recoverySecret"`
	HeaderSecret   string `json:"headerSecret"`
}

func readRecord(v *engine.View, node string) (Record, error) {
	var r Record
	raw, ok, err := v.Data(recordName(node))
	if err != nil || !ok {
		return r, err
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		return r, fmt.Errorf("state data %s/%s: %w", Name, recordName(node), err)
	}
	return r, nil
}

func (r Record) disk(uuid string) (RecordDisk, bool) {
	for _, d := range r.Disks {
		if d.UUID == uuid {
			return d, true
		}
	}
	return RecordDisk{}, false
}

// put records d, replacing what was recorded of the same disk (UUID) or
// the same device (a disk formatted again, or an attempt a crash cut off
// before the disk was written).
func (r *Record) put(d RecordDisk) {
	kept := r.Disks[:0]
	for _, o := range r.Disks {
		if o.UUID != d.UUID && o.Device != d.Device {
			kept = append(kept, o)
		}
	}
	r.Disks = append(kept, d)
}

// Plan implements engine.Phase: for each data disk, what is missing to make
// it castellan's encrypted, TPM-unlocked, mounted disk (plan.go's decide).
func (Phase) Plan(ctx context.Context, v *engine.View) (engine.Plan, error) {
	p := v.Profile()
	var nodes []string
	for _, n := range v.Nodes() {
		if enabled(p, n) {
			nodes = append(nodes, n.Name)
		}
	}
	if len(nodes) == 0 {
		return engine.Plan{}, nil
	}
	index := map[string]int{}
	for i, n := range nodes {
		index[n] = i
	}
	changes := make([][]engine.Change, len(nodes))
	notes := make([][]string, len(nodes))
	err := v.ForEachNode(ctx, nodes, StepPlan, func(ctx context.Context, node string) error {
		cs, ns, err := planNode(ctx, v, node)
		changes[index[node]], notes[index[node]] = cs, ns
		return err
	})
	var plan engine.Plan
	for i := range nodes {
		plan.Changes = append(plan.Changes, changes[i]...)
		plan.Notes = append(plan.Notes, notes[i]...)
	}
	return plan, err
}

// planNode plans one node's disks.
func planNode(ctx context.Context, v *engine.View, node string) ([]engine.Change, []string, error) {
	n, _ := v.Node(node)
	st, err := v.Agent(ctx, node)
	if err != nil {
		return nil, nil, err
	}
	if !st.Installed {
		// Planned at the prompt of a first apply, before preflight
		// installed the agent: what will happen, in outline. The detailed
		// plan, right before this phase applies, sees what is on each disk;
		// a disk holding data is formatted only with allowFormat.
		var out []engine.Change
		for _, d := range n.DataDisks {
			what := "encrypt data disk " + d.Device + " (LUKS2, TPM2 keyslot, recovery passphrase escrowed first) and mount it at " + d.MountPoint +
				" if it is blank; a disk that holds data is refused"
			if d.AllowFormat {
				what = "encrypt data disk " + d.Device + " and mount it at " + d.MountPoint + ": allowFormat is set, so whatever it holds is DESTROYED"
			}
			out = append(out, engine.NewChange(node, ActionEncrypt, d.Device, what+" (planned in detail once preflight has installed the agent)", nil))
		}
		return out, nil, nil
	}
	f, ok := engine.Lookup(v, facts.Key, node)
	if !ok {
		return nil, nil, fmt.Errorf("%s: the preflight phase's facts of this node are missing (disk encryption checks the disks with them): run preflight with this phase (--only preflight,%s)", node, Name)
	}
	obs, err := engine.Call(ctx, v, node, OpObserve, observeRequest(n))
	if err != nil {
		return nil, nil, err
	}
	if len(obs.Disks) != len(n.DataDisks) {
		return nil, nil, fmt.Errorf("%s: the agent reported %d of %d data disks", node, len(obs.Disks), len(n.DataDisks))
	}
	rec, err := readRecord(v, node)
	if err != nil {
		return nil, nil, err
	}
	var changes []engine.Change
	var notes []string
	var errs []error
	for i, d := range n.DataDisks {
		in := diskInput{
			Cluster: v.Profile().Metadata.Name, Node: node, Index: i, Disk: d,
			PCRs: v.Profile().Spec.DiskEncryption.PCRs, Generation: v.Profile().Spec.DiskEncryption.RecoveryGeneration,
			Facts: f, Obs: obs.Disks[i], Record: rec,
			Secret: func(name string) ([]byte, bool, error) { return v.Secret(name) },
		}
		dec, err := decide(in)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		changes = append(changes, dec.changes...)
		for _, note := range dec.notes {
			notes = append(notes, node+": "+note)
		}
	}
	return changes, notes, joinErrors(errs)
}
