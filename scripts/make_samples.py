"""Regenerate sample_payloads/ (deterministic): realistic extension-shaped payloads, visits
and aggregates in separate files as the extension sends them, plus an API-dialect file and a
handful of invalid records of different kinds. Run: python scripts/make_samples.py"""
from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "sample_payloads"
DAY0 = 1763856000000  # 2025-11-23T00:00:00Z

SITES = [
    ("https://github.com/pagesync/pagesync/pull/{n}", "Pull request #{n} · pagesync/pagesync", "work_code_review"),
    ("https://github.com/pagesync/pagesync/blob/main/src/{w}.py", "{w}.py at main · pagesync", "work_coding"),
    ("https://stackoverflow.com/questions/{n}/{w}", "How do I {w} in Python? - Stack Overflow", None),
    ("https://docs.python.org/3/library/{w}.html", "{w} — Python 3.13 documentation", "work_documentation"),
    ("https://en.wikipedia.org/wiki/{W}", "{W} — Wikipedia", "reference"),
    ("https://ja.wikipedia.org/wiki/{n}", "東京の歴史 {n} — ウィキペディア", "reference"),
    ("https://www.youtube.com/watch?v={id}&utm_source=share", "Lo-fi beats to {w} to ♫", "entertainment_video"),
    ("https://www.youtube.com/shorts/{id}", "#shorts {w} 😂", None),
    ("https://news.bbc.co.uk/news/technology-{n}", "Tech news: {W} | BBC News", "news"),
    ("https://www.theguardian.com/world/2025/nov/{d}/{w}", "Världen idag: {W} | The Guardian", None),
    ("https://www.amazon.co.uk/dp/B0{n}?tag=x&fbclid=abc", "Amazon.co.uk: Kaffeemühle „{W}“", "shopping"),
    ("https://mail.google.com/mail/u/0/#inbox/{id}", "Inbox (3) – alice@example.com – Gmail", "work_communication"),
    ("https://twitter.com/alice/status/{n}", "Alice on X: \"{w} is underrated\"", "social_media"),
    ("https://medium.com/@bob/{w}-{id}", "Why {W} matters – Medium", None),
    ("https://xn--bcher-kva.example/katalog/{w}", "Bücher über {W}", None),
    ("https://arxiv.org/abs/2511.{n}", "[2511.{n}] Attention is all you {w}", "learning_reading"),
    ("https://search.example.com/?q={w}|{W}&lang=fr^2", "Recherche : « {w} »", None),
    ("http://localhost:8000/jobs", "pagesync · jobs", "work_coding"),
]
WORDS = ["merge", "queue", "parse", "retry", "cache", "stream", "batch", "sort", "index", "shard"]


def visit(rng, client, tab, start, url_t, title_t, category):
    w = rng.choice(WORDS)
    fill = dict(n=rng.randint(1000, 99999), w=w, W=w.capitalize(), id=f"{rng.getrandbits(40):x}",
                d=rng.randint(10, 28))
    duration = rng.choice([rng.randint(2_000, 60_000), rng.randint(60_000, 900_000), rng.randint(900_000, 2_400_000)])
    active = int(duration * rng.uniform(0.05, 0.95))
    end = start + duration
    vid = f"pv_{start}_{tab}"
    host = url_t.split("/")[2].format(**fill)
    return {
        "visitId": vid, "id": vid, "tabId": tab, "url": url_t.format(**fill), "title": title_t.format(**fill),
        "domain": host, "startedAt": start, "timestamp": start, "endedAt": end,
        "duration": duration, "durationSeconds": round(duration / 1000) or None,
        "activeDuration": active, "engagementRate": round(active / duration, 4),
        "isActive": False, "idlePeriods": [], "lastHeartbeat": end - rng.randint(0, 3000),
        "category": category, "categoryConfidence": 0.8 if category else 0,
        "categoryMethod": "metadata" if category else None,
        "metadata": {"description": f"About {w}", "ogType": rng.choice([None, "article", "website"]),
                     "keywords": rng.sample(WORDS, 3)},
        "anonymousClientId": client,
    }


def session(rng, client, tabs, day_offset):
    visits, aggs = [], []
    t = DAY0 + day_offset * 86_400_000 + rng.randint(7, 10) * 3_600_000
    for tab in tabs:
        start = t
        tab_visits = []
        for _ in range(rng.randint(3, 9)):
            url_t, title_t, cat = rng.choice(SITES)
            v = visit(rng, client, tab, t, url_t, title_t, cat)
            tab_visits.append(v)
            t = v["endedAt"] + rng.randint(500, 120_000)
        durations = {}
        for v in tab_visits:
            durations[v["domain"]] = durations.get(v["domain"], 0) + v["duration"]
        aggs.append({
            "tabId": tab, "startTime": start, "lastActiveTime": tab_visits[-1]["endedAt"],
            "totalActiveDuration": sum(v["activeDuration"] for v in tab_visits),
            "domainDurations": durations, "pageCount": len(tab_visits),
            "currentUrl": tab_visits[-1]["url"], "currentDomain": tab_visits[-1]["domain"],
            "statistics": {"mostVisitedDomain": max(durations, key=durations.get),
                           "averagePageDuration": sum(durations.values()) // len(tab_visits)},
            "anonymousClientId": client,
        })
        visits.extend(tab_visits)
    return visits, aggs


def invalid_visits(client):
    base = {"tabId": 900, "title": "bad", "duration": 1000, "anonymousClientId": client}
    return [
        {**base, "url": "https://example.com/no-id", "startedAt": DAY0 + 1000},
        {**base, "id": "pv_bad_js", "url": "javascript:alert(1)", "startedAt": DAY0 + 2000},
        {**base, "id": "pv_bad_seconds", "url": "https://example.com/s", "startedAt": DAY0 // 1000},
        {**base, "id": "pv_bad_duration", "url": "https://example.com/d", "startedAt": DAY0 + 3000,
         "duration": -5},
        {**base, "id": "pv_bad_category", "url": "https://example.com/c", "startedAt": DAY0 + 4000,
         "category": "cooking"},
        {**base, "id": "pv_bad_engagement", "url": "https://example.com/e", "startedAt": DAY0 + 5000,
         "engagementRate": 1.7},
    ]


def main():
    rng = random.Random(20251123)
    OUT.mkdir(exist_ok=True)
    files = {}
    for name, client, tab0, days in (("laptop", "anon_3f9c2a1b7d4e", 100, range(0, 5)),
                                     ("desktop", "anon_81be0c55aa12", 500, range(2, 7))):
        visits, aggs = [], []
        for i, day in enumerate(days):
            v, a = session(rng, client, [tab0 + 10 * i + k for k in range(4)], day)
            visits += v
            aggs += a
        if name == "laptop":
            visits[5:5] = invalid_visits(client)
            aggs.append({"tabId": 999, "startTime": DAY0 + 50_000, "lastActiveTime": DAY0 + 40_000,
                         "closedAt": DAY0 + 40_000, "domainDurations": {"example.com": 10},
                         "anonymousClientId": client})
        common = {"anonymousClientId": client, "extensionVersion": "1.4.2", "browserName": "Chrome",
                  "browserVersion": "131.0"}
        files[f"{name}_1_visits.json"] = {**common, "pageVisits": visits, "tabAggregates": []}
        files[f"{name}_2_aggregates.json"] = {**common, "pageVisits": [], "tabAggregates": aggs}
    files["api_dialect.json"] = api_dialect(rng)
    for fname, body in files.items():
        (OUT / fname).write_text(json.dumps(body, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        print(fname, len(body["pageVisits"]), "visits", len(body["tabAggregates"]), "aggregates")


def api_dialect(rng):
    visits, aggs = [], []
    for i in range(12):
        vid = f"3f6c1b2a-9d4e-4c1f-8a55-{i:012d}"
        secs = rng.randint(5, 900)
        visits.append({"id": vid, "url": f"https://example.org/articles/{40 + i}?utm_source=feed&page=2",
                       "title": f"Article n°{i} — naïve café", "visited_at": f"2025-11-25T09:{10 + i}:00Z",
                       "tab_id": 7, "domain": "www.Example.org", "duration_seconds": secs,
                       "active_duration_seconds": secs // 2, "engagement_rate": 0.5,
                       "category": "learning_reading", "category_confidence": 0.8,
                       "category_method": "metadata", "metadata": {"ogType": "article"}})
        aggs.append({"id": f"b1e0d6a4-2f3c-4e55-9a7b-{i:012d}", "page_visit_id": vid,
                     "total_time_seconds": secs + 20, "active_time_seconds": secs // 2,
                     "scroll_depth_percent": rng.randint(0, 100), "closed_at": f"2025-11-25T10:{10 + i}:00Z"})
    aggs.append({"id": "agg_bad_scroll", "page_visit_id": visits[0]["id"], "total_time_seconds": 5,
                 "scroll_depth_percent": 140})
    return {"pageVisits": visits, "tabAggregates": aggs}


if __name__ == "__main__":
    main()
