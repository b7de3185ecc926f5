"""RFC 6962 / 9162 Merkle maths against published vectors, a naive reference, and tampering."""

from __future__ import annotations

import hashlib

import pytest

from bastion.audit._merkle import (
    EMPTY_ROOT,
    CompactTree,
    consistency_proof,
    entry_leaf_hash,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)

# Certificate Transparency reference leaves and the tree head after each (transparency-dev).
CT_DATA = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
)]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_LEAVES = [leaf_hash(d) for d in CT_DATA]
CT_INCLUSION = {
    (0, 8): ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
             "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
             "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"],
    (5, 8): ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
             "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
             "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"],
}
CT_CONSISTENCY = {
    (2, 8): ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
             "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"],
    (6, 8): ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
             "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
             "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"],
    (2, 5): ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
             "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"],
}
LEAVES = [leaf_hash(i.to_bytes(2, "big")) for i in range(20)]


def reference_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 MTH written as the recursion in the RFC, independent of the code under test."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    left, right = reference_root(leaves[:k]), reference_root(leaves[k:])
    return hashlib.sha256(b"\x01" + left + right).digest()


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]


def test_hashes_are_domain_separated_by_hand() -> None:
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    a, b = b"a" * 32, b"b" * 32
    assert node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest()
    assert entry_leaf_hash(b"{}", b"m" * 32) == hashlib.sha256(b"\x00{}" + b"m" * 32).digest()
    assert EMPTY_ROOT.hex() == CT_ROOTS[0]


@pytest.mark.parametrize("size", range(len(CT_ROOTS)))
def test_roots_match_certificate_transparency(size: int) -> None:
    assert root_of(CT_LEAVES[:size]).hex() == CT_ROOTS[size]


@pytest.mark.parametrize(("index", "size"), sorted(CT_INCLUSION))
def test_inclusion_proofs_match_published(index: int, size: int) -> None:
    proof = inclusion_proof(CT_LEAVES, index, size)
    assert [p.hex() for p in proof] == CT_INCLUSION[index, size]
    assert verify_inclusion(CT_LEAVES[index], index, size, proof, bytes.fromhex(CT_ROOTS[size]))


@pytest.mark.parametrize(("old", "new"), sorted(CT_CONSISTENCY))
def test_consistency_proofs_match_published(old: int, new: int) -> None:
    proof = consistency_proof(CT_LEAVES, old, new)
    assert [p.hex() for p in proof] == CT_CONSISTENCY[old, new]
    old_root, new_root = bytes.fromhex(CT_ROOTS[old]), bytes.fromhex(CT_ROOTS[new])
    assert verify_consistency(old, new, old_root, new_root, proof)


def test_seven_leaf_example_shapes() -> None:
    """The labelled 7-entry tree of C2SP merkle-tree.md."""
    a, b, c, d, e, f, g = LEAVES[:7]
    h, i, j = node_hash(a, b), node_hash(c, d), node_hash(e, f)
    k, l_ = node_hash(h, i), node_hash(j, g)
    assert root_of(LEAVES[:7]) == node_hash(k, l_)
    assert inclusion_proof(LEAVES, 0, 7) == [b, i, l_]
    assert inclusion_proof(LEAVES, 3, 7) == [c, h, l_]
    assert inclusion_proof(LEAVES, 4, 7) == [f, g, k]
    assert inclusion_proof(LEAVES, 6, 7) == [j, k]
    assert consistency_proof(LEAVES, 3, 7) == [c, d, h, l_]
    assert consistency_proof(LEAVES, 4, 7) == [l_]
    assert consistency_proof(LEAVES, 6, 7) == [j, g, k]


def test_compact_tree_matches_reference_and_stays_logarithmic() -> None:
    tree = CompactTree()
    assert tree.root() == EMPTY_ROOT
    for n, leaf in enumerate(LEAVES * 3, start=1):
        tree.append(leaf)
        assert tree.size == n
        assert tree.root() == reference_root((LEAVES * 3)[:n])
        assert len(tree._stack) == bin(n).count("1")
    twin = tree.copy()
    twin.append(LEAVES[0])
    assert tree.size == 60 and twin.size == 61


def test_every_inclusion_proof_in_trees_up_to_20() -> None:
    for size in range(1, 21):
        root = reference_root(LEAVES[:size])
        for index in range(size):
            proof = inclusion_proof(LEAVES, index, size)
            assert verify_inclusion(LEAVES[index], index, size, proof, root)
            # (the size is bound by the signed checkpoint, not the hashes: a path can be valid
            # for two sizes whose trees have the same shape above the leaf)
            assert not verify_inclusion(LEAVES[index], index, 2 * size + 1, proof, root)
            assert not verify_inclusion(LEAVES[(index + 1) % 20], index, size, proof, root)
            if size > 1:
                assert not verify_inclusion(LEAVES[index], (index + 1) % size, size, proof, root)
                assert not verify_inclusion(LEAVES[index], index, size, proof[:-1], root)
            assert not verify_inclusion(LEAVES[index], index, size, [*proof, root], root)


def test_every_consistency_proof_in_trees_up_to_20() -> None:
    for new in range(0, 21):
        new_root = reference_root(LEAVES[:new])
        for old in range(0, new + 1):
            old_root = reference_root(LEAVES[:old])
            proof = consistency_proof(LEAVES, old, new)
            assert verify_consistency(old, new, old_root, new_root, proof), (old, new)
            if 0 < old < new:
                other = reference_root(LEAVES[1 : old + 1])
                assert not verify_consistency(old, new, other, new_root, proof)
                assert not verify_consistency(old, new, old_root, old_root, proof)
                assert not verify_consistency(old, new, old_root, new_root, proof[:-1])
                assert not verify_consistency(old, new, old_root, new_root, [])
                assert not verify_consistency(old + 1, new, old_root, new_root, proof)
            assert not verify_consistency(new, old, new_root, old_root, proof) or old == new


def test_any_changed_byte_fails_inclusion() -> None:
    size, index = 13, 6
    root = root_of(LEAVES[:size])
    proof = inclusion_proof(LEAVES, index, size)
    for n, node in enumerate(proof):
        for at in range(32):
            bad = [*proof[:n], flip(node, at), *proof[n + 1:]]
            assert not verify_inclusion(LEAVES[index], index, size, bad, root)
    for at in range(32):
        assert not verify_inclusion(LEAVES[index], index, size, proof, flip(root, at))
        assert not verify_inclusion(flip(LEAVES[index], at), index, size, proof, root)


def test_any_changed_byte_fails_consistency() -> None:
    old, new = 7, 19
    old_root, new_root = root_of(LEAVES[:old]), root_of(LEAVES[:new])
    proof = consistency_proof(LEAVES, old, new)
    for n, node in enumerate(proof):
        for at in range(32):
            bad = [*proof[:n], flip(node, at), *proof[n + 1:]]
            assert not verify_consistency(old, new, old_root, new_root, bad)
    for at in range(32):
        assert not verify_consistency(old, new, flip(old_root, at), new_root, proof)
        assert not verify_consistency(old, new, old_root, flip(new_root, at), proof)


def test_equal_and_empty_sizes() -> None:
    root = root_of(LEAVES[:5])
    assert verify_consistency(5, 5, root, root, [])
    assert not verify_consistency(5, 5, root, root_of(LEAVES[:4]), [])
    assert not verify_consistency(5, 5, root, root, [root])
    assert verify_consistency(0, 5, EMPTY_ROOT, root, [])
    assert not verify_consistency(0, 5, EMPTY_ROOT, root, [root])
    assert not verify_inclusion(LEAVES[0], 0, 0, [], EMPTY_ROOT)
    assert not verify_inclusion(LEAVES[0], 0, 1, [b"short"], LEAVES[0])
    with pytest.raises(ValueError):
        inclusion_proof(LEAVES, 5, 5)
    with pytest.raises(ValueError):
        consistency_proof(LEAVES, 6, 5)
