"""wordfreq: a wpool task written in Python, built into a component of the
`task` world of wit/task.wit with componentize-py.

run(input) receives the input JSON bytes {"text": "...", "top": N} and
returns {"total": T, "unique": U, "top": [{"word": w, "count": n}, ...]}:
words are maximal runs of ASCII letters and digits, lowercased; every other
byte separates words; the top list is sorted by count descending, then by
word in byte order. Invalid input is an `err` with a message.
See examples/inputs/wordfreq_reference.py for the reference rules.
"""

import json
import re

import wit_world
from componentize_py_types import Err
from wit_world.imports import host

DEFAULT_TOP = 10
# Matched against the UTF-8 bytes, so that any non-ASCII byte separates words.
WORD = re.compile(rb"[A-Za-z0-9]+")


MAX_DEPTH = 200
STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
BRACKET = re.compile(rb"[\[\]{}]")


def check_depth(input: bytes) -> None:
    """Rejects JSON nested deeper than MAX_DEPTH: CPython's JSON decoder
    recurses in C, and would exhaust the wasm stack (a trap) long before
    its own recursion limit."""
    if input.count(b"[") + input.count(b"{") <= MAX_DEPTH:
        return
    depth = 0
    for b in BRACKET.findall(STRING.sub(b"", input)):
        depth += 1 if b in (b"[", b"{") else -1
        if depth > MAX_DEPTH:
            raise ValueError(f"invalid input JSON: nested deeper than {MAX_DEPTH}")


def wordfreq(input: bytes) -> dict:
    """Computes the output object; raises ValueError on invalid input."""
    check_depth(input)
    try:
        req = json.loads(input)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"invalid input JSON: {e}") from None
    if not isinstance(req, dict):
        raise ValueError("invalid input JSON: expected an object")
    text = req.get("text")
    if not isinstance(text, str):
        raise ValueError('input needs a string field "text"')
    top = req.get("top", DEFAULT_TOP)
    if isinstance(top, bool) or not isinstance(top, int) or top < 0:
        raise ValueError('"top" must be a non-negative integer')

    # "surrogatepass": a lone \ud83d escape still encodes (to non-ASCII
    # bytes, which separate words like any other).
    data = text.encode("utf-8", "surrogatepass")
    counts: dict[bytes, int] = {}
    for m in WORD.finditer(data):
        w = m.group().lower()
        counts[w] = counts.get(w, 0) + 1
    host.progress(len(data), len(data))

    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    total = sum(counts.values())
    host.log(f"wordfreq: {total} words, {len(counts)} distinct")
    return {
        "total": total,
        "unique": len(counts),
        "top": [{"word": w.decode("ascii"), "count": n} for w, n in ranked[:top]],
    }


class WitWorld(wit_world.WitWorld):
    def run(self, input: bytes) -> bytes:
        try:
            out = wordfreq(input)
        except ValueError as e:
            raise Err(str(e))
        return json.dumps(out, separators=(",", ":")).encode()
