"""caslab/network/nlb_client.py, ``caslab nlb --port``: the admin API's client (issue 18 items 4, 5).
The bearer token never goes through an HTTP proxy (urllib honours ``http_proxy`` even for
127.0.0.1), URL path parts are quoted, and the token comes from a 0600 file or the
environment, never the command line (``ps`` shows it to every user)."""

from __future__ import annotations

import http.server
import json
import threading

import pytest

from caslab.commands import cli

from caslab.network import nlb_client

TOKEN = "t0ken-for-the-client"


class Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every request with {} and records (path, Authorization header)."""

    seen: list = []

    def log_message(self, *args):
        pass

    def _answer(self):
        type(self).seen.append((self.path, self.headers.get("Authorization")))
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        data = b"{}"
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer


@pytest.fixture
def servers():
    """(api port, proxy port, api's record, proxy's record): two recording servers."""
    out = []
    for _ in range(2):
        handler = type("Rec", (Recorder,), {"seen": []})
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        out.append((httpd, handler))
    yield out[0][0].server_address[1], out[1][0].server_address[1], out[0][1].seen, out[1][1].seen
    for httpd, _ in out:
        httpd.shutdown()
        httpd.server_close()


def test_the_token_never_goes_through_a_proxy(servers, monkeypatch):
    api, proxy, api_seen, proxy_seen = servers
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{proxy}")
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert nlb_client.call(api, "/nlb", None, TOKEN) == {}
    assert proxy_seen == [] and api_seen == [("/nlb", f"Bearer {TOKEN}")]


def test_path_parts_are_quoted():
    path, body = nlb_client.request_for("drain", "HQ/../x", "cas 1?y#z", 5)
    assert path == "/nlb/HQ%2F..%2Fx/members/cas%201%3Fy%23z/drain" and body == {"deadline_s": 5}
    assert nlb_client.request_for("affinity", "10.1.0.100", "single", None)[0] == "/nlb/10.1.0.100/affinity"


def test_there_is_no_token_option_on_the_command_line():
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["nlb", "--port", "1", "--token", TOKEN, "show"])


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.build_parser().parse_args(list(argv))
    rc = code.func(code)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_the_token_comes_from_a_private_file_or_the_environment(servers, tmp_path, capsys, monkeypatch):
    api, _, api_seen, _ = servers
    monkeypatch.delenv("CASLAB_NLB_TOKEN", raising=False)
    token_file = tmp_path / "nlb-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    assert run_cli(capsys, "nlb", "--port", str(api), "--token-file", str(token_file), "show")[0] == 0
    monkeypatch.setenv("CASLAB_NLB_TOKEN", "from-env")
    assert run_cli(capsys, "nlb", "--port", str(api), "show")[0] == 0
    assert [a for _, a in api_seen] == [f"Bearer {TOKEN}", "Bearer from-env"]

    token_file.chmod(0o644)  # readable by others: refused, nothing sent
    rc, _, err = run_cli(capsys, "nlb", "--port", str(api), "--token-file", str(token_file), "show")
    assert rc == 2 and "0600" in err and len(api_seen) == 2
    assert json.loads("{}") == {}
