"""Hypothesis: truncating or flipping bytes of any file of a checkpoint never loads changed values silently.

Loading raises CheckpointError naming the damaged file (never a raw pickle/struct/JSON error),
or, when the damage changed nothing that is read (whitespace of the manifest), returns the
original values. With the manifest rewritten to match the damage (so the parsers see it), the
only error that may come out is still a CheckpointError naming the file.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.checkpoint_fixtures import assert_same, full_state
from trainkit.checkpoint import CheckpointError, SafetensorsCheckpointIO, TorchCheckpointIO, get_last_checkpoint
from trainkit.checkpoint.manifest import FileEntry, file_digest, read_manifest, write_manifest

IOS = {"safetensors": SafetensorsCheckpointIO, "torch": TorchCheckpointIO}


@pytest.fixture(scope="module")
def pristine():
    """One saved checkpoint per IO, with the state it holds."""
    root = Path(tempfile.mkdtemp(prefix="corruption-"))
    state = full_state()
    for name, io_class in IOS.items():
        io_class().save(state, root / name / "checkpoint-2")
    yield root, state
    shutil.rmtree(root)


def _load(io, folder: Path):
    """(state, None) when the checkpoint loads, (None, the CheckpointError) when it does not."""
    try:
        return io.load(folder), None
    except CheckpointError as err:
        return None, err


_damage = st.tuples(
    st.sampled_from(["truncate", "flip"]),
    st.floats(0, 1, exclude_max=True),  # where, as a fraction of the file
    st.integers(1, 255),  # the xor mask of a flipped byte
)


def _damaged_copy(pristine_root: Path, io_name: str, file_index: int, damage) -> tuple[Path, str]:
    work = Path(tempfile.mkdtemp(prefix="damaged-"))
    folder = work / "checkpoint-2"
    shutil.copytree(pristine_root / io_name / "checkpoint-2", folder)
    files = sorted(p.name for p in folder.iterdir())
    name = files[file_index % len(files)]
    data = bytearray((folder / name).read_bytes())
    kind, where, mask = damage
    position = int(where * len(data))
    if kind == "truncate":
        data = data[:position]
    else:
        data[position] ^= mask
    (folder / name).write_bytes(bytes(data))
    return folder, name


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(sorted(IOS)), st.integers(0, 50), _damage)
def test_damage_is_reported_by_file_name(pristine, io_name, file_index, damage):
    root, state = pristine
    folder, name = _damaged_copy(root, io_name, file_index, damage)
    try:
        io = IOS[io_name]()
        loaded, error = _load(io, folder)
        if error is not None:
            assert name in str(error), str(error)
        else:
            assert name == "manifest.json", f"{name} was damaged and loaded without error"
            assert_same(loaded, state)
        if damage[0] == "truncate":
            assert not io.exists(folder)
            assert get_last_checkpoint(folder.parent) is None
    finally:
        shutil.rmtree(folder.parent)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(sorted(IOS)), st.integers(0, 50), _damage)
def test_parsers_raise_only_checkpoint_errors_on_damaged_files(pristine, io_name, file_index, damage):
    """The manifest is made to agree with the damage, so each parser reads the damaged bytes."""
    root, _ = pristine
    folder, name = _damaged_copy(root, io_name, file_index, damage)
    try:
        if name != "manifest.json":
            manifest = read_manifest(folder)
            manifest.files[name] = FileEntry((folder / name).stat().st_size, file_digest(folder / name))
            write_manifest(folder, manifest)
        _, error = _load(IOS[io_name](), folder)
        assert error is None or name in str(error), str(error)
    finally:
        shutil.rmtree(folder.parent)
