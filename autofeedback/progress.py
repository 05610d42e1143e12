"""Progress bars with ETA (tqdm) on stderr, only when stderr is a terminal.

The log lines a stage prints (and tests and cron logs grep) stay on stdout, unchanged: with a bar shown they go
through tqdm.write so the bar is redrawn below them instead of being torn.
"""

from __future__ import annotations

import sys


class _Off:
    """A disabled bar: every call is a no-op, and say() is a plain print."""

    disable = True

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass

    def say(self, text: str) -> None:
        print(text, flush=True)


def bar(total: int, desc: str, unit: str = "it", enabled: bool = True, initial: int = 0):
    """A tqdm bar on stderr (resumed work counts from `initial`, so the ETA is for what is left)."""
    if not enabled or not _is_tty(sys.stderr):
        return _Off()
    from tqdm.auto import tqdm

    b = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)
    b.say = lambda text: tqdm.write(text, file=sys.stdout)
    return b


def _is_tty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
