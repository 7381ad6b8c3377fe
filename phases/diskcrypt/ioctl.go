package diskcrypt

import (
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctlUint64 runs an ioctl that fills a uint64 (BLKGETSIZE64).
func ioctlUint64(f *os.File, req uint, out *uint64) error {
	conn, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var errno unix.Errno
	if err := conn.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, uintptr(req), uintptr(unsafe.Pointer(out)))
	}); err != nil {
		return err
	}
	if errno != 0 {
		return errno
	}
	return nil
}

// fsImmutable is FS_IMMUTABLE_FL (linux/fs.h; chattr(1) +i).
const fsImmutable = 0x00000010

// setImmutable sets or clears the immutable attribute of the directory at
// path (FS_IOC_GETFLAGS / FS_IOC_SETFLAGS, as chattr does).
func setImmutable(path string, on bool) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	flags, err := unix.IoctlGetInt(fd, unix.FS_IOC_GETFLAGS)
	if err != nil {
		return err
	}
	want := flags &^ fsImmutable
	if on {
		want = flags | fsImmutable
	}
	if want == flags {
		return nil
	}
	return unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, want)
}

// immutable reports whether the directory at path is immutable.
func immutable(path string) (bool, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	flags, err := unix.IoctlGetInt(fd, unix.FS_IOC_GETFLAGS)
	if err != nil {
		return false, err
	}
	return flags&fsImmutable != 0, nil
}
