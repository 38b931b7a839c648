"""Screenshots of a run's TensorBoard for docs/tensorboard.md: Time Series (the loss and TRL's signals),
the report's images, the Text tab (the run card and the validation answer tables) and HParams.

    .venv/bin/python docs/screenshots/make_screenshots.py --logdir runs/demo --out docs/images

Starts ``tensorboard --logdir`` on a free loopback port, waits until it lists every run folder, and
drives headless Chromium through chromedriver (Debian: ``apt-get install chromium chromium-driver``)
with the W3C WebDriver protocol, spoken here with the standard library: open a view, wait for its
charts to draw (``chromium --screenshot`` shoots before TensorBoard's chart worker has drawn), close
the settings pane, save one PNG. Rerun it after ``make demo`` whenever the logging changes. It needs no
project code: only TensorBoard (a project dependency) and the browser, which the project does not
depend on.
"""

import argparse
import base64
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

SIGNALS = r"^(train/(loss|grad_norm|mean_token_accuracy|learning_rate)|val/(loss|mean_token_accuracy))$"
# file name -> (the view: TensorBoard keeps a view's state in the query or the #tab's own fields, window height)
VIEWS = {
    "tensorboard_time_series.png": ("?" + urllib.parse.urlencode({"tagFilter": SIGNALS}) + "#timeseries", 1100),
    "tensorboard_report_images.png": ("?" + urllib.parse.urlencode({"tagFilter": "^report/"}) + "#timeseries", 800),
    "tensorboard_text.png": ("#text&tagFilter=" + urllib.parse.quote("val/answers", safe=""), 2000),
    "tensorboard_hparams.png": ("#hparams", 800),
}
CLOSE_SETTINGS = """const toggle = document.querySelector('button[aria-label="Toggle settings side pane"]');
if (toggle && document.querySelector('metrics-dashboard-right-pane')) { toggle.click(); }"""
WIDTH = 1600
DRAW_SECONDS = 8  # TensorBoard fetches each card's data, then its chart worker draws it


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(url: str, ready, timeout: float = 120.0, what: str = "") -> None:
    """Until ``ready(parsed JSON at url)`` holds (a server still starting does not answer yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if ready(json.load(response)):
                    return
        except OSError:
            pass
        time.sleep(1)
    raise SystemExit(f"{what or url} not ready within {timeout:.0f} s")


def run_folders(logdir: Path) -> set[str]:
    """The run names TensorBoard will list: every folder under ``logdir`` that holds an events file."""
    return {str(path.parent.relative_to(logdir)) for path in logdir.rglob("*tfevents*")}


@contextmanager
def started(command: list[str]):
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)


class Browser:
    """One headless Chromium session through chromedriver's WebDriver endpoint at ``driver``."""

    def __init__(self, driver: str, chromium: str):
        self.driver = driver
        options = {"binary": chromium, "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]}
        capabilities = {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}
        self.session = self._call("POST", "session", {"capabilities": capabilities})["sessionId"]

    def _call(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.driver}/{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.load(response)["value"]

    def shoot(self, url: str, height: int, path: Path) -> None:
        self._call("POST", f"session/{self.session}/window/rect", {"width": WIDTH, "height": height})
        self._call("POST", f"session/{self.session}/url", {"url": url})
        time.sleep(DRAW_SECONDS)
        self._call("POST", f"session/{self.session}/execute/sync", {"script": CLOSE_SETTINGS, "args": []})
        time.sleep(2)  # the cards re-flow into the room the pane leaves
        path.write_bytes(base64.b64decode(self._call("GET", f"session/{self.session}/screenshot")))
        print(f"wrote {path}")

    def close(self) -> None:
        self._call("DELETE", f"session/{self.session}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logdir", default="runs/demo", help="what `tensorboard --logdir` shows (default: the demo's)")
    parser.add_argument("--out", default="docs/images", help="folder for the PNGs")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    parser.add_argument("--chromedriver", default=shutil.which("chromedriver") or "chromedriver")
    args = parser.parse_args(argv)
    logdir, out = Path(args.logdir), Path(args.out)
    runs = run_folders(logdir)
    if not runs:
        raise SystemExit(f"no TensorBoard events under {logdir}: run `make demo` first")
    out.mkdir(parents=True, exist_ok=True)
    board_port, driver_port = free_port(), free_port()
    board, driver = f"http://127.0.0.1:{board_port}", f"http://127.0.0.1:{driver_port}"
    with started([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
                  "--port", str(board_port)]), started([args.chromedriver, f"--port={driver_port}"]):
        wait_for(f"{board}/data/runs", lambda listed: runs <= set(listed), what=f"TensorBoard listing {sorted(runs)}")
        wait_for(f"{driver}/status", lambda status: status["value"]["ready"], what="chromedriver")
        browser = Browser(driver, args.chromium)
        try:
            for name, (view, height) in VIEWS.items():
                browser.shoot(f"{board}/{view}", height, out / name)
        finally:
            browser.close()


if __name__ == "__main__":
    main()
