"""Random UUIDs and ISO times made on the hot paths: valid, distinct, fork-safe, exact."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime

from calltags.ids import random_uuid
from calltags.times import iso_ms


def test_random_uuids_are_distinct_version_4_uuids() -> None:
    made = [random_uuid() for _ in range(5000)]  # crosses many refills of the buffer
    assert len(set(made)) == len(made)
    for text in made:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert str(parsed) == text


def test_a_forked_process_does_not_repeat_its_parents_uuids() -> None:
    random_uuid()  # the buffer now holds unused UUIDs
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next UUIDs, to the parent
        os.close(read)
        os.write(write, ",".join(random_uuid() for _ in range(10)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split(","))
    os.waitpid(pid, 0)
    parent = {random_uuid() for _ in range(10)}
    assert len(child) == 10
    assert not child & parent


def test_iso_ms_is_utc_to_the_millisecond() -> None:
    assert iso_ms(0) == "1970-01-01T00:00:00.000Z"
    assert iso_ms(1_764_417_600_123) == "2025-11-29T12:00:00.123Z"
    assert iso_ms(1_764_417_600_999) == "2025-11-29T12:00:00.999Z"
    for ms in range(1_780_000_000_000, 1_780_000_000_000 + 86_400_000 * 40, 7_654_321):
        expected = datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        assert iso_ms(ms) == f"{expected}.{ms % 1000:03d}Z"
