"""The compiled-filter cache: BPF programs kept between processes, trusted only if ours.

libseccomp's output for one set of rules is byte-identical from run to run, and building
it costs milliseconds of Python per launch and per pledge(). An entry holds the program
(with the slots where the installing process's pid goes, see seccomp.program) under a
name derived from everything that determines it.

Where: $XDG_CACHE_HOME/outheis-sandbox/ (~/.cache/outheis-sandbox), a directory of ours
with mode 0700; entries are files of ours with mode 0600 and one link. Anything else (a
directory or file of another owner, wider modes, a symlink, a hard link) is refused: the
cache is then not used, and nothing is written.

Verified before use: every entry carries an HMAC-SHA256 of its content and its name, keyed
by a secret in the user's kernel keyring (keyctl), which no sandboxed agent can read
(keyctl is never allowed). A corrupted entry, one copied under another name, or one
written by anyone who does not hold the secret (an agent that can write the directory
through its unveil, say) fails verification: it is refused, rebuilt and replaced. Without
a keyring (a container that blocks keyctl) the cache is off. The keyring belongs to the
user namespace: the secret is made in the initial one only (in a namespace made for one
launch, an ordinary user's agent, it would die with it): there is no cache in another.

Every failure here means "no cache", never an error: the caller builds the program.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import stat
import struct
from _operator import _compare_digest as compare_digest  # hmac's, without importing hmac
from typing import NamedTuple

from sandbox import libc
from sandbox.digest import sha256  # without hashlib's OpenSSL (see there)

__all__ = ["Entry", "directory", "load", "prefetch", "secret", "sha256", "store"]

ENV_CACHE = "SANDBOX_FILTER_CACHE"  # "off": never use the cache
DIRNAME = "outheis-sandbox"
SUFFIX = ".bpf"
BUNDLE = "recent.bundle"  # the last entries written, in one file: see prefetch()
BUNDLE_ENTRIES = 8
MAX_ENTRIES = 256  # beyond it, writing an entry removes the oldest ones
MAX_PROGRAM = 4096 * 8  # BPF_MAXINSNS instructions of 8 bytes
MAGIC = b"OSFC0001"
_HEAD = struct.Struct("=8s32sIII")  # magic, name digest, slots, forbidden values, program
_MAC = 32

KEY_DESCRIPTION = b"outheis-sandbox:filter-cache"
SYS_ADD_KEY, SYS_KEYCTL = 248, 250
KEYCTL_SETPERM, KEYCTL_SEARCH, KEYCTL_READ = 5, 10, 11
KEY_SPEC_USER_KEYRING = -4
# possessor: everything; the user (same uid, not possessing it): view, read, search.
KEY_PERM = 0x3F000000 | 0x000B0000


class Entry(NamedTuple):
    program: bytes  # built with the placeholder pid in every slot
    slots: tuple[int, ...]  # instruction indices whose k is the installing process's pid
    forbidden: tuple[int, ...]  # pids the template cannot take (equal to another constant)


_secret: bytes | None = None


def _keyctl(*args: object) -> int:
    return int(libc.libc.syscall(ctypes.c_long(SYS_KEYCTL), *args))


def secret() -> bytes | None:
    """The user's cache key from the kernel keyring (created on first use); None without one."""
    global _secret
    if _secret is not None:
        return _secret
    desc = ctypes.c_char_p(KEY_DESCRIPTION)
    kind = ctypes.c_char_p(b"user")
    keyring = ctypes.c_long(KEY_SPEC_USER_KEYRING)
    key = _keyctl(ctypes.c_long(KEYCTL_SEARCH), keyring, kind, desc, ctypes.c_long(0))
    if key < 0 and not _initial_user_namespace():
        # The user keyring belongs to the user namespace: in one made for a launch (an
        # ordinary user's agent) a secret would die with it, and every entry written with
        # it would be refused everywhere else. No cache there.
        return None
    if key < 0:
        fresh = os.urandom(32)
        key = int(
            libc.libc.syscall(
                ctypes.c_long(SYS_ADD_KEY), kind, desc, fresh, ctypes.c_size_t(32), keyring
            )
        )
        if key < 0:
            return None
        _keyctl(ctypes.c_long(KEYCTL_SETPERM), ctypes.c_long(key), ctypes.c_ulong(KEY_PERM))
    buf = ctypes.create_string_buffer(64)
    n = _keyctl(ctypes.c_long(KEYCTL_READ), ctypes.c_long(key), buf, ctypes.c_size_t(64))
    if n < 16 or n > 64:
        return None
    _secret = buf.raw[:n]
    return _secret


def _initial_user_namespace() -> bool:
    try:
        with open("/proc/self/uid_map", encoding="ascii") as f:
            return f.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return False


def _hmac(key: bytes, message: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104), without the hmac module (it imports hashlib)."""
    block = key.ljust(64, b"\0")
    inner = sha256(bytes(b ^ 0x36 for b in block) + message).digest()
    return sha256(bytes(b ^ 0x5C for b in block) + inner).digest()


def directory() -> str | None:
    """The cache directory's path (not checked), None if the cache is switched off."""
    if os.environ.get(ENV_CACHE) == "off":
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    if not os.path.isabs(base):
        return None  # XDG: relative paths are invalid and to be ignored
    return os.path.join(base, DIRNAME)


def _open_dir(create: bool) -> int | None:
    """A descriptor of the cache directory if it is ours and private (mode 0700), else None."""
    path = directory()
    if path is None:
        return None
    if create:
        with contextlib.suppress(OSError):
            os.makedirs(path, mode=0o700, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        os.close(fd)
        return None
    return fd


def name_of(key: bytes) -> str:
    return key.hex() + SUFFIX


def encode(key: bytes, entry: Entry, mac_key: bytes) -> bytes:
    body = (
        _HEAD.pack(MAGIC, key, len(entry.slots), len(entry.forbidden), len(entry.program))
        + struct.pack(f"={len(entry.slots)}I", *entry.slots)
        + struct.pack(f"={len(entry.forbidden)}Q", *entry.forbidden)
        + entry.program
    )
    return body + _hmac(mac_key, body)


def decode(key: bytes, data: bytes, mac_key: bytes) -> Entry | None:
    """The entry in `data` if it is well formed, names `key` and carries our MAC."""
    if len(data) < _HEAD.size + _MAC:
        return None
    body, mac = data[:-_MAC], data[-_MAC:]
    if not compare_digest(_hmac(mac_key, body), mac):
        return None
    magic, name, nslots, nforbidden, length = _HEAD.unpack_from(body)
    if magic != MAGIC or name != key or length % 8 or not 0 < length <= MAX_PROGRAM:
        return None
    offset = _HEAD.size
    if len(body) != offset + 4 * nslots + 8 * nforbidden + length:
        return None
    slots = struct.unpack_from(f"={nslots}I", body, offset)
    offset += 4 * nslots
    forbidden = struct.unpack_from(f"={nforbidden}Q", body, offset)
    offset += 8 * nforbidden
    program = body[offset:]
    if any(s >= length // 8 for s in slots):
        return None
    return Entry(program, slots, forbidden)


def _read_private(dirfd: int, name: str, limit: int) -> bytes | None:
    """A file of the cache directory, if it is a regular file of ours, mode 0600 or
    narrower, with one link, not a symlink, at most `limit` bytes."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if (
            not stat.S_ISREG(st.st_mode)
            or st.st_uid != os.geteuid()
            or st.st_mode & 0o077
            or st.st_nlink != 1
            or st.st_size > limit
        ):
            return None
        return os.read(fd, st.st_size + 1)
    except OSError:
        return None
    finally:
        os.close(fd)


_ENTRY_LIMIT = MAX_PROGRAM * 2 + 4096


def _usable(create: bool) -> tuple[bytes, int] | None:
    """The keyring's secret and a descriptor of the cache directory, if both are there."""
    mac_key = secret()
    if mac_key is None:
        return None
    dirfd = _open_dir(create=create)
    return None if dirfd is None else (mac_key, dirfd)


def load(key: bytes) -> Entry | None:
    """The verified entry for `key`, or None (absent, not ours, corrupt, forged)."""
    usable = _usable(create=False)
    if usable is None:
        return None
    mac_key, dirfd = usable
    try:
        data = _read_private(dirfd, name_of(key), _ENTRY_LIMIT)
    finally:
        os.close(dirfd)
    return None if data is None else decode(key, data, mac_key)


def prefetch() -> dict[bytes, bytes]:
    """The entries written last (BUNDLE), by name and not yet verified: read while the
    files are still visible, for a pledge() that comes after its process has locked its
    view with unveil() (each is verified, as any entry, when it is used)."""
    usable = _usable(create=False)
    if usable is None:
        return {}
    _mac_key, dirfd = usable
    try:
        data = _read_private(dirfd, BUNDLE, BUNDLE_ENTRIES * (_ENTRY_LIMIT + 4))
    finally:
        os.close(dirfd)
    return _unbundle(data or b"")


def _unbundle(data: bytes) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    offset = 0
    while offset + 4 <= len(data) and len(out) < BUNDLE_ENTRIES:
        (length,) = struct.unpack_from("=I", data, offset)
        entry = data[offset + 4 : offset + 4 + length]
        if length > _ENTRY_LIMIT or len(entry) != length or len(entry) < _HEAD.size:
            break
        out.setdefault(entry[8:40], entry)  # the name inside the header (see encode)
        offset += 4 + length
    return out


def _rebundle(dirfd: int, fresh: bytes) -> None:
    """Put the entry just written first in BUNDLE (atomically replaced)."""
    old = _read_private(dirfd, BUNDLE, BUNDLE_ENTRIES * (_ENTRY_LIMIT + 4)) or b""
    kept = [e for k, e in _unbundle(old).items() if k != fresh[8:40]][: BUNDLE_ENTRIES - 1]
    body = b"".join(struct.pack("=I", len(e)) + e for e in (fresh, *kept))
    _write_atomic(dirfd, BUNDLE, body)


def _write_atomic(dirfd: int, name: str, data: bytes) -> None:
    tmp = f".{name}.{os.getpid()}.tmp"
    try:
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=dirfd,
        )
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)  # atomic: never half seen
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dirfd)
        raise


def store(key: bytes, entry: Entry) -> bool:
    """Write (or replace) the entry for `key`; False if the cache cannot be written."""
    usable = _usable(create=True)
    if usable is None:
        return False
    mac_key, dirfd = usable
    data = encode(key, entry, mac_key)
    try:
        _write_atomic(dirfd, name_of(key), data)
        _rebundle(dirfd, data)
        _evict(dirfd)
        return True
    except OSError:
        return False
    finally:
        os.close(dirfd)


def _evict(dirfd: int) -> None:
    """Keep at most MAX_ENTRIES entries: the least recently written go first."""
    names = [n for n in os.listdir(dirfd) if n.endswith(SUFFIX)]
    if len(names) <= MAX_ENTRIES:
        return
    dated = []
    for n in names:
        with contextlib.suppress(OSError):
            dated.append((os.stat(n, dir_fd=dirfd, follow_symlinks=False).st_mtime_ns, n))
    for _, n in sorted(dated)[: len(dated) - MAX_ENTRIES]:
        with contextlib.suppress(OSError):
            os.unlink(n, dir_fd=dirfd)
