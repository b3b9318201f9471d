"""Checks of a real `mixgan serve` for scripts/gpu-check, run on the GPU machine's python3.

    python3 tools/served_check.py first-repairs BIN DEVICE PICTURE
    python3 tools/served_check.py side-by-side BIN DEVICE COMPOSITE_ON

`first-repairs` starts a server (its start includes the warm-up searches) and times three
100-step repairs of the face in PICTURE, one after another. `side-by-side` starts one with
`composite_on` set, renders the portrait and the crowd alone, then 48 of them 16 at a time,
and fails where an answer differs from its layout alone by more than 8 levels (a race
between streams would show tens).
"""
import base64
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image


@contextlib.contextmanager
def server(binary, device, **settings):
    """A `mixgan serve` on a free loopback port with MIXGAN_* `settings`, once ready: its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, **{f"MIXGAN_{k.upper()}": v for k, v in settings.items()})
    started = time.time()
    proc = subprocess.Popen([binary, "serve", "--models", "models", "--device", device, "--addr", f"127.0.0.1:{port}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                if urllib.request.urlopen(base + "/readyz", timeout=1).status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() - started > 120:
                sys.exit("the server did not get ready")
            time.sleep(0.05)
        print(f"ready after {time.time() - started:.2f} s")
        yield base
    finally:
        proc.terminate()
        proc.wait()


def compose(base, layout):
    req = urllib.request.Request(base + "/v1/compose", json.dumps(layout).encode(), {"Content-Type": "application/json"})
    return urllib.request.urlopen(req, timeout=60).read()


def first_repairs(binary, device, picture):
    image = base64.b64encode(open(picture, "rb").read()).decode()
    layout = {"width": 512, "height": 512, "background": {"image": image},
              "regions": [{"class": "face", "ellipse": [256, 200, 96, 118], "project": True}]}
    with server(binary, device) as base:
        for n in range(1, 4):
            t = time.time()
            body = compose(base, layout)
            print(f"repair {n} (100 steps): {1000 * (time.time() - t):.0f} ms, {len(body)} bytes")


def side_by_side(binary, device, composite_on):
    layouts = [json.load(open(f"examples/{n}.json")) for n in ("portrait", "crowd")]
    for i, layout in enumerate(layouts):
        layout["seed"], layout["format"] = 100 + i, "png"
    pixels = lambda data: np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.int16)
    with server(binary, device, composite_on=composite_on) as base:
        alone = [pixels(compose(base, layout)) for layout in layouts]
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda i: (i % 2, pixels(compose(base, layouts[i % 2]))), range(48)))
    worst = max(int(np.abs(a - alone[k]).max()) for k, a in answers)
    mean = max(float(np.abs(a - alone[k]).mean()) for k, a in answers)
    print(f"48 answers against the same layouts alone: largest difference {worst} levels, largest mean {mean:.3f}")
    if worst > 8:
        sys.exit("FAIL: requests served side by side differ from the same layout alone")


if __name__ == "__main__":
    checks = {"first-repairs": first_repairs, "side-by-side": side_by_side}
    if len(sys.argv) != 5 or sys.argv[1] not in checks:
        sys.exit(__doc__)
    checks[sys.argv[1]](*sys.argv[2:])
