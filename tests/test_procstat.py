"""The kernel's CPU counters as caslab.base.procstat parses them, on real /proc/stat lines.

/proc/stat's ``cpu`` line is user nice system idle iowait irq softirq steal guest
guest_nice (proc(5)); the kernel already counts guest time inside user and guest_nice
inside nice, so a total that adds the last two counts a virtual machine's time twice.
"""

from __future__ import annotations

import pytest

from caslab.base import procstat

# proc(5)'s example line, with a guest column (a host running a virtual machine).
MAN_PAGE = "cpu  10132153 290696 3084719 46828483 16683 0 25195 0 175628 0"

# One second on a two-core host (USER_HZ 100: 200 ticks) in which a VM kept one core busy:
# user +100 (all of it guest), idle +95, iowait +5; so half of the machine was idle.
GUEST_BEFORE = "cpu  10132153 290696 3084719 46828483 16683 0 25195 0 175628 1200"
GUEST_AFTER = "cpu  10132253 290696 3084719 46828578 16688 0 25195 0 175728 1200"

# The same second with a niced VM: nice +100, all of it guest_nice.
NICE_GUEST_BEFORE = "cpu  10132153 290696 3084719 46828483 16683 0 25195 0 175628 1200"
NICE_GUEST_AFTER = "cpu  10132153 290796 3084719 46828578 16688 0 25195 0 175628 1300"


def test_total_counts_guest_time_once():
    idle, total = procstat.machine_times(MAN_PAGE)
    assert idle == 46828483 + 16683  # idle + iowait
    assert total == 10132153 + 290696 + 3084719 + 46828483 + 16683 + 0 + 25195 + 0  # user .. steal


@pytest.mark.parametrize("before, after", [(GUEST_BEFORE, GUEST_AFTER), (NICE_GUEST_BEFORE, NICE_GUEST_AFTER)],
                         ids=["guest", "guest_nice"])
def test_a_busy_guest_leaves_half_of_two_cores_idle(before, after):
    assert procstat.idle_pct(procstat.machine_times(before), procstat.machine_times(after)) == 50.0


def test_lines_without_guest_columns():
    # Kernels before 2.6.24 end at steal, before 2.6.11 at softirq.
    assert procstat.machine_times("cpu  100 0 50 800 50 0 0 0") == (850, 1000)
    assert procstat.machine_times("cpu  100 0 50 800 50 0 0") == (850, 1000)


def test_no_tick_between_readings_is_no_sample():
    times = procstat.machine_times(MAN_PAGE)
    assert procstat.idle_pct(times, times) is None


@pytest.mark.parametrize("line", ["cpu0 1 2 3 4 5", "cpu  1 2 3", "cpu  1 2 x 4 5", ""])
def test_a_line_that_is_not_the_cpu_line_is_refused(line):
    with pytest.raises(ValueError, match="/proc/stat"):
        procstat.machine_times(line)


def test_this_machine():
    idle, total = procstat.read_machine_times()
    assert 0 < idle < total


def test_cpu_pressure_is_the_some_lines_total_in_us():
    text = ("some avg10=0.06 avg60=0.09 avg300=0.02 total=1389263682\n"
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    assert procstat.cpu_pressure_us(text) == 1389263682


def test_cpu_pressure_without_a_some_line_is_refused_by_name():
    with pytest.raises(ValueError, match="pressure/cpu"):
        procstat.cpu_pressure_us("full avg10=0.00 total=12\n")


def test_cpu_pressure_is_read_from_this_kernel_and_only_grows():
    try:
        text = open("/proc/pressure/cpu").read()
    except OSError:
        assert procstat.read_cpu_pressure_us() is None      # no PSI here: none, not an error
        return
    first = procstat.cpu_pressure_us(text)
    assert procstat.read_cpu_pressure_us() >= first
