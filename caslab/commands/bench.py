"""``caslab bench``: throughput through the SDN NLB's VIP versus straight to a CAS.

Both measurements run side by side in one network (iperf3, real TCP, same switch and
hosts), so the ratio says what the VIP's rewrite flows cost, not how busy the machine
was. Speed is reported here, never asserted in tests.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from caslab.network.context import RunContext
from caslab.modes import mode_for
from caslab.network.netlab import LabNetwork
from caslab.run.scenario import start_controller
from caslab.base.waits import wait_until
from caslab.spec.experiment import validate
from labcommon.events import NullLog
from labcommon.ports import CAS_PORT
from labcommon.programs import IPERF3
from topologies.plan import LabPlan


def iperf(lab: LabNetwork, host: str, address: str, seconds: int) -> float:
    _, out = lab.run_in(host, ["iperf3", "-J", "-c", address, "-p", str(CAS_PORT), "-t", str(seconds)],
                        timeout_s=seconds + 30)
    data = json.loads(out[out.index("{"):])
    if "error" in data:
        raise RuntimeError(f"iperf3 to {address}: {data['error']}")
    return data["end"]["sum_received"]["bits_per_second"] / 1e6


def run(seconds: int = 5, rounds: int = 3) -> dict:
    plan = LabPlan.build([{"name": "HQ", "cas": 1, "mailboxes": 0, "clients": 1}])
    work = Path(tempfile.mkdtemp(prefix="caslab-bench-"))
    lab = LabNetwork(plan, work)
    spec = validate({}, "bench")
    ctx = RunContext(spec | {"mode": "sdn-nlb"}, plan, lab, work, NullLog(), mode=mode_for("sdn-nlb"))
    try:
        lab.build()
        start_controller(ctx, ctx.mode)
        lab.start()
        lab.wait_connected()
        cas, client = plan.by_role("cas")[0], plan.by_role("client")[0].name
        lab.popen_in(cas.name, IPERF3.process_name(cas.name), ["iperf3", "-s", "-p", str(CAS_PORT)], program=IPERF3)
        wait_until(lambda: lab.run_in(client, ["ping", "-c1", "-W1", cas.ip])[0] == 0, 10, "the CAS to answer")
        direct, vip = [], []
        for _ in range(rounds):  # interleaved, so drift in machine load hits both alike
            direct.append(iperf(lab, client, cas.ip, seconds))
            vip.append(iperf(lab, client, plan.sites[0].vip, seconds))
    finally:
        ctx.close()
        lab.stop()
        shutil.rmtree(work, ignore_errors=True)
    best_direct, best_vip = max(direct), max(vip)
    return {"datapath": lab.datapath, "seconds": seconds, "rounds": rounds, "direct_mbit": direct,
            "vip_mbit": vip, "ratio_best": round(best_vip / best_direct, 3),
            "ratio_mean": round(sum(vip) / sum(direct), 3)}


def main_cli(seconds: int, rounds: int) -> int:
    result = run(seconds, rounds)
    print(json.dumps(result, indent=2))
    print(f"VIP/direct throughput ratio: {result['ratio_mean']:.3f} (mean), {result['ratio_best']:.3f} (best)")
    return 0
