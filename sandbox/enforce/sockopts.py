"""Socket options by level AND name: which promise lets a process set each one.

Data, read by the promise table (sandbox.enforce.promises), which makes one filter row per
(level, name) pair. Modelled on OpenBSD's pledge_sockopt() in sys/kern/kern_pledge.c: the
level alone decides nothing (IP_MULTICAST_IF and IP_TOS share IPPROTO_IP); multicast needs
the promise `mcast`; IP options, routing headers and the like need what no promise gives.
Linux has many options OpenBSD lacks, so each one below is listed for a reason: a common
client or library sets it (curl, git, wget and ssh: SO_KEEPALIVE, TCP_KEEPIDLE,
TCP_KEEPINTVL, TCP_NODELAY, IP_TOS; node: TCP_KEEPCNT; glibc's resolver: IP_RECVERR and
IPV6_RECVERR; Go: SO_BROADCAST, IPV6_V6ONLY; servers: SO_REUSEADDR, SO_REUSEPORT,
TCP_DEFER_ACCEPT, TCP_FASTOPEN for listeners), or it only tunes the caller's own socket.

Never allowed, whatever is promised (an option not listed here is refused like any call
outside the pledge):
- socket filters and BPF programs (SO_ATTACH_FILTER, SO_ATTACH_BPF, the reuseport BPF
  options, SO_LOCK_FILTER): they load programs into the kernel, as bpf(2) does;
- TCP_FASTOPEN_CONNECT (and MSG_FASTOPEN on sends, see promises.py): a Fast Open connect
  does not pass the check Landlock's TCP port rules hook into, so it would reach ports
  `network.connect` does not list; TCP_FASTOPEN_KEY, TCP_REPAIR*, TCP_ULP (kernel TLS and
  other upper-layer protocols: kernel attack surface), TCP_CONGESTION;
- IP_OPTIONS, IP_RETOPTS, IP_HDRINCL, IP_ROUTER_ALERT, IPV6_RTHDR, IPV6_HOPOPTS,
  IPV6_DSTOPTS, IPV6_ADDRFORM (source routing, raw headers, the family switch of CVE-2022-3524);
- IPsec and XFRM policies, UDP_ENCAP; and what needs a capability the agent never has
  (SO_BINDTODEVICE, SO_MARK, SO_DEBUG, SO_*BUFFORCE, IP_TRANSPARENT).

getsockopt only reads the caller's own socket and stays allowed by stdio.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from sandbox.enforce.syscalls import IPPROTO_IP, IPPROTO_IPV6, IPPROTO_TCP, IPPROTO_UDP, SOL_SOCKET

# Options of the socket layer: any socket promise (inet, unix, dns) may set these.
SOCKET: Mapping[int, str] = MappingProxyType(
    {
        2: "SO_REUSEADDR",
        5: "SO_DONTROUTE",
        6: "SO_BROADCAST",
        7: "SO_SNDBUF",
        8: "SO_RCVBUF",
        9: "SO_KEEPALIVE",
        10: "SO_OOBINLINE",
        12: "SO_PRIORITY",  # 0-6 without CAP_NET_ADMIN (the kernel checks)
        13: "SO_LINGER",
        15: "SO_REUSEPORT",
        16: "SO_PASSCRED",
        18: "SO_RCVLOWAT",
        19: "SO_SNDLOWAT",
        20: "SO_RCVTIMEO_OLD",
        21: "SO_SNDTIMEO_OLD",
        29: "SO_TIMESTAMP_OLD",
        34: "SO_PASSSEC",
        35: "SO_TIMESTAMPNS_OLD",
        37: "SO_TIMESTAMPING_OLD",
        40: "SO_RXQ_OVFL",
        42: "SO_PEEK_OFF",
        45: "SO_SELECT_ERR_QUEUE",
        46: "SO_BUSY_POLL",
        47: "SO_MAX_PACING_RATE",
        49: "SO_INCOMING_CPU",
        60: "SO_ZEROCOPY",
        63: "SO_TIMESTAMP_NEW",
        64: "SO_TIMESTAMPNS_NEW",
        65: "SO_TIMESTAMPING_NEW",
        66: "SO_RCVTIMEO_NEW",
        67: "SO_SNDTIMEO_NEW",
        76: "SO_PASSPIDFD",
    }
)

TCP: Mapping[int, str] = MappingProxyType(
    {
        1: "TCP_NODELAY",
        2: "TCP_MAXSEG",
        3: "TCP_CORK",  # OpenBSD's TCP_NOPUSH
        4: "TCP_KEEPIDLE",
        5: "TCP_KEEPINTVL",
        6: "TCP_KEEPCNT",
        7: "TCP_SYNCNT",
        8: "TCP_LINGER2",
        9: "TCP_DEFER_ACCEPT",
        10: "TCP_WINDOW_CLAMP",
        12: "TCP_QUICKACK",
        14: "TCP_MD5SIG",  # OpenBSD allows it under inet (BGP)
        16: "TCP_THIN_LINEAR_TIMEOUTS",
        17: "TCP_THIN_DUPACK",
        18: "TCP_USER_TIMEOUT",
        23: "TCP_FASTOPEN",  # the listener's queue: accepting is checked by bind already
        25: "TCP_NOTSENT_LOWAT",
        36: "TCP_INQ",
    }
)

UDP: Mapping[int, str] = MappingProxyType({1: "UDP_CORK", 103: "UDP_SEGMENT", 104: "UDP_GRO"})

IP: Mapping[int, str] = MappingProxyType(
    {
        1: "IP_TOS",
        2: "IP_TTL",
        8: "IP_PKTINFO",
        10: "IP_MTU_DISCOVER",
        11: "IP_RECVERR",
        12: "IP_RECVTTL",
        13: "IP_RECVTOS",
        15: "IP_FREEBIND",
        18: "IP_PASSSEC",
        20: "IP_RECVORIGDSTADDR",
        21: "IP_MINTTL",
        24: "IP_BIND_ADDRESS_NO_PORT",
        25: "IP_RECVFRAGSIZE",
        26: "IP_RECVERR_RFC4884",
        51: "IP_LOCAL_PORT_RANGE",
    }
)

IPV6: Mapping[int, str] = MappingProxyType(
    {
        16: "IPV6_UNICAST_HOPS",
        23: "IPV6_MTU_DISCOVER",
        25: "IPV6_RECVERR",
        26: "IPV6_V6ONLY",
        31: "IPV6_RECVERR_RFC4884",
        49: "IPV6_RECVPKTINFO",
        50: "IPV6_PKTINFO",
        51: "IPV6_RECVHOPLIMIT",
        52: "IPV6_HOPLIMIT",
        60: "IPV6_RECVPATHMTU",
        62: "IPV6_DONTFRAG",
        66: "IPV6_RECVTCLASS",
        67: "IPV6_TCLASS",
        70: "IPV6_AUTOFLOWLABEL",
        72: "IPV6_ADDR_PREFERENCES",
        73: "IPV6_MINHOPCOUNT",
        74: "IPV6_RECVORIGDSTADDR",
        77: "IPV6_RECVFRAGSIZE",
        78: "IPV6_FREEBIND",
    }
)

# Multicast: the promise `mcast` (with `inet`), as OpenBSD's PLEDGE_MCAST.
# The protocol-independent group options (RFC 3678) exist at both levels.
_MCAST_GROUP = {
    42: "MCAST_JOIN_GROUP",
    43: "MCAST_BLOCK_SOURCE",
    44: "MCAST_UNBLOCK_SOURCE",
    45: "MCAST_LEAVE_GROUP",
    46: "MCAST_JOIN_SOURCE_GROUP",
    47: "MCAST_LEAVE_SOURCE_GROUP",
    48: "MCAST_MSFILTER",
}
IP_MCAST: Mapping[int, str] = MappingProxyType(
    {
        32: "IP_MULTICAST_IF",
        33: "IP_MULTICAST_TTL",
        34: "IP_MULTICAST_LOOP",
        35: "IP_ADD_MEMBERSHIP",
        36: "IP_DROP_MEMBERSHIP",
        37: "IP_UNBLOCK_SOURCE",
        38: "IP_BLOCK_SOURCE",
        39: "IP_ADD_SOURCE_MEMBERSHIP",
        40: "IP_DROP_SOURCE_MEMBERSHIP",
        41: "IP_MSFILTER",
        **_MCAST_GROUP,
        49: "IP_MULTICAST_ALL",
    }
)
IPV6_MCAST: Mapping[int, str] = MappingProxyType(
    {
        17: "IPV6_MULTICAST_IF",
        18: "IPV6_MULTICAST_HOPS",
        19: "IPV6_MULTICAST_LOOP",
        20: "IPV6_JOIN_GROUP",
        21: "IPV6_LEAVE_GROUP",
        29: "IPV6_MULTICAST_ALL",
        **_MCAST_GROUP,
    }
)

# What glibc's resolver sets on its sockets (strace of getaddrinfo), for `dns` alone.
DNS_IP: Mapping[int, str] = MappingProxyType({11: "IP_RECVERR", 10: "IP_MTU_DISCOVER"})
DNS_IPV6: Mapping[int, str] = MappingProxyType(
    {25: "IPV6_RECVERR", 26: "IPV6_V6ONLY", 23: "IPV6_MTU_DISCOVER", 49: "IPV6_RECVPKTINFO"}
)

TCP_FASTOPEN_CONNECT = 30

Options = tuple[tuple[int, Mapping[int, str]], ...]  # (level, {name: symbol})

# Per promise: the (level, options) it may set. `mcast` rows need `inet` too.
BY_PROMISE: Mapping[str, Options] = MappingProxyType(
    {
        "inet": (
            (SOL_SOCKET, SOCKET),
            (IPPROTO_TCP, TCP),
            (IPPROTO_UDP, UDP),
            (IPPROTO_IP, IP),
            (IPPROTO_IPV6, IPV6),
        ),
        "unix": ((SOL_SOCKET, SOCKET),),
        "dns": ((SOL_SOCKET, SOCKET), (IPPROTO_IP, DNS_IP), (IPPROTO_IPV6, DNS_IPV6)),
        "mcast": ((IPPROTO_IP, IP_MCAST), (IPPROTO_IPV6, IPV6_MCAST)),
    }
)

_BY_LEVEL: Mapping[int, tuple[Mapping[int, str], ...]] = MappingProxyType(
    {
        SOL_SOCKET: (SOCKET,),
        IPPROTO_TCP: (TCP,),
        IPPROTO_UDP: (UDP,),
        IPPROTO_IP: (IP, IP_MCAST),
        IPPROTO_IPV6: (IPV6, IPV6_MCAST),
    }
)


def option_name(level: int, name: int) -> str:
    """The symbol of option `name` at `level` ("IP_MULTICAST_IF"), or its number."""
    for table in _BY_LEVEL.get(level, ()):
        if name in table:
            return table[name]
    return (
        "TCP_FASTOPEN_CONNECT"
        if (level, name) == (IPPROTO_TCP, TCP_FASTOPEN_CONNECT)
        else str(name)
    )
