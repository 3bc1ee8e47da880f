"""Built-in models that need no download: ``builtin:tiny``.

``builtin:tiny`` is a ~0.5 MB ``LlamaForCausalLM`` with random (seeded) weights and a byte-level
tokenizer. It is generated deterministically on first use, saved with ``save_pretrained`` into the
user cache and loaded afterwards with ``from_pretrained``, so that
``llem run --model builtin:tiny --dataset synthetic`` works offline on CPU on a fresh machine.

The marker written last into the folder lists every file's size and SHA-256; a cached folder
whose files do not match it (truncated by a full disk, edited, partly deleted) or whose marker
has no such list is set aside and built again, with a note on stderr.

torch, transformers and tokenizers are imported lazily inside the builder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from llenergymeasure.exceptions import ConfigError

logger = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
"""Model names starting with this prefix are built-in models."""

LLEM_CACHE_ENV = "LLEM_CACHE_DIR"
"""Environment variable overriding the llem cache root (default: the platform user cache dir)."""

MARKER_FILE = "llem_builtin.json"
"""Written last into a built model folder; a folder without it is incomplete."""

_TINY_VERSION = "tiny-v1"
_TINY_SEED = 1234

# Token ids of the tiny tokenizer: 3 special tokens, then the 256 byte symbols.
PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<pad>", "<s>", "</s>"
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
_N_SPECIAL = 3
TINY_VOCAB_SIZE = _N_SPECIAL + 256

TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)

# name (after the prefix) -> cache folder name
_BUILTIN_MODELS: dict[str, str] = {"tiny": _TINY_VERSION}

BUILTIN_MODELS: tuple[str, ...] = tuple(BUILTIN_PREFIX + k for k in _BUILTIN_MODELS)
"""Every valid built-in model name, e.g. ``("builtin:tiny",)``."""


def is_builtin_model(name: str) -> bool:
    """True if ``name`` refers to a built-in model (``builtin:...``)."""
    return name.startswith(BUILTIN_PREFIX)


def llem_cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The llem cache root: ``cache_dir``, else ``$LLEM_CACHE_DIR``, else the user cache dir."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(LLEM_CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("llenergymeasure"))


def resolve_builtin_model(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the local HF folder of built-in model ``name``, building it on first use.

    The folder is ``<cache root>/models/<version>``; see :func:`llem_cache_root`.
    Raises ``ConfigError`` for an unknown built-in name.
    """
    key = name[len(BUILTIN_PREFIX) :] if is_builtin_model(name) else name
    if key not in _BUILTIN_MODELS:
        raise ConfigError(
            f"unknown built-in model {name!r}; valid built-in models: {', '.join(BUILTIN_MODELS)}",
            hint="use --model builtin:tiny for the built-in random-weight test model",
        )
    target = llem_cache_root(cache_dir) / "models" / _BUILTIN_MODELS[key]
    if (target / MARKER_FILE).is_file():
        problem = cache_problem(target)
        if problem is None:
            return target
        logger.warning(
            "the cached %s at %s is damaged (%s); building it again", name, target, problem
        )
        _set_aside(target)
    return _build_atomically(target, _write_tiny_model)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _inventory(folder: Path) -> dict[str, dict[str, object]]:
    """Size and SHA-256 of every file of a model folder (the marker excluded)."""
    return {
        str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": _file_digest(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MARKER_FILE
    }


def cache_problem(folder: Path) -> str | None:
    """Why the built model in ``folder`` cannot be trusted, or None when every file matches
    the inventory its marker holds."""
    try:
        marker = json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"unreadable marker: {exc}"
    files = marker.get("files") if isinstance(marker, dict) else None
    if not isinstance(files, dict) or not files:
        return "the marker lists no files (built by an older llem)"
    for name, expected in files.items():
        path = folder / name
        try:
            size = path.stat().st_size
        except OSError:
            return f"{name} is missing"
        if not isinstance(expected, dict) or size != expected.get("size"):
            return f"{name} has {size} bytes, expected {expected.get('size')}"
        try:
            if _file_digest(path) != expected.get("sha256"):
                return f"{name} does not match its checksum"
        except OSError as exc:
            return f"{name} is unreadable: {exc}"
    return None


def _set_aside(target: Path) -> None:
    """Move a damaged model folder out of the way (then delete it); a concurrent builder may
    have replaced it already."""
    trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.broken-", dir=target.parent))
    with contextlib.suppress(OSError):
        target.rename(trash / target.name)
    shutil.rmtree(trash, ignore_errors=True)


def _build_atomically(target: Path, writer: Callable[[Path], None]) -> Path:
    """Write a model folder into a temp dir next to ``target``, then rename it into place.

    If another process wins the race, its folder is kept and ours is discarded.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not (target / MARKER_FILE).is_file():
        # Leftover from a non-atomic copy or manual tampering: move it aside, then rebuild.
        _set_aside(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        writer(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / MARKER_FILE).is_file():
                raise
            # Lost the race to a concurrent builder: its (identical) folder is used.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _byte_symbols() -> list[str]:
    """The 256 GPT-2 byte-level symbols, in byte order 0..255."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping: dict[int, int] = {b: b for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = 256 + extra
            extra += 1
    return [chr(mapping[b]) for b in range(256)]


def build_tiny_tokenizer() -> object:
    """The byte-level tokenizer of ``builtin:tiny`` (a ``PreTrainedTokenizerFast``).

    BPE over the 256 byte symbols with no merges: every UTF-8 byte is one token, so any text
    round-trips exactly. ``<s>`` is prepended when special tokens are added; padding is left.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD_TOKEN: PAD_ID, BOS_TOKEN: BOS_ID, EOS_TOKEN: EOS_ID}
    for i, sym in enumerate(_byte_symbols()):
        vocab[sym] = _N_SPECIAL + i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, BOS_ID)],
    )
    tok.add_special_tokens([PAD_TOKEN, BOS_TOKEN, EOS_TOKEN])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="left",
        model_max_length=2048,
        chat_template=TINY_CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def _write_tiny_model(folder: Path) -> None:
    """Build ``builtin:tiny`` deterministically and ``save_pretrained`` it into ``folder``."""
    import torch
    import transformers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    transformers.utils.logging.disable_progress_bar()

    config = LlamaConfig(
        vocab_size=TINY_VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_TINY_SEED)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID, do_sample=False
    )
    model.save_pretrained(folder)
    build_tiny_tokenizer().save_pretrained(folder)  # type: ignore[attr-defined]
    from llenergymeasure.files import write_json

    marker = {
        "name": "builtin:tiny",
        "version": _TINY_VERSION,
        "seed": _TINY_SEED,
        "files": _inventory(folder),
    }
    write_json(folder / MARKER_FILE, marker, base=folder)
