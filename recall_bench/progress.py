"""Progress of long work: a tqdm bar on a terminal, plain periodic lines elsewhere (a log
file or a pipe, where a bar's carriage returns would pile up on one line)."""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm

LINE_EVERY_S = 30.0  # plain lines: at most one this often


def on_terminal() -> bool:
    return sys.stderr.isatty() or "ipykernel" in sys.modules


class Progress:
    """Steps done out of `total`, with a few named figures; silent when not `enabled`."""

    def __init__(self, total: int, initial: int, desc: str, enabled: bool = True):
        self.total, self.step, self.desc = total, initial, desc
        self.enabled, self.fields = enabled, {}
        self.bar = None
        if enabled and on_terminal():
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", leave=False)
        self.last_line = time.monotonic()

    def update(self, steps: int, fields: dict[str, str] | None = None) -> None:
        self.step += steps
        if fields is not None:
            self.fields = fields
        if self.bar is not None:
            self.bar.update(steps)
            if fields is not None:
                self.bar.set_postfix(fields)
        elif self.enabled and time.monotonic() - self.last_line >= LINE_EVERY_S:
            self.line()

    def line(self) -> None:
        shown = " ".join(f"{k}={v}" for k, v in self.fields.items())
        print(f"{self.desc}: step {self.step}/{self.total} {shown}".rstrip(), file=sys.stderr)
        self.last_line = time.monotonic()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self.line()


def log(progress: bool, text: str) -> None:
    """A line of an experiment's progress on stderr, when progress is shown."""
    if progress:
        print(text, file=sys.stderr)
