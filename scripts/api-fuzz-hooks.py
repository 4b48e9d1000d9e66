"""schemathesis hooks for wpool's API, loaded by scripts/api-fuzz.sh.

A module upload (`POST /v1/modules`, `application/wasm`) is raw bytes,
which schemathesis knows how to send as `application/octet-stream` but not
under the wasm media type: send it the same way.
"""

import schemathesis

schemathesis.serializer.alias("application/wasm", "application/octet-stream")
