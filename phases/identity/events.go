package identity

import (
	"encoding/binary"
	"strings"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// Event types whose data says what was measured (TCG PC Client Platform
// Firmware Profile, section 10.4.1).
const (
	evPostCode                   = 0x00000001
	evSeparator                  = 0x00000004
	evAction                     = 0x00000005
	evSCRTMContents              = 0x00000007
	evSCRTMVersion               = 0x00000008
	evIPL                        = 0x0000000d
	evEFIVariableDriverConfig    = 0x80000001
	evEFIVariableBoot            = 0x80000002
	evEFIBootServicesApplication = 0x80000003
	evEFIBootServicesDriver      = 0x80000004
	evEFIRuntimeServicesDriver   = 0x80000005
	evEFIAction                  = 0x80000007
	evEFIPlatformFirmwareBlob    = 0x80000008
	evEFIVariableBoot2           = 0x8000000c
	evEFIVariableAuthority       = 0x800000e0
)

// maxEventText bounds what describeEvent returns (runes).
const maxEventText = 120

// describeEvent says in words what an event measured, from its data as the
// log holds it: the variable name of EFI variable events (UEFI_VARIABLE_DATA),
// the file path of a loaded EFI image (UEFI_IMAGE_LOAD_EVENT's device path,
// its media file path node; UEFI 2.10 section 10.3.5.4), text for events
// whose data is text (ASCII or UTF-16LE), "separator" for separators, ""
// otherwise. The result is printable and at most 120 runes. Data is
// untrusted: every length is checked.
func describeEvent(typ uint32, data []byte) string {
	var s string
	switch typ {
	case evSeparator:
		return "separator"
	case evEFIVariableDriverConfig, evEFIVariableBoot, evEFIVariableBoot2, evEFIVariableAuthority:
		s = efiVariableName(data)
	case evEFIBootServicesApplication, evEFIBootServicesDriver, evEFIRuntimeServicesDriver:
		s = efiImagePath(data)
	case evPostCode, evAction, evSCRTMContents, evSCRTMVersion, evIPL, evEFIAction, evEFIPlatformFirmwareBlob:
		s = text(data)
	}
	return printable(s)
}

// efiVariableName reads UEFI_VARIABLE_DATA: VariableName (GUID, 16 bytes),
// UnicodeNameLength and VariableDataLength (UINT64 each), then the name in
// UTF-16LE.
func efiVariableName(b []byte) string {
	if len(b) < 32 {
		return ""
	}
	n := binary.LittleEndian.Uint64(b[16:24])
	if n == 0 || n > uint64(len(b)-32)/2 {
		return ""
	}
	return utf16String(b[32 : 32+2*n])
}

// efiImagePath reads UEFI_IMAGE_LOAD_EVENT (ImageLocationInMemory,
// ImageLengthInMemory, ImageLinkTimeAddress, LengthOfDevicePath: UINT64
// each, then the device path) and returns the path of its media file path
// nodes (type 4, subtype 4), joined.
func efiImagePath(b []byte) string {
	if len(b) < 32 {
		return ""
	}
	n := binary.LittleEndian.Uint64(b[24:32])
	if n > uint64(len(b)-32) {
		return ""
	}
	dp := b[32 : 32+n]
	var parts []string
	for len(dp) >= 4 {
		typ, sub := dp[0], dp[1]
		l := int(binary.LittleEndian.Uint16(dp[2:4]))
		if l < 4 || l > len(dp) || typ == 0x7f {
			break
		}
		if typ == 4 && sub == 4 {
			parts = append(parts, strings.TrimRight(utf16String(dp[4:l]), "\x00"))
		}
		dp = dp[l:]
	}
	return strings.Join(parts, "")
}

// text returns data as text when it is ASCII or UTF-16LE text, "" when it
// is not.
func text(b []byte) string {
	t := strings.TrimRight(string(b), "\x00")
	if t != "" && utf8.ValidString(t) && isText(t) {
		return t
	}
	if u := strings.TrimRight(utf16String(b), "\x00"); u != "" && isText(u) {
		return u
	}
	return ""
}

// isText: valid text of which at least three runes in four are printable
// (printable escapes the others).
func isText(s string) bool {
	n, bad := 0, 0
	for _, r := range s {
		n++
		switch {
		case r == utf8.RuneError || r == 0:
			return false
		case !unicode.IsPrint(r):
			bad++
		}
	}
	return n > 0 && bad*4 <= n
}

func utf16String(b []byte) string {
	u := make([]uint16, len(b)/2)
	for i := range u {
		u[i] = binary.LittleEndian.Uint16(b[2*i:])
	}
	if i := indexZero(u); i >= 0 {
		u = u[:i]
	}
	return string(utf16.Decode(u))
}

func indexZero(u []uint16) int {
	for i, c := range u {
		if c == 0 {
			return i
		}
	}
	return -1
}

// printable escapes what is not printable and cuts s to maxEventText runes.
func printable(s string) string {
	var b strings.Builder
	n := 0
	for _, r := range s {
		if n == maxEventText {
			b.WriteString("…")
			break
		}
		if unicode.IsPrint(r) {
			b.WriteRune(r)
		} else {
			b.WriteString("?")
		}
		n++
	}
	return b.String()
}
