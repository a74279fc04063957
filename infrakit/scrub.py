"""What is never shown: the kit's one set of rules for secrets in output.

Every output of the kit — log lines in every format, span attributes and
events before export, error messages, CLI output, health details — goes
through the functions here, so a rule added here holds everywhere:

- :func:`is_sensitive_key` — a key names a secret or personal datum when, with
  case and separators folded away, it *ends with* a pattern of
  :data:`DEFAULT_PATTERNS` or its plural (``PGPASSWORD``, ``userPassword``,
  ``aws_secret_access_key``, ``X-Api-Key``, ``refresh_tokens``; no plural for
  :data:`SINGULAR_ONLY`: ``tokens``, ``sessions``, ``cookies``), unless it is,
  or ends at a word boundary with, one of :data:`NOT_SECRETS` (``is_mobile``,
  ``requires_auth``, ``headphone``, ...), names a suffix rule would wrongly
  catch.
- :func:`mask_url` — one URL's password (user-info, split at the *last* ``@``
  before the query that is followed by a host, so an unencoded ``@`` in a
  password is masked whole) and
  the values of its sensitive query and fragment parameters
  (:data:`SENSITIVE_PARAMS`, plus any sensitive key).
- :func:`scrub_text` — free text: URLs inside it (as above), ``Bearer``/
  ``Basic`` credentials, JWT-shaped strings, and ``name=value`` /
  ``name: value`` / ``'name': 'value'`` pairs whose name is sensitive (which
  covers query strings, DSNs, reprs of dicts, dataclasses and pydantic
  models, and rendered frame locals).

What no rule can know: a secret written into free text in a shape none of the
above describes (``"the code is hunter2"``), and a secret in a URL that is
itself broken by whitespace or quotes inside its password. Keep secrets in
keyword arguments with honest names, or in ``SecretStr``/:class:`SecretUrl`.

This module imports nothing heavy and nothing else of the kit: settings,
logging, telemetry and the CLI all build on it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

__all__ = [
    "DEFAULT_PATTERNS",
    "MASK",
    "NOT_SECRETS",
    "REDACTED",
    "SENSITIVE_PARAMS",
    "SINGULAR_ONLY",
    "KeyMatcher",
    "ParsedUrl",
    "Scrubber",
    "SecretUrl",
    "is_sensitive_key",
    "mask_url",
    "parse_url",
    "reveal",
    "scrub_text",
]

#: What a secret inside a URL or a connection string becomes.
MASK = "***"
#: What a sensitive value in a log event or span becomes (by default).
REDACTED = "[REDACTED]"

#: Sentry's ``DEFAULT_DENYLIST`` and ``DEFAULT_PII_DENYLIST`` (sentry_sdk.scrubber),
#: the compound names a plain word match misses, and common personal data.
#: A key matches a pattern when it ends with it (or with its plural) once case
#: and every non-alphanumeric character are folded away.
DEFAULT_PATTERNS: frozenset[str] = frozenset(
    {
        # sentry DEFAULT_DENYLIST
        "password", "passwd", "secret", "api_key", "apikey", "auth", "credentials",
        "mysql_pwd", "privatekey", "private_key", "token", "session", "csrftoken",
        "sessionid", "x_csrftoken", "x_forwarded_for", "set_cookie", "cookie",
        "authorization", "proxy-authorization", "x_api_key", "aiohttp_session",
        "connect.sid", "csrf_token", "csrf", "_csrf", "_csrf_token", "PHPSESSID",
        "_session", "symfony", "user_session", "_xsrf", "XSRF-TOKEN",
        # sentry DEFAULT_PII_DENYLIST
        "x_real_ip", "ip_address", "remote_addr",
        # compound secrets
        "credential", "access_token", "refresh_token", "id_token", "api_token",
        "client_secret", "secret_key", "secret_access_key", "access_key", "signing_key",
        "encryption_key", "master_key", "db_password", "pwd", "passphrase", "jwt",
        "bearer", "dsn", "signature", "otp", "pin_code", "sas_token", "x_amz_security_token",
        # personal data
        "email", "email_address", "phone", "phone_number", "mobile", "mobile_number", "ssn",
        "social_security_number", "credit_card", "card_number", "cc_number", "cvv",
        "cvc", "iban", "national_id", "passport_number", "date_of_birth", "dob",
    }
)  # fmt: skip

#: Keys that end like a pattern but name no secret: left alone. Each also
#: exempts a key that ends with it (or its plural) at a word boundary
#: (``user_has_password``, ``studio.headphones``), never inside a word.
NOT_SECRETS: frozenset[str] = frozenset(
    {
        "is_mobile", "requires_auth", "needs_auth", "use_auth", "has_auth", "no_auth",
        "send_email", "email_verified", "has_password", "password_set",
        "password_changed_at", "token_count", "token_type", "tokens_used", "max_tokens",
        "auth_method", "auth_type", "auth_scheme", "author", "authors", "oauth",
        "session_count", "session_id_length", "phone_verified", "pwd_dir", "oldpwd",
        # words that merely end in "phone", "mobile" or "session"
        "headphone", "earphone", "microphone", "megaphone", "saxophone", "xylophone",
        "gramophone", "iphone", "automobile", "snowmobile", "immobile", "possession",
        "obsession",
    }
)  # fmt: skip

#: Patterns matched in the singular only: their plurals name counts and
#: collections far more often than secrets (``tokens`` of a language model,
#: ``active_sessions``, a ``cookies`` mapping whose secret entries are caught by
#: their own names). Compound patterns keep their plurals (``refresh_tokens``).
SINGULAR_ONLY: frozenset[str] = frozenset({"token", "session", "cookie"})

#: Query and fragment parameters whose values are masked in URLs and free text,
#: besides any parameter whose name is a sensitive key: the OpenTelemetry HTTP
#: conventions' list for ``url.query`` and the signed-URL and OAuth names.
SENSITIVE_PARAMS: frozenset[str] = frozenset(
    {
        "password", "passwd", "pwd", "pass", "token", "access_token", "refresh_token",
        "id_token", "auth", "auth_token", "secret", "client_secret", "key", "api_key",
        "apikey", "sig", "signature", "code", "awsaccesskeyid", "x-amz-signature",
        "x-amz-credential", "x-amz-security-token", "x-goog-signature",
        "x-goog-credential", "sas", "sv",
    }
)  # fmt: skip


def _fold(key: str) -> str:
    """Lower case, alphanumerics only: ``X-Api_Key`` -> ``xapikey``."""
    return "".join(ch for ch in key.lower() if ch.isalnum())


# a two-letter last word: after a separator, or a camel hump (xRealIp)
_SHORT_END = re.compile(r"(?:(?<=[^A-Za-z0-9])[A-Za-z0-9]{2}|(?<=[a-z])[A-Z][a-z0-9])\Z")


# words of a name: snake, kebab, dotted, camelCase, UPPER
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+|[^\W\d_]+")


def _suffix_start(name: str, length: int) -> int:
    """Index in ``name`` where its last ``length`` alphanumerics start."""
    seen = 0
    for index in range(len(name) - 1, -1, -1):
        if name[index].isalnum():
            seen += 1
            if seen == length:
                return index
    return 0


def _at_word_start(name: str, index: int) -> bool:
    """``name[index]`` starts a word: first, after a separator, or camelCase."""
    if index == 0:
        return True
    before, char = name[index - 1], name[index]
    return not before.isalnum() or (before.islower() and char.isupper())


class KeyMatcher:
    """Decides whether a key names a secret, remembering its answers.

    Event keys repeat endlessly, so each distinct key is folded once; the cache
    is bounded so a stream of unique keys cannot grow it without limit.
    """

    __slots__ = ("_exempt", "_lengths", "_mentions", "cache", "patterns", "short_ends")

    _CACHE_LIMIT = 4096

    def __init__(
        self, patterns: Iterable[str] = DEFAULT_PATTERNS, not_secrets: Iterable[str] = NOT_SECRETS
    ) -> None:
        folded = {f for f in map(_fold, patterns) if f}
        plurals = {f + "s" for f in folded if f not in SINGULAR_ONLY}
        #: the folded patterns and their plurals
        self.patterns = frozenset(folded | plurals)
        #: two-letter last words of patterns (``x_real_ip``, ``national_id``): a
        #: name in text may end in a separator and these
        self.short_ends = frozenset(
            m.group(0).lower()
            for m in (_SHORT_END.search(p) for p in patterns if isinstance(p, str))
            if m is not None
        )
        self._lengths = tuple(sorted({len(p) for p in self.patterns}, reverse=True))
        exempt = {f for f in map(_fold, not_secrets) if f}
        self._exempt = frozenset(exempt | {f + "s" for f in exempt})
        #: key -> sensitive?; read directly on the logging hot path.
        self.cache: dict[object, bool] = {}
        self._mentions: dict[str, bool] = {}

    def __call__(self, key: object) -> bool:
        if isinstance(key, bytearray):
            key = bytes(key)
        elif not isinstance(key, str | bytes):
            return False
        hit = self.cache.get(key)
        return self.classify(key) if hit is None else hit

    def classify(self, key: object) -> bool:
        if isinstance(key, bytearray):
            return self.classify(bytes(key))  # cached under the hashable bytes
        if isinstance(key, bytes):
            name = key.decode("latin-1")
        elif isinstance(key, str):
            name = key
        else:
            return False
        folded = _fold(name)
        hit = any(
            folded[-n:] in self.patterns for n in self._lengths if n <= len(folded)
        ) and not self._exempted(name, folded)
        if len(self.cache) >= self._CACHE_LIMIT:
            self.cache.clear()
        self.cache[key] = hit
        return hit

    def mentions(self, name: str) -> bool:
        """The looser rule for names of frame locals: a sensitive key, or a name
        one of whose words, or run of adjacent words, is a pattern or its
        plural (``auth_args``, ``password_hash``, ``apiKeyId``, ``tokens``),
        unless it is one of
        :data:`NOT_SECRETS` (``token_count``, ``auth_method``). A local's value
        is shown only in a traceback, so this masks more rather than less."""
        hit = self._mentions.get(name)
        if hit is None:
            if self(name):
                hit = True
            elif self._exempted(name, _fold(name)):
                hit = False
            else:
                words = [w.lower() for w in _WORDS.findall(name)]
                runs = {
                    "".join(words[i:j])
                    for i in range(len(words))
                    for j in range(i + 1, len(words) + 1)
                }
                # any plural here: a local "tokens" may well hold some
                hit = any(run in self.patterns or run[:-1] in self.patterns for run in runs)
            if len(self._mentions) >= self._CACHE_LIMIT:
                self._mentions.clear()
            self._mentions[name] = hit
        return hit

    def _exempted(self, name: str, folded: str) -> bool:
        if folded in self._exempt:
            return True
        return any(
            folded.endswith(word) and _at_word_start(name, _suffix_start(name, len(word)))
            for word in self._exempt
        )


_default_keys = KeyMatcher()


def is_sensitive_key(key: object, extra_patterns: Iterable[str] = ()) -> bool:
    """True when ``key`` (``str`` or ``bytes``) names a secret or personal datum."""
    if extra_patterns:
        return KeyMatcher([*DEFAULT_PATTERNS, *extra_patterns])(key)
    return _default_keys(key)


# --- URLs --------------------------------------------------------------------------

_SCHEME = re.compile(r"[A-Za-z][\w+.\-]*://")
# a '?' or '#' that starts real parameters ("?name=", the name a word)
_QUERY_START = re.compile(r"[?#](?=[A-Za-z_][\w.\-%~+\[\]]*=)")
_HOST = r"(?:\[[0-9A-Fa-f:.]+(?:%[\w.~\-]+)?\]|[\w.~%!$'*+\-]*)(?::\d*)?"
# host[:port][,host[:port]]... (IPv6 in brackets), ending the authority
_AUTHORITY = re.compile(rf"{_HOST}(?:,{_HOST})*(?=[/?#]|\Z)")


def _user_ok(userinfo: str) -> bool:
    """A user name (before the first ``:``) never holds ``/``, ``?`` or ``#``."""
    username = userinfo.partition(":")[0]
    return not any(c in username for c in "/?#")


def _plausible(after: str, host: re.Match[str]) -> bool:
    """``host`` (an authority match in ``after``) names a host, is followed
    by a path, and its ports are real ones (1-65535, no leading zero), as a
    password's characters would seldom be."""
    if after[host.end() : host.end() + 1] != "/":
        return False
    for part in host.group(0).split(","):
        tail = part.rsplit("]", 1)[-1]
        if not part or part.startswith(":"):
            return False  # no host name
        if ":" in tail:
            port = tail.rsplit(":", 1)[1]
            if not port or port[0] == "0" or int(port) > 65535:
                return False
    return True


def _split(url: str) -> tuple[str, str | None, str] | None:
    """``(scheme://, user-info or None, rest)`` of ``url``; ``None`` if not a URL.

    The user-info ends at an ``@`` followed by an authority
    (``host[:port][,host[:port]]...``, numeric ports, IPv6 in brackets): the
    last ``@`` before the earliest query start (a ``?`` or ``#`` followed by
    ``name=``) that makes such a parse. So a password holding ``/``, ``:``,
    ``?`` or even an unencoded ``@`` is taken whole, while an ``@`` in a path
    or query value (``https://h/users/@me``, ``redis://h:6379/0?name=svc@x``)
    is no user-info. A URL whose authority is empty (``sqlite:///path``) has
    none either. Where an ``@`` follows the query start, the split is
    ambiguous (a password may hold ``?name=``): only a host with a path and
    real ports after it is taken, so ``redis://h:6379/0?name=svc@x`` keeps its
    host while ``app:00000?0=@db`` is masked. Where nothing parses
    (``http://:pw@h:x/0``), the user-info runs to the last ``@`` before the
    query: more is masked, not less. (A password shaped like a port, a path
    and parameters, ``6379/0?name=x``, is beyond any parser: percent-encode
    it.)
    """
    scheme = _SCHEME.match(url)
    if scheme is None:
        return None
    head, after = scheme.group(0), url[scheme.end() :]
    if not after or after[0] in "/?#" or "@" not in after:
        return head, None, after
    ends = [m.start() for m in _QUERY_START.finditer(after)]
    ends.append(len(after))
    host = _AUTHORITY.match(after)
    for end in ends:
        # an '@' at or after this query start makes the split ambiguous: a
        # password may hold "?name=" too. Then only a host with a usable port
        # and a path after it ends the user-info or the authority, else the
        # next query start (or the end) is tried: more is masked, not less.
        later = after.find("@", end)
        at = after.rfind("@", 0, end)
        if at != -1 and _user_ok(after[:at]):
            found = _AUTHORITY.match(after, at + 1)
            if found is not None and (later == -1 or _plausible(after, found)):
                return head, after[:at], after[at + 1 :]
        if (
            host is not None
            and after[host.end() : host.end() + 1] == "/"  # any '@' in the path or query
            and (later == -1 or (_plausible(after, host) and after[later - 1] not in "=?&#"))
        ):
            return head, None, after
    at = after.rfind("@", 0, ends[0])
    if at == -1 or not _user_ok(after[:at]):
        return head, None, after
    return head, after[:at], after[at + 1 :]


_PARAM = re.compile(r"(?P<lead>[?&;#])(?P<name>[^=&;#?\s]+)=(?P<value>[^&;#]*)")


@dataclass(frozen=True)
class ParsedUrl:
    """A URL split the way the kit masks it (user-info up to the last ``@``)."""

    scheme: str
    username: str | None
    password: str | None
    netloc: str
    path: str
    query: str

    @property
    def host(self) -> str | None:
        host = self.netloc
        if host.startswith("["):  # IPv6 literal
            return host[1 : host.index("]")] if "]" in host else host
        return host.rsplit(":", 1)[0] if ":" in host else (host or None)

    @property
    def port(self) -> int | None:
        tail = self.netloc.rsplit("]", 1)[-1]
        if ":" not in tail:
            return None
        text = tail.rsplit(":", 1)[1]
        if not text.isdigit():
            raise ValueError(f"port {text!r} is not a number")
        return int(text)


def parse_url(url: str) -> ParsedUrl:
    """Split ``scheme://[user[:password]@]netloc[/path][?query]``, decoding user and
    password, with the user-info ending at the last ``@`` before the query (as
    :func:`mask_url`)."""
    split = _split(url)
    if split is None:
        raise ValueError("not a URL: expected scheme://host...")
    scheme, userinfo, rest = split
    username = password = None
    if userinfo is not None:
        user, sep, secret = userinfo.partition(":")
        username = unquote(user) if user else None
        password = unquote(secret) if sep else None
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    return ParsedUrl(
        scheme=scheme[:-3].lower(),
        username=username,
        password=password,
        netloc=netloc,
        path=slash + path,
        query=query,
    )


# --- free text -----------------------------------------------------------------

# Free text is scanned for separators and URL markers with str methods and
# regexes that start with one literal character (searched at memchr speed),
# not with one big regex trying a name at every position: log messages are
# mostly prose, and that costs ten times more than the whole log call. The
# separators a sensitive name cannot end before are rejected inside the regex
# engine (lookbehinds on the name's last characters), so a text full of ':'
# (IPv6 addresses, times, JSON) costs no Python-level work per separator.


def _letter_class(char: str) -> str:
    upper = char.upper()
    return f"[{char}{upper}]" if upper != char and len(upper) == 1 else re.escape(char)


def _char_class(chars: Iterable[str]) -> str:
    """A regex class of ``chars`` in either case."""
    both = {c for char in chars for c in (char, char.upper()) if len(c) == 1}
    return "[" + "".join(re.escape(c) for c in sorted(both)) + "]"


def _trie(words: Iterable[str]) -> str:
    """A regex matching any of ``words`` (all of one length), as a trie: each
    branch is tried only when its first character matches."""
    groups: dict[str, list[str]] = {}
    for word in words:
        groups.setdefault(word[0], []).append(word[1:])
    branches = []
    for char, rests in sorted(groups.items()):
        rest = "" if rests == [""] else _trie(rests)
        branches.append(_letter_class(char) + (f"(?:{rest})" if "|" in rest else rest))
    return "|".join(branches)


@functools.lru_cache(maxsize=16)
def _separator_regexes(
    names: frozenset[str], short_ends: frozenset[str]
) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """Find each ``=`` (first) and ``:`` (second) that a name could end before
    (then a closing quote and a blank at most, or any blanks): one whose last
    three characters end a pattern or parameter name (``ord``, or ``_ip`` for
    ``x_real_ip``), or whose name is one, if shorter (``sv``). Everything
    else — ``:`` in times and IPv6 addresses, ``=`` after other words — is
    skipped inside the regex engine, never reaching Python. (One regex per
    separator: a search for one literal character runs at memchr speed.)"""
    ends = {n[-3:] for n in names if len(n) >= 3}
    ends |= {sep + end for end in short_ends for sep in "_.-"}
    shorts = {n for n in names if len(n) < 3}
    tails = _trie(ends)
    # a cheap first test: the last two characters, each from the set it can be
    pairs = ends | {n for n in shorts if len(n) == 2}
    last = _char_class(p[-1] for p in pairs)
    second = _char_class(p[-2] for p in pairs)
    named = "|".join("".join(map(_letter_class, n)) for n in sorted(shorts))
    filtered = all(len(n) == 2 for n in shorts)  # a one-letter name escapes the pair test
    found = []
    for sep in "=:":

        def shape(before: str, sep: str = sep) -> str:
            alternatives = [f"(?<=(?:{tails}){before}{sep})"]
            if shorts:
                alternatives.append(f"(?<=\\b(?:{named}){before}{sep})")
            either = "|".join(alternatives)
            return f"(?<={second}{last}{before}{sep})(?:{either})" if filtered else f"(?:{either})"

        quoted = "['\"]"
        blank = "[ \t]"
        found.append(
            re.compile(
                # the character before the separator says which shapes to try
                f"{sep}(?<={last[:-1]}'\" \\t]{sep})(?:(?<={last}{sep}){shape('')}"
                f"|(?<={quoted}{sep}){shape(quoted)}"
                f"|(?<={blank}{sep})(?:{shape(blank)}|{shape(quoted + blank)}"
                f"|(?<={blank}{blank}{sep})))"  # more blanks: judged in Python
            )
        )
    return found[0], found[1]


# read on the reversed text, from just before a separator: blanks, an optional
# closing quote, the name, and the character before it (an opening quote?)
_NAME_BEFORE = re.compile(r"([ \t]*)(['\"]?)([A-Za-z0-9_.\-]+)(.?)", re.DOTALL)
_SCHEME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+.-")
# After a sensitive name, the value is masked whole as a repr would write it;
# where its end is unclear, more is masked rather than less.
_PREFIX = re.compile(r"(?:[Bb]earer|BEARER|[Bb]asic|BASIC|[Tt]oken)[ \t]+")
_LITERAL_PREFIX = re.compile(r"[bBrRuUfF]{1,2}(?=['\"])")  # b'...', rb"..."
_CALL = re.compile(r"[A-Za-z_][\w.]*(?=[(\[{])")  # SecretThing(...), datetime.date(...)
_PEM_END = re.compile(r"-----END [^\n]*?-----")
_UNQUOTED = re.compile(r"\S*")
_UNQUOTED_IN_QUERY = re.compile(r"[^\s&#]*")
_CLOSERS = {"(": ")", "[": "]", "{": "}"}


def _quoted_end(text: str, start: int) -> int:
    """End of the string literal opening at ``start`` (its closing quote
    included); a literal cut short (truncation) runs to the end of the line."""
    quote = text[start]
    index = start + 1
    size = len(text)
    while index < size:
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == quote:
            return index + 1
        if char == "\n":
            return index
        index += 1
    return size


def _group_end(text: str, start: int) -> int:
    """End of the bracketed group opening at ``start`` (``(``, ``[``, ``{`` or
    ``<``), nested groups and string literals inside it included; an
    unbalanced group runs to the end of the text."""
    stack = [">" if text[start] == "<" else _CLOSERS[text[start]]]
    index = start + 1
    size = len(text)
    while index < size:
        char = text[index]
        if char == stack[-1]:
            stack.pop()
            if not stack:
                return index + 1
        elif char in _CLOSERS:
            stack.append(_CLOSERS[char])
        elif char in "'\"":
            index = _quoted_end(text, index)
            continue
        index += 1
    return size


def _value_end(text: str, start: int, in_query: bool) -> int:
    """End of the value starting at ``start`` (after any blanks): a string or
    bytes literal, a bracketed group (``[...]``, ``(...)``, ``{...}``,
    ``<...>``, ``Name(...)``), a PEM block, or an unquoted word up to
    whitespace (up to ``&`` or ``#`` too inside a URL query). ``Bearer``,
    ``Basic`` and ``Token`` before it are part of it."""
    prefix = _PREFIX.match(text, start)
    if prefix is not None:
        start = prefix.end()
    if start >= len(text):
        return start
    if text.startswith("-----BEGIN", start):
        pem = _PEM_END.search(text, start)
        return pem.end() if pem is not None else len(text)
    lead = _LITERAL_PREFIX.match(text, start) or _CALL.match(text, start)
    head = lead.end() if lead is not None else start
    char = text[head] if head < len(text) else ""
    if char in {"'", '"'}:
        return _quoted_end(text, head)
    if char in _CLOSERS or (char == "<" and head == start):
        return _group_end(text, head)
    word = (_UNQUOTED_IN_QUERY if in_query else _UNQUOTED).match(text, start)
    return word.end() if word is not None else start


_URL_TAIL = re.compile(r"[^\s\"'<>]*")
_CREDENTIAL = re.compile(r"\b((?:[Bb]earer|BEARER|[Bb]asic|BASIC)[ \t]+)[\w.~+/=\-]{6,}")
_AUTH_COMMAND = re.compile(r"""[(\[][ \t]*[bB]?(['"])AUTH\1[ \t]*,""")
_JWT = re.compile(r"\beyJ[\w\-]{4,}\.[\w\-]+\.[\w\-]*")


#: In :attr:`Scrubber.texts`: "nothing to scrub in this one".
SAME: Any = object()


class Scrubber:
    """The kit's rules with one configuration: extra key patterns, extra query
    parameters and the replacement for redacted values.

    Use the module-level functions for the defaults; the logging pipeline and
    the span scrubber build one from the profile.
    """

    __slots__ = ("_separators", "keys", "params", "replacement", "texts")

    #: Short strings repeat endlessly in logs and spans ("POST", "eu-west-1", an
    #: event name): :meth:`remember` keeps their answer in a bounded table.
    TEXT_CACHE_LIMIT = 4096
    TEXT_CACHE_MAX_LEN = 128

    def __init__(
        self,
        extra_patterns: Iterable[str] = (),
        extra_params: Iterable[str] = (),
        replacement: str = REDACTED,
    ) -> None:
        extra = list(extra_patterns)
        for pattern in extra:
            if not isinstance(pattern, str) or not _fold(pattern):
                raise ValueError(f"redaction pattern must be a non-empty key name, got {pattern!r}")
        self.keys = KeyMatcher([*DEFAULT_PATTERNS, *extra]) if extra else _default_keys
        self.params = SENSITIVE_PARAMS | {p.lower() for p in extra_params}
        #: the regexes finding the separators a key pattern or a parameter name
        #: could end before; compiled (~30 ms) when free text first needs them,
        #: not at import
        self._separators: tuple[re.Pattern[str], re.Pattern[str]] | None = None
        self.replacement = replacement
        #: text -> :data:`SAME` or its scrubbed form; read directly on hot paths
        self.texts: dict[str, object] = {}

    def remember(self, text: str) -> str:
        """:meth:`text`, remembering the answer for a short ``text``."""
        scrubbed = self.text(text)
        if len(text) <= self.TEXT_CACHE_MAX_LEN:
            if len(self.texts) >= self.TEXT_CACHE_LIMIT:
                self.texts.clear()
            self.texts[text] = SAME if scrubbed is text else scrubbed
        return scrubbed

    def cached_text(self, text: str) -> str:
        """:meth:`text` through the table of short strings seen before."""
        hit = self.texts.get(text)
        if hit is None:
            return self.remember(text)
        return text if hit is SAME else hit  # type: ignore[return-value]

    # URLs ---------------------------------------------------------------------

    def _masked_params(self, text: str, mask: str) -> str:
        def one(match: re.Match[str]) -> str:
            name = unquote(match.group("name"))
            value = match.group("value")
            if value and (
                name.lower() in self.params
                or self.keys(name)
                # a percent-encoded URL with a password (?next=https%3A%2F%2Fu%3Apw%40h)
                or ("%" in value and (url := unquote(value)) != self.mask_url(url))
            ):
                return f"{match.group('lead')}{match.group('name')}={mask}"
            if "?" in value:  # parameters inside this value ("?next=/x?token=...")
                return f"{match.group('lead')}{match.group('name')}=" + self._masked_params(
                    value, mask
                )
            return match.group(0)

        return _PARAM.sub(one, text)

    def mask_query(self, query: str, mask: str = MASK) -> str:
        """A query string (without ``?``) with sensitive parameter values as ``mask``."""
        if "=" not in query:
            return query
        return self._masked_params("?" + query, mask)[1:]

    def mask_url(self, url: str, param_mask: str = MASK) -> str:
        """``url`` with its password as ``***`` and sensitive parameter values as
        ``param_mask``."""
        split = _split(url)
        if split is None:
            return url
        scheme, userinfo, rest = split
        if userinfo is not None:
            user, sep, secret = userinfo.partition(":")
            if sep and secret:
                userinfo = f"{user}:{MASK}"
        if "://" in rest:  # a URL inside this one (?next=https://u:pw@h) or after it
            rest = self._embedded(rest, param_mask)
        if "=" in rest:
            rest = self._masked_params(rest, param_mask)
        head = scheme + (f"{userinfo}@" if userinfo is not None else "")
        return head + rest

    def _embedded(self, rest: str, param_mask: str) -> str:
        """``rest`` of a URL with the first URL inside it (and so, recursively,
        every further one) masked, running to the end of ``rest``."""
        at = rest.find("://")
        while at != -1:
            start = at
            while start > 0 and rest[start - 1] in _SCHEME_CHARS:
                start -= 1
            while start < at and not rest[start].isalpha():
                start += 1
            if start < at:
                return rest[:start] + self.mask_url(rest[start:], param_mask)
            at = rest.find("://", at + 3)
        return rest

    # text ---------------------------------------------------------------------

    def text(self, text: str) -> str:
        """``text`` with every secret the rules recognise replaced. Returns the
        same object when nothing changed."""
        out = text
        if "=" in out or ":" in out:
            # URLs first: a password may itself read as "name:" ("u:PASSWORD:@h")
            if "//" in out:
                out = self._urls(out)
            out = self._pairs(out)
        if "earer" in out or "EARER" in out or "asic" in out or "ASIC" in out:
            out = _CREDENTIAL.sub(lambda m: m.group(1) + self.replacement, out)
        # (a one-character test first runs at memchr speed; most text fails it)
        if "J" in out and "eyJ" in out:
            out = _JWT.sub(self.replacement, out)
        if "U" in out and "AUTH" in out:  # redis-py's spelling
            out = self._auth_commands(out)
        return text if out == text else out

    def _pairs(self, text: str) -> str:
        """``name=value``/``name: value`` (names quoted or not) with a sensitive name."""
        pieces: list[str] = []
        done = 0  # text[:done] is in pieces
        backwards = ""  # the text reversed, made once a name needs reading
        separators = self._separators
        if separators is None:
            separators = self._separators = _separator_regexes(
                self.keys.patterns | {f for f in map(_fold, self.params) if f},
                self.keys.short_ends,
            )
        equals, colons = separators
        found = [m.start() for m in equals.finditer(text)] if "=" in text else []
        if ":" in text:
            found += [m.start() for m in colons.finditer(text)]
            found.sort()
        for at in found:
            if at < done:
                continue
            if not backwards:
                backwards = text[::-1]
            name_match = _NAME_BEFORE.match(backwards, len(text) - at)
            if name_match is None:
                continue
            quote = name_match.group(2)
            name = name_match.group(3)[::-1].lstrip("0123456789.-")
            if not name or len(text) - name_match.end() < done:
                continue
            if quote and name_match.group(4) != quote:
                continue
            if not (self.keys(name) or name.lower() in self.params):
                continue
            start = at + 1
            while start < len(text) and text[start] in " \t":
                start += 1
            in_query = not quote and text[at] == "=" and name_match.group(4) in ("?", "&", "#")
            end = _value_end(text, start, in_query)
            if end == start or text[start:end] in (MASK, self.replacement):
                continue  # no value, or one masked already (a URL's, say)
            quote = text[start] if text[start] in "'\"" else ""
            pieces.append(text[done:start])
            pieces.append(quote + self.replacement + quote)
            done = end
        if not pieces:
            return text
        pieces.append(text[done:])
        return "".join(pieces)

    def _auth_commands(self, text: str) -> str:
        """A Redis ``AUTH`` command's arguments, as redis-py's frame locals hold
        them (``args = ('AUTH', 'default', 'pw')``): all masked."""
        pieces: list[str] = []
        done = 0
        for command in _AUTH_COMMAND.finditer(text):
            if command.start() < done:
                continue
            end = _group_end(text, command.start())
            closer = text[end - 1] if end > command.end() and text[end - 1] in ")]" else ""
            pieces.append(text[done : command.end()])
            pieces.append(" " + self.replacement + closer)
            done = end
        if not pieces:
            return text
        pieces.append(text[done:])
        return "".join(pieces)

    def _urls(self, text: str) -> str:
        """Every URL in ``text`` masked, and every ``//user:password@host`` that
        lost its scheme's ``:`` (``redis//:pw@h``, a typo in a profile)."""
        pieces: list[str] = []
        done = 0
        at = text.find("//")
        while at != -1:
            tail = _URL_TAIL.match(text, at + 2)
            end = tail.end() if tail is not None else at + 2
            if at > 0 and text[at - 1] == ":":  # scheme://
                start = at - 1
                while start > done and text[start - 1] in _SCHEME_CHARS:
                    start -= 1
                while start < at - 1 and not text[start].isalpha():
                    start += 1
                masked = self.mask_url(text[start:end]) if start < at - 1 else text[start:end]
            else:
                start = at
                authority = text[at:end]
                masked = authority
                if "@" in authority and ":" in authority:
                    masked = self.mask_url("x:" + authority)[2:]
            if masked != text[start:end]:
                pieces.append(text[done:start])
                pieces.append(masked)
                done = end
            at = text.find("//", max(end, at + 2))
        if not pieces:
            return text
        pieces.append(text[done:])
        return "".join(pieces)


_default = Scrubber()


def mask_url(url: str) -> str:
    """``url`` with its password and sensitive query/fragment values as ``***``."""
    return _default.mask_url(url)


def scrub_text(text: str) -> str:
    """``text`` with the secrets the default rules recognise replaced."""
    return _default.text(text)


# --- secret values in settings ---------------------------------------------------


class SecretUrl:
    """A URL whose password is masked everywhere but ``get_secret_value()``.

    To a connection URL what pydantic's ``SecretStr`` is to a password:
    ``str()``, ``repr()`` and JSON serialisation show :func:`mask_url` of it;
    only backends call ``get_secret_value()``.
    """

    __slots__ = ("_masked", "_value")

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"SecretUrl takes a str, got {type(value).__name__}")
        self._value = value
        self._masked = mask_url(value)

    def get_secret_value(self) -> str:
        return self._value

    @property
    def masked(self) -> str:
        return self._masked

    @property
    def scheme(self) -> str:
        return self._value.split("://", 1)[0].lower() if "://" in self._value else ""

    def parsed(self) -> ParsedUrl:
        return parse_url(self._value)

    def __str__(self) -> str:
        return self._masked

    def __repr__(self) -> str:
        return f"SecretUrl({self._masked!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SecretUrl):
            return self._value == other._value
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._value)

    def __len__(self) -> int:
        return len(self._value)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[Any], handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        def validate(value: Any) -> SecretUrl:
            if isinstance(value, SecretUrl):
                return value
            if not isinstance(value, str):
                raise ValueError("expected a URL string")
            value = value.strip()
            if not value:
                raise ValueError("URL cannot be empty")
            if "://" not in value:
                raise ValueError(
                    "not a URL: expected scheme://host..., e.g. redis://127.0.0.1:6379/0"
                )
            return cls(value)

        return core_schema.no_info_plain_validator_function(
            validate,
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda v: v.masked, when_used="json"
            ),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"type": "string", "format": "uri", "writeOnly": True}


def reveal(value: object) -> object:
    """The real value behind ``SecretUrl``/``SecretStr``; anything else as is."""
    getter = getattr(value, "get_secret_value", None)
    return getter() if callable(getter) else value
