"""Bounds that references (format 4's ``shared``) must not weaken (issue 16).

A large leaf's files must hold the bytes its record declares before a read
allocates them: with some of its files referenced from another checkpoint of
the directory, their sizes count too, so a few hostile manifest bytes cannot
make a read allocate terabytes. And the references the other processes of a
multi-process save send to process 0 are checked before they reach a manifest.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

import jaxckpt
from jaxckpt._format import manifest as _format
from jaxckpt._save import share as _share
from jaxckpt.errors import CoordinationError, CorruptCheckpointError

from _reliability import TALLY


def _manifest(path: str) -> dict:
    with open(os.path.join(path, _format.MANIFEST), "rb") as f:
        return _format.unpack_manifest(f.read(), path)


def _reference_first(d, leaf: np.ndarray, mutate=lambda record: None) -> tuple[str, dict]:
    """ckpt-1 and ckpt-2 hold ``{"big": leaf}``; ckpt-2's file of it is replaced
    by a reference to ckpt-1's (its record changed by ``mutate`` first)."""
    one, two = str(d / "ckpt-1"), str(d / "ckpt-2")
    jaxckpt.save(one, {"big": leaf})
    jaxckpt.save(two, {"big": leaf})
    m = _manifest(two)
    record = m["leaves"][0]
    assert _format.where_kind(record) == _format.WHERE_ARRAY
    rel = f"{_format.ARRAYS}/{_format.array_name(record)}/c/0/0"
    shutil.rmtree(os.path.join(two, m["data"], _format.ARRAYS))
    mutate(record)
    m["version"] = _format.SHARED_VERSION
    m["shared"] = {rel: f"ckpt-1/{_manifest(one)['data']}/{rel}"}
    with open(os.path.join(two, _format.MANIFEST), "wb") as f:
        f.write(_format.pack_manifest(m))
    return two, m


def test_local_reference_to_a_small_file_cannot_declare_a_huge_leaf(tmp_path):
    """The size check was skipped for any leaf with a referenced file: a 64 GiB
    shape over a 2.4 MB referenced file went on to allocate 64 GiB."""
    def huge(record):
        record.update(shape=[2**34], where=["array", "0", [2**34, 4], [2**34, 4]])
        record.pop("xxh3", None)

    path, _ = _reference_first(tmp_path, np.arange(600_000, dtype=np.int32), huge)
    TALLY["bad inputs tried"] += 1
    for read in (jaxckpt.verify, jaxckpt.restore):
        with pytest.raises(CorruptCheckpointError, match=r"\['big'\] declares 68719476736"):
            read(path)
    TALLY["bad inputs refused"] += 1


def test_local_references_count_toward_the_bytes_a_leaf_holds(tmp_path):
    """A 64 MiB leaf (checked) whose only file is referenced reads bit-exact."""
    leaf = np.arange(1 << 24, dtype=np.int32)
    path, _ = _reference_first(tmp_path, leaf)
    assert jaxckpt.restore(path)["big"].tobytes() == leaf.tobytes()
    jaxckpt.verify(path)


@pytest.mark.parametrize("payload", [
    "not json",
    '[]\n["a/0/c/0/0"]',  # references not a map
    '[]\n{"a/0/c/0/0": 3}',  # a key that is not a string
    '[]\n{"a/0/c/1/0": "ckpt-1/d-00/a/0/c/1/0"}',  # a file process 0 already references
    '[[0, [[0, 1]], "ab"]]\nnot json',
], ids=["garbage", "list", "not-a-string", "duplicate", "bad-references"])
def test_a_bad_part_payload_is_refused(payload):
    TALLY["bad inputs tried"] += 1
    shared = {"a/0/c/1/0": "ckpt-1/d-00/a/0/c/1/0"}
    with pytest.raises(CoordinationError, match="process 1"):
        _share.merge_part(payload, 1, [], shared, "ckpt-2")
    TALLY["bad inputs refused"] += 1


def test_a_part_payload_adds_digests_and_references():
    digests, shared = [], {"a/0/c/0/0": "ckpt-1/d-00/a/0/c/0/0"}
    theirs = {"a/0/c/1/0": "ckpt-1/d-00/a/0/c/1/0"}
    found = [(0, ((2, 4), (0, 3)), "f" * 32)]
    _share.merge_part(_share.part_payload(found, theirs), 1, digests, shared, "ckpt-2")
    assert digests == found
    assert shared == {"a/0/c/0/0": "ckpt-1/d-00/a/0/c/0/0", **theirs}
    _share.merge_part(_share.part_payload(found, {}), 2, digests, shared, "ckpt-2")
    assert len(digests) == 2 and len(shared) == 2
