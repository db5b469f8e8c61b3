"""The drain baseline: the same tasks run by a stock Huey consumer (default Consumer
options, one worker, no pagesync supervisor), like `huey_consumer` would run them.
Settings come from PAGESYNC_* variables. Run: python -m bench.plain_consumer"""
from __future__ import annotations

import logging

from pagesync import store
from pagesync.config import Settings
from pagesync.queue import make_huey


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    settings = Settings.from_env()
    store.init_db(settings.db)
    make_huey(settings).create_consumer().run()


if __name__ == "__main__":
    main()
