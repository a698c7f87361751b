"""A nameserver for tests: answers every A query with 192.0.2.7, remembers what arrived."""

from __future__ import annotations

import socket
import struct
import threading


class FakeNameserver:
    """Answers every A query with 192.0.2.7, and remembers what reached it."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.seen: list[bytes] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                q, addr = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            self.seen.append(q)
            try:
                self.answer(q, addr)
            except (IndexError, struct.error):
                continue  # not a DNS query (what the tests send directly)

    def answer(self, q: bytes, addr: tuple[str, int]) -> None:
        i = 12
        while q[i]:
            i += 1 + q[i]
        qtype = struct.unpack("!H", q[i + 1 : i + 3])[0]
        question = q[12 : i + 5]
        answers = 1 if qtype == 1 else 0
        reply = struct.pack("!HHHHHH", struct.unpack("!H", q[:2])[0], 0x8180, 1, answers, 0, 0)
        reply += question
        if answers:
            reply += b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([192, 0, 2, 7])
        self.sock.sendto(reply, addr)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()
