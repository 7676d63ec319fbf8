"""`negspace serve` under a bounded load on loopback, against the same images through `negspace score`.

    python benchmarks/serve_load.py [--arch tiny|small|ViT-B-16] [--images 2000] [--concurrency 1,8,32]
                                    [--memory-requests 10000] [--ants-requests 400] [--rounds 3]

Generates ``--images`` JPEGs of photographs' size (500 x 375), a random-weight CLIP model of
``--arch`` (saved and loaded back as a user's weights) and a NegLabel detector saved with it, then
measures, each phase with a fixed amount of work (the script stops by itself):

1. offline: ``score_collection`` (what ``negspace score`` runs, feature cache off) over the images:
   images/s, the model's loading time left out;
2. the bare single-image cost: decode, transform, encode and score one image, in a fresh process
   as the server's (median over 50 images, after 5 of warm-up);
3. ``negspace serve`` (a subprocess) at each concurrency: every image sent once, one image per
   request (its raw bytes), over that many keep-alive connections: images/s as a fraction of offline (goal >= 0.85 at
   concurrency >= 8), p50/p99 latency; at concurrency 1 the p50 against the bare cost (goal
   <= 1.2x);
4. resident memory of the server over ``--memory-requests`` requests at concurrency 8, sampled
   after the first tenth and at the end (goal: growth < 5%);
5. ANTS: the same ANTS space served frozen and adapting (``--adapt async``, its MLLM a local
   OpenAI-compatible server answering after ``--mllm-delay`` s): p99 at concurrency 8 of each
   (goal: adapting <= 1.5x frozen);
6. sync against async on eval's stream (a synthetic world, no model: AdaNeg, TANL, and ANTS whose
   scripted MLLM answers after ``--mllm-delay`` s), batches sent one after another in the stream's
   order: the AUROC of each mode, how far async's scores move from sync's, and the p99 latency.

Phases 1 to 3 run in ``--rounds`` rounds (default 3), each on its own share of the images: on a
shared machine what else runs changes from one minute to the next, so each round measures offline,
bare and served figures within a minute or two of each other, takes the ratios within the round,
and the report gives the median over the rounds and their range (a wide range says the machine
was busy; rerun before trusting it).

``--runtime onnxruntime`` runs every phase with ONNX Runtime: the server and the bare process
with the image tower alone and without torch (as `negspace serve --runtime onnxruntime` runs a
detector whose text features are saved), offline `score` with both towers.

Prints every figure beside its goal, and the table that docs/serving.md shows (``--json`` writes
them too). The load client runs on the same machine as the server: it is one asyncio loop writing
ready-made requests (about 0.1 ms of CPU per request, measured and printed), and the figures
include its share of the CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import importlib.metadata
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from encode_pipeline import SMALL_CONFIG, write_images

TINY_CONFIG = {  # the tests' tiny model (32 px): the model costs nothing, the serving path everything
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


# ------------------------------------------------------------------------------ set-up


def save_model(arch: str, folder: Path) -> tuple[str, Path]:
    """A random-weight model saved as a user's weights: its spec and weights file."""
    import open_clip
    import torch

    torch.manual_seed(0)
    if arch in ("tiny", "small"):
        cfg = TINY_CONFIG if arch == "tiny" else SMALL_CONFIG
        config = folder / f"bench-{arch}.json"
        config.write_text(json.dumps(cfg), encoding="utf-8")
        model, spec = open_clip.CLIP(**cfg), f"openclip:{config}/none"
    else:
        model, spec = open_clip.create_model(arch, pretrained=None), f"openclip:{arch}/none"
    weights = folder / "weights.pt"
    torch.save(model.state_dict(), weights)
    return spec, weights


def save_detectors(
    encoder: Any, folder: Path, n_classes: int, n_negatives: int, images: list[Path], mllm_spec: str | None
) -> dict[str, Path]:
    """A NegLabel detector (and, with ``mllm_spec``, an ANTS space) of ImageNet classes and WordNet
    negatives, saved with their provenance as `negspace eval --save-detector` saves them."""
    from negspace import ANTS, NegLabel, load_class_names, load_wordnet_corpus
    from negspace.detectors.saved import write_provenance
    from negspace.metrics import threshold_at_id_recall
    from negspace.templates import ID_TEMPLATE, NOUN_TEMPLATE

    classes = list(load_class_names("imagenet").names[:n_classes])
    words = list(load_wordnet_corpus(exclude=classes).nouns[::7][:n_negatives])
    id_text = encoder.encode_texts(classes, template=ID_TEMPLATE, progress=False)
    negatives = encoder.encode_texts(words, template=NOUN_TEMPLATE, progress=False)
    sample = encoder.encode_image_files(images[:100], progress=False).features
    made = {}
    detectors = {"neglabel": NegLabel.from_features(id_text, negatives, neg_labels=words, groups=10)}
    detectors["neglabel"].class_names = classes
    if mllm_spec is not None:
        from negspace import load_mllm

        schedule = {"min_candidates": 8, "vsnl_start": 2, "vsnl_every": 4}
        detectors["ants"] = ANTS.from_features(
            id_text, negatives, encoder, load_mllm(mllm_spec), classes, neg_labels=words, groups=10, **schedule
        )
    for name, detector in detectors.items():
        out = folder / f"det-{name}"
        detector.save(out)
        scores = detector.score_fixed(sample) if name == "ants" else detector.score_features(sample)
        write_provenance(
            out,
            {
                "method": name,
                "model": encoder.spec,
                "weights_fingerprint": encoder.fingerprint,
                "threshold_95_id_recall": threshold_at_id_recall(scores),
            },
        )
        made[name] = out
    return made


class FakeMLLM(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible chat server answering after ``delay`` seconds (an MLLM's latency)."""

    delay = 0.2

    def do_GET(self) -> None:
        self._send({"data": [{"id": "bench-vlm"}]})

    def do_POST(self) -> None:
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        time.sleep(self.delay)
        content = payload["messages"][-1]["content"]
        text = content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)
        answer = "1. tile\n2. mosaic\n3. glass\n4. brick\n5. ruby" if "five" in text.lower() else "A blurry field."
        self._send(
            {
                "id": "x",
                "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}],
            }
        )

    def _send(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_: Any) -> None:
        pass


# ------------------------------------------------------------------------------ measuring


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from negspace.cli import main; sys.exit(main())",
            "serve",
            *args,
            "--port",
            str(port),
            "-q",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited: {process.stderr.read()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit("the server did not start in 300 s")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class LoadResult(NamedTuple):
    """Wall seconds of a load, each request's latency, and the client's own CPU seconds."""

    seconds: float
    latencies: list[float]
    client_cpu_s: float


def load(url: str, payloads: list[bytes], concurrency: int) -> LoadResult:
    """Send every payload once (one image per request, its raw bytes) over ``concurrency``
    keep-alive connections.

    The client shares the server's CPU, so it is as lean as a client can be: one asyncio loop
    writing ready-made HTTP/1.1 requests and reading the answers' status and length (about 0.1 ms
    of CPU per request; httpx in threads took 0.8 ms, a sixth of the tiny model's whole cost).
    Its CPU time is measured and reported.
    """
    parts = urlsplit(url)
    host, port = str(parts.hostname), int(parts.port or 80)
    latencies: list[float] = []
    next_index = iter(range(len(payloads)))

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while (k := next(next_index, None)) is not None:
                head = (
                    f"POST /v1/score HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: image/jpeg\r\n"
                    f"Content-Length: {len(payloads[k])}\r\n\r\n"
                ).encode()
                started = time.perf_counter()
                writer.write(head + payloads[k])
                status = await reader.readline()
                length = None
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length is None:
                    raise SystemExit(f"an answer without Content-Length: {status!r}")
                body = await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                if status.split()[1:2] != [b"200"]:
                    raise SystemExit(f"{status.decode().strip()}: {body[:300].decode(errors='replace')}")
        finally:
            writer.close()

    async def run() -> None:
        await asyncio.gather(*(connection() for _ in range(concurrency)))

    cpu, started = time.process_time(), time.perf_counter()
    asyncio.run(run())
    return LoadResult(time.perf_counter() - started, latencies, time.process_time() - cpu)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bare_in_a_process(
    spec: str, weights: Path, runtime: str, detector: Path, images: list[Path], env: dict[str, str]
) -> float:
    """:func:`bare_single_image` in a fresh process with the model loaded as the server loads it
    (this one has run other work whose thread pools and memory would weigh on one image's time)."""
    code = (
        "import sys, json; sys.path.insert(0, sys.argv[1]); import serve_load as s; "
        "from pathlib import Path; from negspace.runconfig import ModelConfig; "
        "from negspace.runs import load_model; from negspace.methods import load_detector; "
        "r = sys.argv[4]; m = ModelConfig(spec=sys.argv[2], weights=sys.argv[3], device='cpu', runtime=r, "
        "use_cache=r == 'onnxruntime', progress=False); e = load_model(m, images_only=True); "
        "p = [Path(x).read_bytes() for x in sys.argv[6:]]; "
        "print(json.dumps(s.bare_single_image(e, load_detector(sys.argv[5]), p)))"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(Path(__file__).parent),
            spec,
            str(weights),
            runtime,
            str(detector),
            *map(str, images[:55]),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout.strip().splitlines()[-1])


def bare_single_image(encoder: Any, detector: Any, payloads: list[bytes]) -> float:
    """Median seconds to decode, transform, encode and score one image, in this process."""
    from negspace.serve.encode import decode_image

    transform = encoder.backend.pixel_transform()
    times = []
    for data in payloads[:5]:  # warm-up: the first calls set up torch's kernels and thread pool
        detector.score_with_nearest(
            encoder.encode_transformed([decode_image(data, "x", transform, 40_000_000, False).pixels])
        )
    for data in payloads[:50]:
        started = time.perf_counter()
        decoded = decode_image(data, "x", transform, 40_000_000, False)
        detector.score_with_nearest(encoder.encode_transformed([decoded.pixels]))
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def offline(
    images: list[Path], detector: Path, spec: str, weights: Path, runtime: str, folder: Path, batch: int
) -> float:
    """images/s of ``score_collection`` (feature cache off), its model loading left out."""
    from negspace import CollectionConfig, ModelConfig, ScoreConfig, score_collection
    from negspace.runs import load_model

    model = ModelConfig(spec=spec, weights=weights, device="cpu", use_cache=False, progress=False, runtime=runtime)
    started = time.perf_counter()
    load_model(model)
    loading = time.perf_counter() - started
    started = time.perf_counter()
    score_collection(
        [str(images[0].parent)],
        folder / "scored",
        ScoreConfig(detector=detector),
        model=model,
        collection=CollectionConfig(batch_size=batch),
    )
    return len(images) / (time.perf_counter() - started - loading)


class _SlowWorldMLLM:
    """The testing world's scripted MLLM, answering after a delay (an MLLM's latency)."""

    def __init__(self, inner: Any, delay: float) -> None:
        self.inner, self.delay = inner, delay
        self.model_id, self.stats = inner.model_id, inner.stats

    def generate(self, requests: Any) -> Any:
        time.sleep(self.delay)
        return self.inner.generate(requests)


def adapt_modes(delay: float) -> dict[str, Any]:
    """Phase 6: each adaptive method served sync and async on the same stream (see the docstring)."""
    import httpx
    import uvicorn

    from negspace import ANTS, TANL, AdaNeg
    from negspace.metrics import auroc
    from negspace.serve import ServeConfig, create_app
    from negspace.testing import WorldMLLM, WorldTextEncoder, make_world, world_stream

    world = make_world(seed=0)
    labels, corpus = world.negatives(1000)
    noise = np.random.default_rng(1).standard_normal((15, world.dim)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    makers = {
        "adaneg": lambda: AdaNeg.from_features(world.id_text_features, corpus, groups=10),
        "tanl": lambda: TANL.from_features(world.id_text_features, world.corpus_features, noise),
        "ants": lambda: ANTS.from_features(
            world.id_text_features,
            corpus,
            WorldTextEncoder(world),
            _SlowWorldMLLM(WorldMLLM(world), delay),
            world.class_names,
            neg_labels=labels,
            min_candidates=20,
            vsnl_start=1,
            vsnl_every=2,
            groups=10,
            delta=0.25,
        ),
    }
    batches, order = world_stream(world, "far", batch_size=50)
    n_id = len(world.id_image_features)
    out: dict[str, Any] = {}
    for method, make in makers.items():
        scores, p99 = {}, {}
        for mode in ("sync", "async"):
            app = create_app(ServeConfig(threshold=0.5, max_batch=50, max_wait_ms=1, adapt=mode), make())
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
            thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
            thread.start()
            url = f"http://127.0.0.1:{sock.getsockname()[1]}"
            while not server.started:
                time.sleep(0.05)
            streamed, latencies = [], []
            with httpx.Client(base_url=url, timeout=600) as http:
                for batch in batches:
                    started = time.perf_counter()
                    body = http.post("/v1/score/features", json={"features": batch.features.tolist()}).json()
                    latencies.append(time.perf_counter() - started)
                    streamed += [r["score"] for r in body["results"]]
            server.should_exit = True
            thread.join()
            sock.close()
            aligned = np.empty(len(order))
            aligned[order] = streamed
            scores[mode], p99[mode] = aligned, 1000 * quantile(latencies, 0.99)
        sync, asynchronous = scores["sync"], scores["async"]
        ranks = {m: np.argsort(np.argsort(v)) for m, v in scores.items()}
        out[method] = {
            "auroc_sync": 100 * auroc(sync[:n_id], sync[n_id:]),
            "auroc_async": 100 * auroc(asynchronous[:n_id], asynchronous[n_id:]),
            "changed_share": float(np.mean(sync != asynchronous)),
            "rank_shift_mean": float(np.mean(np.abs(ranks["sync"] - ranks["async"]))) / len(sync),
            "p99_ms_sync": p99["sync"],
            "p99_ms_async": p99["async"],
            "batches": len(batches),
            "images": len(sync),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="tiny", help="tiny, small, or an open_clip architecture (ViT-B-16)")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--rounds", type=int, default=3, help="each measures everything once; ratios are per round")
    parser.add_argument("--memory-requests", type=int, default=10_000)
    parser.add_argument("--ants-requests", type=int, default=400, help="0: no ANTS phase")
    parser.add_argument("--mllm-delay", type=float, default=0.2)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--negatives", type=int, default=1000)
    parser.add_argument("--no-modes", action="store_true", help="skip phase 6 (sync against async)")
    parser.add_argument(
        "--runtime",
        choices=("torch", "onnxruntime"),
        default="torch",
        help="what runs the model, offline, bare and served alike (onnxruntime: the server and the bare "
        "process run the image tower without torch, offline `score` runs both towers)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    from negspace.encoders import load_encoder

    figures: dict[str, Any] = {
        "arch": args.arch,
        "images": args.images,
        "cpus": os.cpu_count(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch": importlib.metadata.version("torch"),
        "runtime": args.runtime,
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        env = {**os.environ, "NEGSPACE_CACHE_DIR": str(folder / "cache")}
        os.environ["NEGSPACE_CACHE_DIR"] = env["NEGSPACE_CACHE_DIR"]
        mllm = None
        if args.ants_requests:
            FakeMLLM.delay = args.mllm_delay
            mllm = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeMLLM)
            threading.Thread(target=mllm.serve_forever, daemon=True).start()
        mllm_spec = f"openai:http://127.0.0.1:{mllm.server_address[1]}/v1/bench-vlm" if mllm else None
        print(f"generating {args.images} JPEGs and a {args.arch} model ...", flush=True)
        per_round = max(1, args.images // args.rounds)
        rounds = [write_images(folder / "images" / f"round{r}", per_round) for r in range(args.rounds)]
        images = [path for chunk in rounds for path in chunk]
        payloads = [p.read_bytes() for p in images]
        spec, weights = save_model(args.arch, folder)
        encoder = load_encoder(spec, weights=weights, device="cpu", use_cache=False)
        encoder.show_progress = False
        detectors = save_detectors(encoder, folder, args.classes, args.negatives, images, mllm_spec)
        if args.runtime == "onnxruntime":  # the export a first start makes: the server then starts without torch
            from negspace.runconfig import ModelConfig
            from negspace.runs import load_model

            load_model(ModelConfig(spec=spec, weights=weights, device="cpu", runtime="onnxruntime"), images_only=True)

        common = [
            "--model",
            spec,
            "--weights",
            str(weights),
            "--device",
            "cpu",
            "--max-batch",
            str(args.max_batch),
            "--max-wait-ms",
            str(args.max_wait_ms),
            "--max-queue",
            "4096",
            "--runtime",
            args.runtime,
        ]
        process, url = start_server(["--detector", str(detectors["neglabel"]), *common], env)
        try:
            load(url, payloads[:20], 2)  # warm-up
            figures["rounds"] = []
            for r, chunk in enumerate(rounds):
                # One round measures everything once, minutes apart at most: what else runs on the
                # machine weighs on the offline and the served figures alike, and the ratios are
                # taken within a round (their median over the rounds is reported).
                print(f"round {r + 1} of {len(rounds)}: bare, offline, serve ...", flush=True)
                measured: dict[str, Any] = {
                    "bare_single_image_ms": 1000
                    * bare_in_a_process(spec, weights, args.runtime, detectors["neglabel"], chunk, env),
                    "offline_images_per_s": offline(
                        chunk, detectors["neglabel"], spec, weights, args.runtime, folder / f"r{r}", args.max_batch
                    ),
                }
                chunk_payloads = [p.read_bytes() for p in chunk]
                for c in concurrencies:
                    done = load(url, chunk_payloads, c)
                    measured[f"c{c}"] = {
                        "images_per_s": len(chunk) / done.seconds,
                        "p50_ms": 1000 * quantile(done.latencies, 0.5),
                        "p99_ms": 1000 * quantile(done.latencies, 0.99),
                        "client_cpu_ms_per_request": 1000 * done.client_cpu_s / len(chunk),
                    }
                figures["rounds"].append(measured)
            if args.memory_requests:
                print(f"memory over {args.memory_requests} requests ...", flush=True)
                stream = [payloads[k % len(payloads)] for k in range(args.memory_requests)]
                tenth = max(1, len(stream) // 10)
                load(url, stream[:tenth], 8)
                start = rss_mb(process.pid)
                load(url, stream[tenth:], 8)
                end = rss_mb(process.pid)
                figures["memory"] = {
                    "requests": len(stream),
                    "rss_mb_after_first_tenth": start,
                    "rss_mb_end": end,
                    "growth_percent": 100 * (end - start) / start,
                }
        finally:
            process.terminate()
            process.wait(60)
        if mllm is not None:
            ants = payloads[: args.ants_requests]
            for mode, extra in (
                ("frozen", []),
                ("adapting", ["--adapt", "async", "--mllm", mllm_spec, "--no-mllm-cache"]),
            ):
                print(f"ANTS {mode} ...", flush=True)
                process, url = start_server(["--detector", str(detectors["ants"]), *common, *extra], env)
                try:
                    load(url, payloads[:20], 2)
                    seconds, latencies, _ = load(url, ants, 8)
                    import httpx

                    state = httpx.get(f"{url}/v1/detector").json()["state"]
                finally:
                    process.terminate()
                    process.wait(120)
                figures[f"ants_{mode}"] = {
                    "images_per_s": len(ants) / seconds,
                    "p50_ms": 1000 * quantile(latencies, 0.5),
                    "p99_ms": 1000 * quantile(latencies, 0.99),
                    "mllm_requests": state.get("state", {}).get("mllm_requests"),
                }
            mllm.shutdown()
    if not args.no_modes:
        print("sync against async on a stream ...", flush=True)
        figures["modes"] = adapt_modes(args.mllm_delay)
    report(figures, concurrencies)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1), encoding="utf-8")


def report(f: dict[str, Any], concurrencies: list[int]) -> None:
    rounds = f["rounds"]

    def spread(values: list[float], fmt: str) -> str:
        """The median of the rounds' values, and their range."""
        return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"

    print(
        f"\n{f['arch']}, runtime {f.get('runtime', 'torch')}, {f['images']} images in {len(rounds)} rounds, "
        f"{f['machine']}, torch {f['torch']}"
    )
    print("each figure: the median over the rounds (their range); a ratio is taken within each round")
    print("| measure | figure | goal |\n|---|---|---|")
    print(f"| offline `score`: images/s | {spread([r['offline_images_per_s'] for r in rounds], '.1f')} | |")
    bare = spread([r["bare_single_image_ms"] for r in rounds], ".1f")
    print(f"| bare single-image decode + encode + score | {bare} ms | |")
    for c in concurrencies:
        rates = [r[f"c{c}"]["images_per_s"] for r in rounds]
        fractions = [r[f"c{c}"]["images_per_s"] / r["offline_images_per_s"] for r in rounds]
        goal = ">= 0.85" if c >= 8 else "-"
        figure = f"{spread(rates, '.1f')}; {spread(fractions, '.2f')}"
        print(f"| serve, concurrency {c}: images/s; fraction of offline | {figure} | {goal} |")
        client = spread([r[f"c{c}"].get("client_cpu_ms_per_request", float("nan")) for r in rounds], ".2f")
        print(f"| the load client's own CPU per request, concurrency {c} (same machine) | {client} ms | - |")
        p50s, p99s = [r[f"c{c}"]["p50_ms"] for r in rounds], [r[f"c{c}"]["p99_ms"] for r in rounds]
        if c == 1:
            over_bare = [r["c1"]["p50_ms"] / r["bare_single_image_ms"] for r in rounds]
            goal = f"p50 <= 1.2x bare: {spread(over_bare, '.2f')}x"
        else:
            goal = "-"
        figure = f"{spread(p50s, '.1f')} / {spread(p99s, '.1f')} ms"
        print(f"| serve, concurrency {c}: p50 / p99 latency | {figure} | {goal} |")
    if "memory" in f:
        m = f["memory"]
        print(
            f"| resident memory over {m['requests']:,} requests | {m['rss_mb_after_first_tenth']:.0f} -> "
            f"{m['rss_mb_end']:.0f} MB ({m['growth_percent']:+.1f}%) | < 5% growth |"
        )
    if "ants_frozen" in f:
        frozen, adapting = f["ants_frozen"], f["ants_adapting"]
        print(
            f"| ANTS p99 at concurrency 8: frozen / adapting (async, MLLM {adapting['mllm_requests']} requests) | "
            f"{frozen['p99_ms']:.1f} / {adapting['p99_ms']:.1f} ms ({adapting['p99_ms'] / frozen['p99_ms']:.2f}x) | "
            "<= 1.5x |"
        )
    for method, m in f.get("modes", {}).items():
        print(
            f"| {method} on a stream of {m['images']} ({m['batches']} batches): AUROC sync / async; scores changed; "
            f"mean rank shift; p99 sync / async | {m['auroc_sync']:.2f} / {m['auroc_async']:.2f}; "
            f"{100 * m['changed_share']:.0f}%; {100 * m['rank_shift_mean']:.2f}% of the stream; "
            f"{m['p99_ms_sync']:.0f} / {m['p99_ms_async']:.0f} ms | measured |"
        )


if __name__ == "__main__":
    main()
