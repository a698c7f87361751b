"""The compiled-filter cache (sandbox.enforce.filtercache, seccomp.program).

A cached program is the program libseccomp would build, byte for byte, for any pid; an
entry that is not ours (another owner, wider modes, a link, corrupted bytes, a forged MAC)
is refused and rebuilt; a loaded program from the cache enforces (its pid slot included).
Each test points XDG_CACHE_HOME at a directory of its own.
"""

from __future__ import annotations

import os
import pwd
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.enforce import filtercache, seccomp
from sandbox.enforce.plan import seccomp_rules
from sandbox.enforce.promises import rules_for
from sandbox.enforce.rules import SELF_PID, Arg, Rule

TESTUSER = "sandboxtest"
PROMISE_SETS = [
    {"stdio"},
    {"stdio", "rpath"},
    {"stdio", "rpath", "wpath", "cpath"},
    {"stdio", "rpath", "proc", "exec"},
    {"stdio", "inet", "dns"},
    {"stdio", "rpath", "tty", "thread"},
]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(filtercache.ENV_CACHE, raising=False)
    if filtercache.secret() is None:
        pytest.skip("no kernel keyring (keyctl refused): the cache is off here")
    yield tmp_path / "xdg" / filtercache.DIRNAME


def direct(rules: list[Rule], pid: int, violation: str = "kill") -> bytes:
    return seccomp.to_bpf(
        seccomp.build_filter(rules, violation=violation, self_pid=pid, never_action="kill")  # type: ignore[arg-type]
    )


def entries(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.bpf"))


@pytest.mark.parametrize("promises", PROMISE_SETS, ids=lambda p: "+".join(sorted(p)))
def test_cached_program_is_the_built_one_for_every_pid(cache: Path, promises: set[str]) -> None:
    rules = list(rules_for(promises))
    first = seccomp.program(rules, violation="kill", self_pid=4242)
    assert first == direct(rules, 4242)
    assert len(entries(cache)) == 1
    for pid in (2, 3, 77, 1000, 4242, 65535, 4_194_303):
        assert seccomp.program(rules, violation="kill", self_pid=pid) == direct(rules, pid), pid
    assert len(entries(cache)) == 1  # one entry serves every pid


def test_launch_filter_is_cached_too(cache: Path) -> None:
    rules = list(seccomp_rules({"stdio", "rpath"}, None))
    got = seccomp.program(rules, violation="notify", self_pid=99, never_action="notify")
    want = seccomp.to_bpf(
        seccomp.build_filter(rules, violation="notify", self_pid=99, never_action="notify")
    )
    assert got == want and len(entries(cache)) == 1


def test_a_hit_does_not_build(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rules = list(rules_for({"stdio", "rpath"}))
    want = seccomp.program(rules, violation="errno", self_pid=4242)

    def no_build(*_a: object, **_k: object) -> None:
        raise AssertionError("built although cached")

    monkeypatch.setattr(seccomp, "build_filter", no_build)
    assert seccomp.program(rules, violation="errno", self_pid=4242) == want


def test_key_covers_actions_and_rules(cache: Path) -> None:
    rules = list(rules_for({"stdio"}))
    keys = {
        seccomp.cache_key(rules, violation=v, never_action=n)
        for v in ("kill", "errno", "log", "notify")
        for n in ("kill", "notify")
    }
    assert len(keys) == 8
    other = [*rules, Rule("mkdir")]
    assert seccomp.cache_key(other, violation="kill", never_action="kill") not in keys


def test_pid_equal_to_a_constant_is_built_directly(cache: Path) -> None:
    """A pid equal to a constant the program compares (a syscall number, a flag) could let
    libseccomp share a block of code: the template does not take it, the program is built.
    (1 is write's number, compared under every pledge.)"""
    rules = list(rules_for({"stdio"}))
    seccomp.program(rules, violation="kill", self_pid=4242)
    entry = filtercache.load(seccomp.cache_key(rules, violation="kill", never_action="kill"))
    assert entry is not None and entry.slots and 1 in entry.forbidden
    for pid in sorted(entry.forbidden)[:5]:
        if pid <= 0:
            continue
        assert seccomp.with_pid(entry, pid) is None
        assert seccomp.program(rules, violation="kill", self_pid=pid) == direct(rules, pid), pid


def test_pid_beside_other_comparisons_is_not_cached(cache: Path) -> None:
    rules = [Rule("kill", (Arg(0, "eq", SELF_PID),)), Rule("kill", (Arg(0, "eq", 0),))]
    assert seccomp.program(rules, violation="kill", self_pid=50) == direct(rules, 50)
    assert entries(cache) == []


def test_pid_in_a_comparison_other_than_equality_is_not_cached(cache: Path) -> None:
    rules = [Rule("kill", (Arg(0, "gt", SELF_PID),)), Rule("read")]
    assert seccomp.program(rules, violation="kill", self_pid=50) == direct(rules, 50)
    assert entries(cache) == []


# --------------------------------------------------------------------------- refused entries


def _entry(cache: Path) -> tuple[list[Rule], Path, bytes]:
    rules = list(rules_for({"stdio", "rpath"}))
    good = seccomp.program(rules, violation="kill", self_pid=321)
    (path,) = entries(cache)
    return rules, path, good


def _refused_then_rebuilt(rules: list[Rule], path: Path, good: bytes) -> None:
    key = seccomp.cache_key(rules, violation="kill", never_action="kill")
    assert filtercache.load(key) is None, "a bad entry must be refused"
    assert seccomp.program(rules, violation="kill", self_pid=321) == good, "and rebuilt"
    st = path.stat()
    assert (st.st_uid, st.st_mode & 0o777, st.st_nlink) == (os.geteuid(), 0o600, 1)
    assert filtercache.load(key) is not None, "and replaced by a good one"


def test_corrupted_entry_is_refused_and_rebuilt(cache: Path) -> None:
    rules, path, good = _entry(cache)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, in the program
    path.write_bytes(bytes(data))
    _refused_then_rebuilt(rules, path, good)


def test_truncated_entry_is_refused_and_rebuilt(cache: Path) -> None:
    rules, path, good = _entry(cache)
    path.write_bytes(path.read_bytes()[:-40])
    _refused_then_rebuilt(rules, path, good)


def test_forged_entry_is_refused(cache: Path) -> None:
    """Whoever writes an entry without the keyring's secret (an agent that can write the
    directory) cannot make it pass: here an allow-all program with a MAC of a wrong key."""
    rules, path, good = _entry(cache)
    key = seccomp.cache_key(rules, violation="kill", never_action="kill")
    allow_all = seccomp.to_bpf(seccomp.build_filter([], violation="log", self_pid=1))
    forged = filtercache.encode(key, filtercache.Entry(allow_all, (), ()), b"x" * 32)
    path.write_bytes(forged)
    _refused_then_rebuilt(rules, path, good)
    # The same entry with the real secret is accepted: the MAC is what refused it.
    path.write_bytes(filtercache.encode(key, filtercache.Entry(allow_all, (), ()), _secret()))
    assert filtercache.load(key) is not None


def test_entry_under_another_name_is_refused(cache: Path) -> None:
    rules, path, _good = _entry(cache)
    other = seccomp.cache_key(rules, violation="errno", never_action="kill")
    os.rename(path, cache / filtercache.name_of(other))
    assert filtercache.load(other) is None  # the name is inside the MAC


def _secret() -> bytes:
    s = filtercache.secret()
    assert s is not None
    return s


def test_foreign_owned_entry_is_refused_and_replaced(cache: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another user")
    rules, path, good = _entry(cache)
    user = pwd.getpwnam(TESTUSER)
    os.chown(path, user.pw_uid, user.pw_gid)
    _refused_then_rebuilt(rules, path, good)


@pytest.mark.parametrize("how", ["mode-0644", "symlink", "hardlink"])
def test_entry_that_is_not_private_is_refused(cache: Path, tmp_path: Path, how: str) -> None:
    rules, path, good = _entry(cache)
    if how == "mode-0644":
        path.chmod(0o644)
    elif how == "symlink":
        target = tmp_path / "elsewhere.bpf"
        os.rename(path, target)
        path.symlink_to(target)
    else:
        os.link(path, tmp_path / "second-link")
    key = seccomp.cache_key(rules, violation="kill", never_action="kill")
    assert filtercache.load(key) is None
    assert seccomp.program(rules, violation="kill", self_pid=321) == good


@pytest.mark.parametrize("how", ["mode-0755", "foreign-owner"])
def test_directory_that_is_not_private_disables_the_cache(cache: Path, how: str) -> None:
    cache.mkdir(parents=True, mode=0o700)
    if how == "mode-0755":
        cache.chmod(0o755)
    else:
        if os.geteuid() != 0:
            pytest.skip("needs root to give a directory to another user")
        user = pwd.getpwnam(TESTUSER)
        os.chown(cache, user.pw_uid, user.pw_gid)
    rules = list(rules_for({"stdio"}))
    assert seccomp.program(rules, violation="kill", self_pid=5) == direct(rules, 5)
    assert entries(cache) == [], "nothing written into a directory that is not ours alone"


def test_cache_can_be_switched_off(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(filtercache.ENV_CACHE, "off")
    rules = list(rules_for({"stdio"}))
    assert seccomp.program(rules, violation="kill", self_pid=5) == direct(rules, 5)
    assert not cache.exists()


def test_decoder_fuzz(cache: Path) -> None:
    """Seeded, bounded: no byte string makes decode() raise or accept a wrong entry."""
    rules, path, _good = _entry(cache)
    key = seccomp.cache_key(rules, violation="kill", never_action="kill")
    data = path.read_bytes()
    secret = _secret()
    rng = random.Random(5)
    for _ in range(2000):
        mutated = bytearray(data)
        for _ in range(rng.randrange(1, 4)):
            pos = rng.randrange(len(mutated))
            mutated[pos] = rng.randrange(256)
        if bytes(mutated) == data:
            continue
        assert filtercache.decode(key, bytes(mutated), secret) is None
    for n in range(0, 200, 7):
        assert filtercache.decode(key, rng.randbytes(n), secret) is None


# --------------------------------------------------------------------------- it enforces

ENFORCE = r"""
import ctypes, errno, os, sys
sys.path.insert(0, sys.argv[1])
import prctl
from sandbox.enforce import seccomp
from sandbox.enforce.promises import rules_for
prctl.set_no_new_privs(1)
prog = seccomp.program(rules_for({"stdio"}), violation="errno", self_pid=os.getpid())
seccomp.load_bpf(prog, listener=False)
out = []
try:
    os.open("/etc/hostname", os.O_RDONLY)
    out.append("open allowed")
except OSError as e:
    out.append(f"open {errno.errorcode[e.errno]}")
os.kill(os.getpid(), 0)  # itself: the pid slot
out.append("kill self allowed")
try:
    os.kill(os.getppid(), 0)
    out.append("kill parent allowed")
except OSError as e:
    out.append(f"kill parent {errno.errorcode[e.errno]}")
print("; ".join(out), flush=True)
"""


@pytest.mark.parametrize("warm", [False, True], ids=["built", "from-cache"])
def test_cached_program_enforces(cache: Path, warm: bool) -> None:
    """A program loaded from the cache enforces as the built one does: open refused (no
    rpath), a signal to itself allowed (its pid in the slot), to another refused."""
    env = dict(os.environ, XDG_CACHE_HOME=str(cache.parent))
    if warm:  # an entry made by another process (another pid)
        subprocess.run(
            [sys.executable, "-c", ENFORCE, str(_repo())],
            env=env,
            check=True,
            capture_output=True,
            timeout=60,
        )
        assert len(entries(cache)) == 1
    p = subprocess.run(
        [sys.executable, "-c", ENFORCE, str(_repo())],
        env=env,
        timeout=60,
        capture_output=True,
        text=True,
    )
    assert p.stdout.strip() == "open EPERM; kill self allowed; kill parent EPERM", p
    assert len(entries(cache)) == 1
    # Without the filter all three are allowed: the test can fail.
    assert os.open("/etc/hostname", os.O_RDONLY) >= 0
    os.kill(os.getppid(), 0)


def _repo() -> Path:
    return Path(__file__).resolve().parents[1]


# A child's prelude: `calls` counts the filters it builds (a cache hit builds none).
COUNT_BUILDS = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
import sandbox
from sandbox.enforce import seccomp
# A pid equal to a constant the program compares is built directly (see
# test_pid_equal_to_a_constant_is_built_directly); pids here run through such values.
from sandbox.agent.pledge import _filter_for
_t = seccomp._template(*_filter_for(frozenset({"stdio", "rpath"}), None))  # not counted
direct = int(_t is not None and bool(_t.slots) and os.getpid() in _t.forbidden)
calls = []
real = seccomp.build_filter
def counting(*a, **k):
    calls.append(1)
    return real(*a, **k)
seccomp.build_filter = counting
"""


def test_pledge_uses_the_cache(cache: Path) -> None:
    """pledge() in a fresh process: its first filter comes from the cache once an entry is
    there, and a narrowing pledge (under the first filter) builds without touching it."""
    code = (
        COUNT_BUILDS
        + r"""
sandbox.pledge("stdio rpath")
first = len(calls) - direct
sandbox.pledge("stdio")
print(first, len(calls) - first - direct, flush=True)
"""
    )
    env = dict(os.environ, XDG_CACHE_HOME=str(cache.parent))
    runs = [
        subprocess.run(
            [sys.executable, "-c", code, str(_repo())],
            env=env,
            timeout=60,
            capture_output=True,
            text=True,
        )
        for _ in range(2)
    ]
    assert [r.stdout.split() for r in runs] == [["2", "1"], ["0", "1"]], runs
    # The first run built its first filter twice (the two placeholders of the template);
    # the second found it; both narrowings built theirs in memory, as before the cache.
    assert len(entries(cache)) == 1


PLEDGE_AFTER_UNVEIL = (
    COUNT_BUILDS
    + r"""
sandbox.unveil(sys.prefix, "rx")
if sys.argv[2] == "unveil-locks":
    sandbox.unveil()  # the view is locked first: the cache's files are hidden from now on
sandbox.pledge("stdio rpath")
print(len(calls) - direct, flush=True)
"""
)


def test_pledge_after_an_explicit_unveil_lock_uses_the_prefetched_entry(cache: Path) -> None:
    """unveil() then pledge(): the cache is read at the unveil lock (its last entries, in
    one file), so the pledge still finds its program without opening anything."""
    env = dict(os.environ, XDG_CACHE_HOME=str(cache.parent))

    def builds(flow: str) -> int:
        p = subprocess.run(
            [sys.executable, "-c", PLEDGE_AFTER_UNVEIL, str(_repo()), flow],
            env=env,
            timeout=60,
            capture_output=True,
            text=True,
        )
        assert p.returncode == 0, p
        return int(p.stdout)

    assert builds("unveil-locks") == 1  # nothing cached: built, and nothing could be stored
    assert entries(cache) == []
    assert builds("pledge-locks") == 2  # built as a template (two builds) and stored
    assert builds("unveil-locks") == 0  # found among the prefetched entries
    assert builds("pledge-locks") == 0


LAZY_PYSECCOMP = r"""
import sys
sys.path.insert(0, sys.argv[1])
import sandbox.agent.pledge as api
api.unveil(sys.argv[2], "rwc")
if sys.argv[3] == "unveil-locks":
    api.unveil()  # nothing but the work directory is visible from now on
before = "pyseccomp" in sys.modules
api.pledge("stdio")
print(before, "pyseccomp" in sys.modules, flush=True)
"""


def test_pyseccomp_is_read_before_the_lock_and_run_only_for_a_miss(
    cache: Path, tmp_path: Path
) -> None:
    """A cached program needs no pyseccomp: unveil() reads its code and maps libseccomp
    before Landlock hides them, and runs that code only when a filter must be built, which
    then still works with nothing but the work directory visible."""
    env = dict(os.environ, XDG_CACHE_HOME=str(cache.parent))
    work = tmp_path / "work"
    work.mkdir()

    def run(flow: str) -> list[str]:
        p = subprocess.run(
            [sys.executable, "-c", LAZY_PYSECCOMP, str(_repo()), str(work), flow],
            env=env, timeout=60, capture_output=True, text=True,
        )  # fmt: skip
        assert p.returncode == 0, p
        return p.stdout.split()

    # Nothing cached, the view locked first: pyseccomp runs after the lock, from what was
    # read before it, and the filter is built and installed.
    assert run("unveil-locks") == ["False", "True"]
    assert run("pledge-locks") == ["False", "True"]  # built before the lock, and stored
    assert entries(cache)
    # Cached: the program is loaded, and pyseccomp never runs.
    assert run("unveil-locks") == ["False", "False"]
    assert run("pledge-locks") == ["False", "False"]


def test_launcher_warms_the_cache_for_a_lock_agent_policy(cache: Path, tmp_path: Path) -> None:
    """Under `sandbox run` with lock: agent, the agent that locks its view before its
    pledge finds its program: the launcher made the entry for the policy's promises."""
    pol = tmp_path / "agent.yaml"
    pol.write_text(
        "version: 1\nname: warmed\nlock: agent\npledge: stdio rpath\n"
        f"unveil: {{'@python': rx, '@system': rx, {_repo()}: r}}\n"
    )
    # The agent's environment keeps HOME (not XDG_CACHE_HOME): both find ~/.cache there.
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home), SANDBOX_SERVER="off", PYTHONPATH=str(_repo()))
    env.pop("XDG_CACHE_HOME")
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "sandbox",
            "run",
            str(pol),
            "--audit-log",
            str(tmp_path / "a.jsonl"),
            "--",
            sys.executable,
            "-B",
            "-c",
            PLEDGE_AFTER_UNVEIL,
            str(_repo()),
            "unveil-locks",
        ],
        env=env,
        timeout=60,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert (p.returncode, p.stdout.strip()) == (0, "0"), p
    assert len(entries(home / ".cache" / filtercache.DIRNAME)) == 1


def test_keyring_secret_is_not_in_a_file(cache: Path) -> None:
    """The MAC key lives in the kernel keyring, not beside the entries."""
    _entry(cache)
    secret = _secret()
    assert all(secret not in p.read_bytes() for p in cache.iterdir())
    assert len(secret) == 32


NO_KEYRING = r"""
import sys
sys.path.insert(0, sys.argv[1])
from sandbox.enforce import filtercache, seccomp
from sandbox.enforce.promises import rules_for
filtercache._keyctl = lambda *a: -1  # as where keyctl is refused (EPERM, ENOSYS)
class NoAddKey:
    def __init__(self, real):
        self.real = real
    def syscall(self, nr, *a):
        return -1 if nr.value == filtercache.SYS_ADD_KEY else self.real.syscall(nr, *a)
    def __getattr__(self, name):
        return getattr(self.real, name)
filtercache.libc.libc = NoAddKey(filtercache.libc.libc)
r = list(rules_for({"stdio"}))
p = seccomp.program(r, violation="kill", self_pid=9)
built = seccomp.to_bpf(seccomp.build_filter(r, violation="kill", self_pid=9))
print(filtercache.secret(), p == built)
"""


def test_no_keyring_means_no_cache(cache: Path) -> None:
    """Without a keyring entries could not be verified: nothing is read or written, and
    the program is built (with a keyring, the same run writes an entry)."""
    env = dict(os.environ, XDG_CACHE_HOME=str(cache.parent))
    p = subprocess.run(
        [sys.executable, "-c", NO_KEYRING, str(_repo())],
        env=env,
        timeout=60,
        capture_output=True,
        text=True,
    )
    assert p.stdout.split() == ["None", "True"], p
    assert entries(cache) == []
    seccomp.program(list(rules_for({"stdio"})), violation="kill", self_pid=9)
    assert len(entries(cache)) == 1
