package identity

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// Boot state attestation, the node side: TPM2_Quote by the node's AK over
// the attested PCRs (SHA-256 bank) and the run's nonce, with TPM2_Certify
// of the node key by the same AK over the same nonce (a fresh proof that
// the node key is loaded in the TPM the AK lives in), and the firmware's
// TPM event log. Sources: TPM 2.0 Library Part 3 (TPM2_Quote 18.4,
// TPM2_PCR_Read 22.4, TPM2_Certify 18.2), TCG PC Client Platform Firmware
// Profile (the event log, PCR usage).

// DefaultEventLog is where Linux shows the firmware's TPM event log
// (securityfs; the TCG crypto-agile format on TPM 2.0 machines).
const DefaultEventLog = "/sys/kernel/security/tpm0/binary_bios_measurements"

// Bounds of boot state attestation.
const (
	// MaxEventLog bounds an event log (bytes). Logs of real machines are
	// tens of KiB; a UEFI log with many certificates in db some hundreds.
	MaxEventLog = 2 << 20
	// maxQuoteAttempts bounds how often a quote is made again because a
	// PCR was extended while it was made.
	maxQuoteAttempts = 3
)

// QuoteRequest is the input of OpQuote.
type QuoteRequest struct {
	// Nonce is the run's nonce for this node (NonceSize bytes): the quote's
	// qualifying data, and the key certification's.
	Nonce []byte `json:"nonce"`
	// PCRs are the PCR indexes to quote (SHA-256 bank), 0 to 23, ascending.
	PCRs []int `json:"pcrs"`
}

// PCRValue is one PCR's value in the SHA-256 bank.
type PCRValue struct {
	Index  int    `json:"index"`
	Digest []byte `json:"digest"`
}

// Quote is the node's answer to OpQuote.
type Quote struct {
	// Unavailable says why no quote was made ("" when one was): the node
	// has no TPM (insecure-skip), or is not enrolled yet (no AK).
	Unavailable string `json:"unavailable,omitempty"`
	// AKPublic is the TPMT_PUBLIC of the AK that signed (ak.json's).
	AKPublic []byte `json:"akPublic,omitempty"`
	// Quote is the TPMS_ATTEST of TPM2_Quote (tag TPM_ST_ATTEST_QUOTE);
	// Signature is the AK's TPMT_SIGNATURE over it.
	Quote     []byte `json:"quote,omitempty"`
	Signature []byte `json:"signature,omitempty"`
	// PCRs are the quoted PCRs' values, read with TPM2_PCR_Read before and
	// after the quote with no extend in between (the PCR update counter).
	PCRs []PCRValue `json:"pcrs,omitempty"`
	// Key is TPM2_Certify of the node key by the AK over the nonce; absent
	// when the node has no key blob.
	Key *KeyCertification `json:"key,omitempty"`
	// Commands counts the TPM commands sent, by name.
	Commands map[string]int `json:"commands,omitempty"`
}

// EventLogRequest is the input of OpEventLog: empty.
type EventLogRequest struct{}

// EventLog is the node's TPM event log, as the kernel shows it.
type EventLog struct {
	// Log is the raw log (at most MaxEventLog bytes); empty when Missing
	// says why there is none.
	Log     []byte `json:"log,omitempty"`
	Missing string `json:"missing,omitempty"`
}

// pcrSelection checks a list of PCR indexes (0 to 23, ascending, no
// repeats, at least one) and returns its SHA-256 selection.
func pcrSelection(pcrs []int) (tpm2.TPMLPCRSelection, error) {
	if len(pcrs) == 0 {
		return tpm2.TPMLPCRSelection{}, errors.New("no PCR to quote")
	}
	u := make([]uint, len(pcrs))
	for i, p := range pcrs {
		if p < 0 || p > 23 || (i > 0 && p <= pcrs[i-1]) {
			return tpm2.TPMLPCRSelection{}, fmt.Errorf("PCRs %v: want indexes 0 to 23, ascending, each once", pcrs)
		}
		u[i] = uint(p)
	}
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(u...),
	}}}, nil
}

// readPCRs reads the SHA-256 values of pcrs (TPM2_PCR_Read answers at most
// 8 at a time) and the PCR update counter, which every extend increments.
func readPCRs(t transport.TPM, pcrs []int) ([]PCRValue, uint32, error) {
	out := make([]PCRValue, 0, len(pcrs))
	rest := slices.Clone(pcrs)
	var counter uint32
	for first := true; len(rest) > 0; first = false {
		sel, err := pcrSelection(rest)
		if err != nil {
			return nil, 0, err
		}
		rsp, err := tpm2.PCRRead{PCRSelectionIn: sel}.Execute(t)
		if err != nil {
			return nil, 0, fmt.Errorf("reading PCRs %v: %w", rest, err)
		}
		if !first && rsp.PCRUpdateCounter != counter {
			return nil, 0, errPCRsMoved
		}
		counter = rsp.PCRUpdateCounter
		var got []int
		for _, s := range rsp.PCRSelectionOut.PCRSelections {
			if s.Hash != tpm2.TPMAlgSHA256 {
				continue
			}
			for i, b := range s.PCRSelect {
				for bit := range 8 {
					if b&(1<<bit) != 0 {
						got = append(got, i*8+bit)
					}
				}
			}
		}
		if len(got) == 0 || len(got) != len(rsp.PCRValues.Digests) {
			return nil, 0, fmt.Errorf("the TPM returned no SHA-256 value for PCRs %v: is its SHA-256 PCR bank active? (tpm2_getcap pcrs)", rest)
		}
		for i, idx := range got {
			if !slices.Contains(rest, idx) || len(rsp.PCRValues.Digests[i].Buffer) != 32 {
				return nil, 0, fmt.Errorf("the TPM answered PCR %d, not asked for, or a value that is not SHA-256", idx)
			}
			out = append(out, PCRValue{Index: idx, Digest: rsp.PCRValues.Digests[i].Buffer})
			rest = slices.DeleteFunc(rest, func(p int) bool { return p == idx })
		}
	}
	slices.SortFunc(out, func(a, b PCRValue) int { return a.Index - b.Index })
	return out, counter, nil
}

var errPCRsMoved = errors.New("a PCR was extended while it was read")

func samePCRs(a, b []PCRValue) bool {
	return slices.EqualFunc(a, b, func(x, y PCRValue) bool { return x.Index == y.Index && bytes.Equal(x.Digest, y.Digest) })
}

// Quote answers OpQuote: it loads the AK (and the node key, when its blob
// is there) under the re-derived SRK, reads the PCRs, has the AK quote them
// over the nonce, reads them again, and has the AK certify the node key
// over the same nonce. A PCR extended meanwhile (the update counter moved)
// makes it quote again, up to 3 times. It creates nothing in the TPM and
// flushes what it loads. A node without a TPM or without an AK answers
// Unavailable, not an error.
func (n *Node) Quote(ctx context.Context, req QuoteRequest) (out *Quote, err error) {
	sel, err := pcrSelection(req.PCRs)
	if err != nil {
		return nil, err
	}
	if len(req.Nonce) != NonceSize {
		return nil, fmt.Errorf("nonce of %d bytes, want %d", len(req.Nonce), NonceSize)
	}
	if n.TPM == nil {
		return &Quote{Unavailable: "the node has no usable TPM"}, nil
	}
	if _, err := n.readBlob(AKFile); errors.Is(err, fs.ErrNotExist) {
		return &Quote{Unavailable: "the node is not enrolled: no " + n.path(AKFile)}, nil
	} else if err != nil {
		return nil, err
	}
	_, keyErr := n.readBlob(KeyFile)
	if keyErr != nil && !errors.Is(keyErr, fs.ErrNotExist) {
		return nil, keyErr
	}
	rec := NewRecorder(n.TPM)
	t := transport.TPM(rec)
	srk, err := loadSRK(t)
	if err != nil {
		return nil, err
	}
	srkFlushed := false
	defer func() {
		if !srkFlushed {
			flush(t, srk.Handle, &err)
		}
	}()
	ak, err := n.loadOrCreate(t, srk, AKFile, tpm2.TPMTPublic{}, false)
	if err != nil {
		return nil, err
	}
	defer flush(t, ak.h.Handle, &err)
	var key *loaded
	if keyErr == nil {
		if key, err = n.loadOrCreate(t, srk, KeyFile, tpm2.TPMTPublic{}, false); err != nil {
			return nil, err
		}
		defer flush(t, key.h.Handle, &err)
	}
	srkFlushed = true
	flush(t, srk.Handle, &err)
	if err != nil {
		return nil, err
	}
	akAuth := tpm2.AuthHandle{Handle: ak.h.Handle, Name: ak.h.Name, Auth: tpm2.PasswordAuth(nil)}
	out = &Quote{AKPublic: ak.blob.Public}
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		before, c1, err := readPCRs(t, req.PCRs)
		if err != nil && !errors.Is(err, errPCRsMoved) {
			return nil, err
		}
		var q *tpm2.QuoteResponse
		if err == nil {
			q, err = tpm2.Quote{SignHandle: akAuth, QualifyingData: tpm2.TPM2BData{Buffer: req.Nonce},
				InScheme: tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull}, PCRSelect: sel}.Execute(t)
			if err != nil {
				return nil, fmt.Errorf("quoting PCRs %v with the AK: %w", req.PCRs, err)
			}
		}
		after, c2, rerr := readPCRs(t, req.PCRs)
		if rerr != nil && !errors.Is(rerr, errPCRsMoved) {
			return nil, rerr
		}
		if err == nil && rerr == nil && c1 == c2 && samePCRs(before, after) {
			out.Quote, out.Signature, out.PCRs = q.Quoted.Bytes(), tpm2.Marshal(q.Signature), before
			break
		}
		if attempt == maxQuoteAttempts {
			return nil, fmt.Errorf("PCRs %v were extended while they were quoted, %d times in a row", req.PCRs, attempt)
		}
	}
	if key != nil {
		cert, err := tpm2.Certify{
			ObjectHandle:   tpm2.AuthHandle{Handle: key.h.Handle, Name: key.h.Name, Auth: tpm2.PasswordAuth(nil)},
			SignHandle:     akAuth,
			QualifyingData: tpm2.TPM2BData{Buffer: req.Nonce},
			InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
		}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("certifying the node key with the AK: %w", err)
		}
		out.Key = &KeyCertification{Public: key.blob.Public, Attestation: cert.CertifyInfo.Bytes(), Signature: tpm2.Marshal(cert.Signature)}
	}
	out.Commands = rec.Counts()
	return out, nil
}

// ReadEventLog reads the TPM event log at path (DefaultEventLog when
// ""): a missing file is answered with Missing, not an error.
func ReadEventLog(path string) (*EventLog, error) {
	if path == "" {
		path = DefaultEventLog
	}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &EventLog{Missing: "no TPM event log at " + path + " (firmware without TCG measurements, or securityfs not mounted)"}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("opening the TPM event log: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxEventLog+1))
	if err != nil {
		return nil, fmt.Errorf("reading the TPM event log %s: %w", path, err)
	}
	if len(data) > MaxEventLog {
		return nil, fmt.Errorf("the TPM event log %s is larger than %d MiB", path, MaxEventLog>>20)
	}
	if len(data) == 0 {
		return &EventLog{Missing: "the TPM event log " + path + " is empty"}, nil
	}
	return &EventLog{Log: data}, nil
}

// UnmarshalJSON decodes a node's Quote strictly and within bounds: the
// installer decodes OpQuote's result (also from a batch) through it. The
// TPM structures are parsed by VerifyQuote.
func (q *Quote) UnmarshalJSON(data []byte) error {
	type plain Quote
	var p plain
	if err := decodeStrict(data, &p); err != nil {
		return fmt.Errorf("quote: %w", err)
	}
	if err := checkCommands(p.Commands); err != nil {
		return fmt.Errorf("quote: %w", err)
	}
	if len(p.Unavailable) > 1024 {
		return errors.New("quote: unavailable longer than 1024 bytes")
	}
	if len(p.PCRs) > 24 {
		return fmt.Errorf("quote: %d PCR values, at most 24", len(p.PCRs))
	}
	for _, f := range []struct {
		name string
		b    []byte
	}{{"akPublic", p.AKPublic}, {"quote", p.Quote}, {"signature", p.Signature}} {
		if err := checkLen(f.name, f.b, 0, maxTPMStruct); err != nil {
			return fmt.Errorf("quote: %w", err)
		}
	}
	if p.Key != nil {
		for _, f := range []struct {
			name string
			b    []byte
		}{{"key.public", p.Key.Public}, {"key.attestation", p.Key.Attestation}, {"key.signature", p.Key.Signature}} {
			if err := checkLen(f.name, f.b, 1, maxTPMStruct); err != nil {
				return fmt.Errorf("quote: %w", err)
			}
		}
	}
	*q = Quote(p)
	return nil
}

// UnmarshalJSON decodes a node's EventLog strictly: at most MaxEventLog
// bytes of log.
func (e *EventLog) UnmarshalJSON(data []byte) error {
	type plain EventLog
	var p plain
	// base64 makes 4 bytes of every 3, plus the JSON around it.
	if err := decodeStrictMax(data, &p, MaxEventLog/3*4+4096); err != nil {
		return fmt.Errorf("event log: %w", err)
	}
	if len(p.Log) > MaxEventLog || len(p.Missing) > 1024 {
		return errors.New("event log: too large")
	}
	*e = EventLog(p)
	return nil
}
