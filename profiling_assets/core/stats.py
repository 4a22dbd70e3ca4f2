"""Small figures every model stage reports."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def latency_ms(latencies_s: Sequence[float], percentile: float) -> float:
    if not latencies_s:
        return 0.0
    return float(np.percentile(np.asarray(latencies_s) * 1000.0, percentile))
