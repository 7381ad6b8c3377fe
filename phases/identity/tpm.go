package identity

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
)

// DefaultDevice is the kernel's TPM resource manager: it flushes what a
// process leaves loaded when the process exits, but castellan flushes its
// transient handles itself (a TPM has room for only a few at once).
const DefaultDevice = "/dev/tpmrm0"

// OpenDevice opens a TPM character device (DefaultDevice when path is "")
// and wraps it with WithRetry.
func OpenDevice(path string) (transport.TPMCloser, error) {
	if path == "" {
		path = DefaultDevice
	}
	t, err := linuxtpm.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening the TPM %s: %w (spec.identity.tpm: insecure-skip lets a node without a TPM through, marked as such)", path, err)
	}
	return closer{WithRetry(t), t}, nil
}

type closer struct {
	transport.TPM
	c interface{ Close() error }
}

func (c closer) Close() error { return c.c.Close() }

// Response codes that ask the caller to send the same command again (TPM 2.0
// Part 2, section 6.6.3: TPM_RC_RETRY, TPM_RC_YIELDED, TPM_RC_TESTING).
var retryCodes = map[uint32]bool{
	uint32(tpm2.TPMRCRetry):   true,
	uint32(tpm2.TPMRCYielded): true,
	uint32(tpm2.TPMRCTesting): true,
}

// maxRetries bounds how often one command is resent.
const maxRetries = 8

// WithRetry resends a command that the TPM answered with TPM_RC_RETRY,
// TPM_RC_YIELDED or TPM_RC_TESTING, up to 8 times with a backoff from 5 ms to
// 200 ms (a first ECDSA signature on swtpm answers TPM_RC_RETRY).
func WithRetry(t transport.TPM) transport.TPM {
	return &retrier{t: t, sleep: time.Sleep}
}

type retrier struct {
	t     transport.TPM
	sleep func(time.Duration)
}

func (r *retrier) Send(cmd []byte) ([]byte, error) {
	wait := 5 * time.Millisecond
	for i := 0; ; i++ {
		rsp, err := r.t.Send(cmd)
		if err != nil || len(rsp) < 10 || !retryCodes[binary.BigEndian.Uint32(rsp[6:10])] || i == maxRetries {
			return rsp, err
		}
		r.sleep(wait)
		wait = min(2*wait, 200*time.Millisecond)
	}
}

// Recorder counts the TPM commands sent through it, by command code. It
// makes "a rerun creates no TPM object" observable: Created counts the
// commands that make new key material or change the TPM's persistent state.
type Recorder struct {
	t  transport.TPM
	mu sync.Mutex
	n  map[tpm2.TPMCC]int
}

// NewRecorder wraps t.
func NewRecorder(t transport.TPM) *Recorder {
	return &Recorder{t: t, n: map[tpm2.TPMCC]int{}}
}

// Send implements transport.TPM.
func (r *Recorder) Send(cmd []byte) ([]byte, error) {
	if len(cmd) >= 10 {
		cc := tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10]))
		r.mu.Lock()
		r.n[cc]++
		r.mu.Unlock()
	}
	return r.t.Send(cmd)
}

// creating lists the commands that create key material or persistent TPM
// state. TPM2_CreatePrimary is not among them: castellan uses it only to
// re-derive the standard SRK and EK from the TPM's fixed seeds, which gives
// the same key every time and is flushed after use.
var creating = map[tpm2.TPMCC]string{
	tpm2.TPMCCCreate:        "TPM2_Create",
	tpm2.TPMCCCreateLoaded:  "TPM2_CreateLoaded",
	tpm2.TPMCCEvictControl:  "TPM2_EvictControl",
	tpm2.TPMCCNVDefineSpace: "TPM2_NV_DefineSpace",
	tpm2.TPMCCNVWrite:       "TPM2_NV_Write",
	tpm2.TPMCCImport:        "TPM2_Import",
}

// Counts returns the number of commands sent, by TPM2 command name (or
// "0x%08x" for codes without a name here), sorted for stable output.
func (r *Recorder) Counts() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]int, len(r.n))
	for cc, n := range r.n {
		out[commandName(cc)] = n
	}
	return out
}

// Created lists the creating commands sent (see creating), sorted, with
// their counts, e.g. ["TPM2_Create x2"]. A rerun that reuses the identity
// returns none.
func (r *Recorder) Created() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for cc, n := range r.n {
		if name, ok := creating[cc]; ok && n > 0 {
			out = append(out, fmt.Sprintf("%s x%d", name, n))
		}
	}
	sort.Strings(out)
	return out
}

var names = map[tpm2.TPMCC]string{
	tpm2.TPMCCCreatePrimary:      "TPM2_CreatePrimary",
	tpm2.TPMCCLoad:               "TPM2_Load",
	tpm2.TPMCCFlushContext:       "TPM2_FlushContext",
	tpm2.TPMCCCertify:            "TPM2_Certify",
	tpm2.TPMCCCertifyCreation:    "TPM2_CertifyCreation",
	tpm2.TPMCCActivateCredential: "TPM2_ActivateCredential",
	tpm2.TPMCCSign:               "TPM2_Sign",
	tpm2.TPMCCHash:               "TPM2_Hash",
	tpm2.TPMCCReadPublic:         "TPM2_ReadPublic",
	tpm2.TPMCCNVRead:             "TPM2_NV_Read",
	tpm2.TPMCCNVReadPublic:       "TPM2_NV_ReadPublic",
	tpm2.TPMCCStartAuthSession:   "TPM2_StartAuthSession",
	tpm2.TPMCCPolicySecret:       "TPM2_PolicySecret",
	tpm2.TPMCCGetCapability:      "TPM2_GetCapability",
}

func commandName(cc tpm2.TPMCC) string {
	if n, ok := creating[cc]; ok {
		return n
	}
	if n, ok := names[cc]; ok {
		return n
	}
	return fmt.Sprintf("0x%08x", uint32(cc))
}

// flush unloads a transient object or session; errors are joined into *err
// so a failed flush is never silent.
func flush(t transport.TPM, h tpm2.TPMHandle, err *error) {
	if _, ferr := (tpm2.FlushContext{FlushHandle: h}).Execute(t); ferr != nil {
		*err = errors.Join(*err, fmt.Errorf("flushing TPM handle %#x: %w", uint32(h), ferr))
	}
}

// loadSRK re-derives the owner hierarchy's standard ECC P-256 storage root
// key (TCG TPM v2.0 Provisioning Guidance, template tpm2.ECCSRKTemplate) as a
// transient object. The caller flushes it.
func loadSRK(t transport.TPM) (tpm2.NamedHandle, error) {
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHOwner,
		InPublic:      tpm2.New2B(tpm2.ECCSRKTemplate),
	}.Execute(t)
	if err != nil {
		return tpm2.NamedHandle{}, fmt.Errorf("deriving the storage root key (owner hierarchy; is an owner password set?): %w", err)
	}
	return tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name}, nil
}

// nvChunk is the NV read size: TPM2_NV_Read's limit is TPM-specific
// (TPM_PT_NV_BUFFER_MAX), 512 bytes is under every known one.
const nvChunk = 512

// maxNVCert bounds an EK certificate read from NV.
const maxNVCert = 8 << 10

// readNV reads a whole NV index, or returns ok=false when it is not defined.
func readNV(t transport.TPM, index tpm2.TPMHandle) (data []byte, ok bool, err error) {
	pubRsp, err := tpm2.NVReadPublic{NVIndex: index}.Execute(t)
	if err != nil {
		if errors.Is(err, tpm2.TPMRCHandle) {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("reading the public area of NV index %#x: %w", uint32(index), err)
	}
	pub, err := pubRsp.NVPublic.Contents()
	if err != nil {
		return nil, false, fmt.Errorf("NV index %#x: %w", uint32(index), err)
	}
	size := int(pub.DataSize)
	if size > maxNVCert {
		return nil, false, fmt.Errorf("NV index %#x holds %d bytes, more than %d", uint32(index), size, maxNVCert)
	}
	out := make([]byte, 0, size)
	for off := 0; off < size; off += nvChunk {
		n := min(nvChunk, size-off)
		// EK certificate indexes are readable with the owner's (empty)
		// authorization (TCG EK Credential Profile section 2.2.1.5).
		rsp, err := tpm2.NVRead{
			AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
			NVIndex:    tpm2.NamedHandle{Handle: index, Name: pubRsp.NVName},
			Size:       uint16(n),
			Offset:     uint16(off),
		}.Execute(t)
		if err != nil {
			return nil, false, fmt.Errorf("reading NV index %#x at %d: %w", uint32(index), off, err)
		}
		out = append(out, rsp.Data.Buffer...)
	}
	return out, true, nil
}
