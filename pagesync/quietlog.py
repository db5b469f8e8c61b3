"""While the queue (Redis) is unreachable, Huey logs a full traceback on every poll of
every worker thread and of the scheduler, several a second: rendered by Rich, that kept
half a core busy doing nothing useful. This filter keeps one line per message every
`every` seconds for connection errors and passes everything else untouched."""
from __future__ import annotations

import logging
import time

import redis

QUEUE_DOWN = (redis.ConnectionError, redis.TimeoutError, ConnectionError)


class QueueDownFilter(logging.Filter):
    def __init__(self, every: float = 30.0):
        super().__init__()
        self.every = every
        self.last: dict = {}

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, QUEUE_DOWN):
            return True
        message, now = record.getMessage(), time.monotonic()
        if now - self.last.get(message, float("-inf")) < self.every:
            return False
        self.last[message] = now
        record.msg = (f"{message}: {type(exc).__name__}: {exc} (queue unreachable; "
                      f"the same message is muted for {self.every:.0f} s)")
        record.args, record.exc_info, record.exc_text = None, None, None
        return True


def install(every: float = 30.0) -> None:
    """Add the filter to every handler of the root logger (Huey's loggers propagate)."""
    flt = QueueDownFilter(every)
    for handler in logging.getLogger().handlers:
        handler.addFilter(flt)
