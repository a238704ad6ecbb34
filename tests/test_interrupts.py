"""A Ctrl-C or SIGTERM that arrives while the lab starts a process is held back until the
process is recorded, then raised: the teardown then knows every pid."""

from __future__ import annotations

import os
import signal

import pytest

from caslab.base import interrupts


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


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_caslab_up_keeps_the_deferral_and_still_leaves_the_cli(signum):
    """``caslab up`` needs SIGTERM and SIGHUP as ``Terminated`` (Mininet's CLI swallows a
    KeyboardInterrupt), but what it installs must still hold the signal back while a
    process is being recorded (issue 18 item 11)."""
    from caslab.run import live

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    live.catch_signals()
    try:
        done = []
        with pytest.raises(live.Terminated, match=signal.Signals(signum).name):
            with interrupts.deferred():
                os.kill(os.getpid(), signum)
                done.append("recorded")
        assert done == ["recorded"]
        with pytest.raises(live.Terminated):  # outside a section: at once
            os.kill(os.getpid(), signum)
            signal.sigtimedwait([], 0)
        with pytest.raises(KeyboardInterrupt):  # Ctrl-C stays what the CLI expects
            with interrupts.deferred():
                os.kill(os.getpid(), signal.SIGINT)
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
