"""The Mininet CLI of a live lab, with three commands of the lab's own.

It is Mininet's own CLI (``<host> <command>`` runs in that host's shell, as the user
types it), plus ``fault`` and ``nlb`` (the same requests ``caslab fault`` / ``caslab
nlb`` send from another shell, recorded the same way) and ``lab`` (the host table).
Ctrl-C while a host's command runs interrupts that command (Mininet's behaviour);
Ctrl-C at the prompt leaves the lab, as ``exit`` and Ctrl-D do.
"""

from __future__ import annotations

import shlex
import subprocess

from mininet.cli import CLI
from mininet.log import output, setLogLevel

from caslab.run.live_control import fault_request


class LiveCli(CLI):
    prompt = "mininet> "

    def __init__(self, net, live, **kwargs):
        self.live = live
        setLogLevel("output")  # the lab builds quietly ("error"); the CLI shows host output
        super().__init__(net, **kwargs)

    def run(self):
        while True:
            try:
                for node in self.mn.values():
                    while node.waiting:
                        node.sendInt()
                        node.waitOutput()
                if self.isatty():
                    subprocess.run(["stty", "echo", "sane", "intr", "^C"], check=False)
                self.cmdloop()
                return
            except KeyboardInterrupt:
                output("\nCtrl-C at the prompt: leaving the live lab\n")
                return

    def _answer(self, reply: dict) -> None:
        output((reply.get("answer") if reply.get("ok") else f"refused: {reply.get('error')}") + "\n")

    def do_fault(self, line):
        "fault KIND [TARGET ...] [--key value ...]: inject a fault now (as caslab fault)."
        try:
            request = fault_request(shlex.split(line))
        except ValueError as exc:
            output(f"{exc}\n")
            return
        self._answer(self.live.handle(request))

    def do_nlb(self, line):
        "nlb show | drain|rejoin|down|up [VIP] MEMBER [--deadline S] | affinity VIP VALUE (as caslab nlb)."
        words = shlex.split(line)
        deadline = None
        if "--deadline" in words:
            at = words.index("--deadline")
            try:
                deadline = float(words[at + 1])
            except (IndexError, ValueError):
                output("--deadline needs a number of seconds\n")
                return
            del words[at:at + 2]
        words += [None] * (3 - len(words))
        self._answer(self.live.handle({"op": "nlb", "action": words[0] or "show", "vip": words[1],
                                       "value": words[2], "deadline": deadline}))

    def do_lab(self, _line):
        "lab: the live lab's hosts, pids, arrays and admin API."
        output(self.live.table() + "\n")
