"""The HTML report opened in headless Chromium with its plots visible.

A result folder is built from synthetic but realistically shaped events (two HA modes,
two repetitions each, a CAS powered off), ``write_report`` turns it into report.html, and
a real headless Chromium (tests/browser.py: Debian's ``chromium`` through Selenium, or
Playwright's Chromium where the distribution ships none) opens it from disk. No network,
no Mininet, no root needed.

The browser must be installed: without it the test is skipped with a reason that names
the platform; under CI (CI set) on Debian, whose packages lab.sh installs, a missing
browser is a failure, so CI cannot pass by skipping it.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import struct
from pathlib import Path

import pytest

from caslab.results import report

from caslab.run import runner

from caslab.spec import experiment as spec_mod
from tests import browser

MS = 1_000_000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---- the browser -------------------------------------------------------------------------


@pytest.fixture
def chromium(tmp_path, monkeypatch):
    """A headless Chromium (tests/browser.py: Debian's package through Selenium, or
    Playwright's build where the distribution has none); never a download by the test."""
    context = browser.headless_chromium(tmp_path, monkeypatch)
    try:
        driver = context.__enter__()
    except browser.Unavailable as exc:
        if os.environ.get("CI") and browser.distribution_ships_chromium():
            pytest.fail(f"CI must open the report in a real browser: {exc}", pytrace=False)
        pytest.skip(str(exc))
    try:
        yield driver
    finally:
        context.__exit__(None, None, None)


# ---- a synthetic result folder ---------------------------------------------------------------


DESCRIPTION = "Synthetic events: cas1 of three is <b>powered off</b> under two HA designs."


def synthetic_spec(description: str = DESCRIPTION) -> dict:
    return spec_mod.validate({
        "experiment": {"name": "synthetic-report", "repetitions": 2, "seed": 7, "modes": ["sdn-nlb", "haproxy"],
                       "description": description},
        "topology": {"cas": 3, "mailboxes": 2, "client_hosts": 2, "databases": 2},
        "clients": {"sessions_per_host": 6, "interval_ms": 100},
        "faults": [{"kind": "poweroff", "target": "cas1", "at_s": 1.0}],
    }, "t")


def run_events(mode: str, scenario_id: str, rep: int, rng: random.Random) -> list[dict]:
    """One run's events, shaped as the client, prober, load balancer and runner write them."""
    t_fault = (1_000_000 + 100 * rep) * 1000 * MS  # CLOCK_MONOTONIC-like, distinct per run
    start, end = t_fault - 2000 * MS, t_fault + 7000 * MS
    interval = 100 * MS
    detect_ms = rng.uniform(25, 60) if mode == "sdn-nlb" else rng.uniform(4000, 4600)
    cas_names = ["cas1", "cas2", "cas3"]
    events: list[dict] = []

    def emit(ts, src, ev, **fields):
        events.append({"ts": int(ts), "src": src, "ev": ev, "scenario": scenario_id, "rep": rep, **fields})

    emit(start - 500 * MS, "runner", "clients_ready", sessions=12)
    emit(start - 400 * MS, "runner", "measure_start", observe_s=7.0)
    emit(t_fault, "runner", "fault", kind="poweroff", targets=["cas1"], elements=["cas1"], label="poweroff cas1",
         index=0, affects="on_elements")
    if mode == "sdn-nlb":
        emit(t_fault + detect_ms * MS, "nlb", "lb_member", vip="10.1.0.100", member="cas1", reason="port_down",
             alive=False, draining=False, accepts_new=False)
    else:
        emit(t_fault + detect_ms * MS, "runner", "lb_member", member="cas1", reason="check_down", alive=False,
             accepts_new=False, detail="Server cas/cas1 is DOWN, reason: Layer4 timeout")
    stored = {"DB1": [], "DB2": []}
    for host in (1, 2):
        for k in range(6):
            sid = f"cl{host}-s{k + 1}"
            src = f"cl{host}"
            cas = cas_names[(host + k) % 3]
            db = f"DB{k % 2 + 1}"
            t = start + rng.randrange(0, interval)
            emit(t - 3 * MS, src, "connect_ok", session=sid, addr="10.1.0.100", lport=40000 + k, laddr="10.1.3.1")
            emit(t - 2 * MS, src, "logon", session=sid, cas=cas, db=db, reauth=False, resumed=False)
            sent = 0
            on_failed = cas == "cas1"
            while t < end:
                if on_failed and t >= t_fault:
                    # cut off: sdn-nlb resets it at once, haproxy leaves it to the op timeout
                    down_at = t_fault + (rng.uniform(detect_ms, detect_ms + 20) if mode == "sdn-nlb"
                                         else rng.uniform(1000, 1100)) * MS
                    if mode == "haproxy":
                        emit(down_at, src, "op", session=sid, op="read", ok=False, lat_us=1_000_000, cas=None,
                             error="timeout")
                    emit(down_at, src, "down", session=sid, reason="reset" if mode == "sdn-nlb" else "timeout")
                    back = max(down_at + rng.uniform(5, 40) * MS, t_fault + (detect_ms + rng.uniform(30, 120)) * MS)
                    cas = cas_names[1 + (k % 2)]
                    emit(back - 4 * MS, src, "connect_ok", session=sid, addr="10.1.0.100", lport=41000 + k,
                         laddr="10.1.3.1")
                    emit(back - 2 * MS, src, "logon", session=sid, cas=cas, db=db, reauth=False, resumed=True)
                    t, on_failed = back, False
                    continue
                op = rng.choices(["read", "send", "sync", "ping"], [4, 2, 1, 3])[0]
                late = mode == "haproxy" and sid == "cl2-s1" and t_fault < t < t_fault + 200 * MS
                fields = {"op": op, "ok": True, "lat_us": 700_000 if late else rng.randrange(400, 4000), "cas": cas}
                if op == "send":
                    sent += 1
                    fields["msg_id"] = f"{sid}-m{sent}"
                    # haproxy without shutdown-sessions: one acked message lost with the dead CAS
                    if not (mode == "haproxy" and sid == "cl1-s3" and sent == 1):
                        stored[db].append(fields["msg_id"])
                emit(t, src, "op", session=sid, **fields)
                t += interval
    for ts in range(start, end, 50 * MS):  # scapy SYN probes at 20 Hz
        failed = t_fault <= ts < t_fault + detect_ms * MS + 50 * MS
        emit(ts, "probe", "probe", seq=(ts - start) // (50 * MS), ok=not failed,
             result="timeout" if failed else "synack", **({} if failed else {"rtt_us": rng.randrange(200, 900)}))
    for ts in range(start, end, 1000 * MS):
        emit(ts, "runner", "cpu", idle_pct=round(rng.uniform(55, 75), 1))
    emit(end, "runner", "measure_end")
    emit(end + 20 * MS, "runner", "scenario_end", ok=True)
    for db, ids in stored.items():
        emit(end + 10 * MS, "runner", "mailbox_contents", db=db, server="mbx2" if db == "DB1" else "mbx1",
             active=True, msg_ids=sorted(ids))
    events.sort(key=lambda e: (e["ts"], e.get("src", ""), json.dumps(e, sort_keys=True)))
    return events


def build_run(run_dir: Path, description: str = DESCRIPTION) -> dict:
    spec = synthetic_spec(description)
    scenarios = spec_mod.scenarios(spec)
    metas = [{"id": runner.scenario_id(i, s["label"]), "label": s["label"], "mode": s["mode"], "params": s["params"]}
             for i, s in enumerate(scenarios)]
    manifest = {"run_id": run_dir.name, "spec_file": "experiments/synthetic.toml", "spec": spec, "scenarios": metas,
                "versions": {"caslab": "0.1.0", "mininet": "2.3.0.dev6", "os-ken": "4.0.0", "openvswitch": "3.1.0"},
                "datapath": "userspace", "complete": True, "python": "3.11.2", "failures": []}
    run_dir.mkdir(parents=True)
    runner.write_manifest(run_dir, manifest)
    rng = random.Random(spec["experiment"]["seed"])
    with open(run_dir / "events.jsonl", "w", encoding="utf-8") as out:
        for meta in metas:
            for rep in range(spec["experiment"]["repetitions"]):
                for ev in run_events(meta["mode"], meta["id"], rep, rng):
                    out.write(json.dumps(ev, separators=(",", ":"), sort_keys=True) + "\n")
    return manifest


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR", f"{path.name} is not a PNG"
    return struct.unpack(">II", data[16:24])


# ---- the test ---------------------------------------------------------------------------------

IMAGE_STATE = """
const out = [];
for (const img of document.images) {
  img.scrollIntoView({block: 'center'});
  const r = img.getBoundingClientRect();
  const style = getComputedStyle(img);
  const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
  let distinct = -1;
  try {  // the decoded pixels are a plot, not a blank or broken image
    const c = document.createElement('canvas');
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    const g = c.getContext('2d');
    g.drawImage(img, 0, 0);
    const px = g.getImageData(0, 0, c.width, c.height).data;
    const seen = new Set();
    for (let i = 0; i < px.length && seen.size < 64; i += 4 * 97) seen.add(px[i] << 16 | px[i + 1] << 8 | px[i + 2]);
    distinct = seen.size;
  } catch (e) { distinct = -2; }
  out.push({alt: img.alt, src: img.getAttribute('src'), complete: img.complete,
            naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight,
            width: r.width, height: r.height, display: style.display, visibility: style.visibility,
            opacity: style.opacity, onTop: hit === img, distinct: distinct});
}
window.scrollTo(0, 0);
return out;
"""


def test_report_html_opens_in_headless_chromium_with_plots_visible(tmp_path, chromium):
    run_dir = tmp_path / "synthetic-report-20240101-000000"
    manifest = build_run(run_dir)
    analysis = report.write_report(run_dir)
    labels = [m["label"] for m in manifest["scenarios"]]
    assert [s.label for s in analysis.scenarios] == labels == ["sdn-nlb", "haproxy"]
    assert all(s.repetitions == 2 and s.faults[0].reconnect_ms.n > 0 for s in analysis.scenarios)

    # The figures: the verdict first, one timeline per scenario, CDF, means, phases, goodput,
    # probes; listed by report.md, on disk as PNG with an SVG beside each.
    expected = {f"timeline-{m['id']}.png" for m in manifest["scenarios"]} | {
        "verdict.png", "reconnect-cdf.png", "reconnect-means.png", "phases.png", "goodput.png", "probes.png"}
    md = (run_dir / "report.md").read_text()
    md_pngs = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md)
    assert set(md_pngs) == expected and len(md_pngs) == len(expected), md_pngs
    assert md_pngs[0] == "verdict.png" and md.index("## Verdict") < md.index("## Results")
    assert {p.name for p in run_dir.glob("*.png")} == expected
    assert {p.stem for p in run_dir.glob("*.svg")} == {Path(n).stem for n in expected}
    for name in md_pngs:
        assert (run_dir / name).is_file() and png_size(run_dir / name)[0] > 100

    html_path = run_dir / "report.html"
    chromium.get(html_path.as_uri())
    assert chromium.execute_script("return document.readyState") == "complete"
    assert "caslab report" in chromium.title and manifest["spec"]["experiment"]["name"] in chromium.title

    # The spec's words are text, never markup.
    assert "<b>powered off</b>" in chromium.find_element("tag name", "body").text
    assert not chromium.find_elements("css selector", "p > b")

    # Summary table: a header row, then one row per scenario and fault, in order, labelled.
    rows = chromium.execute_script("""
        return [...document.querySelectorAll('table tr')].filter(tr => tr.querySelector('td'))
               .map(tr => [...tr.cells].map(td => td.innerText.trim()));""")
    assert [r[0] for r in rows] == labels, rows
    header = chromium.execute_script("return [...document.querySelectorAll('table th')].map(th => th.innerText)")
    assert all(len(r) == len(header) for r in rows), (header, rows)
    by_label = {s.label: s.faults[0] for s in analysis.scenarios}
    for r in rows:
        cells = dict(zip(header, r))
        assert cells["sessions"] == str(by_label[r[0]].sessions) and cells["affected"] == str(by_label[r[0]].affected)

    # Every image: loaded, decoded to the very PNG the report lists, laid out, not hidden, with pixels.
    images = chromium.execute_script(IMAGE_STATE)
    assert len(images) >= len(md_pngs)
    assert sorted(img["alt"] for img in images) == sorted(md_pngs)
    for img in images:
        name = img["alt"]
        assert img["complete"] and img["naturalWidth"] > 0, f"{name} did not load: {img}"
        assert img["width"] > 100 and img["height"] > 50, f"{name} is not visible: {img}"
        assert img["display"] != "none" and img["visibility"] == "visible" and float(img["opacity"]) > 0, img
        assert img["onTop"], f"{name} is covered by another element"
        assert (img["naturalWidth"], img["naturalHeight"]) == png_size(run_dir / name)
        assert img["src"] == "data:image/png;base64," + base64.b64encode((run_dir / name).read_bytes()).decode(), \
            f"{name}: the embedded image is not the PNG on disk"
        assert img["distinct"] >= 3, f"{name} decoded to a blank image ({img['distinct']} colours)"

    # Self-contained: nothing is fetched from anywhere (no file next to it, no network).
    refs = chromium.execute_script("""
        return [...document.querySelectorAll('[src], [href], [srcset], link, script[src], iframe, object, embed')]
               .map(e => e.tagName + ' ' + (e.getAttribute('src') || e.getAttribute('href') ||
                                             e.getAttribute('srcset') || e.getAttribute('data') || ''));""")
    assert all(re.fullmatch(r"IMG data:image/png;base64,[A-Za-z0-9+/=]+", r) for r in refs), \
        [r[:80] for r in refs if not r.startswith("IMG data:")]
    fetched = chromium.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name).filter(n => !n.startsWith('data:'))")
    assert fetched == []
    assert "url(" not in (run_dir / "report.html").read_text().split("</style>")[0]

    # A full-page screenshot, kept in tmp_path for a human to look at.
    height = chromium.execute_script("return document.documentElement.scrollHeight")
    width = chromium.execute_script("return document.documentElement.scrollWidth")
    chromium.set_window_size(max(1280, width), min(height + 100, 16000))
    shot = tmp_path / "report.png"
    assert chromium.save_screenshot(str(shot))
    data = shot.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 20_000, len(data)
    assert png_size(shot)[1] >= min(height, 15000) * 0.9


def test_report_md_shows_the_description_as_text(tmp_path):
    # Old behaviour: report.md embedded the spec's description raw: a Markdown viewer
    # rendered its HTML and links (a javascript: link, a script) as the report's own.
    description = '<script>alert(1)</script> [click](javascript:alert(2)) <img src=x onerror=alert(3)> # not a title'
    run_dir = tmp_path / "run"
    build_run(run_dir, description)
    report.write_report(run_dir)
    md = (run_dir / "report.md").read_text()
    assert "<script" not in md and "<img" not in md, md[:400]
    assert "](javascript:" not in md, md[:400]
    assert "&lt;script&gt;alert\\(1\\)&lt;/script&gt;" in md and "\\[click\\]\\(javascript:alert\\(2\\)\\)" in md
