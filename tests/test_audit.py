"""The audit log: chain, continuation, tamper detection, fail-closed commits, crashes, show.

Real files, real processes, a real full file system (tmpfs), real SIGKILL.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from progs.tmpfs import mounted_tmpfs

from sandbox.parent.audit import (
    MAX_STRING,
    ZERO_HASH,
    AuditError,
    AuditLog,
    format_show,
    read_records,
    show_cli,
    verify,
    verify_cli,
)

REPO = Path(__file__).resolve().parents[1]
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")

# One example of each kind, with every required field.
EXAMPLES: dict[str, dict[str, Any]] = {
    "start": {
        "pid": 100,
        "policy": "/etc/sandbox/data.yaml",
        "policy_sha256": "ab" * 32,
        "command": ["python3", "agents/data agent.py"],
        "enforced": {"landlock": 7, "seccomp": "notify"},
    },
    "lock": {"pid": 100, "pledge": "stdio rpath", "unveil": {"/usr": "rx", "/srv/vault": "rwc"}},
    "violation": {
        "pid": 100,
        "syscall": "openat",
        "args": ["AT_FDCWD", "/etc/passwd", "O_RDWR"],
        "promise": "wpath",
        "action": "kill",
    },
    "op": {
        "pid": 100,
        "op": "open",
        "resource": "vault",
        "path": "notes/a.md",
        "decision": "allow",
        "reason": "",
    },
    "exit": {"pid": 100, "status": 0},
}


def write_log(path: Path, n: int, agent: str = "data") -> None:
    kinds = list(EXAMPLES)
    with AuditLog(path, agent) as log:
        for i in range(n):
            kind = kinds[i % len(kinds)]
            log.append(kind, **EXAMPLES[kind])
        log.commit()


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def set_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.log"


# ---------------------------------------------------------------------------- chain


def test_chain_format_and_hashes(log_path: Path) -> None:
    with AuditLog(log_path, "data") as log:
        assert log.record("start", **EXAMPLES["start"]) == 1
        assert log.append("lock", **EXAMPLES["lock"]) == 2
        assert log.append("op", **EXAMPLES["op"], size=12) == 3  # extra fields are kept
        log.commit()
        assert log.record("exit", pid=100, signal=9) == 4
    assert os.stat(log_path).st_mode & 0o777 == 0o600
    lines = lines_of(log_path)
    assert len(lines) == 4
    prev = ZERO_HASH
    for n, line in enumerate(lines, 1):
        record = json.loads(line)
        keys = list(record)
        assert keys[:4] == ["seq", "time", "kind", "agent"] and keys[-1] == "prev"
        assert record["seq"] == n and record["agent"] == "data"
        assert TIME_RE.match(record["time"])
        assert record["prev"] == prev
        prev = hashlib.sha256(line).hexdigest()  # the line without its newline
    op = json.loads(lines[2])
    assert list(op)[4:] == ["pid", "op", "resource", "path", "decision", "reason", "size", "prev"]
    result = verify(log_path)
    assert result.ok and result.records == 4 and result.first_bad_line is None
    assert result.head == prev


def test_continue_across_instances(log_path: Path) -> None:
    write_log(log_path, 3)
    with AuditLog(log_path, "other") as log:
        assert log.record("exit", pid=7, status=1) == 4
    with AuditLog(log_path, "data") as log:
        assert log.record("exit", pid=8, status=2) == 5
    assert verify(log_path).ok
    assert [r["agent"] for r in read_records(log_path)] == ["data"] * 3 + ["other", "data"]


def test_empty_log_verifies_and_close_commits(log_path: Path) -> None:
    AuditLog(log_path, "data").close()
    assert log_path.read_bytes() == b""
    assert verify(log_path).ok and verify(log_path).records == 0
    log = AuditLog(log_path, "data")
    log.append("exit", pid=1, status=0)
    assert log_path.read_bytes() == b""  # buffered, not yet written
    log.close()  # close commits what is buffered
    assert verify(log_path).records == 1
    with pytest.raises(AuditError, match="closed"):
        log.append("exit", pid=1, status=0)


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kind", "fields", "match"),
    [
        ("launch", {"pid": 1}, "unknown audit record kind"),
        ("violation", {"pid": 1, "syscall": "x", "args": [], "action": "kill"}, "'promise'"),
        ("op", {**{k: v for k, v in EXAMPLES["op"].items() if k != "path"}}, "'path' or 'url'"),
        ("exit", {"pid": 1}, "'status' or 'signal'"),
        ("exit", {"pid": 1, "status": 0, "seq": 9}, "set by the log"),
        ("exit", {"pid": 1, "status": object()}, "object is not JSON data"),
        ("exit", {"pid": 1, "status": float("nan")}, "not a JSON number"),
        ("exit", {"pid": 1, "status": 0, "big": "x" * 70000}, None),  # truncated, not rejected
    ],
)
def test_bad_records_are_refused_and_log_goes_on(
    log_path: Path, kind: str, fields: dict[str, Any], match: str | None
) -> None:
    with AuditLog(log_path, "data") as log:
        if match is None:
            log.record(kind, **fields)
            big = list(read_records(log_path))[-1]["big"]
            assert big.startswith("x" * MAX_STRING) and big.endswith("more characters]")
        else:
            with pytest.raises(ValueError, match=match):
                log.append(kind, **fields)
        # A programming error is not a broken log: it still records.
        assert log.broken is None
        log.record("exit", pid=1, status=0)
    assert verify(log_path).ok


def test_values_are_converted_deterministically(log_path: Path) -> None:
    odd_name = os.fsdecode(b"caf\xe9\xff.md")  # not UTF-8: lone surrogates in str
    with AuditLog(log_path, "data") as log:
        log.record(
            "op",
            pid=1,
            op="open",
            resource="vault",
            path=odd_name,
            decision="deny",
            reason="x",
            raw=b"\x00\xfe/etc",
            tags=frozenset({"b", "a"}),
            where=Path("/srv/v"),
            t=(1, 2),
        )
    data = log_path.read_bytes()
    data.decode("utf-8")  # valid UTF-8, does not raise
    record = next(read_records(log_path))
    assert record["path"] == "caf\\xe9\\xff.md"
    assert record["raw"] == "\x00\\xfe/etc"
    assert record["tags"] == ["a", "b"] and record["where"] == "/srv/v" and record["t"] == [1, 2]
    assert verify(log_path).ok


# ---------------------------------------------------------------------------- verify


def test_verify_intact_log_passes(log_path: Path) -> None:
    write_log(log_path, 10)
    result = verify(log_path)
    assert result == verify(log_path)
    assert result.ok and result.records == 10, result.message


def _flip(line: bytes, old: bytes, new: bytes) -> bytes:
    assert old in line
    return line.replace(old, new, 1)


def test_verify_byte_changed_in_field(log_path: Path) -> None:
    write_log(log_path, 10)
    lines = lines_of(log_path)
    lines[3] = _flip(lines[3], b'"notes/a.md"', b'"notes/b.md"')  # line 4, an op
    set_lines(log_path, lines)
    result = verify(log_path)
    assert not result.ok and result.first_bad_line == 5 and result.records == 4
    assert result.message == "line 5: prev does not match the hash of line 4"


def test_verify_byte_changed_in_prev(log_path: Path) -> None:
    write_log(log_path, 10)
    lines = lines_of(log_path)
    prev = json.loads(lines[6])["prev"].encode()
    changed = prev[:10] + (b"0" if prev[10:11] != b"0" else b"1") + prev[11:]
    lines[6] = _flip(lines[6], prev, changed)
    set_lines(log_path, lines)
    result = verify(log_path)
    assert result.message == "line 7: prev does not match the hash of line 6"
    assert result.first_bad_line == 7


def test_verify_first_prev_not_zero(log_path: Path) -> None:
    write_log(log_path, 2)
    lines = lines_of(log_path)
    lines[0] = _flip(lines[0], ZERO_HASH.encode(), b"1" + b"0" * 63)
    set_lines(log_path, lines)
    assert verify(log_path).message == "line 1: prev is not 64 zeros (the first record)"


def test_verify_record_removed(log_path: Path) -> None:
    write_log(log_path, 10)
    lines = lines_of(log_path)
    del lines[2]
    set_lines(log_path, lines)
    result = verify(log_path)
    assert result.message == "line 3: seq is 4, expected 3" and result.first_bad_line == 3


def test_verify_removed_and_renumbered_is_caught_by_prev(log_path: Path) -> None:
    # A forger who also fixes the seq numbers still breaks the chain.
    write_log(log_path, 5)
    lines = lines_of(log_path)
    del lines[2]
    for i in range(2, len(lines)):
        lines[i] = _flip(lines[i], f'"seq":{i + 2},'.encode(), f'"seq":{i + 1},'.encode())
    set_lines(log_path, lines)
    assert verify(log_path).message == "line 3: prev does not match the hash of line 2"


def test_verify_records_reordered(log_path: Path) -> None:
    write_log(log_path, 10)
    lines = lines_of(log_path)
    lines[7], lines[8] = lines[8], lines[7]
    set_lines(log_path, lines)
    assert verify(log_path).message == "line 8: seq is 9, expected 8"


def test_verify_truncated_final_line(log_path: Path) -> None:
    write_log(log_path, 12)
    data = log_path.read_bytes()
    log_path.write_bytes(data[:-20])
    result = verify(log_path)
    assert result.message == "line 12: truncated (no newline at end of file)"
    assert result.records == 11
    # Only the newline missing is also a truncation: the record may be incomplete.
    log_path.write_bytes(data[:-1])
    assert verify(log_path).message == "line 12: truncated (no newline at end of file)"


def test_verify_non_json_line(log_path: Path) -> None:
    write_log(log_path, 10)
    lines = lines_of(log_path)
    lines[8] = b"this is not json"
    set_lines(log_path, lines)
    assert verify(log_path).message == "line 9: not valid JSON"
    lines[8] = b'["a list"]'
    set_lines(log_path, lines)
    assert verify(log_path).message == "line 9: not valid JSON"


def test_verify_missing_field_and_bad_time(log_path: Path) -> None:
    # Forged records with a correct chain still have to be well-formed.
    lines: list[bytes] = []
    prev = ZERO_HASH
    for seq, extra in ((1, {"time": "yesterday"}), (2, {})):
        record = {"seq": seq, "time": "2024-01-01T00:00:00.000000Z", "kind": "exit"}
        record |= {"agent": "a", "pid": 1, **extra, "prev": prev}
        line = json.dumps(record, separators=(",", ":")).encode()
        lines.append(line)
        prev = hashlib.sha256(line).hexdigest()
    set_lines(log_path, lines)
    assert verify(log_path).message == "line 1: time 'yesterday' is not RFC 3339"
    lines[0] = lines[0].replace(b"yesterday", b"2024-01-01T00:00:00.000000Z")
    lines[1] = re.sub(
        rb'"prev":"[0-9a-f]+"',
        f'"prev":"{hashlib.sha256(lines[0]).hexdigest()}"'.encode(),
        lines[1],
    )
    set_lines(log_path, lines)
    assert verify(log_path).message == "line 1: exit record without field 'status' or 'signal'"


def test_verify_cli_messages(log_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_log(log_path, 5)
    assert verify_cli(log_path) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{log_path}: 5 records, chain intact") and err == ""
    lines = lines_of(log_path)
    lines[1], lines[2] = lines[2], lines[1]
    set_lines(log_path, lines)
    assert verify_cli(log_path) == 1
    out, err = capsys.readouterr()
    assert err == f"{log_path}:2: seq is 3, expected 2\n" and out == ""
    assert verify_cli(log_path.parent / "missing.log") == 1
    assert "cannot read" in capsys.readouterr().err


# ---------------------------------------------------------------------------- opening


def test_open_refuses_what_is_not_a_regular_writable_file(tmp_path: Path) -> None:
    target = tmp_path / "real.log"
    write_log(target, 1)
    link = tmp_path / "link.log"
    link.symlink_to(target)
    with pytest.raises(AuditError, match="symbolic link"):
        AuditLog(link, "data")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(AuditError, match="not a regular file"):
        AuditLog(fifo, "data")  # does not hang waiting for a reader
    with pytest.raises(AuditError, match="directory"):
        AuditLog(tmp_path, "data")
    with pytest.raises(AuditError, match="not a regular file"):
        AuditLog("/dev/null", "data")
    with pytest.raises(AuditError, match="does not exist"):
        AuditLog(tmp_path / "no" / "such.log", "data")
    # The regular file behind the link is fine.
    with AuditLog(target, "data") as log:
        assert log.record("exit", pid=1, status=0) == 2


def test_open_refuses_after_a_partial_last_line(log_path: Path) -> None:
    write_log(log_path, 3)
    whole = log_path.stat().st_size
    with open(log_path, "ab") as f:
        f.write(b'{"seq":4,"time":"2024-')
    with pytest.raises(AuditError, match="last line is incomplete") as info:
        AuditLog(log_path, "data")
    assert f"truncate -s {whole} {log_path}" in str(info.value)
    assert verify(log_path).message == "line 4: truncated (no newline at end of file)"
    with open(log_path, "ab") as f:  # a complete but garbage last line
        f.write(b"\n")
    with pytest.raises(AuditError, match="last record is not a valid audit record"):
        AuditLog(log_path, "data")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KiB tmpfs, unmounted afterwards."""
    yield from mounted_tmpfs(tmp_path / "mnt", "64k", "0700")


def test_open_refuses_read_only_filesystem(small_fs: Path) -> None:
    write_log(small_fs / "audit.log", 1)
    subprocess.run(["mount", "-o", "remount,ro", small_fs], check=True)
    with pytest.raises(AuditError, match="read-only file system"):
        AuditLog(small_fs / "new.log", "data")
    with pytest.raises(AuditError, match="read-only file system"):
        AuditLog(small_fs / "audit.log", "data")
    assert verify(small_fs / "audit.log").ok


# ---------------------------------------------------------------------------- failures


def test_full_disk_breaks_the_log_for_good(small_fs: Path) -> None:
    path = small_fs / "audit.log"
    padding = "p" * 1000
    log = AuditLog(path, "data")
    committed = 0
    with pytest.raises(AuditError, match="commit failed: No space left on device") as info:
        for _ in range(1000):
            log.append("exit", pid=1, status=0, padding=padding)
            log.append("exit", pid=1, status=0, padding=padding)
            log.commit()
            committed += 2
    assert committed > 10  # records were written while there was room
    assert "refuses further records" in str(info.value)
    assert log.broken is not None
    # Fail closed: nothing more is accepted, even after room is made elsewhere.
    with pytest.raises(AuditError, match="broken"):
        log.append("exit", pid=1, status=0)
    with pytest.raises(AuditError, match="broken"):
        log.commit()
    with pytest.raises(AuditError, match="broken"):
        log.record("exit", pid=1, status=0)
    log.close()
    # Every committed record is intact; what the failed commit left is at most a partial
    # last line, which verify reports and a new AuditLog refuses to continue.
    result = verify(path)
    assert result.records >= committed
    if not result.ok:
        assert result.message.endswith("truncated (no newline at end of file)")
        with pytest.raises(AuditError, match="incomplete"):
            AuditLog(path, "data")


def test_commit_error_on_closed_descriptor_fails_closed(log_path: Path) -> None:
    log = AuditLog(log_path, "data")
    log.record("exit", pid=1, status=0)
    log.append("exit", pid=1, status=1)
    os.close(log._fd)  # the descriptor goes away under the log (EBADF)
    with pytest.raises(AuditError, match="commit failed: Bad file descriptor"):
        log.commit()
    with pytest.raises(AuditError, match="broken"):
        log.append("exit", pid=1, status=0)
    log.close()
    assert verify(log_path).records == 1


# ---------------------------------------------------------------------------- processes


WRITER = """
import sys
from sandbox.parent.audit import AuditLog
path, agent, count, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
with AuditLog(path, agent) as log:
    print("ready", flush=True)
    sys.stdin.readline()  # a start barrier, so that writers really run at the same time
    i = 0
    while count < 0 or i < count:
        for _ in range(batch if count < 0 else min(batch, count - i)):
            log.append("op", pid=i, op="open", resource="vault", path=f"notes/{i}.md",
                       decision="allow", reason="x" * (i % 300))
            i += 1
        log.commit()
        if count < 0 and i == batch * 20:
            print("running", flush=True)
"""


def writer(path: Path, agent: str, count: int, batch: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), agent, str(count), str(batch)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def go(*procs: subprocess.Popen[str]) -> None:
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()


@pytest.mark.parametrize("batch", [1, 64])
def test_sigkill_mid_run_leaves_committed_records_intact(log_path: Path, batch: int) -> None:
    # Observed (runs of 60 kills each, on ext4 and tmpfs): single-record commits
    # always left whole lines; about 1 kill in 60 during a 64- or 160-record group commit
    # (a 20-64 KiB write()) left a partial last line, because the kernel stops a write to
    # a regular file between pages when a fatal signal is pending. So the guarantee tested
    # is: every committed record is intact and at most the last line is cut; a cut last
    # line fails verify and makes the next AuditLog refuse, telling how to truncate it.
    for _ in range(3):
        proc = writer(log_path, "data", -1, batch)
        go(proc)
        assert proc.stdout is not None and proc.stdout.readline() == "running\n"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        result = verify(log_path)
        assert result.records >= batch * 20  # at least what was committed before "running"
        if not result.ok:
            assert result.first_bad_line == result.records + 1
            assert result.message.endswith("truncated (no newline at end of file)")
            with pytest.raises(AuditError, match=r"truncate -s (\d+) ") as info:
                AuditLog(log_path, "data")
            size = re.search(r"truncate -s (\d+) ", str(info.value))
            assert size is not None
            os.truncate(log_path, int(size.group(1)))  # what the message tells the user
            assert verify(log_path).records == result.records
        assert verify(log_path).ok
    # The next writer continues the chain where the killed one stopped.
    before = verify(log_path).records
    with AuditLog(log_path, "data") as log:
        assert log.record("exit", pid=1, signal=9) == before + 1
    assert verify(log_path).ok


def test_concurrent_processes_share_one_chain(log_path: Path) -> None:
    procs = [writer(log_path, f"agent{i}", 300, batch) for i, batch in enumerate((1, 7, 64, 3))]
    go(*procs)
    assert [p.wait() for p in procs] == [0, 0, 0, 0]
    result = verify(log_path)
    assert result.ok and result.records == 1200, result.message
    # The writers did interleave (otherwise this test would prove nothing).
    agents = [r["agent"] for r in read_records(log_path)]
    assert sum(a != b for a, b in itertools.pairwise(agents)) > 4
    assert {a: agents.count(a) for a in set(agents)} == {f"agent{i}": 300 for i in range(4)}
    # Per writer, records are in the order it appended them.
    for i in range(4):
        pids = [r["pid"] for r in read_records(log_path) if r["agent"] == f"agent{i}"]
        assert pids == list(range(300))


def test_threads_share_one_log(log_path: Path) -> None:
    errors: list[BaseException] = []
    with AuditLog(log_path, "data") as log:

        def work(t: int) -> None:
            try:
                for i in range(100):
                    if i % 3:
                        log.append("exit", pid=t, status=i)
                        log.commit()
                    else:
                        log.record("exit", pid=t, status=i)
            except BaseException as e:  # reported below, in the test's thread
                errors.append(e)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    assert errors == []
    result = verify(log_path)
    assert result.ok and result.records == 800


def _blocked_on_flock(pid: int) -> bool:
    """Whether /proc/locks shows `pid` waiting for a flock ("->" marks a blocked request)."""
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if fields[1:3] == ["->", "FLOCK"] and len(fields) > 5 and fields[5] == str(pid):
            return True
    return False


def test_other_process_waits_for_an_open_batch(log_path: Path) -> None:
    holder = AuditLog(log_path, "holder")
    assert holder.append("exit", pid=1, status=0) == 1  # holds the file lock until commit
    code = (
        "import sys\nfrom sandbox.parent.audit import AuditLog\n"
        "with AuditLog(sys.argv[1], 'other') as log:\n"
        "    print(log.record('exit', pid=2, status=0))\n"
    )
    other = subprocess.Popen(
        [sys.executable, "-c", code, str(log_path)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        for _ in range(2000):  # a hang guard, not a timing assertion
            if _blocked_on_flock(other.pid):
                break
            threading.Event().wait(0.005)
        else:
            pytest.fail("the other writer never blocked on the log's flock")
        assert log_path.read_bytes() == b""  # nothing written while the batch is open
        holder.commit()
        assert other.communicate()[0] == "2\n"  # it continued after the holder's record
    finally:
        other.kill()
        other.wait()
    assert holder.record("exit", pid=1, status=0) == 3  # and the holder after it
    holder.close()
    assert verify(log_path).ok
    assert [r["agent"] for r in read_records(log_path)] == ["holder", "other", "holder"]


def test_second_instance_in_one_process_is_refused(log_path: Path) -> None:
    with AuditLog(log_path, "data") as log:
        link = log_path.parent / "hard.log"
        os.link(log_path, link)  # the same file under another name is the same log
        with pytest.raises(AuditError, match="already open in this process"):
            AuditLog(link, "data")
        log.record("exit", pid=1, status=0)
    with AuditLog(link, "data") as log:  # once closed, it can be opened again
        assert log.record("exit", pid=1, status=0) == 2


# ---------------------------------------------------------------------------- show


def _show_log(path: Path) -> None:
    with AuditLog(path, "data") as log:
        for kind, fields in EXAMPLES.items():
            log.append(kind, **fields)
        log.append("violation", pid=100, syscall="bpf", args=[0], promise=None, action="errno")
        log.append(
            "op",
            pid=100,
            op="get",
            resource="llm",
            url="https://api.example.com/v1/\x1b[2J",
            decision="deny",
            reason="no 'llm:get'",
        )
        log.commit()
    with AuditLog(path, "mail") as log:
        log.record("exit", pid=200, signal=9)


def test_show_table_has_a_summary_for_each_kind(log_path: Path) -> None:
    _show_log(log_path)
    rows = format_show(log_path).splitlines()
    assert rows[0].split() == ["SEQ", "TIME", "AGENT", "KIND", "PID", "SUMMARY"]
    assert len(rows) == 9
    summary_at = rows[0].index("SUMMARY")
    assert all(row[summary_at - 2 : summary_at] == "  " for row in rows)  # aligned
    summaries = [row[summary_at:] for row in rows[1:]]
    assert summaries == [
        "python3 'agents/data agent.py'  policy=/etc/sandbox/data.yaml (abababababab)"
        "  enforced: landlock:7 seccomp:notify",
        "pledge 'stdio rpath'  unveil /usr:rx /srv/vault:rwc",
        "openat(AT_FDCWD, /etc/passwd, O_RDWR) needs 'wpath' -> kill",
        "open vault:notes/a.md allow",
        "status 0",
        "bpf(0) is never allowed -> errno",
        # Terminal escapes from the agent are shown, not obeyed.
        "get llm:https://api.example.com/v1/\\x1b[2J deny (no 'llm:get')",
        "signal 9 (SIGKILL)",
    ]
    first = rows[1].split()
    assert first[0] == "1" and TIME_RE.match(first[1]) and first[2:5] == ["data", "start", "100"]


def test_show_filters_and_json(log_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _show_log(log_path)
    ops = format_show(log_path, kind="op").splitlines()[1:]
    assert [r.split()[3] for r in ops] == ["op", "op"]
    mail = format_show(log_path, agent="mail").splitlines()[1:]
    assert len(mail) == 1 and mail[0].split()[:1] == ["8"]
    assert format_show(log_path, agent="mail", kind="op").splitlines()[1:] == []
    assert format_show(log_path, agent="nobody", as_json=True) == ""
    text = format_show(log_path, kind="violation", as_json=True)
    records = [json.loads(line) for line in text.splitlines()]
    assert [r["seq"] for r in records] == [3, 6] and records[1]["promise"] is None
    # JSON output is the log's own lines, byte for byte, so it can be re-verified.
    assert text.encode().splitlines() == [lines_of(log_path)[2], lines_of(log_path)[5]]
    assert show_cli(log_path, agent="data", kind="exit") == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[1].endswith("status 0")


def test_show_stops_at_a_bad_line(log_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_log(log_path, 3)
    with open(log_path, "ab") as f:
        f.write(b"garbage\n")
    assert show_cli(log_path) == 1
    assert capsys.readouterr().err == f"{log_path}:4: not valid JSON\n"
    assert show_cli(log_path.parent / "missing.log") == 1
    assert "cannot read" in capsys.readouterr().err
