"""Safetensors checkpoints read one tensor (or the kept slices of one) at a time, and written
the same way.

A checkpoint is one ``.safetensors`` file or a directory of shards with the
``*.safetensors.index.json`` that maps each tensor to its shard (the layout transformers'
``save_pretrained`` writes). Each read opens the shard, copies the requested slices out of
the memory map and closes it again, so the pages it touched are released: memory follows
the tensor being processed, never the shard or the model.

The writer streams too: a safetensors file is an 8-byte header length, a JSON header with
every tensor's dtype, shape and byte range, then the raw bytes. The shapes after pruning are
known before any weight is read, so the header is written first and each tensor's bytes are
appended as it is produced, then dropped.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ..apply.shrink import cut
from ..errors import ConfigError
from ..jsonfile import read_json

INDEX_SUFFIX = ".safetensors.index.json"
MAX_INDEX_BYTES = 64 << 20  # a 70B model's index is ~100 KiB
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def is_sharded(path: str | os.PathLike) -> bool:
    """A directory of shards or an index file (not one ``.safetensors`` file)."""
    return Path(path).is_dir() or str(path).endswith(".index.json")


class Checkpoint:
    """Where each tensor of a safetensors checkpoint lives, and reads of its kept slices."""

    def __init__(self, root: Path, files: dict[str, str], source: str) -> None:
        self.root = root
        self.files = files          # tensor name -> shard file name in ``root``
        self.source = source        # what the user named, for error messages
        self.bytes_read = 0         # bytes of tensor data copied out of the shards so far
        self.headers: dict[str, tuple[tuple[int, ...], str]] = {}
        for shard in self.shards():
            with self._open(shard) as f:
                for name in f.keys():
                    piece = f.get_slice(name)
                    self.headers[name] = (tuple(piece.get_shape()), piece.get_dtype())
        missing = sorted(set(files) - set(self.headers))
        if missing:
            raise ConfigError(f"the index maps '{missing[0]}' to a shard that does not hold it", path=source,
                              key="weights")

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Checkpoint":
        """A ``.safetensors`` file, an index JSON, or a directory holding one of either."""
        path = Path(path)
        if path.is_dir():
            indexes = sorted(path.glob(f"*{INDEX_SUFFIX}"))
            singles = sorted(path.glob("*.safetensors"))
            if len(indexes) == 1:
                path = indexes[0]
            elif not indexes and len(singles) == 1:
                path = singles[0]
            else:
                raise ConfigError(f"expected one *{INDEX_SUFFIX} (or a single .safetensors file) in the directory, "
                                  f"found {len(indexes)} index files and {len(singles)} .safetensors files",
                                  path=str(path), key="weights")
        if str(path).endswith(".index.json"):
            return cls(path.parent, _read_index(path), str(path))
        if path.suffix != ".safetensors":
            raise ConfigError("expected a .safetensors file, an index JSON or a directory of shards",
                              path=str(path), key="weights")
        with _safe_open(path) as f:
            names = list(f.keys())
        return cls(path.parent, {name: path.name for name in names}, str(path))

    def shards(self) -> list[str]:
        """Shard file names, in the order their tensors first appear in the index."""
        return list(dict.fromkeys(self.files.values()))

    def names(self, shard: str) -> list[str]:
        return sorted(name for name, file in self.files.items() if file == shard)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.headers[name][0]

    def dtype(self, name: str) -> str:
        return self.headers[name][1]

    def _open(self, shard: str):
        return _safe_open(self.root / shard)

    def read(self, name: str, keep: Mapping[int, np.ndarray] | None = None) -> torch.Tensor:
        """Tensor ``name``, or only the positions ``keep[dim]`` marks along each pruned dim.

        Only the dim that keeps the smallest fraction is read through safetensors' lazy
        slicing; the others are selected from that (already smaller) copy. A tensor with a
        2-D mask (a row per index of dim 0: stacked experts, a grouped conv's columns) is read
        whole and its per-row positions taken first, as apply takes them.
        """
        keep = {dim: mask for dim, mask in (keep or {}).items() if not mask.all()}
        lazy = keep and all(mask.ndim == 1 for mask in keep.values())  # a row per index of dim 0: whole
        first = min(keep, key=lambda d: keep[d].mean()) if lazy else None
        with self._open(self.files[name]) as f:
            if first is None:
                tensor = f.get_tensor(name)
            else:
                index = (slice(None),) * first + (keep[first].nonzero()[0].tolist(),)
                tensor = f.get_slice(name)[index]
        tensor = cut(tensor, {dim: mask for dim, mask in keep.items() if dim != first})
        self.bytes_read += tensor.numel() * tensor.element_size()
        return tensor

    def load_all(self) -> dict[str, torch.Tensor]:
        """Every tensor, in memory (for a model small enough to hold)."""
        return {name: self.read(name) for name in self.files}


def _safe_open(path: Path):
    try:
        from safetensors import safe_open
    except ImportError:
        raise ConfigError("reading .safetensors needs safetensors: pip install safetensors", path=str(path),
                          key="weights") from None
    if not path.is_file():
        raise ConfigError("no such file", path=str(path), key="weights")
    try:
        return safe_open(str(path), framework="pt")
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own kinds for corrupt files
        raise ConfigError(f"not a safetensors file: {str(exc).splitlines()[0][:300]}", path=str(path),
                          key="weights") from None


def _read_index(path: Path) -> dict[str, str]:
    """The ``weight_map`` of an index JSON, checked: names to plain file names in its folder."""
    index = read_json(path, MAX_INDEX_BYTES, "safetensors index", "weights")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ConfigError("expected a JSON object with a non-empty `weight_map`", path=str(path), key="weights")
    for name, file in weight_map.items():
        if not (isinstance(file, str) and file.endswith(".safetensors") and Path(file).name == file
                and file not in (".", "..")):
            raise ConfigError(f"maps '{name}' to {file!r}: expected a .safetensors file name in the index's "
                              "own folder", path=str(path), key=f"weight_map.{name}")
    return weight_map


def write_safetensors(path: Path, entries: Sequence[tuple[str, Sequence[int], str]],
                      produce: Callable[[str], torch.Tensor], metadata: Mapping[str, str] | None = None) -> int:
    """Write ``entries`` (name, shape, safetensors dtype) to ``path``, asking ``produce(name)``
    for each tensor in turn; only one tensor is in memory at a time. Returns the data bytes.

    The file appears atomically (written beside it, then renamed).
    """
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, shape, dtype in entries:
        size = int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=DTYPES[dtype]).element_size()
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for name, shape, dtype in entries:
                tensor = produce(name)
                if tuple(tensor.shape) != tuple(shape) or tensor.dtype != DTYPES[dtype]:
                    raise RuntimeError(f"'{name}' came out as {tuple(tensor.shape)} {tensor.dtype}, "
                                       f"expected {tuple(shape)} {dtype}")
                f.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())
                del tensor
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return offset


def write_index(path: Path, files: Mapping[str, str], total_size: int) -> None:
    """The index transformers reads: total data bytes and each tensor's shard."""
    from ..recipe import write_atomic

    index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(files.items()))}
    write_atomic(path, json.dumps(index, indent=2) + "\n")


def shard_metadata(checkpoint: Checkpoint, shard: str) -> dict[str, str] | None:
    with checkpoint._open(shard) as f:
        return f.metadata()


__all__ = ["Checkpoint", "INDEX_SUFFIX", "is_sharded", "shard_metadata", "write_index", "write_safetensors"]
