"""The one reader of config YAML files (experiment, study, ``base:``, user config).

What it guarantees, whatever the file:

- it is a regular file (not a FIFO, a device such as ``/dev/zero``, or a directory), of at
  most ``CONFIG_FILE_MAX_BYTES``, checked before reading and again while reading (a file that
  grows in between is caught);
- a key written twice in any mapping, at any depth, is an error that names the key and both
  lines (PyYAML keeps the last value silently);
- ``1e-9`` and ``1e3`` are numbers, as in YAML 1.2 and JSON (PyYAML's YAML 1.1 resolver reads
  them as strings);
- aliases cannot expand to more than ``YAML_MAX_NODES`` nodes or refer to themselves, and
  nesting is at most ``YAML_MAX_DEPTH`` deep.

Only safe YAML tags are constructed (``yaml.SafeLoader`` underneath). Every problem is a
``ConfigError`` naming the file.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from llenergymeasure.config.bounds import CONFIG_FILE_MAX_BYTES, YAML_MAX_DEPTH, YAML_MAX_NODES
from llenergymeasure.exceptions import ConfigError

__all__ = [
    "ConfigLoader",
    "DuplicateKeyError",
    "YamlDocument",
    "parse_yaml",
    "read_config_bytes",
    "read_yaml_file",
]

KeyPath = tuple[str | int, ...]

_FLOAT_TAG = "tag:yaml.org,2002:float"
# YAML 1.2 core-schema floats (an exponent without a dot, an unsigned exponent), plus the
# YAML 1.1 forms PyYAML already reads (underscores, sexagesimal), so nothing that was a number
# stops being one.
_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)

_KIND = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A key written twice in one mapping."""


class ConfigLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses duplicate keys and reads ``1e-9`` as a float."""

    # PyYAML's resolvers minus its YAML 1.1 float (re-added below); a class attribute, as
    # PyYAML keeps them
    yaml_implicit_resolvers = {  # noqa: RUF012
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _FLOAT_TAG]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` merges are allowed to be overridden by later keys
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key fails in the base class with its own message
            line = key_node.start_mark.line + 1
            if first is not None:
                raise DuplicateKeyError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"duplicate key {key!r}: first on line {first}, again on line {line}",
                    key_node.start_mark,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


ConfigLoader.add_implicit_resolver(_FLOAT_TAG, _FLOAT_RE, list("-+0123456789."))


@dataclass(frozen=True)
class YamlDocument:
    """A parsed config file: its data, its text and the line of every key path."""

    data: Any
    text: str
    lines: dict[KeyPath, int]


def read_config_bytes(path: str | Path, *, limit: int = CONFIG_FILE_MAX_BYTES) -> bytes:
    """The bytes of the regular file at ``path`` (at most ``limit``); ``ConfigError`` otherwise.

    The file is opened without blocking (a FIFO without a writer does not hang), its type and
    size are checked on the open descriptor, and at most ``limit + 1`` bytes are ever read.
    """
    p = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(p, flags)
    except FileNotFoundError:
        raise ConfigError(
            f"config file not found: {p}", hint="check the path (relative to the cwd)"
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"config path is a directory, not a YAML file: {p}") from None
    except OSError as exc:
        raise ConfigError(f"cannot open config file {p}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = _KIND.get(stat.S_IFMT(info.st_mode), "not a regular file")
            raise ConfigError(
                f"config path {p} is {kind}, not a regular YAML file",
                hint="give the path of a YAML file",
            )
        if info.st_size > limit:
            raise _too_big(p, limit, info.st_size)
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 16, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:  # grew while being read
            raise _too_big(p, limit, None)
        return b"".join(chunks)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _too_big(path: Path, limit: int, size: int | None) -> ConfigError:
    got = f" ({size:,} bytes)" if size is not None else ""
    return ConfigError(
        f"config file {path} is larger than {limit // 1024:,} KiB{got}",
        hint="a config file holds settings, not data: put prompts in a JSONL dataset",
    )


def read_yaml_file(path: str | Path) -> YamlDocument:
    """Read and parse the config YAML at ``path`` (see the module docstring)."""
    raw = read_config_bytes(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"config file {path} is not UTF-8 text (line {line}: {exc.reason})",
            hint="save the file as UTF-8",
        ) from None
    return parse_yaml(text, source=str(path))


def parse_yaml(text: str, *, source: str = "<string>") -> YamlDocument:
    """Parse one YAML document with ``ConfigLoader`` and the alias and depth limits."""
    loader = ConfigLoader(text)
    try:
        try:
            node = loader.get_single_node()
            lines: dict[KeyPath, int] = {}
            if node is not None:
                _check_node_graph(node, source)
                lines = node_lines(node)  # before construction flattens `<<` merges
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except RecursionError:
        raise ConfigError(
            f"{source}: the YAML is nested too deeply (at most {YAML_MAX_DEPTH} levels)"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if isinstance(exc, DuplicateKeyError):
            raise ConfigError(
                f"{where}: {problem}",
                hint="each key may appear once per mapping; delete or merge one of them",
            ) from None
        raise ConfigError(
            f"invalid YAML in {where}: {problem}",
            hint="check indentation and that every 'key: value' pair has a space after ':'",
        ) from exc
    return YamlDocument(data=data, text=text, lines=lines)


def _check_node_graph(root: yaml.Node, source: str) -> None:
    """Refuse self-referencing aliases, deep nesting and alias expansions past the limit."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        if depth > YAML_MAX_DEPTH:
            raise ConfigError(
                f"{source}: the YAML is nested more than {YAML_MAX_DEPTH} levels deep "
                f"(line {node.start_mark.line + 1})"
            )
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in on_path:
            raise ConfigError(
                f"{source}: an alias refers to a node that contains it "
                f"(line {node.start_mark.line + 1})",
                hint="YAML anchors (&name) and aliases (*name) must not be recursive",
            )
        on_path.add(key)
        total = 1
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                total += size(k, depth + 1) + size(v, depth + 1)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                total += size(item, depth + 1)
        on_path.discard(key)
        if total > YAML_MAX_NODES:
            raise ConfigError(
                f"{source}: the YAML expands to more than {YAML_MAX_NODES:,} values "
                "(aliases repeat what they point to)",
                hint="a config file holds settings: avoid aliases of aliases",
            )
        sizes[key] = total
        return total

    size(root, 0)


def node_lines(root: yaml.Node) -> dict[KeyPath, int]:
    """Map each key path of a composed document to its 1-based line number."""
    lines: dict[KeyPath, int] = {}

    def walk(node: yaml.Node, prefix: KeyPath, depth: int) -> None:
        if depth > YAML_MAX_DEPTH:
            return
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = (*prefix, str(key_node.value))
                lines.setdefault(key, key_node.start_mark.line + 1)
                walk(value_node, key, depth + 1)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                item_key = (*prefix, i)
                lines.setdefault(item_key, item.start_mark.line + 1)
                walk(item, item_key, depth + 1)

    walk(root, (), 0)
    return lines
