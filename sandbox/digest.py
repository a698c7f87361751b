"""SHA-256 without hashlib where CPython has its own: importing hashlib initialises OpenSSL
(~4 ms), paid by every launch, check and explain that digests a policy file or a filter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hashlib import sha256
else:
    try:
        from _sha2 import sha256  # CPython 3.12 and later
    except ImportError:
        try:
            from _sha256 import sha256  # CPython 3.11
        except ImportError:
            from hashlib import sha256

__all__ = ["sha256"]
