"""schemathesis hooks for wpool's API, loaded by scripts/api-fuzz.sh.

- A module upload (`POST /v1/modules`, `application/wasm`) is raw bytes,
  which schemathesis sends as `application/octet-stream` but does not know
  under the wasm media type: send it the same way.
- `DELETE /v1/tasks/{id}` cancels a task; it does not remove it. The task
  stays readable, in state `cancelled` with its result, so that whoever
  submitted it can see how it ended. The built-in `use_after_free` check
  takes every DELETE for a removal, so the run replaces it (api-fuzz.sh
  excludes it) with this one: the same check, except for reads of a task.
  Schemathesis 4.32 ignores a per-operation `enabled = false` for this
  check in stateful tests, hence a check rather than a setting.
- `POST /v1/tasks:batch` also takes JSON Lines (`application/x-ndjson`,
  `application/jsonl`), documented with the same array of tasks as its
  JSON body: each element is sent as a line of its own.
- CPython 3.11 can fail `ast.parse` with "AST constructor recursion depth
  mismatch" when Hypothesis, from a worker thread, parses a source file to
  name a lambda in a strategy's description; the run then reports an
  error that is not about the API. A lambda whose source cannot be parsed
  is described as `lambda` instead.
"""

import json

import schemathesis
from hypothesis.internal import lambda_sources
from schemathesis.specs.openapi.checks import use_after_free

_describe_lambda = lambda_sources.lambda_description


def _describe_lambda_or_not(f):
    try:
        return _describe_lambda(f)
    except SystemError as exc:
        if "AST constructor recursion depth mismatch" not in str(exc):
            raise
        return "lambda"


lambda_sources.lambda_description = _describe_lambda_or_not

schemathesis.serializer.alias("application/wasm", "application/octet-stream")


@schemathesis.serializer("application/x-ndjson", "application/jsonl")
def _json_lines(ctx, value):
    """An array as JSON Lines, one element per line; anything else as one line."""
    if isinstance(value, list):
        return b"".join(json.dumps(v).encode() + b"\n" for v in value)
    return json.dumps(value).encode() + b"\n"


# Reads that stay valid after a task's DELETE (a cancel).
_READS_OF_A_TASK = {"/v1/tasks/{id}", "/v1/tasks/{id}/result"}


@schemathesis.check
def use_after_free_but_cancel(ctx, response, case):
    """`use_after_free`, except that a cancelled task may still be read."""
    if case.operation.path in _READS_OF_A_TASK:
        return None
    return use_after_free(ctx, response, case)
