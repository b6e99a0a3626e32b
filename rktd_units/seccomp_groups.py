"""The named system call groups an app's `os/linux/seccomp-remove-set` / `-retain-set` may list,
as data: stage0 (exec_isolators.py) expands them on the host into the flat list stage1 applies.

Scopes and their sources (names only; each group is a set, so its order means nothing):

- `@appc.io/all`, `@appc.io/empty`: the appc spec's two wildcards, every system call and none. They
  are not lists: exec_isolators.py gives them the spec's meaning (`@appc.io/all` in a retain set, or
  `@appc.io/empty` in a remove set, masks the rest of the set).
- `@docker/default-blacklist`, `@docker/default-whitelist`: the names rkt 1.x used for Docker 1.12's
  default profile (its conditional entries, clone and personality, counted as allowed).
- `@rkt/default-blacklist`, `@rkt/default-whitelist`: rkt's own defaults, the Docker lists again;
  rkt added six ARM calls to its whitelist on ARM, listed here for every architecture.
- `@systemd/<group>`: the groups rkt passed on to systemd's `SystemCallFilter=` (`@systemd/X` is
  systemd's `@X`; `default-whitelist` is `@default`), as systemd 252 defines them, nested groups
  flattened. rkt's seccomp guide also names `@systemd/io-event`, kept here too.

A group names calls of every architecture and kernel: a name the host's libseccomp does not know
for its own architecture is skipped when the group is expanded.
"""

from __future__ import annotations

ALL = "@appc.io/all"
EMPTY = "@appc.io/empty"


def _names(text: str) -> tuple[str, ...]:
    return tuple(text.split())


DOCKER_DEFAULT_WHITELIST = _names(
    """
    _llseek _newselect accept accept4 access alarm arch_prctl bind brk capget capset chdir chmod chown
    chown32 chroot clock_getres clock_gettime clock_nanosleep clone close connect copy_file_range creat
    dup dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_wait
    epoll_wait_old eventfd eventfd2 execve execveat exit exit_group faccessat fadvise64 fadvise64_64
    fallocate fanotify_mark fchdir fchmod fchmodat fchown fchown32 fchownat fcntl fcntl64 fdatasync
    fgetxattr flistxattr flock fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64
    fsync ftruncate ftruncate64 futex futimesat get_robust_list get_thread_area getcpu getcwd getdents
    getdents64 getegid getegid32 geteuid geteuid32 getgid getgid32 getgroups getgroups32 getitimer
    getpeername getpgid getpgrp getpid getppid getpriority getrandom getresgid getresgid32 getresuid
    getresuid32 getrlimit getrusage getsid getsockname getsockopt gettid gettimeofday getuid getuid32
    getxattr inotify_add_watch inotify_init inotify_init1 inotify_rm_watch io_cancel io_destroy
    io_getevents io_setup io_submit ioctl ioprio_get ioprio_set ipc kill lchown lchown32 lgetxattr link
    linkat listen listxattr llistxattr lremovexattr lseek lsetxattr lstat lstat64 madvise memfd_create
    mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap mmap2 modify_ldt mprotect
    mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedsend mq_unlink mremap msgctl msgget msgrcv
    msgsnd msync munlock munlockall munmap nanosleep newfstatat open openat pause personality pipe pipe2
    poll ppoll prctl pread64 preadv prlimit64 pselect6 pwrite64 pwritev read readahead readlink
    readlinkat readv recv recvfrom recvmmsg recvmsg remap_file_pages removexattr rename renameat
    renameat2 restart_syscall rmdir rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo
    rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_tgsigqueueinfo sched_get_priority_max
    sched_get_priority_min sched_getaffinity sched_getattr sched_getparam sched_getscheduler
    sched_rr_get_interval sched_setaffinity sched_setattr sched_setparam sched_setscheduler sched_yield
    seccomp select semctl semget semop semtimedop send sendfile sendfile64 sendmmsg sendmsg sendto
    set_robust_list set_thread_area set_tid_address setfsgid setfsgid32 setfsuid setfsuid32 setgid
    setgid32 setgroups setgroups32 setitimer setpgid setpriority setregid setregid32 setresgid
    setresgid32 setresuid setresuid32 setreuid setreuid32 setrlimit setsid setsockopt setuid setuid32
    setxattr shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4 sigreturn socket
    socketcall socketpair splice stat stat64 statfs statfs64 symlink symlinkat sync sync_file_range
    syncfs sysinfo syslog tee tgkill time timer_create timer_delete timer_getoverrun timer_gettime
    timer_settime timerfd_create timerfd_gettime timerfd_settime times tkill truncate truncate64
    ugetrlimit umask uname unlink unlinkat utime utimensat utimes vfork vmsplice wait4 waitid waitpid
    write writev
"""
)

DOCKER_DEFAULT_BLACKLIST = _names(
    """
    _sysctl acct add_key adjtimex bpf clock_adjtime clock_settime create_module delete_module
    finit_module get_kernel_syms get_mempolicy init_module ioperm iopl kcmp kexec_file_load kexec_load
    keyctl lookup_dcookie mbind mount move_pages name_to_handle_at nfsservctl open_by_handle_at
    perf_event_open pivot_root process_vm_readv process_vm_writev ptrace query_module quotactl reboot
    request_key set_mempolicy setns settimeofday stime swapoff swapon sysfs umount umount2 unshare
    uselib userfaultfd ustat vm86 vm86old
"""
)

RKT_ARM_EXTRAS = _names(
    """
    arm_fadvise64_64 arm_sync_file_range breakpoint cacheflush set_tls sync_file_range2
"""
)

SYSTEMD_CLOCK = _names(
    """
    adjtimex clock_adjtime clock_adjtime64 clock_settime clock_settime64 settimeofday
"""
)

SYSTEMD_DEFAULT = _names(
    """
    arch_prctl brk cacheflush clock_getres clock_getres_time64 clock_gettime clock_gettime64
    clock_nanosleep clock_nanosleep_time64 execve exit exit_group futex futex_time64 futex_waitv
    get_robust_list get_thread_area getegid getegid32 geteuid geteuid32 getgid getgid32 getgroups
    getgroups32 getpgid getpgrp getpid getppid getrandom getresgid getresgid32 getresuid getresuid32
    getrlimit getsid gettid gettimeofday getuid getuid32 membarrier mmap mmap2 mprotect munmap nanosleep
    pause prlimit64 restart_syscall riscv_flush_icache riscv_hwprobe rseq rt_sigreturn sched_getaffinity
    sched_yield set_robust_list set_thread_area set_tid_address set_tls sigreturn time ugetrlimit
    uretprobe
"""
)

SYSTEMD_MOUNT = _names(
    """
    chroot fsconfig fsmount fsopen fspick mount mount_setattr move_mount open_tree pivot_root umount
    umount2
"""
)

SYSTEMD_NETWORK_IO = _names(
    """
    accept accept4 bind connect getpeername getsockname getsockopt listen recv recvfrom recvmmsg
    recvmmsg_time64 recvmsg send sendmmsg sendmsg sendto setsockopt shutdown socket socketcall
    socketpair
"""
)

SYSTEMD_OBSOLETE = _names(
    """
    _sysctl afs_syscall bdflush break create_module ftime get_kernel_syms getpmsg gtty idle lock mpx
    prof profil putpmsg query_module security sgetmask ssetmask stime stty sysfs tuxcall ulimit uselib
    ustat vserver
"""
)

SYSTEMD_PRIVILEGED = _names(
    """
    _sysctl acct adjtimex bpf capset chown chown32 chroot clock_adjtime clock_adjtime64 clock_settime
    clock_settime64 delete_module fanotify_init fanotify_mark fchown fchown32 fchownat finit_module
    init_module ioperm iopl kexec_file_load kexec_load lchown lchown32 nfsservctl open_by_handle_at
    pciconfig_iobase pciconfig_read pciconfig_write pivot_root quotactl quotactl_fd reboot
    s390_pci_mmio_read s390_pci_mmio_write setdomainname setfsuid setfsuid32 setgroups setgroups32
    sethostname setresuid setresuid32 setreuid setreuid32 settimeofday setuid setuid32 swapoff swapon
    vhangup
"""
)

SYSTEMD_PROCESS = _names(
    """
    capget clone clone3 execveat fork getrusage kill pidfd_open pidfd_send_signal prctl rt_sigqueueinfo
    rt_tgsigqueueinfo setns swapcontext tgkill times tkill unshare vfork wait4 waitid waitpid
"""
)

SYSTEMD_RAW_IO = _names(
    """
    ioperm iopl pciconfig_iobase pciconfig_read pciconfig_write s390_pci_mmio_read s390_pci_mmio_write
"""
)

SYSTEMD_IO_EVENT = _names(
    """
    _newselect epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait
    epoll_wait_old eventfd eventfd2 poll ppoll ppoll_time64 pselect6 pselect6_time64 select
"""
)


GROUPS: dict[str, tuple[str, ...]] = {
    "@docker/default-blacklist": DOCKER_DEFAULT_BLACKLIST,
    "@docker/default-whitelist": DOCKER_DEFAULT_WHITELIST,
    "@rkt/default-blacklist": DOCKER_DEFAULT_BLACKLIST,
    "@rkt/default-whitelist": DOCKER_DEFAULT_WHITELIST + RKT_ARM_EXTRAS,
    "@systemd/clock": SYSTEMD_CLOCK,
    "@systemd/default-whitelist": SYSTEMD_DEFAULT,
    "@systemd/io-event": SYSTEMD_IO_EVENT,
    "@systemd/mount": SYSTEMD_MOUNT,
    "@systemd/network-io": SYSTEMD_NETWORK_IO,
    "@systemd/obsolete": SYSTEMD_OBSOLETE,
    "@systemd/privileged": SYSTEMD_PRIVILEGED,
    "@systemd/process": SYSTEMD_PROCESS,
    "@systemd/raw-io": SYSTEMD_RAW_IO,
}
"""Group name -> its system call names (ALL and EMPTY, which are not lists, are not in it)."""

# systemd's own name for each @systemd/ group (for the tests that check them against systemd-analyze)
SYSTEMD_NAMES = {name: "@" + name.split("/", 1)[1] for name in GROUPS if name.startswith("@systemd/")}
SYSTEMD_NAMES["@systemd/default-whitelist"] = "@default"
SYSTEMD_VERSION = 252

KNOWN = (ALL, EMPTY, *GROUPS)
