"""Model files as plain data: written so that ``torch.load(weights_only=True)`` reads them, and read only that way.

A checkpoint someone hands you must not be able to run code on your machine. Python's pickle can call any
function while it loads, so every model file (V, M, C: trained, exported or shipped) holds only what torch's
``weights_only`` unpickler rebuilds without calling anything of the file's choosing: tensors and plain containers
(dict, list, tuple, str, int, float, bool, None, bytes). :func:`plain` converts what the stages produce (numpy
arrays become tensors, numpy scalars Python numbers, paths strings) and refuses anything else, so a checkpoint that
would need code is caught when it is written, not when someone loads it.

What a run's own resume needs and cannot be plain (CMA-ES's internal state, Python's and numpy's RNG states) lives
in a *resume file* beside the checkpoint (:func:`resume_path`; written and read by
:func:`car_racing.common.runtime.save_resume_state` / ``load_resume_state``), which only ``--resume`` of that run
reads: that file is a pickle, so ``--resume`` trusts its folder. Exports never copy it.

A file that ``weights_only`` refuses is looked at without running it (:func:`globals_in`: every global the pickle
names, each replaced by an inert stand-in) and refused in one line naming what it would call
(:class:`Refused`). Files written before this format (numpy arrays inside; the CMA-ES state in the controller
checkpoint) are told apart from hostile ones: they name only numpy's array and scalar constructors, and
``car_racing/convert_checkpoints.py`` rewrites them once (:func:`load_legacy`: ``weights_only`` with numpy's array
constructors allowed; a run's own protocol-5 files only on the user's word that the run is theirs).
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import warnings
import zipfile
from pathlib import Path, PurePath
from typing import Any

import numpy as np

CONVERT_SCRIPT = "car_racing/convert_checkpoints.py"
RESUME_SUFFIX = ".resume.pkl"  # control_model_cmaes.pth's resume file: control_model_cmaes.resume.pkl

# What the pickles of older checkpoints name besides torch's own tensor machinery: numpy arrays and scalars.
# These build data, never call anything else; the converter's unpickler allows them and torch's, nothing more.
LEGACY_NUMPY_GLOBALS = frozenset({
    "numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype",
    "numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar",
    "numpy._core.numeric._frombuffer", "numpy.core.numeric._frombuffer"})  # (an array under pickle protocol 5)
TORCH_DATA_GLOBALS = frozenset({
    "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor", "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state", "torch.device", "torch.Size", "torch.float16", "torch.float32",
    "torch.float64", "torch.bfloat16", "torch.int64", "torch.int32", "torch.uint8", "torch.bool",
    "collections.OrderedDict", "builtins.set", "builtins.frozenset", "_codecs.encode"})
STORAGE_NAMES = ("Storage", "UntypedStorage")  # torch.FloatStorage, torch.ByteStorage, …, torch.UntypedStorage


class Refused(Exception):
    """A file that is not plain data: its pickle names something that is not a tensor or a plain container."""

    def __init__(self, path: Path, found: list[str], legacy: bool):
        self.path, self.found, self.legacy = path, found, legacy
        if legacy:
            what = [part for part, present in (("numpy objects", any(n.startswith("numpy.") for n in found)),
                                               ("pickle protocol 5", "pickle protocol 5" in found)) if present]
            message = (f"{path}: written before model files held plain data only ({' and '.join(what)}); "
                       f"convert it once: python {CONVERT_SCRIPT} --paths {path}")
            if "pickle protocol 5" in found:  # a run's own state: torch's weights_only reader cannot parse it
                message += (f" {TRUST_FLAG} (only for a run of your own: a CMA-ES or DAgger run wrote it into its "
                            f"folder, and it is read as --resume reads that folder)")
        else:
            message = (f"{path}: refused, loading it would call {', '.join(found)} (a model file may hold only "
                       f"tensors and plain data); nothing in it was run")
        super().__init__(message)


def _is_data_global(name: str) -> bool:
    module, _, attr = name.rpartition(".")
    if name in TORCH_DATA_GLOBALS or name in LEGACY_NUMPY_GLOBALS:
        return True
    if module == "numpy.dtypes" and attr.endswith("DType"):  # numpy ≥ 1.25 pickles a dtype by its class
        return True
    return module == "torch" and attr.endswith(STORAGE_NAMES)


def plain(value: Any, where: str = "checkpoint") -> Any:
    """``value`` as plain data for ``torch.save``: numpy arrays → tensors, numpy scalars → Python numbers, paths →
    strings, tuples and lists and dicts kept (their contents converted), tensors detached onto the CPU. Anything
    else is a :class:`TypeError` naming where it sits (a bug in the stage that wrote it, not a user's mistake)."""
    import torch

    if isinstance(value, np.generic):  # before float: numpy's float64 is a float, but pickles as a numpy scalar
        return value.item()
    if value is None or type(value) in (bool, int, float, str, bytes):
        return value
    for base in (bool, int, float, str, bytes):  # a subclass (an enum member, …) pickles by its class: the plain value
        if isinstance(value, base):
            return base(value.value if hasattr(value, "value") and isinstance(value.value, base) else value)
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise TypeError(f"{where}: a numpy array of Python objects is not plain data")
        return torch.from_numpy(np.ascontiguousarray(value).copy())
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, collections.OrderedDict):  # state_dicts: weights_only rebuilds OrderedDict
        return collections.OrderedDict((k, plain(v, f"{where}.{k}")) for k, v in value.items())
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: key {key!r} of type {type(key).__name__} (expected str or int)")
            out[key] = plain(item, f"{where}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        items = [plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    raise TypeError(f"{where}: {type(value).__module__}.{type(value).__qualname__} is not plain data "
                    f"(tensors, numpy arrays, numbers, strings and containers of them)")


class _Inert:
    """What every global of a scanned pickle becomes: called, built or indexed, it records nothing and runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> "_Inert":
        return _Inert()

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass


class _ScanningUnpickler(pickle.Unpickler):
    def __init__(self, file: Any) -> None:
        super().__init__(file)
        self.names: list[str] = []

    def find_class(self, module: str, name: str) -> Any:
        self.names.append(f"{module}.{name}")
        return _Inert

    def persistent_load(self, pid: Any) -> Any:
        return _Inert()


def _pickles_of(path: Path) -> list[bytes]:
    """The pickle(s) inside a torch file: ``*/data.pkl`` of the zip format, else the whole file (legacy format)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return [archive.read(name) for name in archive.namelist() if name.endswith("data.pkl")]
    return [path.read_bytes()]


def globals_in(path: str | os.PathLike) -> list[str]:
    """Every global (``module.name``) the file's pickle names, in order of first appearance, found without
    running any of them (each is swapped for an inert stand-in while the pickle is walked)."""
    names: list[str] = []
    for data in _pickles_of(Path(path)):
        scanner = _ScanningUnpickler(io.BytesIO(data))
        try:
            scanner.load()
        except Exception:  # a stand-in in an odd place, a truncated file: what was seen so far is the answer
            pass
        names += [n for n in scanner.names if n not in names]
    return names


def refusal(path: Path) -> Refused | None:
    """Why ``weights_only`` refused ``path``, found without running it: a :class:`Refused` naming the globals that
    build something other than data; a ``legacy`` one when the file is data written the older way (numpy objects,
    or pickle protocol 5, which torch's reader does not take); None when neither (truncated or corrupt)."""
    names = globals_in(path)
    code = [name for name in names if not _is_data_global(name)]
    if code:
        return Refused(path, code, legacy=False)
    numpy_objects = [name for name in names if name.startswith("numpy.")]
    protocol_5 = any(data[:2] == b"\x80\x05" for data in _pickles_of(path))
    if numpy_objects or protocol_5:
        return Refused(path, numpy_objects + (["pickle protocol 5"] if protocol_5 else []), legacy=True)
    return None


def load_plain(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; raises :class:`Refused` (one line: what it would call) when the
    file is not plain data, and lets other read errors (truncated, corrupt) through for the caller to word."""
    import torch

    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch warns about protocol 5 before refusing it: the refusal says enough
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        refused = refusal(path)
        if refused is not None:
            raise refused from None
        raise


def resume_path(checkpoint_path: str | os.PathLike) -> Path:
    """The resume file beside a checkpoint: ``control_model_cmaes.pth`` → ``control_model_cmaes.resume.pkl``."""
    path = Path(checkpoint_path)
    return path.with_name(path.stem + RESUME_SUFFIX)


# --- older files: read once by the converter ----------------------------------------------------------------

TRUST_FLAG = "--trust-own-runs"


def _numpy_data_classes() -> list[Any]:
    """numpy's array and scalar constructors and dtype classes: what older files name besides torch's own."""
    from numpy._core import multiarray

    return [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype,
            *(getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType"))]


class _LegacyUnpickler(pickle.Unpickler):
    """Builds numpy arrays and scalars and torch tensors; any other global is refused before it is looked up."""

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        if not _is_data_global(full):
            raise pickle.UnpicklingError(f"refused global {full}")
        return super().find_class(module, name)


def _read_own_run(path: Path) -> Any:
    """A CMA-ES or DAgger run's own protocol-5 file (torch's zip format), read without ``torch.load``: its
    ``data.pkl`` through :class:`_LegacyUnpickler` (numpy arrays and scalars, torch tensors and plain containers;
    any other global refused before it is looked up), each tensor's storage read from the zip's ``data/`` records
    as bytes. Torch's own ``weights_only`` reader cannot parse protocol 5, and its other reader would run code."""
    import torch

    with zipfile.ZipFile(path) as archive:
        pickled = next(name for name in archive.namelist() if name.endswith("data.pkl"))
        root = pickled[: -len("data.pkl")]

        def storage(saved_id: Any) -> Any:
            kind, storage_type, key, _location, _numel = saved_id
            if kind != "storage":
                raise pickle.UnpicklingError(f"refused persistent id {kind!r}")
            raw = torch.UntypedStorage.from_buffer(archive.read(f"{root}data/{key}"), dtype=torch.uint8)
            dtype = storage_type if isinstance(storage_type, torch.dtype) else storage_type.dtype
            return torch.storage.TypedStorage(wrap_storage=raw, dtype=dtype, _internal=True)

        unpickler = _LegacyUnpickler(io.BytesIO(archive.read(pickled)))
        unpickler.persistent_load = storage
        return unpickler.load()


def load_legacy(path: str | os.PathLike, trust_own_run: bool = False) -> Any:
    """An older model file, read once for conversion.

    Pickle protocol 2 (V, M, exported files: anything that may have been handed on) is read with
    ``weights_only=True``, numpy's array and scalar constructors allowed through torch's own ``safe_globals``.
    Protocol 5, which torch's ``weights_only`` reader cannot parse, was written only by a CMA-ES or DAgger run into
    its own folder: such a file is the run's state, read only with ``trust_own_run`` (the trust ``--resume`` places
    in its folder), and then still through an unpickler that builds numpy arrays, tensors and plain containers
    and nothing else. Raises :class:`Refused` for a file that names anything else."""
    import torch

    path = Path(path)
    refused = refusal(path)
    if refused is not None and not refused.legacy:
        raise refused
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if refused is None or "pickle protocol 5" not in refused.found:
            with torch.serialization.safe_globals(_numpy_data_classes()):
                return torch.load(path, map_location="cpu", weights_only=True)
        if not trust_own_run:
            raise Refused(path, refused.found, legacy=True)
        return _read_own_run(path)
