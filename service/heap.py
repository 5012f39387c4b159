"""The serving process's long-lived heap, kept out of the cyclic garbage collector's way."""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger("lrbnn.service.heap")


def settle() -> float:
    """Collect once, then move every object alive now into the permanent generation (``gc.freeze``);
    returns the seconds it took.

    Why: once torch, scikit-learn, the FHIR models and the served models are loaded, the bundled
    repository leaves about 420,000 objects tracked by the collector, and every generation-2 collection
    walked all of them: 200-310 ms with every thread stopped (the collector holds the interpreter lock),
    every 10-20 s under load, a latency spike on every request in flight and the cause of the overload
    benchmark's late outliers (issue #13, ``docs/reliability.md``). Frozen objects are never scanned
    again, so a collection walks only what serving allocated since. Objects still die by reference
    counting as usual; only a reference cycle that becomes garbage after the freeze stays. So a reload
    calls this again and unfreezes first: the replaced version, once its last request is answered, is
    collected then (at worst one replaced version waits for the next reload). It is what gunicorn's
    preload users and CPython's ``gc.freeze`` documentation recommend for long-lived servers.
    """
    t0 = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    seconds = time.perf_counter() - t0
    log.info("heap settled", extra={"frozen_objects": gc.get_freeze_count(), "seconds": round(seconds, 3)})
    return seconds
