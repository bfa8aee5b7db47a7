"""One JSON line per figure, each carrying the hardware it was measured on (CPU model, cores,
flags, native bf16, GPU) and the dtype the measured code ran in (null where no model runs)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.settings import hardware  # noqa: E402


def emit(dtype: str | None = None, **figure) -> None:
    print(json.dumps({**figure, "dtype": figure.pop("dtype", dtype), "hardware": hardware()}, default=str,
                     ensure_ascii=False), flush=True)
