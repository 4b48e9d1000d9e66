// wordfreq: a wpool task written in JavaScript, built into a component of
// the `task` world of wit/task.wit with componentize-js (SpiderMonkey).
//
// run(input) receives the input JSON bytes {"text": "...", "top": N} and
// returns {"total": T, "unique": U, "top": [{"word": w, "count": n}, ...]}:
// words are maximal runs of ASCII letters and digits, lowercased; every
// other character separates words (a non-ASCII character is non-ASCII bytes
// in UTF-8, so this is the byte rule of the other languages); the top list
// is sorted by count descending, then by word in byte order. Invalid input
// is an `err` with a message: componentize-js turns an exception thrown by
// an export returning `result<_, string>` into `err(String(exception))`.
// See examples/inputs/wordfreq_reference.py for the reference rules.

import { log, progress } from 'wpool:task/host@0.1.0';

const DEFAULT_TOP = 10;
const WORD = /[A-Za-z0-9]+/g;

function wordfreq(input) {
  let req;
  try {
    req = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(input));
  } catch (e) {
    throw `invalid input JSON: ${e.message ?? e}`;
  }
  if (req === null || typeof req !== 'object' || Array.isArray(req)) {
    throw 'invalid input JSON: expected an object';
  }
  const text = req.text;
  if (typeof text !== 'string') throw 'input needs a string field "text"';
  const top = req.top === undefined ? DEFAULT_TOP : req.top;
  if (!Number.isInteger(top) || top < 0) throw '"top" must be a non-negative integer';

  const counts = new Map();
  let total = 0;
  for (const [word] of text.matchAll(WORD)) {
    const w = word.toLowerCase();
    counts.set(w, (counts.get(w) ?? 0) + 1);
    total += 1;
  }
  progress(BigInt(input.length), BigInt(input.length));

  // Words are ASCII, so comparing JS strings is comparing bytes.
  const ranked = [...counts].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  log(`wordfreq: ${total} words, ${counts.size} distinct`);
  return {
    total,
    unique: counts.size,
    top: ranked.slice(0, top).map(([word, count]) => ({ word, count })),
  };
}

export function run(input) {
  return new TextEncoder().encode(JSON.stringify(wordfreq(input)));
}
