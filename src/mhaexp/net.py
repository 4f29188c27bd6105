"""Whether a server answers at all: the one network question asked before a library's long retries.

A library that cannot connect often reports it as something else (W&B: "Failed to verify credentials";
the HF hub: a minute of retries, then "not found"). Asking first lets one line say which it is.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

WANDB_SERVER = "https://api.wandb.ai"  # W&B's own default, when WANDB_BASE_URL does not say


def wandb_server() -> str:
    """The W&B server the W&B client talks to."""
    return os.environ.get("WANDB_BASE_URL", WANDB_SERVER)


def unreachable(url: str, timeout: float = 3.0) -> str | None:
    """Why a TCP connection to ``url``'s host and port fails (``Connection refused``, ``timed out``, ...);
    None when it connects. Nothing is sent."""
    parts = urlparse(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "", port), timeout=timeout).close()
    except OSError as e:
        return e.strerror or str(e) or type(e).__name__
    return None
