//go:build e2e

package e2e

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"
)

// TestBoot checks how every node booted, for the firmware the lab was brought
// up with (CASTELLAN_LAB_FIRMWARE, set by vagrant/e2e.sh): with uefi, Secure
// Boot enabled and enforced by the firmware's keys, and the TPM event log
// replaying to the PCR values; with bios, that the node runs, answers over
// SSH and has its TPM.
func TestBoot(t *testing.T) {
	l := setup(t)
	firmware := os.Getenv("CASTELLAN_LAB_FIRMWARE")
	switch firmware {
	case "uefi", "bios":
	default:
		t.Fatalf("CASTELLAN_LAB_FIRMWARE=%q: want uefi or bios (run through vagrant/e2e.sh)", firmware)
	}
	pcrs := map[string]PCRs{}
	for _, n := range l.p.Spec.Nodes {
		t.Run(n.Name, func(t *testing.T) {
			if firmware == "bios" {
				checkBIOSBoot(t, l, n.Name)
				return
			}
			pcrs[n.Name] = checkUEFIBoot(t, l, n.Name)
		})
	}
	if firmware == "uefi" && len(pcrs) == len(l.p.Spec.Nodes) {
		t.Run("measurements are the same on every node", func(t *testing.T) {
			first := l.p.Spec.Nodes[0].Name
			for _, n := range l.p.Spec.Nodes[1:] {
				for _, i := range measuredPCRs {
					if !bytes.Equal(pcrs[n.Name][i], pcrs[first][i]) {
						t.Errorf("PCR %d: %s has %x, %s has %x", i, n.Name, pcrs[n.Name][i], first, pcrs[first][i])
					}
				}
			}
			for _, i := range measuredPCRs {
				t.Logf("PCR %2d sha256 %x", i, pcrs[first][i])
			}
		})
	}
}

const (
	efiGlobal = "8be4df61-93ca-11d2-aa0d-00e098032b8c" // EFI_GLOBAL_VARIABLE (UEFI 2.10, 3.3)
	eventLog  = "/sys/kernel/security/tpm0/binary_bios_measurements"
)

// efiVar reads a one-byte EFI global variable through efivarfs: 4 bytes of
// attributes, then the value.
func efiVar(t *testing.T, l *lab, node, name string) string {
	t.Helper()
	return l.on(t, node, "od", "-An", "-t", "u1", "-j", "4", "-N", "1", "/sys/firmware/efi/efivars/"+name+"-"+efiGlobal)
}

func checkUEFIBoot(t *testing.T, l *lab, node string) PCRs {
	t.Helper()
	if got := l.on(t, node, "sh", "-c", "test -d /sys/firmware/efi && echo uefi || echo bios"); got != "uefi" {
		t.Fatalf("booted with %s firmware, want UEFI", got)
	}
	if sb, setup := efiVar(t, l, node, "SecureBoot"), efiVar(t, l, node, "SetupMode"); sb != "1" || setup != "0" {
		t.Errorf("SecureBoot=%s SetupMode=%s, want Secure Boot enabled (1) in user mode (0)", sb, setup)
	}

	// tpm2_eventlog replays the log and prints the PCR values it computed;
	// tpm2_pcrread reads them from the TPM.
	logYAML := l.on(t, node, "tpm2_eventlog", eventLog)
	replayed, err := parsePCRBank(logYAML, "pcrs:", "sha256", 32)
	if err != nil {
		t.Fatalf("tpm2_eventlog output: %v", err)
	}
	sel := make([]string, len(measuredPCRs))
	for i, p := range measuredPCRs {
		sel[i] = fmt.Sprint(p)
	}
	read, err := parsePCRBank(l.on(t, node, "tpm2_pcrread", "sha256:"+strings.Join(sel, ",")), "", "sha256", 32)
	if err != nil {
		t.Fatalf("tpm2_pcrread output: %v", err)
	}
	zero := make([]byte, 32)
	for _, i := range measuredPCRs {
		switch {
		case read[i] == nil:
			t.Errorf("PCR %d: tpm2_pcrread printed no value", i)
		case replayed[i] == nil:
			t.Errorf("PCR %d: nothing measured into it in the event log", i)
		case bytes.Equal(read[i], zero):
			t.Errorf("PCR %d is all zeros: nothing was measured into it", i)
		case !bytes.Equal(replayed[i], read[i]):
			t.Errorf("PCR %d: the event log replays to %x, the TPM holds %x", i, replayed[i], read[i])
		}
	}

	events, err := parseEvents(logYAML)
	if err != nil {
		t.Fatalf("tpm2_eventlog output: %v", err)
	}
	// PCR 7: the Secure Boot policy (SecureBoot = 1, PK, KEK, db, dbx) and the
	// db entry that let shim run.
	policy := map[string]string{}
	authorities := map[string]bool{}
	for _, e := range events {
		if e.PCRIndex != 7 {
			continue
		}
		switch e.EventType {
		case "EV_EFI_VARIABLE_DRIVER_CONFIG":
			policy[e.Event.UnicodeName] = e.Event.VariableData
		case "EV_EFI_VARIABLE_AUTHORITY":
			authorities[e.Event.UnicodeName] = true
		}
	}
	if policy["SecureBoot"] != "01" {
		t.Errorf("PCR 7: SecureBoot measured as %q, want \"01\"", policy["SecureBoot"])
	}
	for _, v := range []string{"PK", "KEK", "db", "dbx"} {
		if policy[v] == "" {
			t.Errorf("PCR 7: %s not measured (or empty)", v)
		}
	}
	if !authorities["db"] {
		t.Errorf("PCR 7: no EV_EFI_VARIABLE_AUTHORITY from db: the firmware did not verify shim against db")
	}

	// PCR 8 holds the command line of the kernel that runs; PCR 9 its file
	// and its initrd, as grub read them.
	cmdline := strings.TrimPrefix(l.on(t, node, "cat", "/proc/cmdline"), "BOOT_IMAGE=")
	release := l.on(t, node, "uname", "-r")
	want := map[string]int{
		"kernel_cmdline: " + cmdline:  8,
		"/boot/vmlinuz-" + release:    9,
		"/boot/initrd.img-" + release: 9,
	}
	for _, e := range events {
		if p, ok := want[e.text()]; ok && p == e.PCRIndex {
			delete(want, e.text())
		}
	}
	for s, p := range want {
		t.Errorf("PCR %d: no event %q in the log", p, s)
	}
	return read
}

func checkBIOSBoot(t *testing.T, l *lab, node string) {
	t.Helper()
	if got := l.on(t, node, "sh", "-c", "test -d /sys/firmware/efi && echo uefi || echo bios"); got != "bios" {
		t.Errorf("booted with %s firmware, want BIOS (CASTELLAN_BOX_FIRMWARE=bios)", got)
	}
	if got := l.on(t, node, "sh", "-c", "test -c /dev/tpmrm0 && echo yes || echo no"); got != "yes" {
		t.Fatalf("no /dev/tpmrm0")
	}
	// The TPM answers: PCR 0 holds what SeaBIOS measured.
	read, err := parsePCRBank(l.on(t, node, "tpm2_pcrread", "sha256:0"), "", "sha256", 32)
	if err != nil {
		t.Fatalf("tpm2_pcrread: %v", err)
	}
	t.Logf("PCR 0 sha256 %x; event log: %s", read[0],
		l.on(t, node, "sh", "-c", "test -r "+eventLog+" && echo \"$(wc -c <"+eventLog+") bytes\" || echo none"))
}
