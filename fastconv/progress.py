"""Progress reports for long loops: tqdm's bar when tqdm is installed, else a plain line.

    with Progress(60000, "epoch 1 fastconv", unit="img") as bar:
        for batch in batches:
            ...
            bar.update(len(batch), postfix=f"loss {loss:.3f}")

    for case in track(cases, "ops", unit="case"):   # the same around an iterable
        ...

Without tqdm a line such as ``epoch 1 fastconv: 12800/60000 img (21%), 1520 img/s, ETA 31 s, loss
0.512`` goes to stderr at most every ``interval`` seconds (default 3, or
``$FASTCONV_PROGRESS_INTERVAL``; 0 prints on every update), and a last one when the loop ends if
any was printed before. ``unit="B"`` shows sizes in kB / MB.
"""
from __future__ import annotations

import math
import os
import sys
import time
from typing import Optional

try:
    from tqdm import tqdm as _tqdm
except ImportError:  # progress bars are a nicety, not a requirement
    _tqdm = None

INTERVAL_ENV = "FASTCONV_PROGRESS_INTERVAL"
"""Environment variable: seconds between two plain progress lines (when tqdm is not installed)."""

_DEFAULT_INTERVAL = 3.0


def _interval_from_env() -> float:
    text = os.environ.get(INTERVAL_ENV, "")
    try:
        value = float(text)
    except ValueError:
        return _DEFAULT_INTERVAL
    return value if value >= 0 and math.isfinite(value) else _DEFAULT_INTERVAL


def _amount(n: float, unit: str) -> str:
    if unit != "B":
        return f"{n:.0f}"
    for scale, name in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if n >= scale:
            return f"{n / scale:.1f} {name}"
    return f"{n:.0f} B"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """Progress of one loop of ``total`` units (None: unknown). ``enabled=False``: silent.
    ``use_tqdm``: None (default) uses tqdm when it is installed; False always prints plain lines."""

    def __init__(self, total: Optional[float], desc: str, unit: str = "it", *, enabled: bool = True,
                 interval: Optional[float] = None, file=None, use_tqdm: Optional[bool] = None):
        self.total, self.desc, self.unit = total, desc, unit
        self.enabled = enabled
        self.file = file if file is not None else sys.stderr
        self.interval = _interval_from_env() if interval is None else interval
        self.n = 0
        self.postfix = ""
        self._start = time.perf_counter()
        self._last_print = self._start
        self._printed = False
        self._printed_n = None
        self._bar = None
        if enabled and _tqdm is not None and use_tqdm is not False:
            self._bar = _tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B",
                              unit_divisor=1000, file=self.file, leave=False, dynamic_ncols=True)

    def update(self, n: float = 1, postfix: Optional[str] = None):
        self.n += n
        if postfix is not None:
            self.postfix = postfix
        if not self.enabled:
            return
        if self._bar is not None:
            if postfix is not None:
                self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(n)
            return
        now = time.perf_counter()
        if now - self._last_print >= self.interval:
            self._last_print = now
            self._print(self.line(now))

    def line(self, now: Optional[float] = None) -> str:
        """The plain progress line: done / total, percentage, rate, ETA (and the postfix)."""
        elapsed = max((now or time.perf_counter()) - self._start, 1e-9)
        rate = self.n / elapsed
        unit = "" if self.unit == "B" else f" {self.unit}"
        if self.total:
            parts = [f"{_amount(self.n, self.unit)}/{_amount(self.total, self.unit)}{unit} "
                     f"({100 * self.n / self.total:.0f}%)"]
        else:
            parts = [f"{_amount(self.n, self.unit)}{unit}"]
        if self.unit != "B" and 0 < rate < 1:
            parts.append(f"{1 / rate:.1f} s/{self.unit}")
        else:
            parts.append(f"{_amount(rate, self.unit) if self.unit == 'B' or rate >= 10 else f'{rate:.1f}'}{unit}/s")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"ETA {_duration((self.total - self.n) / rate)}")
        elif self.total and self.n >= self.total:
            parts.append(f"done in {_duration(elapsed)}")
        if self.postfix:
            parts.append(self.postfix)
        return f"{self.desc}: " + ", ".join(parts)

    def _print(self, text: str):
        print(text, file=self.file, flush=True)
        self._printed, self._printed_n = True, self.n

    def close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and self._printed and self._printed_n != self.n:
            self._print(self.line())
        self.enabled = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def track(iterable, desc: str, unit: str = "it", *, total: Optional[float] = None, enabled: bool = True):
    """Yields the items of ``iterable``, reporting one unit of progress after each."""
    if total is None:
        try:
            total = len(iterable)
        except TypeError:
            total = None
    with Progress(total, desc, unit, enabled=enabled) as bar:
        for item in iterable:
            yield item
            bar.update(1)
