package sshtest_test

import (
	"maps"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"castellan/installer/ssh/sshtest"
)

// A report as perf 6.1 prints it for `perf report --sort comm -F
// period,comm --stdio -g none` (trimmed).
const perfReport = `# To display the perf.data header info, please use --header/--header-only options.
#
# Total Lost Samples: 0
#
# Samples: 113K of event 'cpu-clock:pppH'
# Event count (approx.): 28337500000
#
#          Period  Command
# ...............  ...............
#
      17750000  :-1            
    1857500000  castellan      
    9322250000  castellan-2049e
      55000000  installer.test 
       5250000  ip             
     374750000  kdamond.0      
   11923000000  sshd           
    2890000000  sh             
     310000000  stat           
    2590000000  sudo           
       1000000  kworker/0:2-vir

`

func TestParsePerfByComm(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		name, report string
		want         map[string]time.Duration
		err          string
	}{
		{"report", perfReport, map[string]time.Duration{
			"agent": 9322250 * time.Microsecond, "sshd": 11923 * ms, "shell": 3200 * ms, "sudo": 2590 * ms,
			"other": (17750 + 374750 + 1000) * time.Microsecond,
		}, ""},
		{"a name with spaces", "1000000 kworker/u8:2 x\n2000000 sshd\n", map[string]time.Duration{"other": ms, "sshd": 2 * ms}, ""},
		{"only the client side", "1000 castellan\n2000 ip\n", nil, "no process of the nodes"},
		{"empty", "# nothing\n", nil, "no process of the nodes"},
		{"not a period", "abc sshd\n", nil, `"abc sshd"`},
		{"negative", "-5 sshd\n", nil, "want PERIOD COMM"},
		{"no name", "1000\n", nil, "want PERIOD COMM"},
		{"more than a week", "604800000000001 sshd\n", nil, "want PERIOD COMM"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := sshtest.ParsePerfByComm(tc.report)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil || !maps.Equal(got, tc.want) {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

func FuzzParsePerfByComm(f *testing.F) {
	f.Add(perfReport)
	f.Add("1 sshd\n2 castellan-abc\n")
	f.Add("604800000000000 sshd\n604800000000000 sshd\n")
	f.Fuzz(func(t *testing.T, report string) {
		by, err := sshtest.ParsePerfByComm(report)
		if err != nil {
			return
		}
		for class, d := range by {
			if d < 0 || class == "" {
				t.Fatalf("%q: %v", class, d)
			}
		}
	})
}

// TestResetPeakRSS: the peak RSS follows a large allocation, and a reset
// brings it back down once the memory is returned.
func TestResetPeakRSS(t *testing.T) {
	base := sshtest.PeakRSS()
	if base <= 0 {
		t.Fatal("PeakRSS read nothing from /proc/self/status")
	}
	big := make([]byte, 256<<20)
	for i := 0; i < len(big); i += 4096 {
		big[i] = 1
	}
	high := sshtest.PeakRSS()
	if high < base+200<<20 {
		t.Fatalf("peak RSS %d MB after touching 256 MB, was %d MB", high>>20, base>>20)
	}
	runtime.KeepAlive(big)
	big = nil
	runtime.GC()
	debug.FreeOSMemory()
	if err := sshtest.ResetPeakRSS(); err != nil {
		t.Fatal(err)
	}
	if low := sshtest.PeakRSS(); low > high-200<<20 {
		t.Errorf("peak RSS %d MB after the memory was returned and a reset, was %d MB", low>>20, high>>20)
	}
}
