"""RFC 6962 / RFC 9162 Merkle tree maths: hashes, a compact incremental tree, proofs. No I/O.

Hashes (RFC 9162 §2.1.1), SHA-256 throughout:

* empty tree: ``SHA-256("")``
* leaf:       ``SHA-256(0x00 || data)``
* node:       ``SHA-256(0x01 || left || right)``, splitting ``n`` leaves at ``k``, the largest
  power of two smaller than ``n``.

An audit entry's leaf data is its stored canonical body bytes followed by the 32 raw bytes of its
MAC (``entry_leaf_hash``). The MAC has a fixed length, so the concatenation is unambiguous.

Proof construction is written against a ``SubtreeRoot`` callback, ``root(lo, hi) -> MTH(D[lo:hi])``,
so a caller can compute the few subtree roots a proof needs by streaming leaves from storage
rather than holding every leaf hash in memory. The ranges a single proof asks for are disjoint.
Verification follows RFC 9162 §2.1.3.2 and §2.1.4.2 and never recomputes the tree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "EMPTY_ROOT",
    "CompactTree",
    "consistency_proof",
    "entry_leaf_hash",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_of",
    "subtree_consistency_proof",
    "subtree_inclusion_proof",
    "verify_consistency",
    "verify_inclusion",
]

SubtreeRoot = Callable[[int, int], bytes]

EMPTY_ROOT = hashlib.sha256(b"").digest()
_LEAF = b"\x00"
_NODE = b"\x01"
_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 || data)``."""
    return _sha256(_LEAF + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``."""
    return _sha256(_NODE + left + right).digest()


def entry_leaf_hash(body: bytes, mac: bytes) -> bytes:
    """Leaf hash of an audit entry: ``SHA-256(0x00 || body || mac)``, ``mac`` the 32 raw bytes."""
    return _sha256(_LEAF + body + mac).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


class CompactTree:
    """An append-only Merkle tree kept as the roots of its perfect subtrees: O(log n) memory.

    Invariant: ``_stack`` holds one root per set bit of ``size``, largest subtree first, so the
    tree root folds the stack from the right.
    """

    __slots__ = ("_size", "_stack")

    def __init__(self) -> None:
        self._size = 0
        self._stack: list[bytes] = []

    @property
    def size(self) -> int:
        return self._size

    def append(self, leaf: bytes) -> None:
        """Add one leaf hash (already ``leaf_hash``-ed)."""
        stack = self._stack
        stack.append(leaf)
        n = self._size
        while n & 1:
            right = stack.pop()
            stack[-1] = _sha256(_NODE + stack[-1] + right).digest()
            n >>= 1
        self._size += 1

    def copy(self) -> CompactTree:
        twin = CompactTree()
        twin._size = self._size
        twin._stack = list(self._stack)
        return twin

    def extend(self, leaves: Iterable[bytes]) -> None:
        for leaf in leaves:
            self.append(leaf)

    def root(self) -> bytes:
        """The RFC 6962 tree head of every leaf appended so far."""
        stack = self._stack
        if not stack:
            return EMPTY_ROOT
        acc = stack[-1]
        for left in reversed(stack[:-1]):
            acc = node_hash(left, acc)
        return acc


def root_of(leaves: Sequence[bytes]) -> bytes:
    """``MTH`` of a list of leaf hashes."""
    tree = CompactTree()
    tree.extend(leaves)
    return tree.root()


def _list_roots(leaves: Sequence[bytes]) -> SubtreeRoot:
    return lambda lo, hi: root_of(leaves[lo:hi])


def subtree_inclusion_proof(root: SubtreeRoot, index: int, size: int) -> list[bytes]:
    """RFC 9162 §2.1.3.1 ``PATH(index, D[size])``, deepest sibling first."""
    if not 0 <= index < size:
        raise ValueError(f"index {index} is outside a tree of size {size}")
    path: list[bytes] = []
    lo, hi, m = 0, size, index
    while hi - lo > 1:
        k = _split(hi - lo)
        if m < k:
            path.append(root(lo + k, hi))
            hi = lo + k
        else:
            path.append(root(lo, lo + k))
            lo, m = lo + k, m - k
    path.reverse()
    return path


def subtree_consistency_proof(root: SubtreeRoot, old_size: int, new_size: int) -> list[bytes]:
    """RFC 9162 §2.1.4.1 ``PROOF(old_size, D[new_size])``; empty when either size is 0 or equal."""
    if not 0 <= old_size <= new_size:
        raise ValueError(f"cannot prove size {old_size} against size {new_size}")
    if old_size in (0, new_size):
        return []
    proof: list[bytes] = []
    lo, hi, m, whole = 0, new_size, old_size, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            proof.append(root(lo + k, hi))
            hi = lo + k
        else:
            proof.append(root(lo, lo + k))
            lo, m, whole = lo + k, m - k, False
    if not whole:
        proof.append(root(lo, hi))
    proof.reverse()
    return proof


def inclusion_proof(leaves: Sequence[bytes], index: int, size: int) -> list[bytes]:
    """Audit path for leaf ``index`` in the tree of the first ``size`` leaf hashes."""
    if size > len(leaves):
        raise ValueError(f"tree size {size} exceeds the {len(leaves)} leaves given")
    return subtree_inclusion_proof(_list_roots(leaves), index, size)


def consistency_proof(leaves: Sequence[bytes], old_size: int, new_size: int) -> list[bytes]:
    """Proof that the first ``old_size`` leaves are a prefix of the first ``new_size``."""
    if new_size > len(leaves):
        raise ValueError(f"tree size {new_size} exceeds the {len(leaves)} leaves given")
    return subtree_consistency_proof(_list_roots(leaves), old_size, new_size)


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 §2.1.3.2: does ``proof`` show ``leaf`` at ``index`` under ``root`` of ``size``?

    1. Fail if ``index >= size``.
    2. ``fn = index``, ``sn = size - 1``, ``r = leaf``.
    3. For each ``p``: fail if ``sn == 0``; if ``LSB(fn)`` or ``fn == sn`` then
       ``r = H(0x01 || p || r)`` and, unless ``LSB(fn)``, shift until ``LSB(fn)`` or ``fn == 0``;
       else ``r = H(0x01 || r || p)``; then shift both once.
    4. Succeed iff ``sn == 0`` and ``r == root``.
    """
    if not 0 <= index < size or any(len(p) != 32 for p in proof):
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 §2.1.4.2: does ``proof`` show the tree ``old_root`` is a prefix of ``new_root``?

    1. Fail if ``old_size > new_size``. Equal sizes need an empty proof and equal roots; an old
       size of 0 needs an empty proof and the empty root. Otherwise an empty proof fails.
    2. If ``old_size`` is a power of two, prepend ``old_root`` to the proof.
    3. ``fn = old_size - 1``, ``sn = new_size - 1``; while ``LSB(fn)``, shift both.
    4. ``fr = sr = proof[0]``. For each later ``c``: fail if ``sn == 0``; if ``LSB(fn)`` or
       ``fn == sn`` then ``fr = H(0x01 || c || fr)``, ``sr = H(0x01 || c || sr)`` and, unless
       ``LSB(fn)``, shift until ``LSB(fn)`` or ``fn == 0``; else ``sr = H(0x01 || sr || c)``;
       then shift both once.
    5. Succeed iff ``fr == old_root``, ``sr == new_root`` and ``sn == 0``.
    """
    if not 0 <= old_size <= new_size or any(len(p) != 32 for p in proof):
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:  # only the empty tree has no entries
        return not proof and old_root == EMPTY_ROOT
    if not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0
