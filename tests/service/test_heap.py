"""service.heap.settle: what it freezes and what it still collects."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from service import heap


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def restore_gc() -> Iterator[None]:
    yield
    gc.unfreeze()  # leave the test process's collector as it was


def _cycle() -> weakref.ref[Node]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.mark.usefixtures("restore_gc")
def test_settle_collects_garbage_then_freezes_what_is_alive() -> None:
    dead = _cycle()  # unreachable, kept alive only by its cycle
    assert dead() is not None
    seconds = heap.settle()
    assert seconds >= 0.0
    assert dead() is None  # collected before the freeze, not frozen with the rest
    assert gc.get_freeze_count() > 0 and gc.get_count()[2] == 0  # every survivor frozen, none in gen 2
    later = _cycle()  # garbage made after the freeze is collected as usual
    gc.collect()
    assert later() is None


@pytest.mark.usefixtures("restore_gc")
def test_settle_again_unfreezes_first() -> None:
    heap.settle()
    leaked = _cycle()  # frozen while alive by a strong reference, then dropped
    holder = [leaked()]
    heap.settle()
    holder.clear()
    gc.collect()
    assert leaked() is not None  # a cycle frozen while alive is not collected by ordinary collections
    heap.settle()  # the next settle (a reload) unfreezes first and collects it
    assert leaked() is None
