"""The HTML run report (method/analysis/report.py) and its figures (method/analysis/plots.py), checked in headless Chromium too."""
import base64
import json
import os
import re
import select
import shutil
import subprocess
import time

import numpy as np
import pytest
import torch
from demo_run import demo_runs, student_runs

from method.analysis import explore, plots, report
from method.analysis.retrieval import TeacherCurves, load_run, video_scores

PANELS = 2


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    runs = demo_runs(tmp_path_factory)
    out = tmp_path_factory.mktemp("report")
    index = report.main([runs["run"], "--compare", runs["other"], "--out", str(out), "--device", "cpu",
                         "--panels", str(PANELS), "--movers", "5", "--fps", "1.5"])
    return {**runs, "out": out, "index": index, "html": index.read_text()}


def test_report_has_every_section_and_its_images(built):
    page = built["html"]
    for heading in ("Metrics", "Training curves", "Rank distribution (test)", "Moments (test)",
                    "run against other", f"Query panels ({PANELS} random captions of test)"):
        assert f"<h2>{heading}</h2>" in page, heading
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) == 3 + PANELS  # curves, rank distribution, rank changes, one figure per panel
    for src in images:
        data = (built["out"] / src).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, src
    assert page.count("<div class=panel>") == PANELS
    assert "random span mIoU" in page and "ranks the true video higher" in page


def test_report_tables_show_the_eval_numbers(built):
    page = built["html"]
    for name in ("run", "other"):
        res = json.loads(open(f"{built[name]}/eval_test.json").read())
        for direction in ("t2v", "v2t"):
            fused = res[direction]["fused"]
            row = "".join(f"<td>{fused[k]:.1f}</td>" for k in ("r1", "r5", "r10", "r100", "sumr"))
            assert f"<tr><td class=l>fused</td>{row}" in page, (name, direction)
    run_table = page.split("<h3>other</h3>")[0]
    assert "<td class=l>exploration</td>" in run_table


def test_report_needs_an_evaluated_run(built, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(built["run"], bare, ignore=shutil.ignore_patterns("eval_*.json"))
    with pytest.raises(SystemExit, match=r"bare: no eval_<split>.json; evaluate the run first"):
        report.main([str(bare), "--out", str(tmp_path / "r"), "--device", "cpu"])


def test_report_of_a_run_without_metrics_csv(built, tmp_path):
    """A released checkpoint has no metrics.csv: the report says so instead of drawing curves."""
    released = tmp_path / "released"
    shutil.copytree(built["run"], released, ignore=shutil.ignore_patterns("metrics.csv", "*.jsonl"))
    index = report.main([str(released), "--out", str(tmp_path / "r"), "--device", "cpu", "--panels", "1"])
    page = index.read_text()
    assert "No metrics.csv (a released checkpoint)" in page and "training_curves.png" not in page
    assert len(re.findall(r'<img src="([^"]+)"', page)) == 2  # rank distribution, one panel


def test_training_curves_take_unknown_columns(tmp_path):
    rows = [{"epoch": e, "loss": 2.0 / (e + 1), "kd_factor": 0.1 * 0.95 ** e, "lr": 1e-4, "val_sumr": 100 + e,
             "alpha": 0.8 - 0.1 * e, "beta": "", "note": "text", "epoch_seconds": 3} for e in range(4)]
    assert plots.other_columns(rows) == ["alpha"]  # numeric and unknown; empty / text columns are skipped
    plots.training_curves({"a": rows, "b": rows[:2]}, tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 5000


def test_rank_change_bins_against_a_loop():
    delta = np.random.default_rng(0).integers(-300, 300, 500)
    delta[:5] = [0, -1, 1, -100, 100]
    labels, counts = plots.rank_change_bins(delta)
    assert counts.sum() == len(delta) and len(labels) == len(counts)

    def contains(label, d):
        if label.startswith("<="):
            return d <= int(label[3:])
        if label.startswith(">="):
            return d >= int(label[3:])
        lo, _, hi = label.partition("..")
        return int(lo) <= d <= int(hi or lo)

    assert counts.tolist() == [sum(contains(lab, int(d)) for d in delta) for lab in labels]


# --------------------------------------------------------------------------- the other students


@pytest.fixture(scope="module")
def students(tmp_path_factory):
    return student_runs(tmp_path_factory)


@pytest.fixture(scope="module")
def student_report(students, tmp_path_factory):
    """GMMFormer against GMMFormerV2, and DL-DKD on the GMMFormer student (seven scores) alone."""
    pages = {}
    for name, extra in (("gmmformer", ["--compare", students["gmmformer_v2"]]), ("dldkd-gmmformer", [])):
        out = tmp_path_factory.mktemp(f"report-{name}")
        index = report.main([students[name], *extra, "--out", str(out), "--device", "cpu", "--panels", str(PANELS)])
        pages[name] = {"out": out, "html": index.read_text()}
    return pages


@pytest.mark.slow  # trains the other students (demo_run.student_runs)
@pytest.mark.parametrize("name", ["gmmformer", "dldkd-gmmformer"])
def test_student_report_shows_every_score(students, student_report, name):
    page, out = student_report[name]["html"], student_report[name]["out"]
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) == (3 if name == "gmmformer" else 2) + PANELS  # no rank changes without --compare
    assert all((out / src).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for src in images)
    runs = [name, "gmmformer_v2"] if name == "gmmformer" else [name]
    for run in runs:
        res = json.loads(open(f"{students[run]}/eval_test.json").read())
        for score, m in res["t2v"].items():
            row = "".join(f"<td>{m[k]:.1f}</td>" for k in ("r1", "r5", "r10", "r100", "sumr"))
            assert f"<tr><td class=l>{score}</td>{row}" in page, (run, score)
    names = list(json.loads(open(f"{students[name]}/eval_test.json").read())["t2v"])
    head = "<th>fused</th>" + "".join(f"<th>{score}</th>" for score in names[1:])
    assert page.count(head) == PANELS  # the panels' top-k tables: a column per score
    assert "<code>student=gmmformer</code>" in page


@pytest.mark.slow
def test_training_curves_know_every_loss_term(students):
    """The students' loss terms and val SumR columns have their panels: none is left to "other columns"."""
    for name in ("gmmformer", "gmmformer_v2", "dldkd-gmmformer"):
        rows = report.read_metrics_csv(load_run(students[name], device="cpu"))
        losses = [k for k in rows[0] if plots.is_loss_column(k)]
        assert "loss" in losses and any(k.startswith("clip_nce") for k in losses) and any("qdl" in k for k in losses)
        assert ("ot" in losses) == (name == "gmmformer_v2")
        scores = list(json.loads(open(f"{students[name]}/eval_test.json").read())["t2v"])
        assert list(plots.val_sumr_columns(rows).values()) == scores
        assert plots.other_columns(rows) == []


@pytest.mark.slow
@pytest.mark.parametrize("name,lines,main,steps", [
    ("gmmformer", ["clip", "teacher"], "clip", {"frame": 1}),
    ("gmmformer_v2", ["frame", "teacher"], "frame", {"clip": 32}),
    ("dldkd-gmmformer", ["inheritance_clip", "exploration_clip", "fused_clip", "teacher"], "fused_clip",
     {"fused_frame": 1})])
def test_panel_curves_on_the_positional_level_and_the_other_level_as_steps(students, monkeypatch, tmp_path, name,
                                                                           lines, main, steps):
    drawn = []
    monkeypatch.setattr(plots, "query_panel", lambda panel, out: drawn.append(panel))
    an = explore.analyse(load_run(students[name], device="cpu"), "test")
    q = 4
    report.panel_figure(an, q, explore.query_records(an, [q])[0], TeacherCurves(an.run.opt), tmp_path / "p.png")
    video = drawn[0]["videos"][0]  # the true video
    v = int(an.enc.query_video[q])
    n = int(an.enc.n_frames[v])
    assert list(video["curves"]) == lines and video["main"] == main
    assert all(len(c) == n for c in video["curves"].values())
    assert {k: len(c) for k, c in video["steps"].items()} == steps
    scores = video_scores(an.run, an.enc, torch.tensor([q]))
    (step_name, step), = video["steps"].items()
    other = step_name.split("_")[-1]
    if "inheritance" in scores:  # the fused steps weigh the branches' levels like the fused score
        w = an.run.fusion
        own = w["exploration"] * scores[f"exploration_{other}"] + w["inheritance"] * scores[f"inheritance_{other}"]
    else:
        own = scores[other]
    assert step.max() == pytest.approx(float(own[0, v]), abs=1e-5)  # the level's video score: max over its steps
    assert video["xlabel"] == ("frame" if main == "frame" else "clip (32 per video)")


# --------------------------------------------------------------------------- headless Chromium


class DevToolsPipe:
    """A minimal Chrome DevTools Protocol client over --remote-debugging-pipe (fds 3 and 4), stdlib only."""

    def __init__(self, binary, profile, log):
        cmd_r, self._cmd_w = os.pipe()
        self._out_r, out_w = os.pipe()

        def wire():  # in the child: chromium reads commands on fd 3 and writes replies on fd 4
            os.dup2(cmd_r, 3)
            os.dup2(out_w, 4)

        self.proc = subprocess.Popen(
            [binary, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--hide-scrollbars", f"--user-data-dir={profile}", "about:blank"],
            preexec_fn=wire, pass_fds=(3, 4), stdout=log, stderr=log)
        os.close(cmd_r)
        os.close(out_w)
        self._buf, self._id, self.events = b"", 0, []

    def _read(self, timeout):
        while b"\0" not in self._buf:
            ready, _, _ = select.select([self._out_r], [], [], timeout)
            chunk = os.read(self._out_r, 1 << 20) if ready else b""
            if not chunk:
                raise TimeoutError("no reply from chromium")
            self._buf += chunk
        message, self._buf = self._buf.split(b"\0", 1)
        return json.loads(message)

    def call(self, method, params=None, session=None, timeout=30):
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._cmd_w, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read(timeout)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_event(self, method, timeout=30):
        deadline = time.time() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._read(max(0.1, deadline - time.time())))

    def close(self):
        try:
            self.call("Browser.close", timeout=5)
        except (TimeoutError, RuntimeError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._cmd_w)
        os.close(self._out_r)


def console_errors(events):
    """Console errors, uncaught exceptions and failed loads reported by the page."""
    errors = []
    for e in events:
        p = e.get("params", {})
        if e.get("method") == "Runtime.exceptionThrown":
            errors.append(p["exceptionDetails"].get("text"))
        elif e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errors.append(str(p.get("args")))
        elif e.get("method") == "Log.entryAdded" and p["entry"].get("level") == "error":
            errors.append(p["entry"].get("text"))
    return errors


CHROMIUM = shutil.which("chromium")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium)")
def test_report_opens_in_headless_chromium(built, tmp_path):
    with open(tmp_path / "chromium.log", "wb") as log:
        browser = DevToolsPipe(CHROMIUM, tmp_path / "profile", log)
        try:
            target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                browser.call(f"{domain}.enable", session=session)
            browser.call("Emulation.setDeviceMetricsOverride",
                         {"width": 1300, "height": 1000, "deviceScaleFactor": 1, "mobile": False}, session)
            browser.call("Page.navigate", {"url": built["index"].resolve().as_uri()}, session)
            browser.wait_event("Page.loadEventFired")
            images = json.loads(browser.call("Runtime.evaluate", {
                "expression": "JSON.stringify(Array.from(document.images).map("
                              "i => [i.getAttribute('src'), i.complete, i.naturalWidth]))",
                "returnByValue": True}, session)["result"]["value"])
            title = browser.call("Runtime.evaluate", {"expression": "document.title", "returnByValue": True},
                                 session)["result"]["value"]
            size = browser.call("Page.getLayoutMetrics", session=session)["cssContentSize"]
            shot = browser.call("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 3000), "scale": 1}},
                session)["data"]
            errors = console_errors(browser.events)
        finally:
            browser.close()
    png = tmp_path / "report.png"
    png.write_bytes(base64.b64decode(shot))
    loaded = [src for src, done, width in images if done and width > 0]
    print(f"chromium: {title!r}, {len(images)} images, {len(loaded)} loaded, console errors: {errors}, "
          f"page {size['width']:.0f}x{size['height']:.0f} px, screenshot {png}")
    keep = os.environ.get("DLDKD_SCREENSHOT")
    if keep:
        shutil.copy(png, keep)
    assert title.startswith("DL-DKD report")
    assert len(images) == 3 + PANELS and len(loaded) == len(images), images
    assert errors == []
    assert png.stat().st_size > 20000
