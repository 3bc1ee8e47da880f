"""GGUF model files (llama.cpp's format) as ``model:``: how a config names one, and what its
header says.

A config names a GGUF file in one of two ways (``docs/guides/engines.md``, "GGUF models"):

- ``model: path/to/model.gguf``: a file on this machine (any ``model:`` ending in ``.gguf``);
- ``model: <local folder or hub repository>`` with ``passthrough_kwargs.gguf_file: NAME``:
  transformers' own ``from_pretrained(folder, gguf_file=NAME)`` form, for repositories that
  hold several quantisations of one model.

The header (metadata and tensor table, no tensor data) is parsed here with ``struct`` over a
memory map, not with the ``gguf`` package's ``GGUFReader``: that reader makes a numpy view of
every element of every metadata array, which took 1.6-1.8 s for SmolLM2-135M's 49k-token
vocabulary on the 2-core CI machine, grows with the vocabulary and would be paid by every
pre-flight and dry run; a truncated file makes it fail with a numpy reshape message rather than
"truncated"; and ``--dry-run`` can then read a GGUF file without the package. The format is
small and stable (versions 2 and 3, little-endian, since 2023). The ``gguf`` package is still
used, when installed, for ggml's table of block sizes: with it each tensor's exact byte size is
known, so a file cut short inside its tensor data is caught (without it only tensors that start
past the end are); transformers' GGUF loader needs the package anyway, and vLLM depends on it.

Nothing here imports torch, transformers or numpy.
"""

from __future__ import annotations

import functools
import mmap
import os
import struct
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "GGUF_FILE_KEY",
    "GGUFError",
    "GGUFHeader",
    "GGUFModel",
    "GGUFTensor",
    "gguf_model",
    "gguf_model_problem",
    "gguf_naming_problem",
    "is_gguf_path",
    "names_gguf",
    "read_gguf_header",
]

#: The ``passthrough_kwargs`` key naming a GGUF file inside ``model:`` (transformers' name).
GGUF_FILE_KEY = "gguf_file"
GGUF_SUFFIX = ".gguf"
GGUF_MAGIC = b"GGUF"
_VERSIONS = (2, 3)  # version 1 (32-bit counts) was replaced in 2023
_DEFAULT_ALIGNMENT = 32
#: Metadata arrays of numbers longer than this are kept as their length only.
_MAX_KEPT_ARRAY = 4096

# GGUF metadata value types: fixed-size ones by struct format; 8 = string, 9 = array.
_SCALAR_FORMATS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9
# ggml types that hold plain values (name, bytes per element); quantised types come in blocks.
_PLAIN_TYPES = {0: ("F32", 4), 1: ("F16", 2), 24: ("I8", 1), 25: ("I16", 2), 26: ("I32", 4)}
_PLAIN_TYPES.update({27: ("I64", 8), 28: ("F64", 8), 30: ("BF16", 2)})


class GGUFError(ValueError):
    """A file that is not a complete, readable GGUF file; the message says what is wrong."""


@dataclass(frozen=True)
class GGUFTensor:
    """One entry of the tensor table: name, dimensions (ggml order: the fastest-moving first),
    ggml type id and offset from the start of the tensor data."""

    name: str
    dims: tuple[int, ...]
    ggml_type: int
    offset: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.dims:
            n *= d
        return n


@dataclass(frozen=True)
class GGUFHeader:
    """What a GGUF file's header says. ``metadata``: every key with its value (numbers,
    strings, arrays of numbers; an array of strings, such as the vocabulary, and a very long
    array of numbers are kept as their length). ``data_offset``: where the tensor data starts."""

    path: str
    version: int
    metadata: Mapping[str, Any]
    tensors: tuple[GGUFTensor, ...]
    data_offset: int
    file_size: int

    @property
    def architecture(self) -> str | None:
        value = self.metadata.get("general.architecture")
        return value if isinstance(value, str) else None

    @property
    def parameter_count(self) -> int:
        """The model's parameters: the sum of every tensor's element count."""
        return sum(t.n_elements for t in self.tensors)

    @property
    def tensor_data_bytes(self) -> int:
        """Bytes of tensor data in the file (the weights as stored, alignment padding included)."""
        return max(0, self.file_size - self.data_offset)

    def arch_int(self, key: str) -> int | None:
        """``<architecture>.<key>`` as a positive integer (the largest entry of a per-layer
        array), or None when absent."""
        value = self.metadata.get(f"{self.architecture}.{key}")
        if isinstance(value, list):
            value = max(value, default=None)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            return None
        return value

    @property
    def layers(self) -> int | None:
        return self.arch_int("block_count")

    @property
    def context_length(self) -> int | None:
        """The model's maximum sequence length (``<arch>.context_length``)."""
        return self.arch_int("context_length")

    @property
    def kv_heads(self) -> int | None:
        return self.arch_int("attention.head_count_kv") or self.arch_int("attention.head_count")

    @property
    def head_dim(self) -> int | None:
        explicit = self.arch_int("attention.key_length")
        if explicit is not None:
            return explicit
        hidden, heads = self.arch_int("embedding_length"), self.arch_int("attention.head_count")
        return hidden // heads if hidden is not None and heads else None

    @property
    def chat_template(self) -> str | None:
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) and value else None

    def tensor_types(self) -> dict[str, int]:
        """How many tensors of each ggml type the file holds, e.g. ``{"Q4_1": 210, "F32": 61}``."""
        counts = Counter(_type_name(t.ggml_type) for t in self.tensors)
        return dict(counts.most_common())

    def summary(self) -> dict[str, Any]:
        """What a result records about the file (``effective_parameters["gguf"]``)."""
        return {
            "file": self.path,
            "architecture": self.architecture,
            "tensor_types": self.tensor_types(),
            "parameter_count": self.parameter_count,
            "tensor_data_bytes": self.tensor_data_bytes,
            "context_length": self.context_length,
        }


def is_gguf_path(name: str) -> bool:
    """Whether a ``model:`` value names a GGUF file (it ends in ``.gguf``)."""
    return name.lower().endswith(GGUF_SUFFIX) and not name.startswith("builtin:")


def names_gguf(model: str, passthrough: Mapping[str, Any] | None) -> bool:
    """Whether ``model`` (with ``passthrough_kwargs``) names a GGUF file (no file access)."""
    return is_gguf_path(model) or (passthrough or {}).get(GGUF_FILE_KEY) is not None


@dataclass(frozen=True)
class GGUFModel:
    """The GGUF file a config names. ``source`` and ``filename`` are what
    ``from_pretrained(source, gguf_file=filename)`` takes: a local folder or a hub repository,
    and the file's name in it. ``local_path``: the file on this machine (a path, or the HF
    cache's copy of a hub file), None when it is not here. ``field``: the config field that
    names the file, for messages."""

    source: str
    filename: str
    local_path: Path | None
    on_hub: bool
    field: str

    @property
    def label(self) -> str:
        return str(self.local_path) if not self.on_hub else f"{self.source}/{self.filename}"


def gguf_naming_problem(model: str, passthrough: Mapping[str, Any] | None) -> str | None:
    """A config that names a GGUF file wrongly, whatever the machine (a config rule)."""
    named = (passthrough or {}).get(GGUF_FILE_KEY)
    if named is None:
        return None
    if (
        not isinstance(named, str)
        or not is_gguf_path(named)
        or named.startswith(("/", "~"))
        or ".." in Path(named).parts
    ):
        return (
            f"passthrough_kwargs.{GGUF_FILE_KEY} must be the relative path of a .gguf file in "
            f"the folder or hub repository given as model: (got {named!r})"
        )
    if is_gguf_path(model):
        return (
            f"model: {model!r} is a GGUF file and passthrough_kwargs.{GGUF_FILE_KEY} names "
            "another: give the file once (model: path/to/file.gguf, or model: <folder or hub "
            f"repo> with {GGUF_FILE_KEY}: <name>)"
        )
    if model.startswith("builtin:"):
        return f"passthrough_kwargs.{GGUF_FILE_KEY} cannot be used with the built-in {model}"
    return None


def gguf_model(
    model: str,
    passthrough: Mapping[str, Any] | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | None = None,
    field: str = "model",
) -> GGUFModel | None:
    """The GGUF file ``model`` (with ``passthrough_kwargs``) names, or None for any other model.
    ``field``: the config field ``model`` came from (``decoder.draft_model`` for a draft).

    A hub repository's file is looked up in the HF cache (no download, no network).
    """
    if is_gguf_path(model):
        path = Path(model).expanduser()
        return GGUFModel(str(path.parent), path.name, path, on_hub=False, field=field)
    named = (passthrough or {}).get(GGUF_FILE_KEY)
    if not isinstance(named, str) or model.startswith("builtin:"):
        return None
    field = f"passthrough_kwargs.{GGUF_FILE_KEY}"
    folder = Path(model).expanduser()
    if folder.is_dir() or model.startswith(("/", "./", "../", "~")):
        return GGUFModel(str(folder), named, folder / named, on_hub=False, field=field)
    return GGUFModel(
        model, named, _cached_hub_file(model, named, revision, cache_dir), on_hub=True, field=field
    )


def _cached_hub_file(
    repo: str, filename: str, revision: str | None, cache_dir: str | None
) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo, filename, cache_dir=cache_dir, revision=revision)
    except Exception:  # an invalid repo id: the hub check reports it
        return None
    return Path(found) if isinstance(found, str) else None


def gguf_model_problem(gguf: GGUFModel) -> str | None:
    """Why the GGUF file ``gguf`` names cannot be loaded (missing, not GGUF, truncated), or
    None when it reads as a complete GGUF file or is a hub file not downloaded yet (the hub
    check covers that)."""
    if gguf.local_path is None:
        return None
    try:
        read_gguf_header(gguf.local_path)
    except GGUFError as exc:
        return f"{gguf.field}: GGUF file {str(gguf.local_path)!r} {exc}"
    return None


def read_gguf_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """The header of the GGUF file at ``path``; ``GGUFError`` saying what is wrong with it.

    Reads only the header (a memory map: the tensor data is never read). Answers are kept per
    file, size and modification time, so pre-flight, the VRAM estimate and the dry run share one
    read.
    """
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except FileNotFoundError:
        raise GGUFError("does not exist") from None
    except OSError as exc:
        raise GGUFError(f"cannot be read ({exc.strerror or exc})") from None
    if not p.is_file():
        raise GGUFError("is not a file")
    return _read_header(str(p.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _read_header(path: str, size: int, mtime_ns: int) -> GGUFHeader:
    if size < 4:
        raise GGUFError(f"is truncated: {size} bytes, too short for the GGUF magic")
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return _parse(path, mm, size)
    except OSError as exc:
        raise GGUFError(f"cannot be read ({exc.strerror or exc})") from None


class _Cursor:
    """Reads little-endian values from the mapped file; running past its end is truncation."""

    def __init__(self, buf: mmap.mmap, size: int) -> None:
        self.buf, self.size, self.pos = buf, size, 0

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise GGUFError(
                f"is truncated or damaged: {what} at byte {self.pos} runs past the end of the "
                f"file ({self.size} bytes)"
            )

    def unpack(self, fmt: str, what: str) -> Any:
        width = struct.calcsize(fmt)
        self.need(width, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += width
        return value

    def string(self, what: str) -> str:
        length = self.unpack("<Q", what)
        self.need(length, what)
        raw = self.buf[self.pos : self.pos + length]
        self.pos += length
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise GGUFError(f"is damaged: {what} is not UTF-8 text") from None

    def skip_strings(self, count: int, what: str) -> None:
        self.need(8 * count, what)  # every string takes at least its 8-byte length
        for _ in range(count):
            length = self.unpack("<Q", what)
            self.need(length, what)
            self.pos += length

    def value(self, kind: int, key: str) -> Any:
        what = f"the value of {key!r}"
        if kind in _SCALAR_FORMATS:
            return self.unpack(_SCALAR_FORMATS[kind], what)
        if kind == _STRING:
            return self.string(what)
        if kind == _ARRAY:
            item = self.unpack("<I", what)
            count = self.unpack("<Q", what)
            if item == _STRING:
                self.skip_strings(count, what)
                return count
            if item not in _SCALAR_FORMATS:
                raise GGUFError(f"is damaged: {what} is an array of unknown type {item}")
            fmt = _SCALAR_FORMATS[item]
            width = struct.calcsize(fmt)
            self.need(width * count, what)
            if count > _MAX_KEPT_ARRAY:
                self.pos += width * count
                return count
            values = list(struct.unpack_from(f"<{count}{fmt[1]}", self.buf, self.pos))
            self.pos += width * count
            return values
        raise GGUFError(f"is damaged: {what} has unknown type {kind}")


def _parse(path: str, buf: mmap.mmap, size: int) -> GGUFHeader:
    magic = bytes(buf[:4])
    if magic != GGUF_MAGIC:
        raise GGUFError(f"is not a GGUF file: it starts with {magic!r}, not {GGUF_MAGIC!r}")
    cur = _Cursor(buf, size)
    cur.pos = 4
    version = cur.unpack("<I", "the version")
    if version not in _VERSIONS:
        swapped = struct.unpack("<I", struct.pack(">I", version))[0]
        if swapped in _VERSIONS:
            raise GGUFError("is a big-endian GGUF file; llem reads little-endian ones")
        raise GGUFError(f"is GGUF version {version}; llem reads versions 2 and 3")
    n_tensors = cur.unpack("<Q", "the tensor count")
    n_keys = cur.unpack("<Q", "the metadata count")
    if n_tensors > size or n_keys > size:
        raise GGUFError(
            f"is damaged: its header claims {n_tensors} tensors and {n_keys} metadata keys"
        )
    metadata: dict[str, Any] = {}
    for _ in range(n_keys):
        key = cur.string("a metadata key")
        kind = cur.unpack("<I", f"the type of {key!r}")
        metadata[key] = cur.value(kind, key)
    tensors: list[GGUFTensor] = []
    for _ in range(n_tensors):
        name = cur.string("a tensor name")
        n_dims = cur.unpack("<I", f"tensor {name!r}")
        if n_dims > 8:
            raise GGUFError(f"is damaged: tensor {name!r} claims {n_dims} dimensions")
        dims = tuple(cur.unpack("<Q", f"tensor {name!r}") for _ in range(n_dims))
        ggml_type = cur.unpack("<I", f"tensor {name!r}")
        offset = cur.unpack("<Q", f"tensor {name!r}")
        tensors.append(GGUFTensor(name, dims, ggml_type, offset))
    alignment = metadata.get("general.alignment", _DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0:
        alignment = _DEFAULT_ALIGNMENT
    data_offset = -(-cur.pos // alignment) * alignment
    header = GGUFHeader(path, version, metadata, tuple(tensors), data_offset, size)
    _check_tensor_data(header)
    return header


def _check_tensor_data(header: GGUFHeader) -> None:
    """Every tensor lies inside the file: exactly, where the ``gguf`` package gives ggml's
    block sizes; else every tensor at least starts inside it."""
    available = header.file_size - header.data_offset
    for t in header.tensors:
        nbytes = _tensor_bytes(t)
        end = t.offset + (nbytes if nbytes is not None else 1)
        if end > available:
            raise GGUFError(
                f"is truncated: tensor {t.name!r} needs bytes {t.offset}-{end} of the tensor "
                f"data, the file holds {max(available, 0)} ({header.file_size} bytes in all)"
            )


def _tensor_bytes(t: GGUFTensor) -> int | None:
    if t.ggml_type in _PLAIN_TYPES:
        return t.n_elements * _PLAIN_TYPES[t.ggml_type][1]
    sizes = _ggml_block_sizes()
    block = sizes.get(t.ggml_type)
    if block is None:
        return None
    elements, nbytes = block
    return t.n_elements // elements * nbytes


@functools.lru_cache(maxsize=1)
def _ggml_block_sizes() -> dict[int, tuple[int, int]]:
    """ggml type id -> (elements per block, bytes per block), from the ``gguf`` package;
    empty when it is not installed."""
    try:
        from gguf.constants import GGML_QUANT_SIZES
    except Exception:
        return {}
    return {int(k): (int(v[0]), int(v[1])) for k, v in GGML_QUANT_SIZES.items()}


def _type_name(ggml_type: int) -> str:
    if ggml_type in _PLAIN_TYPES:
        return _PLAIN_TYPES[ggml_type][0]
    try:
        from gguf.constants import GGMLQuantizationType

        return str(GGMLQuantizationType(ggml_type).name)
    except Exception:
        return f"ggml type {ggml_type}"
