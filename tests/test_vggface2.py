"""The PyTorch VGGFace2 ResNet-50 against keras-vggface's own output, and the weights download."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import cosines
from PIL import Image

from facepipe.common import FacepipeError
from facepipe.formats import embedding_columns
from facepipe.models.vggface2 import VGGFace2ResNet50Embedder
from facepipe.models.weights import VGGFACE2_RESNET50_FILE, ensure_vggface2_weights

FIXTURE = "vggface_resnet50"
WEIGHTS = "vggface_resnet50_notop_random.h5"
PARITY = 1e-4  # max|e - ref| / max|ref|, per crop


def relative_errors(embeddings: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return np.abs(embeddings - reference).max(axis=1) / np.abs(reference).max(axis=1)


@pytest.fixture(scope="module")
def fixture(fixtures_dir):
    """The fixture's folder, its crops (in reference order) and keras-vggface's embeddings of them."""
    folder = fixtures_dir(FIXTURE)
    reference = pd.read_csv(folder / "reference_embeddings.csv")
    crops = [np.asarray(Image.open(folder / "crops" / name).convert("RGB")) for name in reference["name"]]
    return folder, crops, reference[embedding_columns(2048)].to_numpy(np.float32)


@pytest.fixture(scope="module")
def fp32_embedder(fixture):
    """Built the way users get it: the weights located through ``--weights``, then the embedder."""
    folder, _, _ = fixture
    weights = ensure_vggface2_weights(weights=folder / WEIGHTS, download=False)
    return VGGFace2ResNet50Embedder(weights, device="cpu", precision="fp32", batch_size=16)


@pytest.fixture(scope="module")
def fp32_embeddings(fixture, fp32_embedder):
    return fp32_embedder.embed(fixture[1])


def test_matches_keras_vggface_on_every_crop(fixture, fp32_embeddings):
    _, crops, reference = fixture
    assert fp32_embeddings.shape == (len(crops), 2048) and fp32_embeddings.dtype == np.float32
    errors = relative_errors(fp32_embeddings, reference)
    print(f"parity: max relative error {errors.max():.3g} over {len(crops)} crops")
    assert errors.max() < PARITY, errors


def test_resizes_crops_of_other_sizes(fixture, fp32_embedder):
    """A crop enlarged 2x by pixel repetition is shrunk back exactly, so it embeds like the original."""
    _, crops, reference = fixture
    doubled = [np.repeat(np.repeat(crop, 2, axis=0), 2, axis=1) for crop in crops[:2]]
    assert doubled[0].shape == (448, 448, 3)
    assert relative_errors(fp32_embedder.embed(doubled), reference[:2]).max() < PARITY
    assert fp32_embedder.embed([]).shape == (0, 2048)


def test_describe_names_model_and_weights(fixture, fp32_embedder):
    folder, _, _ = fixture
    info = fp32_embedder.describe()
    assert (info["model"], info["dimension"], info["precision"]) == ("vggface2-resnet50", 2048, "fp32")
    assert info["weights_file"] == WEIGHTS
    assert info["weights_sha256"] == hashlib.sha256((folder / WEIGHTS).read_bytes()).hexdigest()
    assert "BGR" in info["preprocessing"]


def test_bf16_stays_close_to_fp32(fixture, fp32_embedder, fp32_embeddings):
    bf16 = VGGFace2ResNet50Embedder(fp32_embedder.weights_path, device="cpu", precision="bf16", batch_size=16)
    embeddings = bf16.embed(fixture[1])
    assert embeddings.dtype == np.float32
    drift = cosines(embeddings, fp32_embeddings)
    print(f"bf16 vs fp32 cosine over {len(drift)} crops: min {drift.min():.7f}, mean {drift.mean():.7f}")
    assert drift.min() > 0.99


# --- weights: locating and downloading ---------------------------------------------------------


class WeightsServer:
    """An HTTP server on 127.0.0.1 serving the fixture weights whole, truncated, or cut off mid-transfer."""

    def __init__(self, weights: Path):
        self.data = weights.read_bytes()
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                body, announced = server.data, len(server.data)
                if self.path == "/truncated.h5":  # a short file, honestly announced
                    body = server.data[: len(server.data) // 2]
                    announced = len(body)
                elif self.path == "/cut.h5":  # the connection drops before the announced length
                    body = server.data[: len(server.data) // 2]
                self.send_response(200)
                self.send_header("Content-Length", str(announced))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/{name}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server(fixture):
    running = WeightsServer(fixture[0] / WEIGHTS)
    yield running
    running.close()


@pytest.fixture
def weights_dir(tmp_path, monkeypatch):
    """An empty $FACEPIPE_WEIGHTS_DIR, with the other searched folders empty too."""
    target = tmp_path / "weights_dir"
    monkeypatch.setenv("FACEPIPE_WEIGHTS_DIR", str(target))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return target


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_puts_checked_file_in_place_once(server, weights_dir, fixture):
    path = ensure_vggface2_weights(url=server.url("full.h5"), show_progress=False)
    assert path == weights_dir / VGGFACE2_RESNET50_FILE
    assert files_in(weights_dir) == [VGGFACE2_RESNET50_FILE]
    assert path.read_bytes() == server.data
    requests = len(server.requests)
    assert ensure_vggface2_weights(url=server.url("full.h5"), show_progress=False) == path
    assert len(server.requests) == requests, "a file already in place must not be downloaded again"


@pytest.mark.parametrize("name, message", [("truncated.h5", "not a complete"), ("cut.h5", "stopped after")])
def test_short_download_is_refused_and_leaves_nothing(server, weights_dir, name, message):
    with pytest.raises(FacepipeError, match=message):
        ensure_vggface2_weights(url=server.url(name), show_progress=False)
    assert files_in(weights_dir) == []


def test_wrong_sha256_is_refused_and_leaves_nothing(server, weights_dir):
    with pytest.raises(FacepipeError, match="sha256"):
        ensure_vggface2_weights(url=server.url("full.h5"), sha256="0" * 64, show_progress=False)
    assert files_in(weights_dir) == []


@pytest.mark.fast
def test_offline_error_says_where_to_put_the_file(weights_dir):
    with socket.socket() as probe:  # a port that nothing listens on once the socket is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(FacepipeError) as error:
        ensure_vggface2_weights(url=f"http://127.0.0.1:{port}/x.h5", show_progress=False)
    message = str(error.value)
    assert VGGFACE2_RESNET50_FILE in message and str(weights_dir) in message
    assert "--weights" in message and "dlib-resnet128" in message
    assert files_in(weights_dir) == []


@pytest.mark.fast
def test_missing_explicit_weights_is_an_error(weights_dir):
    with pytest.raises(FacepipeError, match="no such file"):
        ensure_vggface2_weights(weights=weights_dir / "absent.h5")
    with pytest.raises(FacepipeError, match="dlib-resnet128"):
        ensure_vggface2_weights(download=False)


def test_precision_auto_takes_bf16_only_where_the_hardware_has_it(fixture, fp32_embedder, fp32_embeddings):
    """--precision auto (issue 17): bf16 where the CPU computes it natively (AMX / AVX-512 BF16), then within the
    drift measured for bf16; fp32 elsewhere, and always for dlib-resnet128."""
    from facepipe.models.registry import load_embedder, native_bf16

    auto = load_embedder(
        "vggface2-resnet50",
        weights=fp32_embedder.weights_path,
        device="cpu",
        precision="auto",
        batch_size=16,
        show_progress=False,
    )
    assert auto.describe()["precision"] == ("bf16" if native_bf16("cpu") else "fp32")
    assert cosines(auto.embed(fixture[1]), fp32_embeddings).min() > 0.9999
    dlib = load_embedder("dlib-resnet128", device="cpu", precision="auto", show_progress=False)
    assert dlib.describe().get("precision", "fp32") == "fp32"
