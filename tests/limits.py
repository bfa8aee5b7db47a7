"""Every time limit the test suite uses, in one place.

No test may depend on how fast the machine is. A limit is either generous and fixed here, or it
comes from a speed measured on this machine in this session (the real teacher's warm-up request),
so a slow CPU (say, one that has no native bf16) gets proportionally more time, not a failure.
"""
from __future__ import annotations

# Fake, in-process servers answer in milliseconds; a request to one may take this long.
FAKE_REQUEST_S = 10.0
# A reply the fake server holds back on purpose, to be cut off by a much shorter client deadline.
FAKE_HELD_REPLY_S = 5.0
FAKE_CLIENT_DEADLINE_S = 0.3

# A real vLLM server's start (model load and warm-up) on a 2-core CPU: seen 30-70 s.
SERVER_START_S = 900.0
# A Ray test stalled in a shuffle fails with its stack after this long, not at CI's limit (~1 min here).
RAY_STALL_S = 900
# Waits for a condition in a test with a real server (a request mid-flight, a worker to finish).
REAL_WAIT_S = 900.0

# Per-request deadline for the real teacher: the measured time of one long warm-up prompt, times
# how many such prompts a test sends at once (16), times a safety factor, and never under the
# client's own default.
BURST = 16
SAFETY = 4.0
FLOOR_S = 120.0


def teacher_request_s(warmup_s: float) -> float:
    """A request deadline for the real teacher from its measured warm-up time."""
    return max(FLOOR_S, SAFETY * BURST * warmup_s)
