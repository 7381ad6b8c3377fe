package e2e

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// The PCRs the firmware, shim and grub measure on the lab's UEFI nodes
// (vagrant/README.md says what each holds): they must replay from the event log
// and be equal on every node booted from one box.
var measuredPCRs = []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14}

// PCRs maps a PCR index (0-23) to its value in one bank.
type PCRs map[int][]byte

// pcrLine is one PCR value as tpm2-tools 5 prints it: "    4  : 0x3D45...".
var pcrLine = regexp.MustCompile(`^\s*(\d+)\s*:\s*0x([0-9A-Fa-f]+)\s*$`)

// parsePCRBank reads the values of bank alg ("sha256") from the YAML that
// tpm2-tools 5 prints: tpm2_pcrread's ("  sha256:" followed by
// "    N : 0xHEX" lines), or the "pcrs:" section at the end of tpm2_eventlog's
// output (the PCR values it computed by replaying the log), when after is
// "pcrs:": the bank is then looked for only after a line that is exactly after.
// Each value must be size bytes long. Errors say what is missing or malformed
// and on which line.
func parsePCRBank(out, after, alg string, size int) (PCRs, error) {
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	line := 0
	seenAfter := after == ""
	for sc.Scan() {
		line++
		text := sc.Text()
		if !seenAfter {
			seenAfter = strings.TrimRight(text, " \t\r") == after
			continue
		}
		if strings.TrimSpace(text) != alg+":" {
			continue
		}
		pcrs := PCRs{}
		for sc.Scan() {
			line++
			m := pcrLine.FindStringSubmatch(sc.Text())
			if m == nil {
				break
			}
			idx, err := strconv.Atoi(m[1])
			if err != nil || idx > 23 {
				return nil, fmt.Errorf("line %d: PCR index %q out of range 0-23", line, m[1])
			}
			if _, dup := pcrs[idx]; dup {
				return nil, fmt.Errorf("line %d: PCR %d of bank %s given twice", line, idx, alg)
			}
			v, err := hex.DecodeString(m[2])
			if err != nil || len(v) != size {
				return nil, fmt.Errorf("line %d: PCR %d of bank %s: %d hex digits, want %d", line, idx, alg, len(m[2]), 2*size)
			}
			pcrs[idx] = v
		}
		if len(pcrs) == 0 {
			return nil, fmt.Errorf("line %d: bank %s has no PCR values", line, alg)
		}
		return pcrs, sc.Err()
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if !seenAfter {
		return nil, fmt.Errorf("no %q line in the output", after)
	}
	return nil, fmt.Errorf("no bank %q in the output", alg)
}

// logEvent is one event of a TCG PC Client event log (TCG PC Client Platform
// Firmware Profile 2.0, 10.2) as tpm2_eventlog (tpm2-tools 5) prints it, with
// the fields the lab's checks read.
type logEvent struct {
	PCRIndex  int       `yaml:"PCRIndex"`
	EventType string    `yaml:"EventType"`
	Event     eventData `yaml:"Event"`
}

// eventData is the parsed event data: UEFI variables (EV_EFI_VARIABLE_*) give
// UnicodeName and VariableData (hex); EV_IPL events (shim, grub) a String.
type eventData struct {
	UnicodeName  string `yaml:"UnicodeName"`
	VariableData string `yaml:"VariableData"`
	String       string `yaml:"String"`
}

// UnmarshalYAML takes event data that tpm2_eventlog prints as a mapping and
// leaves the rest (raw hex, a scalar) empty.
func (d *eventData) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.MappingNode {
		return nil
	}
	type plain eventData
	return n.Decode((*plain)(d))
}

// text is an EV_IPL event's string as shim and grub measured it, without the
// quotes and the trailing NUL tpm2_eventlog prints: "grub_cmd: set timeout=0".
func (e logEvent) text() string {
	s := strings.TrimSpace(e.Event.String)
	s = strings.TrimPrefix(s, `"`)
	s = strings.TrimSuffix(s, `"`)
	return strings.TrimSuffix(s, `\0`)
}

// parseEvents reads the events from tpm2_eventlog's YAML output.
func parseEvents(out string) ([]logEvent, error) {
	var doc struct {
		Events []logEvent `yaml:"events"`
	}
	if err := yaml.Unmarshal([]byte(out), &doc); err != nil {
		return nil, fmt.Errorf("tpm2_eventlog YAML: %w", err)
	}
	if len(doc.Events) == 0 {
		return nil, fmt.Errorf("tpm2_eventlog YAML: no events")
	}
	return doc.Events, nil
}
