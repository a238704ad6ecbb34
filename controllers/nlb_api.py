"""Admin API of the SDN NLB: HTTP + JSON on loopback, served from the controller process.

os-ken ships no WSGI stack, so this is the standard library's threaded HTTP server (it
runs as a native thread under os-ken and as a green thread under Ryu's eventlet).

    GET  /nlb                         arrays (VIPs), members, health, counters
    POST /nlb/<vip>/members/<name>/drain    {"deadline_s": 30}   no new sessions
    POST /nlb/<vip>/members/<name>/rejoin                        take new sessions again
    POST /nlb/<vip>/members/<name>/down | /up                    administrative health
    POST /nlb/<vip>/affinity          {"affinity": "single"}
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def make_handler(app):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep the controller's stderr quiet
            pass

        def reply(self, code: int, body: dict) -> None:
            data = json.dumps(body, sort_keys=True).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path.rstrip("/") in ("/nlb", ""):
                self.reply(200, app.snapshot())
            else:
                self.reply(404, {"error": f"no such resource {self.path}"})

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}") if length else {}
            except json.JSONDecodeError:
                self.reply(400, {"error": "body is not JSON"})
                return
            parts = [p for p in self.path.split("/") if p]
            if len(parts) < 3 or parts[0] != "nlb":
                self.reply(404, {"error": f"no such resource {self.path}"})
                return
            vip = app.find_vip(parts[1])
            if vip is None:
                self.reply(404, {"error": f"no VIP {parts[1]}"})
                return
            if parts[2] == "affinity" and len(parts) == 3:
                self.set_affinity(vip, body)
                return
            if len(parts) != 5 or parts[2] != "members" or parts[3] not in vip.pool.members:
                self.reply(404, {"error": f"no such member or action in {self.path}"})
                return
            name, action = parts[3], parts[4]
            if action == "drain":
                app.drain(vip, name, body.get("deadline_s"))
            elif action == "rejoin":
                app.rejoin(vip, name)
            elif action in ("down", "up"):
                app.set_member(vip, name, f"admin_{action}", alive=action == "up")
            else:
                self.reply(404, {"error": f"unknown action {action}"})
                return
            self.reply(200, app.snapshot())

        def set_affinity(self, vip, body):
            from controllers.nlb_logic import AFFINITIES

            affinity = body.get("affinity")
            if affinity not in AFFINITIES:
                self.reply(400, {"error": f"affinity must be one of {list(AFFINITIES)}"})
                return
            with app.lock:
                vip.pool.affinity = affinity
            self.reply(200, app.snapshot())

    return Handler


def serve_api(app, host: str, port: int) -> None:
    server = ThreadingHTTPServer((host, port), make_handler(app))
    server.daemon_threads = True
    server.serve_forever()
