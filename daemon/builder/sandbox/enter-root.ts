// Runs one command inside an image's root, from the step's sandbox (sandbox-init.ts). A small
// Perl program (perl-base is Essential on Debian and Ubuntu; Node cannot make these syscalls)
// gives the command a mount namespace and PID namespace of its own, pivots into the root and
// detaches the host's tree, and only then mounts /proc, /sys, /dev and the binds: every path
// from there on is looked up by the kernel inside the root, so an image's own symlinks (`proc
// -> /srv`, `var/lib/apt/lists -> /etc`) lead to places in the image, never on the host. Host
// directories that are bound in (apt's cache) are opened with open_tree() before the pivot and
// attached with move_mount() after it. The Perl process is PID 1 of the new PID namespace: when
// the command exits it exits, and the kernel kills whatever the command left behind (a
// `sleep 1000 &` holding the output pipe included).

import { run, type RunResult } from '../../tools/run.js'

export interface InRootOptions {
  env?: Record<string, string>
  input?: string
  onLine?: (line: string) => void
  // Host directories bound over image paths for the command (apt's lists and archives).
  binds?: Array<{ source: string, target: string }>
}

// Exit code when the sandbox itself could not be set up (the command never ran).
export const SETUP_FAILED_EXIT = 125

// Capabilities the command never gets (dropped from the bounding set before exec): loading
// modules, raw I/O, mounting and namespaces' escape hatches (open_by_handle_at needs
// DAC_READ_SEARCH, setns/ptrace of a host process SYS_PTRACE), device nodes, the clock,
// the host's network configuration and raw sockets (it shares the host's network: no capture
// of the host's traffic), reboot, audit and BPF.
const DROPPED_CAPS = [2, 12, 13, 16, 17, 19, 20, 21, 22, 25, 27, 30, 32, 33, 34, 35, 36, 38, 39, 40]

// Device nodes bound from the host's /dev into a fresh tmpfs: no disk, no memory device.
const DEVICES = ['null', 'zero', 'full', 'random', 'urandom', 'tty']

const ENTER = String.raw`
use strict; use warnings; use POSIX ();
$0 = 'osfarm-sandbox';
my %NR = (
  x86_64  => { unshare => 272, mount => 165, umount2 => 166, pivot_root => 155, prctl => 157, open_tree => 428, move_mount => 429 },
  aarch64 => { unshare => 97,  mount => 40,  umount2 => 39,  pivot_root => 41,  prctl => 167, open_tree => 428, move_mount => 429 },
);
my $nr = $NR{(POSIX::uname())[4]} or fail('unsupported architecture ' . (POSIX::uname())[4]);
sub fail { print STDERR "osfarm-sandbox: $_[0]\n"; POSIX::_exit(${SETUP_FAILED_EXIT}) }
# syscall() wants writable arguments: copies, not the constants.
sub sys { my $name = shift; my @a = @_; my $r = syscall($nr->{$name}, @a); fail("$name(" . join(', ', grep { !/^-?\d+$/ } @_) . "): $!") if $r < 0; $r }
my ($MS_RDONLY, $MS_NOSUID, $MS_NODEV, $MS_NOEXEC, $MS_REMOUNT, $MS_BIND, $MS_REC, $MS_PRIVATE) = (1, 2, 4, 8, 32, 4096, 16384, 1 << 18);

my $root = shift @ARGV;
my (@binds, @devices, @caps);
while (@ARGV && $ARGV[0] ne '--') {
  my $o = shift @ARGV;
  if ($o eq '--bind') { push @binds, [shift @ARGV, shift @ARGV] }
  elsif ($o eq '--dev') { push @devices, shift @ARGV }
  elsif ($o eq '--drop-cap') { push @caps, shift @ARGV }
  else { fail("unknown option $o") }
}
shift @ARGV;
fail('no command') unless @ARGV;

sys('unshare', 0x20000 | 0x20000000 | 0x08000000 | 0x04000000);   # CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS: no host SysV IPC, no host hostname
sys('mount', 0, '/', 0, $MS_REC | $MS_PRIVATE, 0);
my $pid = fork() // fail("fork: $!");
if ($pid) {
  # Outside the new PID namespace: only waits, and passes the command's status on.
  waitpid($pid, 0);
  POSIX::_exit(POSIX::WIFEXITED($?) ? POSIX::WEXITSTATUS($?) : 128 + POSIX::WTERMSIG($?));
}

# PID 1 of the new namespace. Host paths are opened now, attached after the pivot.
my $CLONE = 1 | 0x80000 | 0x8000;               # OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE
my @dev = map { [$_, sys('open_tree', -100, "/dev/$_", $CLONE)] } @devices;
my @bnd = map { [$_->[1], sys('open_tree', -100, $_->[0], $CLONE)] } @binds;
chdir($root) or fail("chdir $root: $!");
sys('pivot_root', '.', '.');
sys('umount2', '.', 2);                          # MNT_DETACH: the host's tree is gone
chdir('/') or fail("chdir /: $!");

# From here every path is the image's; its symlinks resolve inside it.
sub mkdir_p {
  my ($p, $depth) = @_;
  fail("$p: too many levels of symbolic links") if $depth > 40;
  return if -d $p;
  if (-l $p) {
    my $t = readlink($p);
    $t = ($p =~ s{[^/]*$}{}r) . $t unless $t =~ m{^/};
    return mkdir_p($t, $depth + 1);
  }
  my $parent = $p =~ s{/+[^/]*$}{}r;
  mkdir_p($parent, $depth + 1) if $parent ne '';
  mkdir($p, 0755) or -d $p or fail("cannot make $p in the image: $!");
}
sub mnt { my ($src, $dst, $type, $flags, $data) = @_; mkdir_p($dst, 0); sys('mount', $src, $dst, $type, $flags, $data // 0) }
sub attach { my ($fd, $dst) = @_; sys('move_mount', $fd, '', -100, $dst, 4 | 0x10) }   # MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_SYMLINKS: a link is followed, in the image

mnt('proc', '/proc', 'proc', $MS_NOSUID | $MS_NODEV | $MS_NOEXEC);
mnt('sysfs', '/sys', 'sysfs', $MS_RDONLY | $MS_NOSUID | $MS_NODEV | $MS_NOEXEC);
mnt('tmpfs', '/dev', 'tmpfs', $MS_NOSUID | $MS_NOEXEC, 'mode=755,size=1m');
for my $d (@dev) {
  open(my $fh, '>', "/dev/$d->[0]") or fail("/dev/$d->[0]: $!"); close($fh);
  attach($d->[1], "/dev/$d->[0]");
}
mnt('devpts', '/dev/pts', 'devpts', $MS_NOSUID | $MS_NOEXEC, 'newinstance,ptmxmode=0666,mode=0620');
mnt('tmpfs', '/dev/shm', 'tmpfs', $MS_NOSUID | $MS_NODEV, 'mode=1777,size=64m');
symlink('pts/ptmx', '/dev/ptmx'); symlink('/proc/self/fd', '/dev/fd');
symlink("/proc/self/fd/$_->[1]", "/dev/$_->[0]") for (['stdin', 0], ['stdout', 1], ['stderr', 2]);
# What root could change the host through: kernel tunables read-only, sysrq and kcore masked.
for my $p ('/proc/sys', '/proc/irq', '/proc/bus', '/proc/fs') {
  next unless -d $p;
  sys('mount', $p, $p, 0, $MS_BIND | $MS_REC, 0);
  sys('mount', 0, $p, 0, $MS_BIND | $MS_REMOUNT | $MS_RDONLY | $MS_NOSUID | $MS_NODEV | $MS_NOEXEC, 0);
}
for my $p ('/proc/sysrq-trigger', '/proc/kcore', '/proc/keys', '/proc/timer_list') { sys('mount', '/dev/null', $p, 0, $MS_BIND, 0) if -e $p }
for my $b (@bnd) { mkdir_p($b->[0], 0); attach($b->[1], $b->[0]) }

my $cmd = fork() // fail("fork: $!");
if (!$cmd) {
  for my $c (@caps) { my ($op, $cap, $z) = (24, $c + 0, 0); syscall($nr->{prctl}, $op, $cap, $z, $z, $z) }   # PR_CAPBSET_DROP
  exec { $ARGV[0] } @ARGV or do { print STDERR "osfarm-sandbox: cannot run $ARGV[0] in the image: $!\n"; POSIX::_exit(127) };
}
# Reap whatever gets reparented here until the command itself exits; then this process exits
# and the kernel kills everything else in the namespace.
while (1) {
  my $p = wait();
  last if $p == -1;
  next unless $p == $cmd;
  POSIX::_exit(POSIX::WIFEXITED($?) ? POSIX::WEXITSTATUS($?) : 128 + POSIX::WTERMSIG($?));
}
POSIX::_exit(${SETUP_FAILED_EXIT});
`

export function enterArgs (root: string, argv: string[], options: Pick<InRootOptions, 'binds'> = {}): string[] {
  const args = ['-e', ENTER, '--', root]
  for (const d of DEVICES) args.push('--dev', d)
  for (const b of options.binds ?? []) args.push('--bind', b.source, b.target)
  for (const c of DROPPED_CAPS) args.push('--drop-cap', String(c))
  return [...args, '--', ...argv]
}

// Runs argv (looked up in the image) with the root as its `/`. Resolves when the command has
// exited and everything it started is gone.
export async function inRoot (root: string, argv: string[], options: InRootOptions = {}): Promise<RunResult> {
  return run('perl', enterArgs(root, argv, options), { env: options.env, input: options.input, onLine: options.onLine, pkg: 'perl-base' })
}

// For a host tool working on a tree of the image's (tar unpacking a rootfs, mmdebstrap): run in
// the sandbox's mount namespace with every mount made read-only (mount_setattr, recursive)
// except the given directories, so whatever a tarball's or a tree's symlinks point to, the
// tool can write nowhere else on the host.
const READ_ONLY_HOST = String.raw`
use strict; use warnings; use POSIX ();
my %NR = (x86_64 => { mount => 165, mount_setattr => 442 }, aarch64 => { mount => 40, mount_setattr => 442 });
my $nr = $NR{(POSIX::uname())[4]} or fail('unsupported architecture');
sub fail { print STDERR "osfarm-sandbox: $_[0]\n"; POSIX::_exit(${SETUP_FAILED_EXIT}) }
sub sys { my $name = shift; my @a = @_; my $r = syscall($nr->{$name}, @a); fail("$name: $!") if $r < 0; $r }
my @rw;
push @rw, shift @ARGV while @ARGV && $ARGV[0] ne '--';
shift @ARGV;
sys('mount', 0, '/', 0, 16384 | (1 << 18), 0);                 # MS_REC | MS_PRIVATE
sys('mount', $_, $_, 0, 4096 | 16384, 0) for @rw;              # each its own mount
my ($set, $clr) = (pack('QQQQ', 1, 0, 0, 0), pack('QQQQ', 0, 1, 0, 0));   # MOUNT_ATTR_RDONLY
sys('mount_setattr', -100, '/', 0x8000, $set, 32);             # AT_RECURSIVE
sys('mount_setattr', -100, $_, 0x8000, $clr, 32) for @rw;
exec { $ARGV[0] } @ARGV or fail("cannot run $ARGV[0]: $!");
`

export function readOnlyHostArgv (writable: string[], argv: string[]): string[] {
  return ['perl', '-e', READ_ONLY_HOST, '--', ...writable, '--', ...argv]
}
