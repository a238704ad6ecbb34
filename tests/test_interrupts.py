"""A Ctrl-C or SIGTERM that arrives while the lab starts a process is held back until the
process is recorded, then raised: the teardown then knows every pid."""

from __future__ import annotations

import os
import signal

import pytest

from caslab import interrupts


@pytest.fixture
def installed():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    interrupts.install()
    yield
    signal.signal(signal.SIGINT, before[0])
    signal.signal(signal.SIGTERM, before[1])


def test_a_signal_inside_the_section_is_raised_when_it_ends(installed):
    done = []
    with pytest.raises(KeyboardInterrupt, match=f"signal {int(signal.SIGTERM)}"):
        with interrupts.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            done.append("recorded")  # the section runs to its end
    assert done == ["recorded"]
    with interrupts.deferred():  # nothing left pending afterwards
        pass


def test_a_signal_outside_any_section_interrupts_at_once(installed):
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        signal.sigtimedwait([], 0)  # give the handler its chance to run here


def test_nested_sections_raise_once_at_the_outermost_end(installed):
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.deferred():
            with interrupts.deferred():
                os.kill(os.getpid(), signal.SIGINT)
            reached.append("inner ended without raising")
    assert reached == ["inner ended without raising"]
