"""A large request body, parsed for what the rules read.

Most of a large call's body is the patient's problem list: the benchmark's large record holds
1,000 Conditions in 900 kB, of which the rules read the one that names m-kopper. Parsing the
whole body builds every one of them as dicts and frees them again after the call, and that was
two thirds of the call's time. Here the body is read with msgspec instead:

- the top level and each prefetch value are split into their members as raw JSON, without
  building them;
- each resource of a prefetch Bundle is read for its ``resourceType`` and the text of its
  ``code`` only, and a Condition whose code the service does not read
  (``CdsService.reads_condition``, which keeps its verdict per text) is left out;
  every other resource, and everything outside the prefetch Bundles, is parsed by
  :func:`~plugin.api.json_codec.loads_strict` as the whole body would have been.

A prefetch Bundle with Conditions then holds its ``resourceType`` and the ``resource`` of each
entry kept: what :func:`cds_hooks.prefetch.resources_of` reads of it. The answer is the one the
whole body gives. A prefetch value without a Condition, or one that is not a Bundle of objects
(an entry or a resource that is a string, say), is parsed whole. Anything unusual in the body
gives ``None`` and the body is parsed whole, which then decides as it always did: text that is
not strict UTF-8, an escaped lone surrogate, JSON that msgspec refuses (it is stricter than the
standard library: ``NaN``, a float beyond range, nesting past its recursion limit).
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from typing import Any

import msgspec

from plugin.api.json_codec import loads_strict, may_escape_surrogate

# Below this the whole body is parsed: splitting a typical 3 kB call costs more than it saves
# (a body of 20 kB with 20 Conditions: 0.06 ms either way; 45 kB with 50: 0.32 ms whole, 0.14 ms
# skimmed).
SKIM_FROM_BYTES = 32 * 1024

_NULL = msgspec.Raw(b"null")
# A prefetch value without this text holds no Condition.
_CONDITION = b'"Condition"'
# Strict UTF-8 is checked in pieces: decoding the whole body at once would build (and free) a
# text as large as the body on every call, in memory fresh from the kernel each time.
_UTF8_PIECE = 64 * 1024


class _Entry(msgspec.Struct):
    resource: msgspec.Raw = _NULL


class _Value(msgspec.Struct):
    """A prefetch value as far as the split needs it: a Bundle's entries, raw."""

    resourceType: Any = None
    entry: list[_Entry] | None = None


class _Resource(msgspec.Struct):
    """What decides whether a resource is parsed: its type, and a Condition's code (as text)."""

    resourceType: Any = None
    code: msgspec.Raw = _NULL


_Member = msgspec.Raw | msgspec.UnsetType


class _Request(msgspec.Struct, forbid_unknown_fields=True):
    """A request of CDS Hooks 2.0.1's fields only, the prefetch split in the same pass (a body
    with other fields too is split member by member)."""

    hook: _Member = msgspec.UNSET
    hookInstance: _Member = msgspec.UNSET
    fhirServer: _Member = msgspec.UNSET
    fhirAuthorization: _Member = msgspec.UNSET
    context: _Member = msgspec.UNSET
    prefetch: dict[str, msgspec.Raw] | msgspec.UnsetType | None = msgspec.UNSET


_REQUEST = msgspec.json.Decoder(_Request)
_MEMBERS = msgspec.json.Decoder(dict[str, msgspec.Raw])
_PREFETCH = msgspec.json.Decoder(dict[str, msgspec.Raw] | None)
_VALUE = msgspec.json.Decoder(_Value | None)
_RESOURCE = msgspec.json.Decoder(_Resource)


def skim_body(raw: bytes, reads_condition: Callable[[bytes], bool]) -> dict[str, Any] | None:
    """The body as ``loads_strict`` gives it, without the prefetched Conditions whose ``code``
    ``reads_condition`` says no to; ``None`` when the body must be parsed whole."""
    if not _strict_utf8(raw):
        return None
    if may_escape_surrogate(raw):
        return None
    try:
        return _request(raw, reads_condition)
    except (msgspec.DecodeError, ValueError, RecursionError):
        return None


def _request(raw: bytes, reads_condition: Callable[[bytes], bool]) -> dict[str, Any]:
    prefetch: Any
    try:
        request = _REQUEST.decode(raw)
    except msgspec.ValidationError:
        # Other fields, or a prefetch that is not an object: member by member.
        members = _MEMBERS.decode(raw)
        found = members.pop("prefetch", None)
        prefetch = msgspec.UNSET if found is None else _PREFETCH.decode(found)
    else:
        fields = ((name, getattr(request, name)) for name in request.__struct_fields__)
        members = {name: value for name, value in fields if value is not msgspec.UNSET}
        prefetch = members.pop("prefetch", msgspec.UNSET)
    body = {name: loads_strict(bytes(value)) for name, value in members.items()}
    if prefetch is not msgspec.UNSET:
        body["prefetch"] = (
            None
            if prefetch is None
            else {key: _value(item, reads_condition) for key, item in prefetch.items()}
        )
    return body


def _strict_utf8(raw: bytes) -> bool:
    if raw.isascii():
        return True
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    view = memoryview(raw)
    try:
        for start in range(0, len(raw), _UTF8_PIECE):
            decoder.decode(view[start : start + _UTF8_PIECE])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _value(raw: msgspec.Raw, reads_condition: Callable[[bytes], bool]) -> Any:
    text = bytes(raw)
    if _CONDITION not in text:
        # Nothing to leave out (an Encounter, a Bundle of Observations): parsed whole, which is
        # quicker than reading it resource by resource.
        return loads_strict(text)
    try:
        value = _VALUE.decode(raw)
        if value is not None and value.resourceType == "Bundle" and value.entry is not None:
            return _bundle(value.entry, reads_condition)
    except msgspec.ValidationError:
        pass  # not a Bundle of objects: parsed whole, and resources_of decides
    return loads_strict(text)


def _bundle(entries: list[_Entry], reads_condition: Callable[[bytes], bool]) -> dict[str, Any]:
    kept = []
    for entry in entries:
        if entry.resource == _NULL:
            continue  # no resource: resources_of passes over the entry
        resource = _RESOURCE.decode(entry.resource)
        if resource.resourceType == "Condition" and not reads_condition(bytes(resource.code)):
            continue
        kept.append({"resource": loads_strict(bytes(entry.resource))})
    return {"resourceType": "Bundle", "entry": kept}
