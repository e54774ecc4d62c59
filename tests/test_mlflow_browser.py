"""A real browser over `fuserank ui`: headless Chromium renders a train-evaluate run's page (name,
headline metric, registered model version, datasets) and its plot artifact, then the server stops.

Needs Chromium (the Debian package `chromium`, which .ci/run installs when missing); skipped with
the reason when no Chromium binary can be found.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fuserank.cli import main
from tiny_project import write_project

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """$FUSERANK_CHROMIUM, else the first Chromium-family binary on PATH."""
    given = os.environ.get("FUSERANK_CHROMIUM")
    if given:
        return given if shutil.which(given) else None
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def page(browser: str, url: str, profile: Path, screenshot: Path | None = None) -> str:
    """The DOM of `url` after its scripts ran, as text Chromium dumps (optionally a screenshot)."""
    args = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            f"--user-data-dir={profile}", "--window-size=1400,1000", "--virtual-time-budget=20000"]
    args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    done = subprocess.run([*args, url], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def visible_text(dom: str) -> str:
    text = re.sub(r"<style.*?</style>|<script.*?</script>", " ", dom, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)))


def rendered(browser: str, url: str, profile: Path, wanted: list[str], tries: int = 3) -> str:
    """The page's DOM once every string of `wanted` is in it (the UI loads data after its shell)."""
    for _ in range(tries):
        dom = page(browser, url, profile)
        if all(w in dom or w in visible_text(dom) for w in wanted):
            return dom
    return dom


@pytest.mark.slow  # a training run, the UI's 10-70 s start and a few browser loads on 2 busy cores
def test_the_run_page_and_its_plot_render_in_a_browser(tmp_path, monkeypatch):
    browser = find_chromium()
    if browser is None:
        pytest.skip(f"no Chromium found (looked for $FUSERANK_CHROMIUM and {', '.join(BROWSERS)} on PATH); "
                    "`apt-get install chromium` provides it, as .ci/run does")
    monkeypatch.chdir(tmp_path)  # the project's store and outputs are relative to it
    config = write_project(tmp_path, "browser-run")  # experiment "browser-run"
    assert main(["train-evaluate", "--config", str(config), "--quiet", "--set", "run_name=planted-run-7"]) == 0
    metrics = json.loads((tmp_path / "outputs" / "planted-run-7" / "metrics.json").read_text())
    run_id, ndcg = metrics["run_id"], metrics["test_ndcg_at_10"]

    port = free_port()
    script = shutil.which("fuserank", path=str(Path(sys.executable).parent))
    command = [script] if script else [sys.executable, "-m", "fuserank.cli"]
    server = subprocess.Popen([*command, "ui", "--config", str(config), "--port", str(port)], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                    if response.read().decode().strip() == "OK":
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "fuserank ui did not come up within 180 s"
            time.sleep(0.5)
        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=browser-run",
                                    timeout=10) as response:
            experiment = json.loads(response.read())["experiment"]["experiment_id"]
        profile = tmp_path / "chromium-profile"
        run_page = f"{base}/#/experiments/{experiment}/runs/{run_id}"

        # The run's overview: its name, the headline metric's value, its model version and datasets.
        text = visible_text(rendered(browser, run_page, profile, ["test_ndcg_at_10", "Registered models"]))
        assert "planted-run-7" in text
        assert re.search(rf"test_ndcg_at_10 {re.escape(str(ndcg)[:6])}", text), text[:3000]
        assert re.search(r"Registered models fuserank v1\b", text), text[-3000:]
        assert "catalog items" in text and "training" in text  # the first dataset; "+2" more
        # The artifact view of a plot: the image is fetched and shown (as a blob URL of its bytes).
        plot = "plots/test_metric_curves.png"
        dom = rendered(browser, f"{run_page}/artifacts/{plot}", profile, [f'alt="{plot}" src="blob:'])
        assert re.search(rf'<img alt="{re.escape(plot)}" src="blob:http://127\.0\.0\.1:{port}/', dom), \
            re.findall(r"<img[^>]*>", dom)[:5]
        shot = tmp_path / "artifact.png"
        page(browser, f"{run_page}/artifacts/{plot}", profile, screenshot=shot)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
        if os.environ.get("FUSERANK_SCREENSHOTS"):  # keep it for a person to look at
            shutil.copy(shot, Path(os.environ["FUSERANK_SCREENSHOTS"]) / "mlflow_artifact_page.png")
    finally:
        server.send_signal(signal.SIGTERM)  # `fuserank ui` passes it on to the MLflow server
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    # Stopped: nothing listens on the port any more (the server's own processes are gone too).
    deadline = time.monotonic() + 30
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                break
        if time.monotonic() > deadline:
            os.killpg(server.pid, signal.SIGKILL)
            pytest.fail("the MLflow server kept listening after fuserank ui was stopped")
        time.sleep(0.5)
