// Package diskcrypt is the disk encryption phase (issue 18): every data disk
// of the profile becomes LUKS2 (argon2id) with an ext4 filesystem inside,
// mounted at its mount point, unlocked at boot by the node's TPM with nobody
// present, with a recovery passphrase castellan generated and escrowed
// age-encrypted in the state repo. It uses the distribution's tools through
// the agent (cryptsetup, systemd-cryptenroll, wipefs, mkfs.ext4, systemctl)
// for changes; what the plan reads is read in-process (the LUKS2 header,
// /proc/self/mountinfo, /sys/block/*/holders, /etc/crypttab, /etc/fstab),
// except whether the TPM still unseals a disk's key, which only systemd's
// token plugin can say (TPMProbe).
//
// # Data safety
//
//   - A disk that is not castellan's is formatted only when preflight found
//     it blank (no signature in the regions signatures live in), or the
//     profile sets allowFormat: true for it; the plan says what is on it. A
//     disk in use (mounted, held, busy, read-only) is never touched.
//   - The node refuses to write when the disk's first or last MiB changed
//     since the plan (WriteRequest.Content), and opens it with O_EXCL.
//   - The recovery passphrase is escrowed before anything happens on the
//     node, the header before the disk is written.
//   - The recovery passphrase never exists on the node outside the agent's
//     memory: it reaches cryptsetup on a pipe (stdin, /proc/self/fd/3) and
//     systemd-cryptenroll on an anonymous memory file (memfd; systemd 252
//     seeks in its key file, so a pipe fails); never in argv, the
//     environment, a file, a log line or an error (Passphrase prints as
//     "[redacted]").
//
// # Recognising castellan's disk
//
// A disk is castellan's when its LUKS2 header carries a token of type
// "castellan" (Token) naming this cluster and node; the LUKS UUID, chosen
// by castellan before the passphrase is escrowed, names its secrets:
//
//	secrets/diskcrypt/NODE/UUID/recovery-G.age  recovery passphrase, generation G
//	secrets/diskcrypt/NODE/UUID/header.age      header area (luksHeaderBackup format, 2 MiB)
//	data/diskcrypt/NODE.json                    Record: device, UUID, mapping, mount point, generation, PCRs
//
// # The state machine of one disk
//
// Each step leaves evidence on the disk, on the node or in the state repo;
// the plan reads the evidence, so a rerun after a crash at any point
// continues with the first step whose evidence is missing. Installer steps
// are marked (I), node steps (N, with the node step names of node.go).
//
//	state                     evidence                                   next
//	---------------------------------------------------------------------------------------------
//	A  not castellan's        no castellan token of this node            blank or allowFormat: encrypt
//	                                                                     otherwise: refused, untouched
//	encrypt:
//	 1 (I) escrow-recovery    secrets/.../UUID/recovery-G (new UUID)     a crash leaves the disk in A: a rerun
//	                                                                     starts over with a new UUID (the orphan
//	                                                                     secret opens nothing)
//	 2 (N) prepare            scratch image on /run only: luks-format,   a crash or a TPM that cannot make the
//	       (Prepare)          token-import, tpm-enrol                    keyslot leaves the disk exactly as it was
//	 3 (I) escrow-header      secrets/.../UUID/header, Record            disk still in A: as 1
//	 4 (N) write (Write)      wipe (allowFormat only): the disk in A, blank or with data it may lose
//	                          write-secondary: secondary copy with the token -> B
//	                          write-keyslots                             -> B
//	                          write-primary: the whole header            -> C
//	 5 (N) setup (Setup)      crypttab, open, mkfs, mount-point, fstab,  -> D (each sub-step checks its own
//	                          mount                                      evidence first: see Node.Setup)
//	B  header half written    castellan token in the secondary copy,     write-header: the escrowed header again
//	                          primary missing (preflight accepts it)
//	C  header whole           both copies, token, TPM2 token             unlock-and-mount (5)
//	D  done                   crypttab and fstab lines, mapping open     nothing (no-op rerun)
//	                          with the token's ext4 UUID, mounted at
//	                          the mount point, TPM probe "opens",
//	                          escrowed header digest = the disk's
//	from C or D:
//	   PCRs changed, no TPM2 token, several, or the TPM refuses (replaced)  -> enrol-tpm:
//	       (N) test-recovery  the escrowed passphrase opens the recovery keyslot (else stop, nothing changed)
//	       (N) tpm-wipe       no TPM2 token              a crash here: "no TPM2 keyslot" -> enrol-tpm again
//	       (N) tpm-enrol      one TPM2 token, profile's PCRs
//	       (I)                header escrowed again
//	   recoveryGeneration raised, or token pending/retired set           -> rotate-recovery:
//	       (I) escrow         secrets/.../recovery-G' (reused if a cut-off run stored it)
//	       (N) test-recovery, token-pending (pending = {N, G'}), add-keyslot (keyslot N),
//	           token-commit (recovery = {N, G'}, old keyslot retired with its salt),
//	           kill-retired, token-clear-retired: see Node.Rotate; each resumes from the token
//	       (I)                header escrowed again
//	   escrowed header missing or not the disk's                          -> backup-header
//
// The recovery passphrase of a generation is escrowed before the keyslot
// holding it is made, and the old keyslot is removed only after the token
// names the new one: every header the disk ever had opens with a passphrase
// the state repo holds.
//
// # Boot
//
// /etc/crypttab: "castellan-UUID UUID=UUID none
// luks,tpm2-device=auto,headless=true,nofail"; /etc/fstab:
// "/dev/mapper/castellan-UUID MOUNTPOINT ext4 defaults,nofail 0 2". A disk
// the TPM does not unlock fails its unit at once (headless) and never holds
// up the boot (nofail); its mount point is immutable while nothing is
// mounted on it, so nothing writes plaintext beneath it; a rerun of castellan
// re-enrols the TPM with the escrowed recovery passphrase.
//
// # API
//
// Installer side: Phase (engine.Phase and engine.Observer). Node side:
// Node and its operations, as agent operations:
//
//	OpObserve  Observe(ObserveRequest) Observation    read-only
//	OpHeader   ReadArea(HeaderRequest) HeaderArea     read-only: the header area to escrow
//	OpPrepare  Prepare(PrepareRequest) HeaderArea     a header made off the disk
//	OpWrite    Write(WriteRequest) WriteResult        the header onto the disk
//	OpEnrol    Enrol(EnrolRequest) HeaderArea         the TPM keyslot (re-)made
//	OpRotate   Rotate(RotateRequest) HeaderArea       the recovery passphrase rotated
//	OpSetup    Setup(SetupRequest) SetupResult        crypttab, open, mkfs, fstab, mount
//
// Sources: cryptsetup(8) and the LUKS2 on-disk format specification;
// systemd-cryptenroll(1), crypttab(5), systemd-cryptsetup@.service(8),
// systemd.unit(5) (unit name escaping), fstab(5); the ext4 superblock
// (the kernel's Documentation/filesystems/ext4/super.rst).
package diskcrypt
