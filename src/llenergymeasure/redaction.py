"""Redaction: the one step that takes credentials out of everything llem writes or prints.

What counts as a secret:

- the value of a **credential-like key** at any depth of a structure: a key is secret when one
  of its ``_``/``-``/``.``-separated words is a credential word (``password``, ``secret``,
  ``auth``, ``cookie``, ``credential``, ...), its last word is ``token``, or it contains a
  credential phrase (``api_key``, ``access_key``, ``private_key``, ``secret_key``), unless it
  has the word ``per`` (a rate): ``hf_token``, ``use_auth_token``, ``api_key``,
  ``client_secret``, ``Authorization`` are secret; ``max_tokens``, ``tokenizer_mode``,
  ``first_token_time_s`` and ``energy_per_output_token_j`` are not. A ``true``/``false`` or
  empty value is kept (it says whether a credential is used, not what it is);
- the **userinfo of any URL**, in any string: ``http://user:pass@host`` becomes
  ``http://<redacted>@host``;
- the value after a **credential flag** in an argument list or a command line: ``--api-key X``,
  ``--api-key=X``, ``--hf-token X``, ``--token X``, ``-password X`` (a flag whose name is a
  credential-like key; a following argument that is itself a flag is left alone);
- ``Authorization``/``Proxy-Authorization``/``X-Api-Key``/``Cookie`` **header values** and
  ``Bearer``/``Basic`` credentials, and ``key=value`` / ``"key": "value"`` pairs of
  credential-like keys written as text;
- every **value already found to be secret** in this process (the rules above remember what
  they redact) and the value of every environment variable with a credential-like name
  (``HF_TOKEN``, ``OPENAI_API_KEY``, ...), wherever it appears in a string, when it is at least
  ``MIN_KNOWN_SECRET_LEN`` characters long. ``remember_secret`` adds one explicitly (e.g. a key
  read from an environment variable whose name does not look like a credential).

``redact(obj)`` returns a redacted copy of a structure (dicts, lists, tuples, strings;
pydantic models are dumped first), ``redact_text(s)`` a redacted string, ``redact_json``
redacted JSON text. Every file goes through ``llenergymeasure.files``, which calls these, and
the CLI wraps its standard streams in ``RedactingStream`` (``install_stream_redaction``), so
no caller can forget it. Redaction is idempotent.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import threading
from collections.abc import Iterable
from typing import IO, Any

__all__ = [
    "MIN_KNOWN_SECRET_LEN",
    "REDACTED",
    "RedactingStream",
    "install_stream_redaction",
    "is_credential_flag",
    "is_secret_key",
    "redact",
    "redact_json",
    "redact_text",
    "remember_secret",
]

#: What a secret is replaced with in everything written or printed.
REDACTED = "<redacted>"

#: Shorter values are not replaced wherever they occur (they would hit ordinary text); the
#: structural rules redact secrets of any length where they stand.
MIN_KNOWN_SECRET_LEN = 6

_SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "passphrase",
        "secret",
        "auth",
        "authorization",
        "apikey",
        "credential",
        "credentials",
        "cookie",
    }
)
_SECRET_PHRASES = ("api_key", "access_key", "private_key", "secret_key")


@functools.lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    """Whether an option, field, header or environment variable named ``key`` carries a
    credential.

    ``token`` counts as the last word only (``hf_token``, ``access_token``; not
    ``first_token_time_s``), and a key with the word ``per`` is a rate
    (``energy_per_output_token_j``), never a credential.
    """
    normalised = key.lower().replace("-", "_").replace(".", "_")
    words = [w for w in re.split(r"_+", normalised) if w]
    if "per" in words:
        return False
    if any(phrase in normalised for phrase in _SECRET_PHRASES):
        return True
    if words and words[-1] == "token":
        return True
    return any(word in _SECRET_WORDS for word in words)


_FLAG = re.compile(r"-{1,2}([A-Za-z][A-Za-z0-9_.-]*)")


def is_credential_flag(arg: str) -> bool:
    """Whether ``arg`` is a command-line flag (``--api-key``) whose value is a credential."""
    match = _FLAG.fullmatch(arg)
    return match is not None and is_secret_key(match.group(1))


# --- values remembered as secret ----------------------------------------------------------

_KNOWN_LIMIT = 512
_known: dict[str, None] = {}  # insertion-ordered set of values found to be secret
_known_lock = threading.Lock()
_generation = 0  # bumped whenever a new secret is remembered


def remember_secret(value: object) -> None:
    """Redact ``value`` wherever it appears from now on in this process (if long enough)."""
    if not isinstance(value, str):
        return
    value = value.strip().strip("\"'")
    if len(value) < MIN_KNOWN_SECRET_LEN or _is_placeholder(value):
        return
    global _generation
    with _known_lock:
        if value in _known:
            return
        _known[value] = None
        _generation += 1
        while len(_known) > _KNOWN_LIMIT:
            del _known[next(iter(_known))]


def _is_placeholder(value: str) -> bool:
    """Whether ``value`` is (or holds) the placeholder: redacting it again changes nothing."""
    return REDACTED[:-1] in value


def _environment_secrets() -> list[str]:
    return [
        value
        for name, value in os.environ.items()
        if len(value) >= MIN_KNOWN_SECRET_LEN and is_secret_key(name)
    ]


def _known_secrets() -> list[str]:
    with _known_lock:
        values = list(_known)
    values += _environment_secrets()
    # Longest first, so a secret that contains another is replaced whole.
    return sorted(set(values), key=len, reverse=True)


# --- text rules ---------------------------------------------------------------------------

# scheme://userinfo@ ; userinfo stops at '/', '@', whitespace, quotes and brackets
_URL_USERINFO = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s/?#@\"'<>\[\]{}|\\^`]+)@"
)
_VALUE = r"(?P<value>\"[^\"\n]*\"|'[^'\n]*'|[^\s\"',;\]\)}>]+)"
# --flag=value, --flag value (value not itself a flag)
_FLAG_VALUE = re.compile(
    r"(?P<flag>(?<![\w-])-{1,2}(?P<name>[A-Za-z][A-Za-z0-9_.-]*))(?P<sep>=|[ \t]+)(?!-)" + _VALUE
)
# "--flag", "value"  /  '--flag', 'value'  (a printed argument list)
_FLAG_IN_LIST = re.compile(
    r"(?P<head>(?P<q>[\"'])-{1,2}(?P<name>[A-Za-z][A-Za-z0-9_.-]*)(?P=q)\s*,\s*(?P<q2>[\"']))"
    r"(?!-)(?P<value>[^\"'\n]*)(?P=q2)"
)
# Header lines ("Authorization: Bearer x"); "name=value" forms are key pairs below
_HEADER = re.compile(
    r"(?<![\w-])(?P<head>(?:proxy-)?authorization|x-api-key|api-key|set-cookie|cookie)"
    r"(?P<sep>[ \t]*:[ \t]*)(?P<value>[^\r\n\"']+)",
    re.IGNORECASE,
)
# "Bearer <token>" / "Basic <base64>" anywhere
_SCHEME_CREDENTIAL = re.compile(
    r"\b(?P<scheme>Bearer|Basic|bearer)(?P<sep> +)(?P<value>[A-Za-z0-9._~+/=-]{8,})"
)
# key=value (environment, repr, query strings) and "key": "value" / 'key': 'value'
_KEY_EQUALS = re.compile(r"(?P<key>(?<![\w.-])[A-Za-z_][A-Za-z0-9_.-]*)(?P<sep>=)(?!=)" + _VALUE)
_QUOTED_KEY = re.compile(
    r"(?P<head>(?P<q>[\"'])(?P<key>[A-Za-z_][A-Za-z0-9_.-]*)(?P=q)\s*:\s*)" + _VALUE
)
# YAML-style "key: value" at the start of a line
_LINE_KEY = re.compile(
    r"(?P<head>^[ \t]*-?[ \t]*(?P<key>[A-Za-z_][A-Za-z0-9_.-]*)[ \t]*:[ \t]+)"
    r"(?P<value>[^\s#][^\n]*)",
    re.MULTILINE,
)


def _strip_quotes(value: str) -> tuple[str, str]:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[0], value[1:-1]
    return "", value


def _redacted_value(value: str) -> str:
    quote, inner = _strip_quotes(value)
    if _is_placeholder(inner):
        return value
    remember_secret(inner)
    return f"{quote}{REDACTED}{quote}"


def _sub_userinfo(match: re.Match[str]) -> str:
    userinfo = match.group("userinfo")
    if not _is_placeholder(userinfo):
        remember_secret(userinfo)
        if ":" in userinfo:
            remember_secret(userinfo.split(":", 1)[1])
    return f"{match.group('scheme')}{REDACTED}@"


def _sub_flag(match: re.Match[str]) -> str:
    if not is_secret_key(match.group("name")):
        return match.group(0)
    return f"{match.group('flag')}{match.group('sep')}{_redacted_value(match.group('value'))}"


def _sub_flag_in_list(match: re.Match[str]) -> str:
    if not is_secret_key(match.group("name")) or _is_placeholder(match.group("value")):
        return match.group(0)
    remember_secret(match.group("value"))
    return f"{match.group('head')}{REDACTED}{match.group('q2')}"


def _sub_header(match: re.Match[str]) -> str:
    value = match.group("value").rstrip()
    trailing = match.group("value")[len(value) :]
    if _is_placeholder(value):
        return match.group(0)
    scheme = re.match(r"(?i)(bearer|basic|token|digest)\s+", value)
    if scheme:
        remember_secret(value[len(scheme.group(0)) :])
        return f"{match.group('head')}{match.group('sep')}{scheme.group(0)}{REDACTED}{trailing}"
    remember_secret(value)
    return f"{match.group('head')}{match.group('sep')}{REDACTED}{trailing}"


def _sub_scheme_credential(match: re.Match[str]) -> str:
    value = match.group("value")
    if _is_placeholder(value) or (value.isalpha() and value.islower()):  # "Basic settings": prose
        return match.group(0)
    remember_secret(match.group("value"))
    return f"{match.group('scheme')}{match.group('sep')}{REDACTED}"


def _sub_key_equals(match: re.Match[str]) -> str:
    if not is_secret_key(match.group("key")):
        return match.group(0)
    return f"{match.group('key')}{match.group('sep')}{_redacted_value(match.group('value'))}"


def _sub_quoted_key(match: re.Match[str]) -> str:
    if not is_secret_key(match.group("key")):
        return match.group(0)
    return f"{match.group('head')}{_redacted_value(match.group('value'))}"


def _sub_line_key(match: re.Match[str]) -> str:
    if not is_secret_key(match.group("key")):
        return match.group(0)
    value = match.group("value").rstrip()
    if value.startswith(("{", "[", "|", ">")) or _is_placeholder(value):
        return match.group(0)  # a nested block (its own lines are checked) or done already
    return f"{match.group('head')}{_redacted_value(value)}"


def redact_text(text: str) -> str:
    """``text`` with every secret the module docstring lists replaced by ``REDACTED``."""
    return _redact_text(text, _known_secrets()) if text else text


def _redact_text(text: str, secrets: list[str]) -> str:
    """``redact_text`` with the known secrets given (computed once per structure)."""
    if not text:
        return text
    generation = _generation
    if ":" in text or "=" in text or "-" in text:  # every pattern but bare credentials needs one
        text = _URL_USERINFO.sub(_sub_userinfo, text)
        text = _FLAG_IN_LIST.sub(_sub_flag_in_list, text)
        text = _FLAG_VALUE.sub(_sub_flag, text)
        text = _HEADER.sub(_sub_header, text)
        text = _QUOTED_KEY.sub(_sub_quoted_key, text)
        text = _KEY_EQUALS.sub(_sub_key_equals, text)
        text = _LINE_KEY.sub(_sub_line_key, text)
    if "earer" in text or "Basic" in text:
        text = _SCHEME_CREDENTIAL.sub(_sub_scheme_credential, text)
    if generation != _generation:  # this text held secrets of its own: replace them everywhere
        secrets = _known_secrets()
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


# --- structures ---------------------------------------------------------------------------


def _keeps(value: Any) -> bool:
    """A credential key's value that is kept: it says whether, not what (None, a bool, empty)."""
    return value is None or isinstance(value, bool) or value in ("", REDACTED)


def _scan(obj: Any) -> None:
    """Remember the secrets a structure holds where they stand (credential keys' values, values
    after credential flags, URL userinfo) before anything is redacted, so that a value found
    late in the structure is replaced where it appears earlier too."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if isinstance(key, str) and is_secret_key(key):
                    if not _keeps(value):
                        _secret_value(value)
                else:
                    stack.append(value)
        elif isinstance(item, list | tuple):
            flag = False
            for element in item:
                if flag and isinstance(element, str) and not element.startswith("-"):
                    remember_secret(element)
                flag = isinstance(element, str) and element.startswith("-")
                flag = flag and is_credential_flag(element)
                stack.append(element)
        elif isinstance(item, str) and "://" in item and "@" in item:
            for match in _URL_USERINFO.finditer(item):
                _sub_userinfo(match)


def _redact_sequence(items: Iterable[Any], secrets: list[str]) -> list[Any]:
    out: list[Any] = []
    secret_next = False
    for item in items:
        if secret_next and isinstance(item, str) and not item.startswith("-"):
            remember_secret(item)
            out.append(REDACTED)
            secret_next = False
            continue
        secret_next = isinstance(item, str) and item.startswith("-") and is_credential_flag(item)
        out.append(_redact(item, secrets))
    return out


def _secret_value(value: Any) -> Any:
    """What a secret key's value becomes (its strings are remembered as secret)."""
    if isinstance(value, str):
        remember_secret(value)
    elif isinstance(value, dict):
        for item in value.values():
            _secret_value(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _secret_value(item)
    return REDACTED


def redact(obj: Any) -> Any:
    """A redacted copy of ``obj``: dicts (values of credential-like keys at any depth), lists
    and tuples (values after credential flags), strings (``redact_text``); other scalars as
    they are. A pydantic model is dumped (``mode="json"``) first."""
    if hasattr(obj, "model_dump") and not isinstance(obj, type):
        obj = obj.model_dump(mode="json")
    _scan(obj)
    return _redact(obj, _known_secrets())


def _redact(obj: Any, secrets: list[str]) -> Any:
    if isinstance(obj, str):
        return _redact_text(obj, secrets)
    if isinstance(obj, dict):
        out: dict[Any, Any] = {}
        for key, value in obj.items():
            if isinstance(key, str) and is_secret_key(key):
                out[key] = value if _keeps(value) else _secret_value(value)
            else:
                name = _redact_text(key, secrets) if isinstance(key, str) else key
                out[name] = _redact(value, secrets)
        return out
    if isinstance(obj, list):
        return _redact_sequence(obj, secrets)
    if isinstance(obj, tuple):
        return tuple(_redact_sequence(obj, secrets))
    return obj


def redact_json(obj: Any, *, indent: int | None = 2) -> str:
    """Redacted JSON text of ``obj`` (a pydantic model, plain data, or JSON text).

    A model is serialised by pydantic first (its own JSON rules: datetimes, non-finite floats),
    then parsed back, redacted and written with the same key order.
    """
    if hasattr(obj, "model_dump_json") and not isinstance(obj, type):
        obj = json.loads(obj.model_dump_json())
    elif isinstance(obj, str | bytes):
        obj = json.loads(obj)
    return json.dumps(redact(obj), indent=indent, ensure_ascii=False)


# --- printed streams ----------------------------------------------------------------------


class RedactingStream:
    """A text stream that passes everything written to it through ``redact_text``.

    Everything else (``fileno``, ``isatty``, ``encoding``, ``flush``, ...) is the wrapped
    stream's. A secret split across two ``write`` calls is not seen whole: llem's own output
    writes whole lines.
    """

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    @property
    def wrapped(self) -> IO[str]:
        """The stream this one writes to."""
        return self._stream

    def write(self, text: str) -> int:
        self._stream.write(redact_text(text) if isinstance(text, str) else text)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def __iter__(self) -> Any:
        return iter(self._stream)


def install_stream_redaction() -> None:
    """Wrap ``sys.stdout`` and ``sys.stderr`` in ``RedactingStream`` (once)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, RedactingStream):
            setattr(sys, name, RedactingStream(stream))
