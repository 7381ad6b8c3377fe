package preflight

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"castellan/installer/ssh/sshtest"
)

// needCommand skips without the tool, or fails under make test, which
// installs the tools and sets CASTELLAN_REQUIRE_REAL_PEERS=1.
func needCommand(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err == nil {
		return
	}
	if os.Getenv(sshtest.RequireEnv) == "1" {
		t.Fatalf("%s is not installed (make test-deps installs it)", name)
	}
	t.Skipf("%s is not installed (make test-deps installs it)", name)
}

// readEnds reads a disk image's head and tail as the gatherer does.
func readEnds(t *testing.T, path string) (head, tail []byte) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	head = make([]byte, headBytes)
	n, _ := io.ReadFull(f, head)
	head = head[:n]
	if fi.Size() > headBytes {
		off := max(fi.Size()-tailBytes, headBytes)
		tail = make([]byte, fi.Size()-off)
		if _, err := f.ReadAt(tail, off); err != nil && err != io.EOF {
			t.Fatal(err)
		}
	}
	return head, tail
}

// TestDetectSignatureRealTools formats image files with the real tools a
// disk may have met before castellan, and checks each is recognised.
func TestDetectSignatureRealTools(t *testing.T) {
	tests := []struct {
		want string
		size string
		tool []string // {IMG} is replaced by the image path
	}{
		{"", "64M", nil},
		{"ext4", "64M", []string{"mkfs.ext4", "-q", "-F", "{IMG}"}},
		{"ext2", "64M", []string{"mkfs.ext2", "-q", "-F", "{IMG}"}},
		{"ext3", "64M", []string{"mkfs.ext3", "-q", "-F", "{IMG}"}},
		{"xfs", "320M", []string{"mkfs.xfs", "-q", "-f", "{IMG}"}},
		{"btrfs", "200M", []string{"mkfs.btrfs", "-q", "-f", "{IMG}"}},
		{"vfat", "64M", []string{"mkfs.vfat", "{IMG}"}},
		{"swap", "64M", []string{"mkswap", "{IMG}"}},
		{"gpt", "64M", []string{"parted", "-s", "{IMG}", "mklabel", "gpt"}},
		{"dos", "64M", []string{"parted", "-s", "{IMG}", "mklabel", "msdos", "mkpart", "primary", "1MiB", "32MiB"}},
		{"luks2", "64M", []string{"sh", "-c", "echo pw | cryptsetup luksFormat --type luks2 --batch-mode --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \"$0\"", "{IMG}"}},
		{"luks1", "64M", []string{"sh", "-c", "echo pw | cryptsetup luksFormat --type luks1 --batch-mode --pbkdf-force-iterations 1000 \"$0\"", "{IMG}"}},
	}
	for _, tt := range tests {
		name := tt.want
		if name == "" {
			name = "blank"
		}
		t.Run(name, func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "disk.img")
			if out, err := exec.Command("truncate", "-s", tt.size, img).CombinedOutput(); err != nil {
				t.Fatalf("truncate: %v %s", err, out)
			}
			if tt.tool != nil {
				needCommand(t, tt.tool[0])
				if tt.tool[0] == "sh" {
					needCommand(t, "cryptsetup")
				}
				args := make([]string, len(tt.tool))
				for i, a := range tt.tool {
					args[i] = a
					if a == "{IMG}" {
						args[i] = img
					}
				}
				if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
					t.Fatalf("%v: %v\n%s", args, err, out)
				}
			}
			head, tail := readEnds(t, img)
			if got := DetectSignature(head, tail); got != tt.want {
				t.Errorf("DetectSignature = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestDetectSignatureUnknownDataIsNotBlank(t *testing.T) {
	head := make([]byte, headBytes)
	tail := make([]byte, tailBytes)
	tests := []struct {
		name string
		edit func()
		want string
	}{
		{"one byte deep in the head", func() { head[700000] = 1 }, "data"},
		{"one byte in the tail (a GPT backup, an md 1.0 superblock)", func() { tail[tailBytes-100] = 1 }, "data"},
		{"md 0.90 superblock at the end", func() { copy(tail[tailBytes-65536:], []byte{0xfc, 0x4e, 0x2b, 0xa9}) }, "linux_raid_member"},
		{"LUKS2 with a wiped primary header", func() { copy(head[16384:], "SKUL\xba\xbe") }, "luks2"},
		{"LVM physical volume", func() { copy(head[512:], "LABELONE"); copy(head[536:], "LVM2 001") }, "LVM2_member"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clear(head)
			clear(tail)
			tt.edit()
			if got := DetectSignature(head, tail); got != tt.want {
				t.Errorf("DetectSignature = %q, want %q", got, tt.want)
			}
		})
	}
}

// FuzzDetectSignature: never panics, and only all-zero input is blank.
func FuzzDetectSignature(f *testing.F) {
	f.Add([]byte("LUKS\xba\xbe\x00\x02"), []byte{})
	f.Add(bytes.Repeat([]byte{0}, 2048), []byte{0, 1})
	f.Add(append(bytes.Repeat([]byte{0}, 1080), 0x53, 0xef), []byte(nil))
	f.Fuzz(func(t *testing.T, head, tail []byte) {
		got := DetectSignature(head, tail)
		blank := isZero(head) && isZero(tail)
		if (got == "") != blank {
			t.Fatalf("DetectSignature = %q for blank=%v", got, blank)
		}
	})
}
