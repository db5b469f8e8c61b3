"""Bench payloads in the extension's shape: visits and tab aggregates of realistic browsing
sessions (the generator of scripts/make_samples.py), cut into requests the way the
extension sends them (visits and aggregates in separate requests, up to `batch` records),
pre-serialised so that the HTTP client is not the bottleneck."""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import make_samples  # noqa: E402  (the same generator as sample_payloads/)

CLIENT = {"extensionVersion": "1.4.2", "browserName": "Chrome", "browserVersion": "131.0"}


def records(n: int, seed: int = 1) -> tuple[list, list]:
    """About `n` records (visits, aggregates), every id unique, times in the past."""
    rng = random.Random(seed)
    visits, aggs = [], []
    client = f"anon_{seed:012x}"
    tab = seed * 1_000_000  # ids (pv_<start>_<tab>) never collide across seeds
    session = 0
    while len(visits) + len(aggs) < n:
        tabs = list(range(tab, tab + 4))
        v, a = make_samples.session(rng, client, tabs, session % 300)
        visits += v
        aggs += a
        tab += 4
        session += 1
    extra = len(visits) + len(aggs) - n
    return visits[:len(visits) - extra], aggs


def requests_for(visits: list, aggs: list, batch: int = 1000, client: str = "anon") -> list[dict]:
    out = []
    for key, other, items in (("pageVisits", "tabAggregates", visits),
                              ("tabAggregates", "pageVisits", aggs)):
        for i in range(0, len(items), batch):
            out.append({"anonymousClientId": client, **CLIENT, key: items[i:i + batch], other: []})
    return out


def bodies(n: int, batch: int = 1000, seed: int = 1) -> list[tuple[bytes, int]]:
    """[(serialised request body, records in it)] holding about `n` records."""
    visits, aggs = records(n, seed)
    reqs = requests_for(visits, aggs, batch, f"anon_{seed:012x}")
    return [(json.dumps(r, ensure_ascii=False).encode("utf-8"),
             len(r["pageVisits"]) + len(r["tabAggregates"])) for r in reqs]


def write_file(path: Path, n: int, batch: int = 1000, seed: int = 1) -> int:
    """A payload file for `pagesync replay` (a list of request objects); returns records."""
    visits, aggs = records(n, seed)
    reqs = requests_for(visits, aggs, batch, f"anon_{seed:012x}")
    path.write_text(json.dumps(reqs, ensure_ascii=False), encoding="utf-8")
    return len(visits) + len(aggs)
