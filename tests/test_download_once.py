"""Parallel trials on one node download a torchvision dataset once, and never corrupt it.

For real, without the internet: small fake MNIST files (IDX, gzip-compressed) are served by a
local HTTP server on 127.0.0.1 that counts the requests for each file and answers slowly (to widen
any race). Several processes (``spawn``, as Ray workers are separate interpreters) point
torchvision's MNIST at that server and call ``trainables.data.load`` on one shared folder at the
same moment (a barrier). Every process must get the same, correct data; each file must be
downloaded exactly once; the files on disk must be intact.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import multiprocessing
import os
import struct
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

N_PROCESSES = 3
N_TRAIN, N_TEST = 64, 32
FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


def _idx(array: np.ndarray) -> bytes:
    """An IDX file: magic (0, 0, 0x08 = uint8, ndim), big-endian dimensions, the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_fake_mnist(folder: Path) -> dict[str, str]:
    """The four MNIST files; returns their md5s."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.permutation(np.arange(N_TRAIN) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": (np.arange(N_TEST) % 10).astype(np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    md5s = {}
    for name, array in arrays.items():
        data = gzip.compress(_idx(array), mtime=0)
        (folder / name).write_bytes(data)
        md5s[name] = hashlib.md5(data).hexdigest()
    return md5s


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, folder: Path, delay: float):
        self.folder, self.delay = folder, delay
        self.counts: Counter = Counter()
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def _answer(self, body: bool) -> None:
        name = self.path.lstrip("/")
        with self.server.lock:
            self.server.counts[(self.command, name)] += 1
        path = self.server.folder / name
        if "/" in name or not path.is_file():
            self.send_error(404)
            return
        time.sleep(self.server.delay)  # slow: every process has time to ask before one finishes
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            half = len(data) // 2  # in two parts, so a reader could see a half-written file
            self.wfile.write(data[:half])
            self.wfile.flush()
            time.sleep(self.server.delay / 2)
            self.wfile.write(data[half:])

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.headers.get("Method") == "HEAD":
            # torchvision's redirect probe: a GET with a "Method: HEAD" header, whose body it
            # never reads; counted apart from the downloads, and answered without a body
            self.command = "HEAD"
            self._answer(body=False)
        else:
            self._answer(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(body=False)

    def log_message(self, *args) -> None:
        pass


def _worker(url: str, md5s: dict[str, str], root: str, barrier, results) -> None:
    """One "trial": torchvision's MNIST pointed at the local server, then ``load`` at the barrier."""
    try:
        for name in PROXY_VARIABLES:
            os.environ.pop(name, None)
        os.environ["no_proxy"] = "127.0.0.1,localhost"
        import torchvision.datasets

        from trainables.config import DataConfig
        from trainables.data import load

        torchvision.datasets.MNIST.mirrors = [url]
        torchvision.datasets.MNIST.resources = [(name, md5s[name]) for name in FILES]
        barrier.wait(timeout=240)
        data = load(DataConfig(name="mnist", path=root))
        results.put((os.getpid(), {
            split: (getattr(data, split).X.numpy(), getattr(data, split).y.numpy())
            for split in ("train", "val", "test")
        } | {"spec": (data.spec.input_shape, data.spec.num_classes)}))
    except BaseException as e:  # reported to the test, which fails with it
        results.put((os.getpid(), f"{type(e).__name__}: {e}"))


@pytest.fixture
def server(tmp_path):
    folder = tmp_path / "served"
    md5s = _write_fake_mnist(folder)
    srv = _Server(folder, delay=0.2)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv, md5s
    srv.shutdown()
    srv.server_close()


def _reference(folder: Path):
    """The same files read as an ``idx`` dataset: what every process must have got."""
    from trainables.config import DataConfig
    from trainables.data import load

    return load(DataConfig(name="idx", path=str(folder)))


def test_parallel_processes_download_once_and_agree(server, tmp_path):
    srv, md5s = server
    url = f"http://127.0.0.1:{srv.server_address[1]}/"
    root = tmp_path / "shared-root"
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(N_PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(url, md5s, str(root), barrier, results))
             for _ in range(N_PROCESSES)]
    for p in procs:
        p.start()
    try:
        got = [results.get(timeout=300) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.terminate()
    errors = [r for _, r in got if isinstance(r, str)]
    assert not errors, errors
    assert len({pid for pid, _ in got}) == N_PROCESSES

    # each file was downloaded exactly once (torchvision probes for redirects first, then GETs)
    gets = {name: srv.counts[("GET", name)] for name in FILES}
    assert gets == {name: 1 for name in FILES}, srv.counts
    assert all(srv.counts[("HEAD", name)] <= 1 for name in FILES), srv.counts
    assert sum(srv.counts.values()) <= 2 * len(FILES), srv.counts

    # every process got the same, correct data
    ref = _reference(srv.folder)
    for _, data in got:
        assert data["spec"] == ((1, 28, 28), 10)
        for split in ("train", "val", "test"):
            X, y = data[split]
            assert np.array_equal(X, getattr(ref, split).X.numpy()), split
            assert np.array_equal(y, getattr(ref, split).y.numpy()), split
        assert len(data["train"][1]) + len(data["val"][1]) == N_TRAIN
        assert len(data["test"][1]) == N_TEST

    # the files on disk are intact
    raw = root / "MNIST" / "raw"
    for name in FILES:
        assert hashlib.md5((raw / name).read_bytes()).hexdigest() == md5s[name]
        assert (raw / name[:-3]).read_bytes() == gzip.decompress((srv.folder / name).read_bytes())
    leftovers = sorted(p.name for p in raw.iterdir() if p.name not in FILES + [f[:-3] for f in FILES])
    assert leftovers == []


def test_a_second_load_uses_the_cache(server, tmp_path, monkeypatch):
    """Once the files are there, a later trial reads them without asking the server again."""
    import torchvision.datasets

    from trainables.config import DataConfig
    from trainables.data import load

    srv, md5s = server
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [f"http://127.0.0.1:{srv.server_address[1]}/"])
    monkeypatch.setattr(torchvision.datasets.MNIST, "resources", [(name, md5s[name]) for name in FILES])
    cfg = DataConfig(name="mnist", path=str(tmp_path / "root"))
    first = load(cfg)
    downloads = sum(n for (method, _), n in srv.counts.items() if method == "GET")
    second = load(cfg)
    assert sum(n for (method, _), n in srv.counts.items() if method == "GET") == downloads == len(FILES)
    assert np.array_equal(first.test.X.numpy(), second.test.X.numpy())
