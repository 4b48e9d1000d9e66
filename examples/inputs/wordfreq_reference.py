#!/usr/bin/env python3
"""Reference implementation of the `wordfreq` example task.

Not used by any test at run time: it generates and checks the expected
outputs in this directory, and documents the rules every language follows.

Rules:
  * input is a JSON object {"text": "...", "top": N}; "top" is optional
    (default 10); a missing or non-string "text" is an error;
  * a word is a maximal run of ASCII letters and digits [A-Za-z0-9],
    lowercased; every other byte of the UTF-8 text (spaces, punctuation,
    apostrophes, any non-ASCII byte) separates words;
  * output {"total": words, "unique": distinct words, "top": [...]} where
    "top" holds the N most frequent words as {"word": w, "count": n},
    sorted by count descending, then by word ascending (byte order).

Usage:
  wordfreq_reference.py INPUT.json          print the output for INPUT.json
  wordfreq_reference.py --write             regenerate every *.expected.json
  wordfreq_reference.py --check             check every *.expected.json
  wordfreq_reference.py --compare OUT.json EXPECTED.json
                                            compare two outputs as JSON values
"""

import json
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Inputs whose expected output is kept next to them.
CASES = ["wordfreq", "wordfreq-edge", "wordfreq-empty"]
DEFAULT_TOP = 10


class TaskError(Exception):
    """Invalid input: the task fails with this message (exit code 2)."""


def words(text: str):
    """Yields the words of `text` following the byte rules above."""
    current = bytearray()
    for b in text.encode("utf-8", "surrogatepass"):  # lone \uD83D escapes too
        if (48 <= b <= 57) or (65 <= b <= 90) or (97 <= b <= 122):
            current.append(b | 0x20 if b >= 65 else b)  # ASCII lowercase
        elif current:
            yield current.decode("ascii")
            current = bytearray()
    if current:
        yield current.decode("ascii")


def wordfreq(input_bytes: bytes) -> dict:
    try:
        req = json.loads(input_bytes)
    except (ValueError, UnicodeDecodeError) as e:
        raise TaskError(f"invalid input JSON: {e}") from None
    if not isinstance(req, dict):
        raise TaskError("input must be a JSON object")
    text = req.get("text")
    if not isinstance(text, str):
        raise TaskError('input needs a string field "text"')
    top = req.get("top", DEFAULT_TOP)
    if isinstance(top, bool) or not isinstance(top, int) or top < 0:
        raise TaskError('"top" must be a non-negative integer')
    counts = Counter(words(text))
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0].encode()))
    return {
        "total": sum(counts.values()),
        "unique": len(counts),
        "top": [{"word": w, "count": n} for w, n in ranked[:top]],
    }


def expected_path(case: str) -> Path:
    return HERE / f"{case}.expected.json"


def main(argv):
    if argv[:1] == ["--write"]:
        for case in CASES:
            out = wordfreq((HERE / f"{case}.json").read_bytes())
            expected_path(case).write_text(json.dumps(out, indent=2) + "\n")
            print(f"wrote {expected_path(case).name}")
        return 0
    if argv[:1] == ["--check"]:
        ok = True
        for case in CASES:
            out = wordfreq((HERE / f"{case}.json").read_bytes())
            same = out == json.loads(expected_path(case).read_text())
            ok &= same
            print(f"{case}: {'ok' if same else 'DIFFERS'}")
        return 0 if ok else 1
    if argv[:1] == ["--compare"] and len(argv) == 3:
        a = json.loads(Path(argv[1]).read_bytes())
        b = json.loads(Path(argv[2]).read_bytes())
        print("same" if a == b else "DIFFERENT")
        return 0 if a == b else 1
    if len(argv) == 1:
        try:
            out = wordfreq(Path(argv[0]).read_bytes())
        except TaskError as e:
            print(f"wordfreq: {e}", file=sys.stderr)
            return 2
        print(json.dumps(out))
        return 0
    print(__doc__, file=sys.stderr)
    return 64


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
