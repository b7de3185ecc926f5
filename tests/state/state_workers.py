"""Process entry points of the state store tests (an importable module, so that ``spawn``
children find them)."""

from __future__ import annotations

from typing import Any


def take_worker(url: str, tries: int, limit: int, barrier: Any, results: Any) -> None:
    """Open the store at ``url``, wait for every racer, take ``tries`` units; report the wins."""
    from bastion.state import open_store

    store = open_store(url)
    try:
        barrier.wait(timeout=60)
        results.put(sum(store.take("race", limit, 1 << 40, 1_750_000_000.0)[0]
                        for _ in range(tries)))
    finally:
        store.close()
