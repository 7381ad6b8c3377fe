package diskcrypt

import (
	"context"
	"encoding/json"
	"fmt"

	"castellan/installer/engine"
)

// Apply implements engine.Phase: each node's changes in plan order, one
// disk after another (the nodes in parallel). Every step is safe to repeat:
// a crash anywhere leaves evidence on the disk or in the state repo that
// the next plan reads (see the package doc).
func (ph Phase) Apply(ctx context.Context, r *engine.Run, p engine.Plan) error {
	return r.ForEachNode(ctx, p.Nodes(), StepApply, func(ctx context.Context, node string) error {
		rec, err := readRecord(r.View, node)
		if err != nil {
			return err
		}
		for _, c := range p.ForNode(node) {
			if err := r.Checkpoint(); err != nil {
				return err
			}
			a := applier{ph: ph, r: r, node: node, rec: &rec}
			if err := a.apply(ctx, c); err != nil {
				return fmt.Errorf("%s %s: %w", c.Action, c.Target, err)
			}
		}
		return nil
	})
}

// applier carries out one node's changes.
type applier struct {
	ph   Phase
	r    *engine.Run
	node string
	rec  *Record
}

// crash is the installer-side step boundary: tests stop there as a crash
// would (crashpoint builds kill the process).
func (a applier) crash(device, step string) error {
	installerCrashpoint(step)
	if a.ph.crash != nil {
		return a.ph.crash(a.node, device, step)
	}
	return nil
}

func (a applier) apply(ctx context.Context, c engine.Change) error {
	switch c.Action {
	case ActionEncrypt:
		data, err := engine.ChangeData[encryptData](c)
		if err != nil {
			return err
		}
		return a.encrypt(ctx, data)
	}
	data, err := engine.ChangeData[diskData](c)
	if err != nil {
		return err
	}
	switch c.Action {
	case ActionWriteHeader:
		raw, ok, err := a.r.Secret(headerSecret(a.node, data.UUID))
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("the state repo holds no escrowed header for UUID %s", data.UUID)
		}
		if _, err := engine.Call(ctx, a.r, a.node, OpWrite, WriteRequest{Device: data.Device, UUID: data.UUID, Header: raw}); err != nil {
			return err
		}
		return a.record(data, headerArea(raw))
	case ActionRotate:
		return a.rotate(ctx, data)
	case ActionEnrolTPM:
		p, err := a.recovery(data.UUID, data.Generation)
		if err != nil {
			return err
		}
		area, err := engine.Call(ctx, a.r, a.node, OpEnrol, EnrolRequest{Device: data.Device, UUID: data.UUID, Passphrase: p, PCRs: a.pcrs()})
		if err != nil {
			return err
		}
		return a.escrowHeader(data, area)
	case ActionBackup:
		area, err := engine.Call(ctx, a.r, a.node, OpHeader, HeaderRequest{Device: data.Device, UUID: data.UUID})
		if err != nil {
			return err
		}
		return a.escrowHeader(data, area)
	case ActionSetup:
		res, err := engine.Call(ctx, a.r, a.node, OpSetup, SetupRequest{Device: data.Device, UUID: data.UUID, MountPoint: data.MountPoint, Filesystem: data.Filesystem})
		if err != nil {
			return err
		}
		for _, s := range res.Done {
			a.r.Info(a.node, "%s: %s done", data.Device, s)
		}
		return nil
	}
	return fmt.Errorf("diskcrypt: unknown action %q", c.Action)
}

func (a applier) pcrs() []int { return sortedCopy(a.r.Profile().Spec.DiskEncryption.PCRs) }

// recovery reads the escrowed passphrase of generation gen.
func (a applier) recovery(uuid string, gen int) (Passphrase, error) {
	raw, ok, err := a.r.Secret(recoverySecret(a.node, uuid, gen))
	if err != nil {
		return "", err
	}
	if !ok {
		return "", fmt.Errorf("the state repo holds no recovery passphrase of generation %d for UUID %s", gen, uuid)
	}
	return Passphrase(raw), nil
}

// encrypt runs the whole sequence on a disk castellan has not encrypted.
// The recovery passphrase is escrowed before anything happens on the node,
// the header before the disk is written.
func (a applier) encrypt(ctx context.Context, data encryptData) error {
	gen := a.r.Profile().Spec.DiskEncryption.RecoveryGeneration
	uuid, err := newUUID()
	if err != nil {
		return err
	}
	fsUUID, err := newUUID()
	if err != nil {
		return err
	}
	p, err := NewPassphrase()
	if err != nil {
		return err
	}
	if err := a.r.PutSecret(recoverySecret(a.node, uuid, gen), []byte(p)); err != nil {
		return fmt.Errorf("escrowing the recovery passphrase (nothing was done on the node): %w", err)
	}
	if err := a.crash(data.Device, StepEscrowRecovery); err != nil {
		return err
	}
	tok := Token{Version: TokenVersion, Cluster: a.r.Profile().Metadata.Name, Node: a.node, Device: data.Device,
		Filesystem: Filesystem{Type: "ext4", UUID: fsUUID}, Recovery: Slot{Keyslot: 0, Generation: gen}}
	area, err := engine.Call(ctx, a.r, a.node, OpPrepare, PrepareRequest{UUID: uuid, SectorSize: data.SectorSize, Passphrase: p, Token: tok, PCRs: a.pcrs()})
	if err != nil {
		return fmt.Errorf("%w; %s was left as it was", err, data.Device)
	}
	if err := a.crash(data.Device, StepPrepared); err != nil {
		return err
	}
	d := diskData{Device: data.Device, MountPoint: data.MountPoint, UUID: uuid, Filesystem: tok.Filesystem, Generation: gen}
	if err := a.r.PutSecret(headerSecret(a.node, uuid), area.Header); err != nil {
		return fmt.Errorf("escrowing the header (the disk was not written): %w", err)
	}
	if err := a.record(d, area); err != nil {
		return err
	}
	if err := a.crash(data.Device, StepEscrowHeader); err != nil {
		return err
	}
	res, err := engine.Call(ctx, a.r, a.node, OpWrite, WriteRequest{Device: data.Device, UUID: uuid, Header: area.Header, Content: data.Content, Wipe: data.Wipe})
	if err != nil {
		return err
	}
	if res.Wiped {
		a.r.Warn(a.node, "%s: its former signatures were erased (allowFormat)", data.Device)
	}
	if err := a.crash(data.Device, StepWritten); err != nil {
		return err
	}
	_, err = engine.Call(ctx, a.r, a.node, OpSetup, SetupRequest{Device: data.Device, UUID: uuid, MountPoint: data.MountPoint, Filesystem: tok.Filesystem})
	return err
}

// rotate moves the recovery passphrase to data.To: the new one is escrowed
// (or the one escrowed by a cut-off run reused) before the node adds it,
// and the old keyslot goes only after the token records the new one.
func (a applier) rotate(ctx context.Context, data diskData) error {
	cur, err := a.recovery(data.UUID, data.Generation)
	if err != nil {
		return err
	}
	next := cur
	if data.To != data.Generation {
		raw, ok, err := a.r.Secret(recoverySecret(a.node, data.UUID, data.To))
		if err != nil {
			return err
		}
		if ok {
			next = Passphrase(raw)
		} else {
			if next, err = NewPassphrase(); err != nil {
				return err
			}
			if err := a.r.PutSecret(recoverySecret(a.node, data.UUID, data.To), []byte(next)); err != nil {
				return fmt.Errorf("escrowing the new recovery passphrase (nothing was done on the node): %w", err)
			}
		}
		if err := a.crash(data.Device, StepEscrowRecovery); err != nil {
			return err
		}
	}
	area, err := engine.Call(ctx, a.r, a.node, OpRotate, RotateRequest{Device: data.Device, UUID: data.UUID, Current: cur, New: next, Generation: data.To})
	if err != nil {
		return err
	}
	data.Generation = data.To
	return a.escrowHeader(data, area)
}

// escrowHeader stores a header area and records it.
func (a applier) escrowHeader(data diskData, area HeaderArea) error {
	if err := a.r.PutSecret(headerSecret(a.node, data.UUID), area.Header); err != nil {
		return err
	}
	return a.record(data, area)
}

// record writes the node's Record with the disk as it is now.
func (a applier) record(data diskData, area HeaderArea) error {
	a.rec.put(RecordDisk{
		Device: data.Device, UUID: data.UUID, Mapping: MappingName(data.UUID), MountPoint: data.MountPoint,
		Filesystem: data.Filesystem, Generation: data.Generation, PCRs: a.pcrs(), HeaderDigest: area.Digest,
		RecoverySecret: Name + "/" + recoverySecret(a.node, data.UUID, data.Generation), HeaderSecret: Name + "/" + headerSecret(a.node, data.UUID),
	})
	raw, err := json.MarshalIndent(a.rec, "", "  ")
	if err != nil {
		return err
	}
	return a.r.PutData(recordName(a.node), append(raw, '\n'))
}
