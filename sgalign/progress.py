"""Progress for long loops: a tqdm bar when stderr is a terminal, else one plain log line every ``every`` items
or ``seconds`` (CI logs and files get a few readable lines, not thousands of carriage-return frames)."""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable


class LineProgress:
    """The tqdm subset the project uses (update, set_postfix, close), printing plain lines."""

    def __init__(self, total: int | None, desc: str = "", unit: str = "it", initial: int = 0,
                 every: int | None = None, seconds: float = 60.0, log: Callable[[str], None] | None = None):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.every = every or max(1, (total or 10) // 10)  # about ten lines per loop
        self.seconds = seconds
        self.log = log or (lambda m: print(m, file=sys.stderr, flush=True))
        self._t0 = self._last_t = time.monotonic()
        self._n0 = self._last_n = initial
        self._postfix = ""

    def set_postfix(self, **kw: Any) -> None:
        self._postfix = ", ".join(f"{k}={v}" for k, v in kw.items())

    def _line(self) -> str:
        rate = (self.n - self._n0) / max(time.monotonic() - self._t0, 1e-9)
        tot = f"/{self.total}" if self.total is not None else ""
        return (f"{self.desc}: {self.n}{tot} {self.unit} ({rate:.2f} {self.unit}/s)"
                + (f" {self._postfix}" if self._postfix else ""))

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.n - self._last_n >= self.every or now - self._last_t >= self.seconds:
            self.log(self._line())
            self._last_n, self._last_t = self.n, now

    def close(self) -> None:
        if self.n != self._last_n:
            self.log(self._line())
            self._last_n = self.n


def progress(total: int | None, desc: str = "", unit: str = "it", initial: int = 0, enabled: bool = True,
             stream=None, **line_kw: Any):
    """A tqdm bar if ``enabled`` and ``stream`` (default stderr) is a terminal; a ``LineProgress`` if ``enabled``
    otherwise; a silent ``LineProgress`` when disabled."""
    stream = stream if stream is not None else sys.stderr
    if enabled and hasattr(stream, "isatty") and stream.isatty():
        from tqdm.auto import tqdm  # heavy (~0.1 s): only on a terminal; progress is imported by every command
        return tqdm(total=total, desc=desc, unit=unit, initial=initial, file=stream)
    if not enabled:
        line_kw["log"] = lambda m: None
    return LineProgress(total, desc, unit, initial, **line_kw)


def quiet_library_bars(stream=None) -> None:
    """Off a terminal, silence the progress bars transformers / diffusers / datasets / huggingface_hub draw
    themselves (weight loading, dataset saving): they are carriage-return frames, not log lines. Libraries imported
    later read the environment variables; those already imported are switched off directly."""
    stream = stream if stream is not None else sys.stderr
    if hasattr(stream, "isatty") and stream.isatty():
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    for mod, fn in (("transformers.utils.logging", "disable_progress_bar"),
                    ("diffusers.utils.logging", "disable_progress_bar"),
                    ("datasets.utils.logging", "disable_progress_bar"),
                    ("huggingface_hub.utils", "disable_progress_bars")):
        m = sys.modules.get(mod)
        if m is not None and hasattr(m, fn):
            getattr(m, fn)()
