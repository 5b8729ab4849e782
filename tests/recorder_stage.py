"""A stage module loaded by file path in subprocess tests.

Every call appends the item id to the file named by RECORDER_LOG, one line per
call, with O_APPEND so that lines from several processes never interleave.
"""

from __future__ import annotations

import asyncio
import os

from worker.stages import stage_function


@stage_function("record", stage="Record")
async def record(item: object, sleep: float = 0.0) -> None:
    line = f"{item.id}\n".encode()  # type: ignore[attr-defined]
    descriptor = os.open(os.environ["RECORDER_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(descriptor, line)
    finally:
        os.close(descriptor)
    await asyncio.sleep(float(os.environ.get("RECORDER_SLEEP", sleep)))


@stage_function("record_plain", stage="RecordPlain")
def record_plain(item: object) -> None:
    """The same as ``record``, as a plain function that blocks its thread."""
    import time

    descriptor = os.open(os.environ["RECORDER_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(descriptor, f"{item.id}\n".encode())  # type: ignore[attr-defined]
    finally:
        os.close(descriptor)
    time.sleep(float(os.environ.get("RECORDER_SLEEP", 0)))
