//go:build !e2e

package e2e

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

// testdata/ holds what tpm2_eventlog and tpm2_pcrread (tpm2-tools 5.4) printed
// on a lab node (UEFI box, Secure Boot on) on 2026-11-30.

func readTestdata(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestParsePCRBankRealOutput(t *testing.T) {
	replayed, err := parsePCRBank(readTestdata(t, "tpm2_eventlog.yaml"), "pcrs:", "sha256", 32)
	if err != nil {
		t.Fatal(err)
	}
	read, err := parsePCRBank(readTestdata(t, "tpm2_pcrread.yaml"), "", "sha256", 32)
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range measuredPCRs {
		if read[i] == nil || !bytes.Equal(replayed[i], read[i]) {
			t.Errorf("PCR %d: replayed %x, read %x", i, replayed[i], read[i])
		}
	}
	// The log measures nothing into 10-13 and 15-23.
	if len(replayed) != len(measuredPCRs) {
		t.Errorf("replayed %d PCRs, want %d", len(replayed), len(measuredPCRs))
	}
	if got := replayed[7][:4]; !bytes.Equal(got, []byte{0x75, 0x67, 0x7d, 0xb6}) {
		t.Errorf("PCR 7 starts %x", got)
	}
}

func TestParsePCRBankErrors(t *testing.T) {
	sha := "0x" + strings.Repeat("ab", 32)
	for _, tc := range []struct {
		name, out, after, want string
	}{
		{"no bank", "  sha1:\n    0 : 0x" + strings.Repeat("ab", 20) + "\n", "", `no bank "sha256"`},
		{"no pcrs line", "  sha256:\n    0 : " + sha + "\n", "pcrs:", `no "pcrs:" line`},
		{"bank before pcrs line only", "  sha256:\n    0 : " + sha + "\npcrs:\n", "pcrs:", `no bank "sha256"`},
		{"short value", "  sha256:\n    0 : 0xabcd\n", "", "line 2: PCR 0 of bank sha256: 4 hex digits, want 64"},
		{"odd digits", "  sha256:\n    0 : 0x" + strings.Repeat("a", 63) + "\n", "", "line 2: PCR 0"},
		{"duplicate", "  sha256:\n    3 : " + sha + "\n    3 : " + sha + "\n", "", "line 3: PCR 3 of bank sha256 given twice"},
		{"index out of range", "  sha256:\n    24 : " + sha + "\n", "", "line 2: PCR index \"24\" out of range"},
		{"empty bank", "  sha256:\n  sha1:\n", "", "line 2: bank sha256 has no PCR values"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parsePCRBank(tc.out, tc.after, "sha256", 32)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want it to say %q", err, tc.want)
			}
		})
	}
}

func TestParseEventsRealOutput(t *testing.T) {
	events, err := parseEvents(readTestdata(t, "tpm2_eventlog.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var secureBoot string
	texts := map[string]int{}
	for _, e := range events {
		if e.EventType == "EV_EFI_VARIABLE_DRIVER_CONFIG" && e.Event.UnicodeName == "SecureBoot" {
			secureBoot = e.Event.VariableData
		}
		if e.EventType == "EV_IPL" {
			texts[e.text()] = e.PCRIndex
		}
	}
	if secureBoot != "01" {
		t.Errorf("SecureBoot = %q", secureBoot)
	}
	for s, pcr := range map[string]int{
		"kernel_cmdline: /boot/vmlinuz-6.1.0-50-amd64 root=LABEL=root ro console=tty0 console=ttyS0,115200n8 net.ifnames=0 biosdevname=0 quiet": 8,
		"/boot/initrd.img-6.1.0-50-amd64": 9,
		"MokList":                         14,
	} {
		if got, ok := texts[s]; !ok || got != pcr {
			t.Errorf("event %q: PCR %d (found %v), want PCR %d", s, got, ok, pcr)
		}
	}
}

func TestParseEventsErrors(t *testing.T) {
	for _, out := range []string{"", "events: []\n", "events: [\n"} {
		if _, err := parseEvents(out); err == nil {
			t.Errorf("parseEvents(%q): no error", out)
		}
	}
}

// FuzzParsePCRBank: tpm2-tools output comes from the node; the parser must
// never panic, and what it returns has values of the asked size only.
func FuzzParsePCRBank(f *testing.F) {
	f.Add("  sha256:\n    0 : 0x"+strings.Repeat("ab", 32)+"\n", "")
	f.Add("pcrs:\n  sha256:\n    14 : 0x"+strings.Repeat("00", 32)+"\n", "pcrs:")
	f.Fuzz(func(t *testing.T, out, after string) {
		pcrs, err := parsePCRBank(out, after, "sha256", 32)
		if err != nil {
			return
		}
		for i, v := range pcrs {
			if i < 0 || i > 23 || len(v) != 32 {
				t.Fatalf("PCR %d: %d bytes", i, len(v))
			}
		}
	})
}
