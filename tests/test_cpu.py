"""service/cpu.py: what the machine's CPU is, read at run time."""

import os

from service.cpu import cpu_facts


def test_cpu_facts_read_this_machine():
    facts = cpu_facts()
    assert isinstance(facts["model"], str) and facts["model"]
    assert facts["flags"] == sorted(set(facts["flags"]))
    assert facts["cores"] == len(os.sched_getaffinity(0))
    if os.path.exists("/proc/cpuinfo"):
        flags = next(line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags"))
        assert set(facts["flags"]) == set(flags)
