"""Process-wide tuning the long-running services share."""

from __future__ import annotations

import gc


def calm_garbage_collector() -> None:
    """Keep Python's cyclic garbage collector off what a service loaded at start.

    Every full collection walks all tracked objects: in the matcher, a large watchlist index
    turned a 6 µs report decode into ~30-50 µs; in the notifier, collections were the stalls
    behind the tail of the sighting-to-desk latency (500 alerts/s: p99 158-167 ms with the
    defaults, 90-100 ms with this; `giapranh bench`); in ingest, at 1,300 requests/s, a
    full collection every ~0.6 s, 55-82 ms each, and every answer waited behind it. Freezing
    moves what is loaded now out of the collector's reach, and a larger young generation
    makes collections rarer. Every HTTP service calls it once started (`create_http_app`).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
