"""Redaction of personal data in text before it is stored: pure functions, no I/O.

Each kind of personal data found is replaced by a typed placeholder (`[EMAIL]`,
`[PHONE]`, `[CARD]`, `[IBAN]`, `[SSN]`, `[IP]`), so stored interactions and feedback
keep their meaning for training and debugging without the data itself.

Plain regular expressions with checksums where the format has one: card numbers only
when the Luhn check passes, IBANs only when mod 97 gives 1, so order numbers and other
long digit runs survive. Phone numbers are recognised only in shapes people write them
(a leading `+`, a leading 0 with separators, or the US `(555) 123-4567` forms), because a
bare run of digits is more often an amount or an id than a phone number. The rules err
towards redacting: a stored copy losing a number is cheaper than a leak.

Every pattern needs a digit or an `@`, and placeholders hold neither, so redacting
twice changes nothing and text without digits or `@` is returned unchanged.

Patterns are anchored with look-behinds so each can only start where a token starts:
a long run of letters or digits costs one attempt, not one per position (no quadratic
blow-up on megabyte prompts).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

EMAIL = "[EMAIL]"
PHONE = "[PHONE]"
CARD = "[CARD]"
IBAN = "[IBAN]"
SSN = "[SSN]"
IP = "[IP]"
PLACEHOLDERS = (EMAIL, PHONE, CARD, IBAN, SSN, IP)

# Keys of OpenAI request/response objects whose string values are structure, not content:
# redacting them could change what a stored request means (or break its shape).
STRUCTURAL_KEYS = frozenset(
    {
        "model",
        "role",
        "type",
        "object",
        "id",
        "finish_reason",
        "tool_call_id",
        "system_fingerprint",
        "service_tier",
        "encoding_format",
        "tool_choice",
        "reasoning_effort",
    }
)

_EMAIL = re.compile(r"(?<![\w.%+-])[\w.%+-]+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}(?![\w-])")
# Two letters, two check digits, then groups of four (printed with or without spaces), the
# last group possibly shorter; 15 to 34 characters in all, checked by mod 97 below.
_IBAN = re.compile(r"(?<![\w])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![\w])")
# A run of digit groups; which groups form a card is decided by `_card` (Luhn, group sizes),
# so a card next to other numbers ("qty 2 4111 1111 1111 1111") is still found.
_CARD = re.compile(r"(?<![\w-])\d+(?:[ -]\d+)*(?![\w-])")
_GROUP_SEP = re.compile(r"([ -])")
_SSN = re.compile(r"(?<![\w-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w-])")
# One digit per repetition and separators in between: no two ways to split a digit run, so a
# failing match backtracks linearly, never exponentially.
_PHONE_INTL = re.compile(r"(?<![\w+])\+\d(?:[ .()-]{0,2}\d){6,16}(?![\w-]|\)?[ .-]?\d)")
_PHONE_NATIONAL = re.compile(r"(?<![\w.,/-])0\d{1,4}(?:[ ./-]\d{2,8}){1,4}(?![\w.,/-]?\d)")
_PHONE_US = re.compile(r"(?<![\w(-])(?:\(\d{3}\) ?|\d{3}[-. ])\d{3}[-. ]\d{4}(?![\w-])")
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f.]{0,15}){2,8}(?![\w:]|\.\w)")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\w|\.\d)")


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum every payment card number carries."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_ok(candidate: str) -> bool:
    """ISO 13616: move the first four characters to the end, letters to numbers, mod 97 == 1."""
    compact = candidate.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def _card_end(groups: list[str], start: int) -> int | None:
    """The last group of the longest card number starting at group `start`, if any."""
    ends: list[tuple[int, int]] = []
    count = 0
    for end in range(start, len(groups)):
        count += len(groups[end])
        if count > 19:
            break
        ends.append((end, count))
    for end, count in reversed(ends):
        window = groups[start : end + 1]
        # Printed cards group 3 to 7 digits (4-4-4-4, amex 4-6-5); "1 2 3 ..." is a list.
        grouped_like_a_card = len(window) == 1 or all(3 <= len(g) <= 7 for g in window)
        if count >= 13 and grouped_like_a_card and luhn_ok("".join(window)):
            return end
    return None


def _card(match: re.Match[str]) -> str:
    parts = _GROUP_SEP.split(match.group())
    groups, seps = parts[0::2], [*parts[1::2], ""]
    out: list[str] = []
    i = 0
    while i < len(groups):
        end = _card_end(groups, i)
        if end is None:
            out += [groups[i], seps[i]]
            i += 1
        else:
            out += [CARD, seps[end]]
            i = end + 1
    return "".join(out)


def _iban(match: re.Match[str]) -> str:
    # Printed IBANs end where their groups end; a number written right after one
    # ("DE89 3704 0044 0532 0130 00 1234") is tried away from the end, group by group.
    text = match.group()
    for cut in range(len(text), 0, -1):
        if (cut == len(text) or text[cut] == " ") and iban_ok(text[:cut]):
            return IBAN + text[cut:]
    return text


def _phone(match: re.Match[str]) -> str:
    # E.164 caps numbers at 15 digits; with fewer than 8 it is more likely a count ("+1000000").
    return PHONE if 8 <= len(_digits(match.group())) <= 15 else match.group()


def _national_phone(match: re.Match[str]) -> str:
    # A leading-zero form needs 9+ digits: "01.02.2024" (8 digits) is a date, not a number.
    return PHONE if 9 <= len(_digits(match.group())) <= 13 else match.group()


def _ipv6(match: re.Match[str]) -> str:
    text = match.group()
    # The pattern takes dots for embedded IPv4 ("::ffff:10.0.0.1"), so also a full stop.
    address, stop = (text[:-1], ".") if text.endswith(".") else (text, "")
    # A digit is required so "::" in code (and hex words like "dead::beef") stay.
    if not any(ch.isdigit() for ch in address):
        return text
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        return text
    return IP + stop


@dataclass(frozen=True)
class _Rule:
    pattern: re.Pattern[str]
    replace: Callable[[re.Match[str]], str]


def _fixed(placeholder: str) -> Callable[[re.Match[str]], str]:
    return lambda _m: placeholder


# Order matters: the most specific shapes first, so an IBAN's digits are not read as a card
# and a card's digit groups not as a phone number.
_RULES: tuple[_Rule, ...] = (
    _Rule(_EMAIL, _fixed(EMAIL)),
    _Rule(_IBAN, _iban),
    _Rule(_CARD, _card),
    _Rule(_SSN, _fixed(SSN)),
    _Rule(_IPV6, _ipv6),
    _Rule(_IPV4, _fixed(IP)),
    _Rule(_PHONE_INTL, _phone),
    _Rule(_PHONE_US, _fixed(PHONE)),
    _Rule(_PHONE_NATIONAL, _national_phone),
)
_MAX_PASSES = 4


def _one_pass(text: str) -> str:
    for rule in _RULES:
        text = rule.pattern.sub(rule.replace, text)
    return text


def redact_text(text: str) -> str:
    """`text` with personal data replaced by typed placeholders."""
    if not any(ch.isdigit() or ch == "@" for ch in text):
        return text  # the common case (and the cheap one): nothing any rule could match
    # A replacement can expose a neighbour a look-around had hidden; repeat to a fixed point,
    # so that redacting stored text again never changes it.
    for _ in range(_MAX_PASSES):
        redacted = _one_pass(text)
        if redacted == text:
            return text
        text = redacted
    return text


def redact_value(value: Any) -> Any:
    """A JSON value with every string redacted, except under structural keys; same shape."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, list):
        return [redact_value(v) for v in value]
    if isinstance(value, dict):
        return {k: v if k in STRUCTURAL_KEYS and isinstance(v, str) else redact_value(v) for k, v in value.items()}
    return value


def redact_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI request or response body, redacted for storage.

    Message contents (strings or lists of parts), prompts (strings, lists of strings;
    token-id lists are left alone), choices' text, message and delta contents, tool-call
    arguments and the `user` field are all strings somewhere in the tree, so every string
    is redacted except the values of `STRUCTURAL_KEYS` (model, role, type, ids, ...).
    Keys, numbers, booleans and list lengths are kept, so the result has the same shape.
    """
    return redact_value(payload)  # type: ignore[no-any-return]


def redact_optional(text: str | None) -> str | None:
    return None if text is None else redact_text(text)


def redact_metadata(metadata: dict[str, str] | None) -> dict[str, str] | None:
    """OpenAI `metadata` with every value redacted; keys are the client's labels, kept."""
    return None if metadata is None else {key: redact_text(value) for key, value in metadata.items()}
