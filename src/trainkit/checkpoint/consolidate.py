"""The full weights of a sharded (FSDP) checkpoint as one ``model.safetensors``, in one process, without GPUs.

Every file of the model part is checked against the checkpoint's manifest first; the shards are
then read with torch.distributed.checkpoint (weights-only, ``safe_dcp.py``) into full tensors and
written as ``save_model`` writes them (tied parameters once). A checkpoint whose model part is
already whole (``save_only_model``) is copied the same way. From a shell::

    python -m trainkit.checkpoint.consolidate output/checkpoint-500 output/merged
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from trainkit.checkpoint.io import PathLike
from trainkit.checkpoint.layout import PART_MODEL
from trainkit.checkpoint.safe_dcp import read_sharded
from trainkit.checkpoint.sharded_io import TIED_KEY, SavedShards, ShardedCheckpointIO
from trainkit.checkpoint.weights import save_weights_file

__all__ = ["consolidate_checkpoint", "main"]


def consolidate_checkpoint(checkpoint: PathLike, output_dir: PathLike, safe_serialization: bool = True) -> Path:
    """Write the model of ``checkpoint`` as ``output_dir/model.safetensors`` (or ``pytorch_model.bin``); return it."""
    model = ShardedCheckpointIO().load(checkpoint, parts=[PART_MODEL])[PART_MODEL]
    if isinstance(model, SavedShards):
        content = read_sharded(model.folder)
        state = content[model.key]
        for alias, owner in content.get(TIED_KEY, {}).items():
            state[alias] = state[owner]  # the same tensor: written once, recorded as an alias
    else:
        state = model
    return save_weights_file(state, Path(output_dir), safe_serialization=safe_serialization)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m trainkit.checkpoint.consolidate", description="The full weights of a sharded checkpoint."
    )
    parser.add_argument("checkpoint", help="a checkpoint-<step> folder")
    parser.add_argument("output_dir", help="where model.safetensors is written (created if needed)")
    parser.add_argument("--torch", action="store_true", help="write pytorch_model.bin instead of safetensors")
    options = parser.parse_args(argv)
    path = consolidate_checkpoint(options.checkpoint, options.output_dir, safe_serialization=not options.torch)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
